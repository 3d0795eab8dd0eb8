//! The read side: recent rows for the admin endpoints and the command line.

use crate::{LogCursor, LogFilter, StoreError, connect, time};
use futures_core::Stream;
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Steps of SQLite's virtual machine between two checks of a [`QueryCancel`], a fraction of a
/// millisecond of work. One step can take longer, such as the sort of a window's rows.
const CANCEL_CHECK_STEPS: i32 = 10_000;

/// Bytes of JSON that an entry takes beyond its text fields: the field names, the numbers and
/// the timestamp, rounded up.
const ENTRY_OVERHEAD_BYTES: usize = 400;

/// A flag that stops a request log query in progress. Once it is set, SQLite abandons the
/// query within [`CANCEL_CHECK_STEPS`] steps, and the query returns an error.
#[derive(Debug, Clone, Default)]
pub struct QueryCancel(Arc<AtomicBool>);

impl QueryCancel {
    /// Stops the queries that run with this flag.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Returns whether [`QueryCancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A read-only view of a request log, usable while a gateway writes to it or without one.
#[derive(Debug, Clone)]
pub struct LogReader {
    path: PathBuf,
    pool: SqlitePool,
}

/// One row of the request log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    /// The row id, increasing in insert order.
    pub id: i64,
    /// Time the request started, as RFC 3339 in UTC with microseconds.
    pub timestamp: String,
    /// Time the request started, in microseconds since the Unix epoch.
    pub ts_us: i64,
    /// The request id.
    pub request_id: String,
    /// The HTTP method.
    pub method: String,
    /// The request path.
    pub path: String,
    /// The query string without the `?`.
    pub query: Option<String>,
    /// The matched route pattern; `None` when no route matched.
    pub route: Option<String>,
    /// The response status code.
    pub status: u16,
    /// Time to the end of the response body, in microseconds.
    pub latency_us: u64,
    /// The client's IP address.
    pub client_ip: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The backend's URL; `None` when no backend was chosen.
    pub backend: Option<String>,
    /// Request body bytes read from the client.
    pub bytes_received: u64,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// Why the gateway generated the response itself; `None` for proxied responses.
    pub error_kind: Option<String>,
    /// Whether the request was sent to a second backend.
    pub retried: bool,
}

impl LogEntry {
    /// Returns about how many bytes the entry takes as JSON, at least as many for text
    /// without characters to escape.
    fn approximate_json_bytes(&self) -> usize {
        let optional = |text: &Option<String>| text.as_ref().map_or(0, String::len);
        ENTRY_OVERHEAD_BYTES
            + self.request_id.len()
            + self.method.len()
            + self.path.len()
            + optional(&self.query)
            + optional(&self.route)
            + optional(&self.client_ip)
            + optional(&self.user_agent)
            + optional(&self.backend)
            + optional(&self.error_kind)
    }

    /// Returns the entry's position in the listing's order, which
    /// [`LogFilter::before`] takes to list the entries after it.
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            ts_us: self.ts_us,
            id: self.id,
        }
    }
}

/// One page of the listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogPage {
    /// The matching rows, newest first, at most the filter's limit.
    pub entries: Vec<LogEntry>,
    /// The cursor of the last entry when more rows matched the filter at the time of the
    /// query; `None` on the last page. Pass it as [`LogFilter::before`] to read the next page.
    pub next: Option<LogCursor>,
}

/// The lowest status in the partial index `requests_errors` (see the migrations).
const ERROR_INDEX_FROM: u16 = 400;

/// The columns of the `requests` table that listings and statistics read, which a database
/// must have before a reader opens it.
pub(crate) const ENTRY_COLUMNS: [&str; 16] = [
    "id",
    "ts_us",
    "request_id",
    "method",
    "path",
    "query",
    "route",
    "status",
    "latency_us",
    "client_ip",
    "user_agent",
    "backend",
    "bytes_received",
    "bytes_sent",
    "error_kind",
    "retried",
];

/// Returns the columns of [`ENTRY_COLUMNS`] that are not among `columns`, the columns a
/// `requests` table has.
pub(crate) fn missing_columns(columns: &[String]) -> Vec<&'static str> {
    ENTRY_COLUMNS
        .iter()
        .copied()
        .filter(|column| !columns.iter().any(|name| name == column))
        .collect()
}

