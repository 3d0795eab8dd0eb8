//! The crate's error type.

use std::path::PathBuf;

/// An error from opening, writing or querying the request log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The folder that should contain the database could not be created.
    #[error(
        "failed to create request log folder {} (give the gateway's user write access to the \
         folder above it, or set request_log.database to another path)",
        path.display()
    )]
    CreateFolder {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The database file was removed or replaced while the writer ran, and the writer needed a
    /// new connection to it.
    #[error(
        "request log database {} was removed or replaced while the gateway ran: restart the \
         gateway to write to a file at the path",
        path.display()
    )]
    Replaced {
        /// The database file.
        path: PathBuf,
    },

    /// The database path names a folder.
    #[error(
        "request log database {} is a folder: set request_log.database to a file path, such as \
         {}",
        path.display(),
        path.join("gateway.db").display()
    )]
    IsFolder {
        /// The path.
        path: PathBuf,
    },

    /// SQLite could not open the database, or the file is not an SQLite database.
    #[error("failed to open request log database {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: sqlx::Error,
    },

    /// SQLite failed to read or write the file, its `-wal` or its `-shm` file: a full disk
    /// or a failing one.
    #[error(
        "request log database {} could not be read or written (is its disk full?): free space \
         on that disk, or set request_log.database to a path on another disk",
        path.display()
    )]
    Disk {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: sqlx::Error,
    },

    /// SQLite could not open the checked and migrated database for the writer's statements.
    #[error("failed to open request log database {} for writing", path.display())]
    OpenForWriting {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

    /// The schema migrations failed.
    #[error("failed to migrate request log database {}", path.display())]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The migration error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// The database file, or its folder, cannot be written by this process.
    #[error(
        "request log database {} is read-only: give the gateway's user write access to the \
         file and its folder, or set request_log.database to a writable path",
        path.display()
    )]
    ReadOnly {
        /// The database file.
        path: PathBuf,
    },

    /// A schema newer than this version's: a newer gateway upgraded the database.
    #[error(
        "request log database {} was upgraded by a newer apigateway (schema version {version}): \
         run that version, or move the file away so that this one starts a new log",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// A schema version recorded in the file that this version does not know.
        version: i64,
    },

    /// A migration recorded in the file differs from this version's migration of the same
    /// number: a modified build wrote the file, or the file was edited.
    #[error(
        "request log database {} records schema migration {version} with other contents than \
         this apigateway's: run the build that wrote it, or move the file away so that this one \
         starts a new log",
        path.display()
    )]
    ChangedMigration {
        /// The database file.
        path: PathBuf,
        /// The migration whose recorded checksum differs.
        version: i64,
    },

    /// SQLite found the file damaged (`SQLITE_CORRUPT`), or `PRAGMA quick_check` reported a
    /// problem.
    #[error(
        "request log database {} is corrupt ({problem}): {}",
        path.display(),
        corrupt_fix(path)
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// SQLite's message, or the problems that the integrity check listed.
        problem: String,
    },

    /// Another connection held the write lock for longer than the busy timeout.
    #[error(
        "request log database {} is locked: another process has held a write transaction on \
         it for more than 5s (an `sqlite3` shell in a transaction, a backup tool, another \
         gateway). End that transaction (`fuser {}` lists the processes that have the file \
         open), or set request_log.database to another file",
        path.display(),
        path.display()
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },

    /// A migration is recorded as started but not finished, so the schema is half applied.
    #[error(
        "request log database {} records schema migration {version} as failed, so its schema \
         is half applied: move the file away (with its -wal and -shm files) so that the \
         gateway creates a new log",
        path.display()
    )]
    FailedMigration {
        /// The database file.
        path: PathBuf,
        /// The migration recorded with `success = 0`.
        version: i64,
    },

    /// The file records the log's migrations, but its `requests` table is missing or lacks
    /// the log's columns: it was edited or damaged.
    #[error(
        "request log database {} records the request log's schema, but {problem}: move the \
         file away (with its -wal and -shm files) so that the gateway creates a new log",
        path.display()
    )]
    BrokenSchema {
        /// The database file.
        path: PathBuf,
        /// The problem with the `requests` table.
        problem: String,
    },

    /// The path is a symbolic link to a file that does not exist.
    #[error(
        "request log database {} is a symbolic link to a missing file: create the file where \
         the link points (an empty file will do), or set request_log.database to a file path",
        path.display()
    )]
    DanglingLink {
        /// The link.
        path: PathBuf,
    },

    /// The path names something other than an SQLite database: a file with other content, or
    /// a device, socket or pipe.
    #[error(
        "request log database {} is not an SQLite database file: for the gateway, set \
         request_log.database to a new file or move this one away; for a command, pass the \
         request log's file with --database",
        path.display()
    )]
    NotDatabase {
        /// The path.
        path: PathBuf,
    },

    /// The file is another program's SQLite database: it has tables, none of them the log's.
    #[error(
        "{} is another program's database (it has tables, but not the request log's): set \
         request_log.database to a new file",
        path.display()
    )]
    ForeignDatabase {
        /// The database file.
        path: PathBuf,
    },

    /// The file is an SQLite database without tables, such as an empty file that no gateway
    /// has started on yet.
    #[error(
        "request log database {} has no tables: start the gateway once with it as \
         request_log.database to create the log, or pass the gateway's request_log.database \
         file with --database",
        path.display()
    )]
    EmptyDatabase {
        /// The database file.
        path: PathBuf,
    },

    /// The file is an SQLite database with tables, but without the request log's `requests`
    /// table.
    #[error(
        "{} is an SQLite database without the gateway's request log table `requests`: pass the \
         gateway's request_log.database file with --database",
        path.display()
    )]
    NotRequestLog {
        /// The database file.
        path: PathBuf,
    },

    /// The file has a `requests` table without the columns of the request log's.
    #[error(
        "{} has a `requests` table that is not the gateway's request log (it lacks the columns \
         {missing}): pass the gateway's request_log.database file with --database",
        path.display()
    )]
    ForeignRequestsTable {
        /// The database file.
        path: PathBuf,
        /// The missing columns, separated by commas.
        missing: String,
    },

    /// A query on an open database failed.
    #[error("request log query failed on {}", path.display())]
    Query {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: sqlx::Error,
    },

    /// A status filter was neither a status code nor a class such as `4xx`.
    #[error(
        "invalid status filter `{value}`: expected a code from 100 to 599 such as 404, or a class such as 4xx"
    )]
    InvalidStatus {
        /// The rejected text.
        value: String,
    },

    /// A start time was neither a duration nor an RFC 3339 timestamp.
    #[error(
        "invalid start time `{value}`: expected a duration such as 5m or 1h, \
         or a timestamp with its zone, such as 2025-01-31T12:00:00Z or 2025-01-31T13:00:00+01:00"
    )]
    InvalidSince {
        /// The rejected text.
        value: String,
    },

    /// A page cursor was not two integers joined by a dot.
    #[error(
        "invalid cursor `{value}`: expected <ts_us>.<id> such as 1700000000000000.42, \
         the `next` value of the previous page or the ts_us and id of its last entry"
    )]
    InvalidCursor {
        /// The rejected text.
        value: String,
    },

    /// The writer's thread could not be started, or it lost the statement that opens the
    /// database.
    #[error("request log writer thread failed")]
    WriterThread {
        /// The error from starting the thread, when that failed.
        #[source]
        source: Option<std::io::Error>,
    },

    /// The writer task panicked or was cancelled before it finished.
    #[error("request log writer task failed")]
    WriterTask(#[source] tokio::task::JoinError),
}

/// Returns the fix for a corrupt request log at `path`, for the start's error and the
/// writer's run-time error alike.
pub(crate) fn corrupt_fix(path: &std::path::Path) -> String {
    let path = path.display();
    format!(
        "with the gateway stopped, move the file away (with its -wal and -shm files) so that the \
         gateway creates a new log, or recover its rows with `sqlite3 {path} .recover | \
         sqlite3 {path}.recovered` and put {path}.recovered in its place"
    )
}
