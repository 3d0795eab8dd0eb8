//! The batch insert: one transaction per batch, and cached statements that insert 16 rows at
//! a time.

use crate::spool::RowRef;
use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

/// The insert of one row, for the rows of a job past its last full multi-row statement.
/// SQLite compiles each insert once per connection (rusqlite's statement cache keeps it), and
/// each row then only binds its values.
///
/// `OR FAIL` spares SQLite its statement journal. Under the default `OR ABORT`, a statement
/// that writes several rows saves each page before changing it, so that a failure on a later
/// row can undo the earlier ones (a profile shows `subjournalPageIfRequired` and
/// `memjrnlWrite`). The writer rolls a failed batch back whole by closing the connection, so
/// the journal is not needed. `writer_throughput`: 1.30 to 1.35 µs of CPU per row with it,
/// 1.25 to 1.30 without.
const INSERT: &str = "INSERT OR FAIL INTO requests (ts_us, request_id, method, path, query, route, \
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

/// Inserts `records` as one job of a batch's transaction: the first job of a batch (`begin`)
/// begins the transaction and the last (`commit`) commits it.
///
/// On an error the transaction stays open, and the writer then closes the connection, which
/// rolls it back. Text is bound straight from the encoded records, and SQLite copies it as it
/// is bound. Only the client address is formatted first, into one buffer per job.
pub(crate) fn insert_chunk(
    connection: &Connection,
    records: &[RowRef<'_>],
    begin: bool,
    commit: bool,
) -> rusqlite::Result<()> {
    if begin {
        // IMMEDIATE takes the write lock at the start, where the busy timeout applies, rather
        // than at the first insert.
        connection.execute_batch("BEGIN IMMEDIATE")?;
    }
    insert_rows(connection, records)?;
    if commit {
        connection.execute_batch("COMMIT")?;
    }
    Ok(())
}

/// Inserts every row of `batch` in one transaction, in one job, and leaves `batch` empty.
#[cfg(test)]
pub(crate) fn insert_batch(
    connection: &Connection,
    batch: &mut Vec<crate::RequestRecord>,
) -> rusqlite::Result<()> {
    let records: Vec<crate::RecordRef<'_>> =
        batch.iter().map(crate::RequestRecord::to_ref).collect();
    let rows: Vec<RowRef<'_>> = records.iter().map(RowRef::from).collect();
    let inserted = insert_chunk(connection, &rows, true, true);
    drop(rows);
    drop(records);
    batch.clear();
    inserted
}

/// Rows in one multi-row insert. One statement step then builds this many rows, which saves
/// SQLite's per-statement work on all but one of them. `writer_throughput` on one core: 1.65
/// to 1.70 µs of CPU per row with single-row inserts, 1.35 to 1.40 with 8 rows per
/// statement, 1.30 to 1.35 with 16, and 1.60 with 64.
const ROWS_PER_STATEMENT: usize = 16;

/// Values in one row of the insert.
const COLUMNS: usize = 15;

/// The insert of [`ROWS_PER_STATEMENT`] rows at once.
static MULTI_INSERT: LazyLock<String> = LazyLock::new(|| {
    let columns = &INSERT[..INSERT.find(" VALUES").unwrap_or(INSERT.len())];
    let mut sql = format!("{columns} VALUES ");
    for row in 0..ROWS_PER_STATEMENT {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for column in 0..COLUMNS {
            if column > 0 {
                sql.push(',');
            }
            sql.push('?');
        }
        sql.push(')');
    }
    sql
});

fn insert_rows(connection: &Connection, records: &[RowRef<'_>]) -> rusqlite::Result<()> {
    let mut client_ip = String::with_capacity(48);
    let mut groups = records.chunks_exact(ROWS_PER_STATEMENT);
    if groups.len() > 0 {
        let mut insert = connection.prepare_cached(&MULTI_INSERT)?;
        let mut previous: Option<&[RowRef<'_>]> = None;
        for group in &mut groups {
            for (row, record) in group.iter().enumerate() {
                let last = previous.map(|rows| &rows[row]);
                bind_row(&mut insert, row * COLUMNS, record, last, &mut client_ip)?;
            }
            insert.raw_execute()?;
            previous = Some(group);
        }
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        let mut insert = connection.prepare_cached(INSERT)?;
        let mut previous = None;
        for record in rest {
            bind_row(&mut insert, 0, record, previous, &mut client_ip)?;
            insert.raw_execute()?;
            previous = Some(record);
        }
    }
    Ok(())
}

/// Binds `record` to the parameters after `offset` of `insert`, where `last` is the row that
/// these parameters were last bound to, or `None` when they are all NULL.
///
/// SQLite keeps bound values from one execution of a statement to the next (rusqlite clears
/// them only when the statement goes back to its cache), so a value equal to the last one is
/// not bound again. Rows next to each other often share their method, status, route, backend,
/// client and `User-Agent`, and a comparison costs less than a bind: each text bind frees
/// SQLite's copy of the last value and allocates and fills a new one. SQLite copies text as it
/// is bound, so `client_ip` is reused for every row.
fn bind_row(
    insert: &mut rusqlite::CachedStatement<'_>,
    offset: usize,
    record: &RowRef<'_>,
    last: Option<&RowRef<'_>>,
    client_ip: &mut String,
) -> rusqlite::Result<()> {
    if differs(last.map(|row| row.timestamp_us), record.timestamp_us) {
        insert.raw_bind_parameter(offset + 1, record.timestamp_us)?;
    }
    if differs(last.map(|row| row.request_id), record.request_id) {
        insert.raw_bind_parameter(offset + 2, text(record.request_id))?;
    }
    if differs(last.map(|row| row.method), record.method) {
        insert.raw_bind_parameter(offset + 3, text(record.method))?;
    }
    if differs(last.map(|row| row.path), record.path) {
        insert.raw_bind_parameter(offset + 4, text(record.path))?;
    }
    if differs_optional(last.map(|row| row.query), record.query) {
        insert.raw_bind_parameter(offset + 5, optional_text(record.query))?;
    }
    if differs_optional(last.map(|row| row.route), record.route) {
        insert.raw_bind_parameter(offset + 6, optional_text(record.route))?;
    }
    if differs(last.map(|row| row.status), record.status) {
        insert.raw_bind_parameter(offset + 7, record.status)?;
    }
    if differs(last.map(|row| row.latency_us), record.latency_us) {
        insert.raw_bind_parameter(offset + 8, saturating_i64(record.latency_us))?;
    }
    if differs_optional(last.map(|row| row.client_ip), record.client_ip) {
        client_ip.clear();
        match record.client_ip {
            Some(IpAddr::V4(ip)) => push_ipv4(client_ip, ip),
            Some(ip) => {
                let _ = write!(client_ip, "{ip}");
            }
            None => {}
        }
        let value = record.client_ip.map(|_| client_ip.as_str());
        insert.raw_bind_parameter(offset + 9, value)?;
    }
    if differs_optional(last.map(|row| row.user_agent), record.user_agent) {
        insert.raw_bind_parameter(offset + 10, optional_text(record.user_agent))?;
    }
    if differs_optional(last.map(|row| row.backend), record.backend) {
        insert.raw_bind_parameter(offset + 11, optional_text(record.backend))?;
    }
    if differs(last.map(|row| row.bytes_received), record.bytes_received) {
        insert.raw_bind_parameter(offset + 12, saturating_i64(record.bytes_received))?;
    }
    if differs(last.map(|row| row.bytes_sent), record.bytes_sent) {
        insert.raw_bind_parameter(offset + 13, saturating_i64(record.bytes_sent))?;
    }
    if differs_optional(last.map(|row| row.error_kind), record.error_kind) {
        insert.raw_bind_parameter(offset + 14, optional_text(record.error_kind))?;
    }
    if differs(last.map(|row| row.retried), record.retried) {
        insert.raw_bind_parameter(offset + 15, record.retried)?;
    }
    Ok(())
}

/// Returns whether a parameter of a NOT NULL column must be bound to `value`, given the
/// value `last` it was last bound to, if any.
fn differs<T: PartialEq>(last: Option<T>, value: T) -> bool {
    last.is_none_or(|last| last != value)
}

/// Returns whether a parameter of a column that may be NULL must be bound to `value`, given
/// the value `last` it was last bound to. Without a last value the parameter is NULL.
fn differs_optional<T: PartialEq>(last: Option<Option<T>>, value: Option<T>) -> bool {
    match last {
        Some(last) => last != value,
        None => value.is_some(),
    }
}

/// Returns `bytes` to bind as text. They are UTF-8 (see [`RowRef`]), so SQLite stores the
/// `str` they came from.
fn text(bytes: &[u8]) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(bytes))
}

/// Returns `bytes` to bind as text, or NULL for `None`.
fn optional_text(bytes: Option<&[u8]>) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(bytes.map_or(ValueRef::Null, ValueRef::Text))
}

