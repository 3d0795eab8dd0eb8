//! The checks that the start and `apigateway --check` run on an existing request log before
//! any row is written: the write lock, the recorded migrations, the `requests` table and a
//! time-limited integrity check.

use crate::StoreError;
use crate::reader::missing_columns;
use rusqlite::Connection;
use std::path::Path;
use std::time::{Duration, Instant};

/// Maximum time spent on `PRAGMA quick_check` at the start. The check reads every page, so it
/// takes time in proportion to the file. On a 1 GB log it took 2.2 s with the file in the
/// page cache and 22 s from disk (the sqlite3 3.40 shell, a 2-core virtual machine). A check
/// cut off at this limit finds nothing, and the pages it did not reach are found corrupt only
/// when a statement reads them.
pub(crate) const INTEGRITY_CHECK_TIME: Duration = Duration::from_secs(1);

/// SQLite virtual machine instructions between two looks at the clock during the check.
const PROGRESS_INSTRUCTIONS: i32 = 10_000;

/// Checks the request log at `path` through `connection`, without writing to it. No other
/// process may hold its write lock, and no migration may be recorded as failed. A migrated
/// file must have the `requests` table with the log's columns. `PRAGMA quick_check` must find
/// no damage within [`INTEGRITY_CHECK_TIME`], and the pages that the writer reads first (the
/// newest rows, and the oldest for retention) must be readable.
///
/// A file without the migrations table passes the schema check, because the start creates
/// the schema.
pub(crate) fn verify_database(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    let failed = |source| classify(source, path);
    check_lock(connection).map_err(failed)?;
    check_schema(connection, path)?;
    check_integrity(connection, path)?;
    read_writer_pages(connection).map_err(failed)?;
    Ok(())
}

/// Takes the write lock and releases it at once. Another process's write transaction makes
/// this wait for the busy timeout and then fail with `SQLITE_BUSY`.
fn check_lock(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch("BEGIN IMMEDIATE; ROLLBACK")
}

fn check_schema(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    let failed = |source| classify(source, path);
    let tables = table_names(connection).map_err(failed)?;
    if !tables.iter().any(|table| table == "_sqlx_migrations") {
        return Ok(());
    }

    let mut statement = connection
        .prepare("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .map_err(failed)?;
    let migrations: Vec<(i64, bool)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .and_then(Iterator::collect)
        .map_err(failed)?;
    if let Some((version, _)) = migrations.iter().find(|(_, success)| !success) {
        return Err(StoreError::FailedMigration {
            path: path.to_owned(),
            version: *version,
        });
    }
    if migrations.is_empty() {
        return Ok(());
    }

    if !tables.iter().any(|table| table == "requests") {
        return Err(StoreError::BrokenSchema {
            path: path.to_owned(),
            problem: "it has no `requests` table".to_owned(),
        });
    }
    let mut statement = connection
        .prepare("SELECT name FROM pragma_table_info('requests')")
        .map_err(failed)?;
    let columns: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .and_then(Iterator::collect)
        .map_err(failed)?;
    let missing = missing_columns(&columns);
    if !missing.is_empty() {
        return Err(StoreError::BrokenSchema {
            path: path.to_owned(),
            problem: format!(
                "its `requests` table lacks the columns {}",
                missing.join(", ")
            ),
        });
    }
    Ok(())
}

fn table_names(connection: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = connection.prepare(crate::connect::TABLES_QUERY)?;
    statement
        .query_map([], |row| row.get(0))
        .and_then(Iterator::collect)
}

/// Runs `PRAGMA quick_check` until it ends or [`INTEGRITY_CHECK_TIME`] passes, and fails with
/// [`StoreError::Corrupt`] when it reports a problem.
fn check_integrity(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    let deadline = Instant::now() + INTEGRITY_CHECK_TIME;
    connection.progress_handler(
        PROGRESS_INSTRUCTIONS,
        Some(move || Instant::now() >= deadline),
    );
    let report: rusqlite::Result<Vec<String>> = connection
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get(0))
                .and_then(Iterator::collect)
        });
    connection.progress_handler(PROGRESS_INSTRUCTIONS, None::<fn() -> bool>);

    let report = match report {
        Ok(report) => report,
        Err(error)
            if error.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) =>
        {
            tracing::debug!(
                path = %path.display(),
                limit = ?INTEGRITY_CHECK_TIME,
                "request log integrity check stopped at its time limit"
            );
            return Ok(());
        }
        Err(error) => return Err(classify(error, path)),
    };
    if report.len() == 1 && report[0] == "ok" {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        path: path.to_owned(),
        problem: report.join("; "),
    })
}

/// Reads the pages that the writer's first statements read: the last pages of the table and
/// of its time index, where inserts go, and the first pages of the time index, where
/// retention starts.
fn read_writer_pages(connection: &Connection) -> rusqlite::Result<()> {
    let tables = table_names(connection)?;
    if !tables.iter().any(|table| table == "requests") {
        return Ok(());
    }
    // One aggregate per query: SQLite reads only a B-tree's edge for a lone min() or max().
    for edge in [
        "SELECT max(id) FROM requests",
        "SELECT max(ts_us) FROM requests",
        "SELECT min(ts_us) FROM requests",
    ] {
        connection.query_row(edge, [], |_| Ok(()))?;
    }
    let mut oldest =
        connection.prepare("SELECT id, ts_us FROM requests ORDER BY ts_us LIMIT 5000")?;
    let mut rows = oldest.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

/// Maps a failed statement of the checks to the error the start reports for it.
pub(crate) fn classify(source: rusqlite::Error, path: &Path) -> StoreError {
    use rusqlite::ErrorCode;
    match source.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_owned(),
            problem: source.to_string(),
        },
        Some(ErrorCode::NotADatabase) => StoreError::NotDatabase {
            path: path.to_owned(),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Locked {
            path: path.to_owned(),
        },
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly {
            path: path.to_owned(),
        },
        _ => StoreError::OpenForWriting {
            path: path.to_owned(),
            source,
        },
    }
}
