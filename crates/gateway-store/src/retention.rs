//! Deleting rows older than the retention period, in bounded chunks.

use rusqlite::{Connection, params};

/// Rows deleted by one statement. Each chunk is its own transaction, so the write lock is
/// released between chunks and inserts can run in between.
pub(crate) const CHUNK_ROWS: u32 = 5000;

/// Deletes up to `chunk_rows` rows with `ts_us` before `cutoff_us` and returns how many it
/// deleted. Fewer than `chunk_rows` means no expired row is left. Blocking, like the insert.
pub(crate) fn delete_expired(
    connection: &Connection,
    cutoff_us: i64,
    chunk_rows: u32,
) -> rusqlite::Result<u64> {
    let deleted = connection
        .prepare_cached(
            "DELETE FROM requests WHERE id IN \
             (SELECT id FROM requests WHERE ts_us < ?1 ORDER BY ts_us LIMIT ?2)",
        )?
        .execute(params![cutoff_us, chunk_rows])?;
    Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::thread::WriterThread;
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
        let thread = WriterThread::spawn().unwrap();
        let connection = connect::open_insert_connection(&dir.path().join("log.db"), &thread)
            .await
            .unwrap();
        let mut old: Vec<_> = (0..100).map(record).collect();
        let mut new: Vec<_> = (1000..1010).map(record).collect();
        insert::insert_batch(&connection, &mut old).unwrap();
        insert::insert_batch(&connection, &mut new).unwrap();
        assert!(
            old.is_empty() && new.is_empty(),
            "inserted records are moved out"
        );

        let mut chunks = Vec::new();
        loop {
            let deleted = delete_expired(&connection, 1000, 30).unwrap();
            chunks.push(deleted);
            if deleted < 30 {
                break;
            }
        }

        assert_eq!(chunks, [30, 30, 30, 10]);
        let left: Vec<i64> = connection
            .prepare("SELECT ts_us FROM requests ORDER BY ts_us")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, (1000..1010).collect::<Vec<i64>>());
    }
}