/// Appends `ip` in dotted decimal. Written by hand because `core::fmt` showed in the writer's
/// profile, and IPv4 is the common case.
fn push_ipv4(out: &mut String, ip: Ipv4Addr) {
    for (index, octet) in ip.octets().into_iter().enumerate() {
        if index > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::thread::WriterThread;
    use crate::{RequestRecord, connect};
    use std::borrow::Cow;
    use std::sync::Arc;

    /// Returns a record whose every field depends on `i`, with optional fields set on odd rows.
    fn record(i: u64) -> RequestRecord {
        let odd = i % 2 == 1;
        RequestRecord {
            timestamp_us: 1_000 + i as i64,
            request_id: format!("id-{i}"),
            method: Cow::Owned(format!("M{i}")),
            path: format!("/p/é{i}"),
            query: odd.then(|| format!("q={i}")),
            route: odd.then(|| Arc::from(format!("/r/{i}"))),
            status: 200 + i as u16,
            latency_us: 10 * i,
            client_ip: odd.then(|| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8))),
            user_agent: odd.then(|| format!("agent/{i} ☃")),
            backend: odd.then(|| Arc::from(format!("http://b{i}"))),
            bytes_received: 100 + i,
            bytes_sent: 200 + i,
            error_kind: odd.then_some("backend_error"),
            retried: odd,
        }
    }

    type Row = (
        (
            i64,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            u16,
            i64,
        ),
        (
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
            i64,
            Option<String>,
            bool,
        ),
    );

    /// Returns a record whose fields take few values, so that neighbouring rows share some
    /// and not others, NULL included, in a pattern that shifts from row to row.
    fn repetitive_record(i: u64) -> RequestRecord {
        // Each field picks from its choices with a hash of the row and the field.
        let pick =
            |field: u64, choices: u64| (i.wrapping_mul(2_654_435_761) >> (field * 3)) % choices;
        let some_text = |field: u64, texts: &[&str]| {
            let choice = pick(field, texts.len() as u64 + 1) as usize;
            texts.get(choice).map(|text| (*text).to_owned())
        };
        RequestRecord {
            timestamp_us: 1_000 + i as i64,
            request_id: format!("id-{i}"),
            method: Cow::Borrowed(["GET", "POST"][pick(1, 2) as usize]),
            path: ["/a", "/b", "/a/b"][pick(2, 3) as usize].to_owned(),
            query: some_text(3, &["x=1", "y=2"]),
            route: some_text(4, &["/a", "/*rest"]).map(Arc::from),
            status: [200, 404][pick(5, 2) as usize],
            latency_us: pick(6, 3),
            client_ip: match pick(7, 3) {
                0 => None,
                1 => Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
                _ => Some(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
            },
            user_agent: some_text(8, &["curl/8", "agent ☃"]),
            backend: some_text(9, &["http://b1", "http://b2"]).map(Arc::from),
            bytes_received: pick(10, 2),
            // Past `i64::MAX`, stored saturated.
            bytes_sent: [200, u64::MAX][pick(11, 2) as usize],
            error_kind: some_text(12, &["backend_error"]).map(|_| "backend_error"),
            retried: pick(13, 2) == 1,
        }
    }

    fn expected(i: u64) -> Row {
        expected_of(record(i))
    }

    fn expected_of(record: RequestRecord) -> Row {
        (
            (
                record.timestamp_us,
                record.request_id,
                record.method.into_owned(),
                record.path,
                record.query,
                record.route.map(|route| route.to_string()),
                record.status,
                record.latency_us as i64,
            ),
            (
                record.client_ip.map(|ip| ip.to_string()),
                record.user_agent,
                record.backend.map(|backend| backend.to_string()),
                saturating_i64(record.bytes_received),
                saturating_i64(record.bytes_sent),
                record.error_kind.map(str::to_owned),
                record.retried,
            ),
        )
    }

    #[tokio::test]
    async fn multi_row_insert_keeps_every_column() {
        let dir = tempfile::tempdir().unwrap();
        let thread = WriterThread::spawn().unwrap();
        let connection = connect::open_insert_connection(&dir.path().join("log.db"), &thread)
            .await
            .unwrap();
        // Two full statements and a remainder of single-row inserts.
        let count = 2 * ROWS_PER_STATEMENT as u64 + 5;
        let mut batch: Vec<_> = (0..count).map(record).collect();
        insert_batch(&connection, &mut batch).unwrap();

        let rows = read_rows(&connection);
        assert_eq!(rows.len(), count as usize);
        for (i, row) in rows.into_iter().enumerate() {
            assert_eq!(row, expected(i as u64), "row {i}");
        }
    }

    /// Values equal to the last ones bound are not bound again. Every row must still get its
    /// own values, across statements, jobs and changes to and from NULL.
    #[tokio::test]
    async fn repeated_values_stay_in_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let thread = WriterThread::spawn().unwrap();
        let connection = connect::open_insert_connection(&dir.path().join("log.db"), &thread)
            .await
            .unwrap();
        // Jobs of different lengths: full statements, a remainder, and a job of only a
        // remainder between two that reuse the cached statements.
        let jobs = [0..37, 37..40, 40..120, 120..125];
        for job in jobs {
            let mut batch: Vec<_> = job.map(repetitive_record).collect();
            insert_batch(&connection, &mut batch).unwrap();
        }

        let rows = read_rows(&connection);
        assert_eq!(rows.len(), 125);
        for (i, row) in rows.into_iter().enumerate() {
            assert_eq!(row, expected_of(repetitive_record(i as u64)), "row {i}");
        }
    }

    fn read_rows(connection: &rusqlite::Connection) -> Vec<Row> {
        let mut query = connection
            .prepare(
                "SELECT ts_us, request_id, method, path, query, route, status, latency_us, \
                 client_ip, user_agent, backend, bytes_received, bytes_sent, error_kind, retried \
                 FROM requests ORDER BY ts_us",
            )
            .unwrap();
        let rows: Vec<Row> = query
            .query_map([], |row| {
                Ok((
                    (
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                        row.get(7)?,
                    ),
                    (
                        row.get(8)?,
                        row.get(9)?,
                        row.get(10)?,
                        row.get(11)?,
                        row.get(12)?,
                        row.get(13)?,
                        row.get(14)?,
                    ),
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows
    }

    #[tokio::test]
    async fn texts_are_stored_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let thread = WriterThread::spawn().unwrap();
        let connection = connect::open_insert_connection(&dir.path().join("log.db"), &thread)
            .await
            .unwrap();
        let mut batch: Vec<_> = (0..ROWS_PER_STATEMENT as u64 + 1).map(record).collect();
        insert_batch(&connection, &mut batch).unwrap();
        // Texts bound from bytes must still be of type text: comparisons with text literals
        // and `LIKE` then match them, and `length` counts characters.
        let (not_text, length): (i64, i64) = connection
            .query_row(
                "SELECT count(*) FILTER (WHERE typeof(request_id) != 'text' \
                 OR typeof(method) != 'text' OR typeof(path) != 'text' \
                 OR typeof(coalesce(user_agent, '')) != 'text'), \
                 max(length(path)) FILTER (WHERE path = '/p/é3') FROM requests",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(not_text, 0);
        assert_eq!(length, 5, "'/p/é3' is five characters");
    }

    #[tokio::test]
    async fn failed_row_rolls_back_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let thread = WriterThread::spawn().unwrap();
        let connection = connect::open_insert_connection(&path, &thread)
            .await
            .unwrap();
        // A trigger rejects one row in the middle of the first multi-row statement. Under
        // `OR FAIL`, the rows before it in that statement stay in the open transaction.
        connection
            .execute_batch(
                "CREATE TRIGGER reject_row BEFORE INSERT ON requests WHEN NEW.path = '/rejected' \
                 BEGIN SELECT RAISE(FAIL, 'rejected'); END",
            )
            .unwrap();
        let mut batch: Vec<_> = (0..2 * ROWS_PER_STATEMENT as u64).map(record).collect();
        batch[5].path = "/rejected".to_owned();
        let error = insert_batch(&connection, &mut batch).unwrap_err();
        assert!(error.to_string().contains("rejected"), "{error}");

        // The writer closes the connection after a failed batch, which rolls it back.
        drop(connection);
        let check = rusqlite::Connection::open(&path).unwrap();
        let rows: i64 = check
            .query_row("SELECT count(*) FROM requests", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 0);
    }

    #[test]
    fn ipv4_written_as_dotted_decimal() {
        for ip in [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(10, 9, 99, 100),
            Ipv4Addr::new(255, 255, 255, 255),
        ] {
            let mut text = String::new();
            push_ipv4(&mut text, ip);
            assert_eq!(text, ip.to_string());
        }
    }
}