impl LogReader {
    /// Opens the request log at `path` read-only.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Open`] when the file is missing or unreadable, and
    /// [`StoreError::NotDatabase`] when it is not an SQLite database. An SQLite database that
    /// is not a request log gives [`StoreError::EmptyDatabase`] without tables,
    /// [`StoreError::NotRequestLog`] without a `requests` table, and
    /// [`StoreError::ForeignRequestsTable`] when that table lacks the log's columns.
    pub async fn open(path: impl AsRef<Path>) -> Result<LogReader, StoreError> {
        let path = path.as_ref();
        let pool = connect::open_reader(path).await?;
        Ok(LogReader {
            path: path.to_owned(),
            pool,
        })
    }

    /// Returns the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the rows that match `filter`, newest first.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Query`] when SQLite fails.
    pub async fn recent(&self, filter: &LogFilter) -> Result<Vec<LogEntry>, StoreError> {
        Ok(self.page(filter).await?.entries)
    }

    /// Returns the rows that match `filter`, newest first, and the cursor of the next page.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Query`] when SQLite fails.
    pub async fn page(&self, filter: &LogFilter) -> Result<LogPage, StoreError> {
        self.page_within(filter, usize::MAX, &QueryCancel::default())
            .await
    }

    /// Returns the rows that match `filter`, newest first, and the cursor of the next page,
    /// like [`LogReader::page`]. The page also ends before the row that would take its text
    /// past about `max_bytes`, though it always contains one row, so that a page of long paths
    /// and `User-Agent` values stays a bounded size in memory. The query stops when `cancel`
    /// is set.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Query`] when SQLite fails or the query was cancelled.
    pub async fn page_within(
        &self,
        filter: &LogFilter,
        max_bytes: usize,
        cancel: &QueryCancel,
    ) -> Result<LogPage, StoreError> {
        let limit = filter.limit.min(LogFilter::MAX_LIMIT) as usize;
        let mut connection = self.connection_with_cancel(cancel).await?;
        let mut sql = QueryBuilder::new("");
        // One row more than the page shows whether an older row matches.
        push_recent_query(&mut sql, filter, limit as u32 + 1);
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        let read = async {
            let query = sql.build();
            // Rows are read one at a time, so that no more than the page's rows are held.
            let mut rows = pin!(query.fetch(&mut *connection));
            while let Some(row) = std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
                let entry = entry_from_row(&row?)?;
                bytes += entry.approximate_json_bytes();
                if entries.len() == limit || (bytes > max_bytes && !entries.is_empty()) {
                    more = true;
                    break;
                }
                entries.push(entry);
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        remove_cancel(&mut connection).await;
        read.map_err(|source| self.query_error(source))?;
        let next = entries.last().filter(|_| more).map(LogEntry::cursor);
        Ok(LogPage { entries, next })
    }

    /// Takes a connection from the pool and makes its queries stop once `cancel` is set. The
    /// caller passes the connection to [`remove_cancel`] before it goes back to the pool.
    pub(crate) async fn connection_with_cancel(
        &self,
        cancel: &QueryCancel,
    ) -> Result<PoolConnection<Sqlite>, StoreError> {
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(|source| self.query_error(source))?;
        let flag = Arc::clone(&cancel.0);
        connection
            .lock_handle()
            .await
            .map_err(|source| self.query_error(source))?
            .set_progress_handler(CANCEL_CHECK_STEPS, move || !flag.load(Ordering::Relaxed));
        Ok(connection)
    }

    /// Closes the reader's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn query_error(&self, source: sqlx::Error) -> StoreError {
        StoreError::Query {
            path: self.path.clone(),
            source,
        }
    }
}

/// Removes what [`LogReader::connection_with_cancel`] set on `connection`. A connection whose
/// handler cannot be removed is closed rather than kept, since its next query would stop once
/// the last one's flag was set.
pub(crate) async fn remove_cancel(connection: &mut PoolConnection<Sqlite>) {
    let removed = match connection.lock_handle().await {
        Ok(mut handle) => {
            handle.remove_progress_handler();
            true
        }
        Err(_) => false,
    };
    if !removed {
        connection.close_on_drop();
    }
}

