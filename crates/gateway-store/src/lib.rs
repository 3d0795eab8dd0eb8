//! The request log: every finished request as one row of an SQLite table, and the queries the
//! admin endpoints and the command line run on it.
//!
//! The request path calls [`RequestLog::record_ref`] (or [`RequestLog::record`] with an owned
//! record), which puts a copy of the record on a bounded queue without waiting and drops it
//! (counting the drop) when the queue is full. One [`Writer`] task
//! drains the queue in batches, one transaction per batch, and deletes rows older than the
//! retention period, and the oldest rows beyond `max_rows`, in small chunks between batches. [`LogReader`] opens the same file
//! read-only, with or without a running gateway.
//!
//! ```no_run
//! # async fn example(config: gateway_config::RequestLogConfig) -> Result<(), gateway_store::StoreError> {
//! use gateway_store::{LogFilter, LogReader, RequestLog};
//!
//! let (log, writer) = RequestLog::open(&config).await?;
//! let writer = writer.spawn();
//! // ... hand clones of `log` to the request path, which calls `log.record(record)` ...
//! let summary = writer.shutdown().await?;
//!
//! let reader = LogReader::open(&config.database).await?;
//! let newest = reader.recent(&LogFilter::default()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`record`]: [`RequestRecord`] and its borrowed form [`RecordRef`], one finished request.
//! - `queue`: [`RequestLog`], the handle that queues records.
//! - `spool`: the queue itself, records encoded into blocks, one list of blocks per request
//!   thread.
//! - `writer`: [`Writer`], the batch writer task, and [`WriterHandle`] to stop it.
//! - `thread`: the thread on which the writer's SQLite statements run.
//! - `thread_index`: [`buffer_index`], which spreads request threads over the spool's lists,
//!   and over the access lines' buffers of `apigateway`.
//! - `insert` and `retention`: the SQL the writer runs.
//! - `row_cap`: when the writer deletes rows beyond `max_rows`, and its log line about them.
//! - `connect`: opening the file for writing (WAL, migrations) and for reading.
//! - `verify`: the checks of an existing file that the start and `apigateway --check` run.
//! - `reader`, `stats`, `filter`: [`LogReader`] and its queries, filters and page cursor.
//! - `time`: microsecond timestamps, RFC 3339 output and [`parse_since`].
//! - [`error`]: the error type, [`StoreError`].
//! - `migrations/`: the schema, embedded at build time.

#![warn(missing_docs)]

mod connect;
pub mod error;
mod filter;
mod insert;
mod queue;
mod reader;
pub mod record;
mod retention;
mod row_cap;
mod spool;
mod stats;
mod thread;
mod thread_index;
mod time;
mod verify;
mod writer;

pub use connect::{check_database, check_database_path};
pub use error::StoreError;
pub use filter::{LogCursor, LogFilter, StatusFilter};
pub use queue::RequestLog;
pub use reader::{LogEntry, LogPage, LogReader, QueryCancel};
pub use record::{RecordRef, RequestRecord};
pub use stats::{BackendStats, RouteStats, Stats, Summary};
pub use thread_index::buffer_index;
pub use time::{format_rfc3339, now_us, parse_since, unix_micros};
pub use writer::{
    DEFAULT_RETENTION_INTERVAL, DEFAULT_STOP_TIMEOUT, WriteSummary, Writer, WriterHandle,
};
