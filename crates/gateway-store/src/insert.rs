//! The batch insert: one transaction per batch, one cached statement run once per row.

use crate::RequestRecord;
use rusqlite::{Connection, params};
use std::fmt::Write as _;
use std::ops::Range;

/// The insert of one row. SQLite compiles it once per connection (rusqlite's statement cache
/// keeps it), and each row then only binds its values and steps it.
const INSERT: &str = "INSERT INTO requests (ts_us, request_id, method, path, query, route, \
     status, latency_us, client_ip, user_agent, backend, bytes_received, bytes_sent, \
     error_kind, retried) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

/// Rows per job on the writer's thread. A batch is written in one transaction, but in jobs of
/// this many rows: between two jobs the thread waits for the next, and the gateway's own
/// threads can run. The test: a gateway with the request log on shares one core with the
/// writer and serves one connection back to back. Its p99 was 485 to 492 µs with jobs of 64
/// rows and 608 to 674 µs with one job per batch. Jobs of 16 and 32 rows did no better.
///
/// NOTE: the sqlx writer that this one replaced gave 299 to 330 µs in the same test, though it
/// spent more CPU per row. Why is not known. On a machine with a core to spare, the writer's
/// thread runs beside the gateway's and the question does not arise.
///
/// One job with a `yield` every few rows was also tried. Next to a low-priority process on
/// the same core, each yield could hand that process the core until the next scheduler tick,
/// and the writer fell behind its queue.
pub(crate) const CHUNK_ROWS: usize = 64;

/// Inserts `records[range]`, as one job of a batch's transaction: the first job of a batch
/// (`range` starts at 0) begins the transaction and the last (it ends at `records.len()`)
/// commits it.
///
/// On an error the transaction stays open, and the writer then closes the connection, which
/// rolls it back. Text is bound straight from the records, and SQLite copies it while it
/// builds the row. Only the client address is formatted first, into one buffer per job.
pub(crate) fn insert_chunk(
    connection: &Connection,
    records: &[RequestRecord],
    range: Range<usize>,
) -> rusqlite::Result<()> {
    let commit = range.end == records.len();
    if range.start == 0 {
        // IMMEDIATE takes the write lock at the start, where the busy timeout applies, rather
        // than at the first insert.
        connection.execute_batch("BEGIN IMMEDIATE")?;
    }
    insert_rows(connection, &records[range])?;
    if commit {
        connection.execute_batch("COMMIT")?;
    }
    Ok(())
}

/// Inserts every row of `batch` in one transaction, in one job, and leaves `batch` empty.
#[cfg(test)]
pub(crate) fn insert_batch(
    connection: &Connection,
    batch: &mut Vec<RequestRecord>,
) -> rusqlite::Result<()> {
    let inserted = insert_chunk(connection, batch, 0..batch.len());
    batch.clear();
    inserted
}

fn insert_rows(connection: &Connection, records: &[RequestRecord]) -> rusqlite::Result<()> {
    let mut insert = connection.prepare_cached(INSERT)?;
    let mut client_ip = String::with_capacity(48);
    for record in records {
        client_ip.clear();
        if let Some(ip) = record.client_ip {
            let _ = write!(client_ip, "{ip}");
        }
        insert.execute(params![
            record.timestamp_us,
            record.request_id,
            record.method.as_ref(),
            record.path,
            record.query,
            record.route.as_deref(),
            record.status,
            saturating_i64(record.latency_us),
            record.client_ip.map(|_| client_ip.as_str()),
            record.user_agent,
            record.backend.as_deref(),
            saturating_i64(record.bytes_received),
            saturating_i64(record.bytes_sent),
            record.error_kind,
            record.retried,
        ])?;
    }
    Ok(())
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