/// Appends the listing's query to `sql`: newest first, the filter's terms joined with `AND`,
/// at most `limit` rows.
fn push_recent_query<'a>(sql: &mut QueryBuilder<'a, Sqlite>, filter: &'a LogFilter, limit: u32) {
    sql.push("SELECT ")
        .push(ENTRY_COLUMNS.join(", "))
        .push(" FROM requests");
    let mut joiner = " WHERE ";
    if let Some(status) = filter.status {
        let codes = status.codes();
        sql.push(joiner)
            .push("status >= ")
            .push_bind(i64::from(codes.start));
        sql.push(" AND status < ").push_bind(i64::from(codes.end));
        if codes.start >= ERROR_INDEX_FROM {
            // The partial index's own term, written out. The bundled SQLite proves it from
            // the bound value, but SQLite 3.40 (tried) picks the index only with this term.
            sql.push(" AND status >= ").push(ERROR_INDEX_FROM);
        }
        joiner = " AND ";
    }
    if let Some(route) = &filter.route {
        sql.push(joiner).push("route = ").push_bind(route.as_str());
        joiner = " AND ";
    }
    if let Some(since_us) = filter.since_us {
        sql.push(joiner).push("ts_us >= ").push_bind(since_us);
        joiner = " AND ";
    }
    if let Some(before) = filter.before {
        // For this row value SQLite seeks the time index to the cursor's `ts_us`, so a page
        // far back in the table skips the newer rows instead of reading them.
        sql.push(joiner)
            .push("(ts_us, id) < (")
            .push_bind(before.ts_us)
            .push(", ")
            .push_bind(before.id)
            .push(")");
    }
    sql.push(" ORDER BY ts_us DESC, id DESC LIMIT ")
        .push_bind(limit);
}

fn entry_from_row(row: &SqliteRow) -> Result<LogEntry, sqlx::Error> {
    let ts_us: i64 = row.try_get("ts_us")?;
    Ok(LogEntry {
        id: row.try_get("id")?,
        timestamp: time::format_rfc3339(ts_us),
        ts_us,
        request_id: row.try_get("request_id")?,
        method: row.try_get("method")?,
        path: row.try_get("path")?,
        query: row.try_get("query")?,
        route: row.try_get("route")?,
        status: row.try_get("status")?,
        latency_us: unsigned(row.try_get("latency_us")?),
        client_ip: row.try_get("client_ip")?,
        user_agent: row.try_get("user_agent")?,
        backend: row.try_get("backend")?,
        bytes_received: unsigned(row.try_get("bytes_received")?),
        bytes_sent: unsigned(row.try_get("bytes_sent")?),
        error_kind: row.try_get("error_kind")?,
        retried: row.try_get("retried")?,
    })
}

/// Reads a counter the writer stored from a `u64`, so it is never negative unless the file
/// was edited by hand.
pub(crate) fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::StatusFilter;
    use sqlx::SqliteConnection;

    /// SQLite's plan for the listing's query, one line per step.
    async fn plan(connection: &mut SqliteConnection, filter: &LogFilter) -> String {
        let mut sql = QueryBuilder::new("EXPLAIN QUERY PLAN ");
        push_recent_query(&mut sql, filter, filter.limit);
        let rows = sql.build().fetch_all(connection).await.unwrap();
        rows.iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn status_filters_pick_matching_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut connection = connect::open_writer(&dir.path().join("requests.db"))
            .await
            .unwrap();

        for status in ["404", "4xx", "5xx", "503"] {
            let filter = LogFilter {
                status: Some(status.parse().unwrap()),
                ..LogFilter::default()
            };
            let plan = plan(&mut connection, &filter).await;
            assert!(plan.contains("requests_errors"), "{status}: {plan}");
        }

        let others = [
            LogFilter::default(),
            LogFilter {
                status: Some(StatusFilter::Class(2)),
                ..LogFilter::default()
            },
            LogFilter {
                status: Some(StatusFilter::Code(304)),
                ..LogFilter::default()
            },
            LogFilter {
                route: Some("/users/:id".to_owned()),
                ..LogFilter::default()
            },
        ];
        for filter in others {
            let plan = plan(&mut connection, &filter).await;
            assert!(plan.contains("requests_ts"), "{filter:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{filter:?}: {plan}");
        }
    }

    #[tokio::test]
    async fn cursor_seeks_time_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut connection = connect::open_writer(&dir.path().join("requests.db"))
            .await
            .unwrap();
        let before = Some(LogCursor {
            ts_us: 1_700_000_000_000_000,
            id: 42,
        });

        let filters = [
            LogFilter {
                before,
                ..LogFilter::default()
            },
            LogFilter {
                before,
                route: Some("/users/:id".to_owned()),
                ..LogFilter::default()
            },
            LogFilter {
                before,
                status: Some(StatusFilter::Class(2)),
                since_us: Some(1_600_000_000_000_000),
                ..LogFilter::default()
            },
        ];
        for filter in filters {
            let plan = plan(&mut connection, &filter).await;
            assert!(
                plan.contains("SEARCH requests USING INDEX requests_ts ("),
                "{filter:?}: {plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{filter:?}: {plan}");
        }

        for status in ["404", "5xx"] {
            let filter = LogFilter {
                before,
                status: Some(status.parse().unwrap()),
                ..LogFilter::default()
            };
            let plan = plan(&mut connection, &filter).await;
            assert!(plan.contains("requests_errors"), "{status}: {plan}");
        }
    }
}
