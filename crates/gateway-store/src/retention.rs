//! Deleting rows older than the retention period, and the oldest rows beyond
//! `request_log.max_rows`, in bounded chunks.

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

/// Returns `max(id) - min(id) + 1` over `requests`, 0 when the table is empty.
///
/// This id span is an upper bound on the row count, read from the two ends of the rowid B-tree
/// in O(log n), where `count(*)` reads every page of an index. Rows get increasing ids, so the
/// span exceeds the count only by the rows deleted from inside it. A slow request's row gets a
/// higher id than the rows of requests that began after it, so deleting by age can take it
/// first. Another program may also delete rows.
pub(crate) fn id_span(connection: &Connection) -> rusqlite::Result<u64> {
    // Two subqueries, because SQLite (3.40) reads a lone min() or max() from the end of the
    // B-tree, but scans the whole table for both in one SELECT.
    let span: Option<i64> = connection
        .prepare_cached(
            "SELECT (SELECT max(id) FROM requests) - (SELECT min(id) FROM requests) + 1",
        )?
        .query_row([], |row| row.get(0))?;
    Ok(span.map_or(0, |span| u64::try_from(span).unwrap_or(0)))
}

/// The outcome of one chunk of [`delete_over_cap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapChunk {
    /// Rows deleted.
    pub(crate) deleted: u64,
    /// The id span after the chunk, from [`id_span`].
    pub(crate) span: u64,
}

/// Deletes the oldest rows by `ts_us`, at most `chunk_rows` of them, as many as the id span
/// exceeds `max_rows` by. Blocking, like the insert.
///
/// The span is at least the row count, so at most `max_rows` rows remain once the span is
/// down to `max_rows`. The caller repeats until then, or until a chunk deletes nothing.
pub(crate) fn delete_over_cap(
    connection: &Connection,
    max_rows: u64,
    chunk_rows: u32,
) -> rusqlite::Result<CapChunk> {
    let span = id_span(connection)?;
    let excess = span.saturating_sub(max_rows);
    if excess == 0 {
        return Ok(CapChunk { deleted: 0, span });
    }
    let limit = excess.min(u64::from(chunk_rows));
    let deleted = connection
        .prepare_cached(
            "DELETE FROM requests WHERE id IN \
             (SELECT id FROM requests ORDER BY ts_us, id LIMIT ?1)",
        )?
        .execute(params![limit])?;
    Ok(CapChunk {
        deleted: u64::try_from(deleted).unwrap_or(u64::MAX),
        span: id_span(connection)?,
    })
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

    fn timestamps_left(connection: &Connection) -> Vec<i64> {
        connection
            .prepare("SELECT ts_us FROM requests ORDER BY ts_us")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[tokio::test]
    async fn over_cap_rows_go_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let thread = WriterThread::spawn().unwrap();
        let connection = connect::open_insert_connection(&dir.path().join("log.db"), &thread)
            .await
            .unwrap();
        assert_eq!(id_span(&connection).unwrap(), 0, "empty table");

        // Ids 1 to 100 get times 100 to 199, and ids 101 to 150 the older times 0 to 49, as
        // rows of slow requests would.
        let mut newer: Vec<_> = (100..200).map(record).collect();
        let mut older: Vec<_> = (0..50).map(record).collect();
        insert::insert_batch(&connection, &mut newer).unwrap();
        insert::insert_batch(&connection, &mut older).unwrap();
        assert_eq!(id_span(&connection).unwrap(), 150);

        let mut chunks = Vec::new();
        loop {
            let chunk = delete_over_cap(&connection, 60, 40).unwrap();
            if chunk.deleted == 0 {
                assert_eq!(chunk.span, 60);
                break;
            }
            chunks.push(chunk);
        }

        // The first chunk deletes the rows of the highest ids, so the span stays 150 while 110
        // rows remain. The next takes the rest of them, and the span falls to the count.
        let spans: Vec<(u64, u64)> = chunks.iter().map(|c| (c.deleted, c.span)).collect();
        assert_eq!(spans, [(40, 150), (40, 70), (10, 60)]);
        assert_eq!(
            timestamps_left(&connection),
            (140..200).collect::<Vec<i64>>()
        );
    }

    #[tokio::test]
    async fn id_span_bounds_row_count() {
        let dir = tempfile::tempdir().unwrap();
        let thread = WriterThread::spawn().unwrap();
        let connection = connect::open_insert_connection(&dir.path().join("log.db"), &thread)
            .await
            .unwrap();
        let mut rows: Vec<_> = (0..10).map(record).collect();
        insert::insert_batch(&connection, &mut rows).unwrap();
        connection
            .execute("DELETE FROM requests WHERE id IN (4, 5)", [])
            .unwrap();

        assert_eq!(id_span(&connection).unwrap(), 10, "8 rows from id 1 to 10");
        let under = delete_over_cap(&connection, 10, 5000).unwrap();
        assert_eq!(under.deleted, 0, "a span at the cap deletes nothing");

        let chunk = delete_over_cap(&connection, 9, 5000).unwrap();
        assert_eq!(chunk.deleted, 1);
        assert_eq!(chunk.span, 9);
        assert_eq!(timestamps_left(&connection), [1, 2, 5, 6, 7, 8, 9]);
    }
}
