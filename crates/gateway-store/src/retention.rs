//! Deleting rows older than the retention period, in bounded chunks.

use sqlx::sqlite::SqliteConnection;

/// Rows deleted by one statement. Each chunk is its own transaction, so the write lock is
/// released between chunks and inserts can run in between.
pub(crate) const CHUNK_ROWS: u32 = 5000;

/// Deletes up to `chunk_rows` rows with `ts_us` before `cutoff_us` and returns how many it
/// deleted. Fewer than `chunk_rows` means no expired row is left.
pub(crate) async fn delete_expired(
    connection: &mut SqliteConnection,
    cutoff_us: i64,
    chunk_rows: u32,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "DELETE FROM requests WHERE id IN \
         (SELECT id FROM requests WHERE ts_us < ? ORDER BY ts_us LIMIT ?)",
    )
    .bind(cutoff_us)
    .bind(chunk_rows)
    .execute(connection)
    .await?;
    Ok(result.rows_affected())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{RequestRecord, connect, insert};
    use std::borrow::Cow;

    fn record(timestamp_us: i64) -> RequestRecord {
        RequestRecord {
            timestamp_us,
            request_id: format!("req-{timestamp_us}"),
            method: Cow::Borrowed("GET"),
            path: "/".to_owned(),
            query: None,
            route: None,
            status: 200,
            latency_us: 1,
            client_ip: None,
            user_agent: None,
            backend: None,
            bytes_received: 0,
            bytes_sent: 0,
            error_kind: None,
            retried: false,
        }
    }

    #[tokio::test]
    async fn expired_rows_go_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let mut connection = connect::open_writer(&dir.path().join("log.db"))
            .await
            .unwrap();
        let mut old: Vec<_> = (0..100).map(record).collect();
        let mut new: Vec<_> = (1000..1010).map(record).collect();
        insert::insert_batch(&mut connection, &mut old)
            .await
            .unwrap();
        insert::insert_batch(&mut connection, &mut new)
            .await
            .unwrap();
        assert!(
            old.is_empty() && new.is_empty(),
            "inserted records are moved out"
        );

        let mut chunks = Vec::new();
        loop {
            let deleted = delete_expired(&mut connection, 1000, 30).await.unwrap();
            chunks.push(deleted);
            if deleted < 30 {
                break;
            }
        }

        assert_eq!(chunks, [30, 30, 30, 10]);
        let left: Vec<i64> = sqlx::query_scalar("SELECT ts_us FROM requests ORDER BY ts_us")
            .fetch_all(&mut connection)
            .await
            .unwrap();
        assert_eq!(left, (1000..1010).collect::<Vec<i64>>());
    }
}
