//! Opening the database file for the writer and for readers.

use crate::StoreError;
use crate::reader::missing_columns;
use crate::thread::WriterThread;
use crate::verify::{self, verify_database};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// How long a statement waits for another connection's lock before it fails with
/// `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Size the WAL file is cut back to when a checkpoint has copied all of it (SQLite's
/// `journal_size_limit`). The WAL file normally stays near the automatic checkpoint's 4 MB,
/// but a reader that keeps a transaction open stops checkpoints from catching up, and the
/// file then grows for as long as it does. Without a limit it would keep that size until
/// the stop; with it, the first checkpoint that catches up gives the space back.
const WAL_SIZE_LIMIT: i64 = 16 * 1024 * 1024;

/// Time after which a reader's statement is logged as slow, at debug level.
const SLOW_READER_STATEMENT: Duration = Duration::from_secs(1);

/// The schema's migrations, from the crate's `migrations` folder.
static MIGRATOR: Migrator = sqlx::migrate!();

/// Connections a [`LogReader`](crate::LogReader) keeps for concurrent queries.
const READER_CONNECTIONS: u32 = 4;

/// Opens the database for writing: creates the folder and the file when missing, switches to
/// WAL with `synchronous=NORMAL`, and applies the migrations.
///
/// WAL with `synchronous=NORMAL` keeps every committed transaction when the process crashes.
/// A power loss can lose the last few commits, but it does not corrupt the file.
pub(crate) async fn open_writer(path: &Path) -> Result<SqliteConnection, StoreError> {
    check_database_path(path)?;
    create_folder(path)?;
    let options = writer_options(path);
    // A folder the process cannot write fails here with one of SQLite's read-only codes,
    // because WAL mode creates files beside the database.
    let open_error = |source: sqlx::Error| match &source {
        sqlx::Error::Database(error) if is_read_only(error.code().as_deref()) => {
            StoreError::ReadOnly {
                path: path.to_owned(),
            }
        }
        // A new file in a folder the process cannot write fails to open, with no cause given.
        sqlx::Error::Database(error)
            if is_cannot_open(error.code().as_deref()) && !folder_is_writable(path) =>
        {
            StoreError::ReadOnly {
                path: path.to_owned(),
            }
        }
        sqlx::Error::Database(error) if is_not_database(error.code().as_deref()) => {
            not_a_database(path)
        }
        sqlx::Error::Database(error) if is_disk_error(error.code().as_deref()) => {
            StoreError::Disk {
                path: path.to_owned(),
                source,
            }
        }
        sqlx::Error::Database(_) => classify_sqlx(source, path),
        _ => StoreError::Open {
            path: path.to_owned(),
            source,
        },
    };

    check_not_foreign(path, ReadWal::Yes).await?;

    // Migrations run through a one-connection pool: run on a bare `&mut SqliteConnection`,
    // sqlx's `Acquire` bound makes the caller's future fail to prove `Send` for every
    // lifetime, and a server that opens the log could then not be spawned.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .map_err(open_error)?;
    let migrated = MIGRATOR.run(&pool).await;
    pool.close().await;
    migrated.map_err(|source| match source {
        MigrateError::VersionMissing(version) => StoreError::NewerSchema {
            path: path.to_owned(),
            version,
        },
        MigrateError::VersionMismatch(version) => StoreError::ChangedMigration {
            path: path.to_owned(),
            version,
        },
        MigrateError::Dirty(version) => StoreError::FailedMigration {
            path: path.to_owned(),
            version,
        },
        MigrateError::Execute(sqlx::Error::Database(error))
            if is_read_only(error.code().as_deref()) =>
        {
            StoreError::ReadOnly {
                path: path.to_owned(),
            }
        }
        MigrateError::Execute(source @ sqlx::Error::Database(_))
            if is_disk_error(source.as_database_error().and_then(|e| e.code()).as_deref()) =>
        {
            StoreError::Disk {
                path: path.to_owned(),
                source,
            }
        }
        MigrateError::Execute(source @ sqlx::Error::Database(_))
        | MigrateError::ExecuteMigration(source @ sqlx::Error::Database(_), _) => {
            classify_sqlx(source, path)
        }
        source => StoreError::Migrate {
            path: path.to_owned(),
            source,
        },
    })?;

    let mut connection = SqliteConnection::connect_with(&options)
        .await
        .map_err(open_error)?;
    ensure_writable(&mut connection, path).await?;
    Ok(connection)
}

/// Opens the connection the writer inserts and deletes with, on the writer's `thread`, after
/// [`open_writer`]'s checks and migrations. It has the same settings: WAL,
/// `synchronous=NORMAL` and the busy timeout.
///
/// The writer's statements run on rusqlite rather than sqlx: a cached statement bound straight
/// from the records, on a thread of the writer's own. SQLite's own work is then about half of
/// what sqlx spent per row, and the whole writer, its thread's round trips included, about
/// 0.85 of it (see `bench/RESULTS.md`). sqlx still applies the migrations and serves readers.
pub(crate) async fn open_insert_connection(
    path: &Path,
    thread: &WriterThread,
) -> Result<rusqlite::Connection, StoreError> {
    let checked = open_writer(path).await?;
    // The checks' connection closes first, so the writer has one connection to the file.
    let _ = checked.close().await;
    let connection = reopen_insert_connection(path, thread).await?;
    let owned = path.to_owned();
    match thread
        .run(move || verify_database(&connection, &owned).map(|()| connection))
        .await
    {
        Ok(verified) => verified,
        Err(_) => Err(StoreError::WriterThread { source: None }),
    }
}

/// Opens the writer's connection again, on its `thread`, after a failed batch closed it.
///
/// It skips [`open_writer`]'s checks on purpose. They read the file's header through a file
/// descriptor of their own, and closing any descriptor of a file drops every POSIX lock that
/// the process holds on it, the locks of the gateway's open reader connections included.
/// SQLite does not notice. A connection of another process would then take itself for the
/// last one on the file and delete the WAL file, with rows the gateway had committed in it.
/// The caller has checked that the path still names the file the writer started with.
pub(crate) async fn reopen_insert_connection(
    path: &Path,
    thread: &WriterThread,
) -> Result<rusqlite::Connection, StoreError> {
    let owned = path.to_owned();
    match thread.run(move || connect_for_inserts(&owned)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(StoreError::OpenForWriting {
            path: path.to_owned(),
            source,
        }),
        Err(_) => Err(StoreError::WriterThread { source: None }),
    }
}

fn connect_for_inserts(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    // No CREATE flag: `open_writer` made the file, and a file removed since is not recreated.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = rusqlite::Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // The file is in WAL mode already: the migrations' connection switched it.
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!("the journal mode stayed {mode}, not WAL")),
        ));
    }
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    Ok(connection)
}

fn writer_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        // A statement that waited out the busy timeout fails with its own error, so sqlx's
        // warning about it would only repeat it.
        .log_slow_statements(log::LevelFilter::Debug, SLOW_READER_STATEMENT)
}

/// Fails when `path` is not a request log that this version can write: another program's
/// SQLite database, a file that SQLite cannot read as a database, or a log upgraded by a newer
/// version. Migrations would add the log's tables to any SQLite file, and the writer's
/// connection switches the file to WAL mode, so the file is read without either.
///
/// A file is the request log's when it has no tables, only sqlx's migration table, or that
/// table and a `requests` table with the log's `ts_us` column. Another program's table named
/// `requests` is not enough.
async fn check_not_foreign(path: &Path, read_wal: ReadWal) -> Result<(), StoreError> {
    let size = std::fs::metadata(path).map_or(0, |metadata| metadata.len());
    if size == 0 {
        return Ok(());
    }

    // An immutable connection reads the database file alone, without creating or updating
    // the -shm file that a read-only one needs to read the -wal file too. Without a -wal
    // file, the database file is complete anyway.
    let has_wal = Path::new(&format!("{}-wal", path.display())).exists();
    let immutable = !has_wal || read_wal == ReadWal::No;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(immutable)
        .busy_timeout(BUSY_TIMEOUT);

    let not_database = |error: &sqlx::Error| match error {
        sqlx::Error::Database(error) => is_not_database(error.code().as_deref()),
        _ => false,
    };
    let mut connection = match SqliteConnection::connect_with(&options).await {
        Ok(connection) => connection,
        Err(error) if not_database(&error) => return Err(not_a_database(path)),
        // Other failures, such as a file this user cannot read, are the writer's to report.
        Err(_) => return Ok(()),
    };

    let schema = read_schema(&mut connection).await;
    let _ = connection.close().await;
    let schema = match schema {
        Ok(schema) => schema,
        Err(error) if not_database(&error) => return Err(not_a_database(path)),
        Err(_) => return Ok(()),
    };

    if !schema.is_request_log() {
        return Err(StoreError::ForeignDatabase {
            path: path.to_owned(),
        });
    }

    for (version, checksum) in &schema.applied {
        match MIGRATOR
            .iter()
            .find(|migration| migration.version == *version)
        {
            None => {
                return Err(StoreError::NewerSchema {
                    path: path.to_owned(),
                    version: *version,
                });
            }
            Some(migration) if *migration.checksum != checksum[..] => {
                return Err(StoreError::ChangedMigration {
                    path: path.to_owned(),
                    version: *version,
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Whether [`check_not_foreign`] reads the -wal file beside a database, which may update the
/// -shm file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadWal {
    /// Read it: the start's check, which must see a schema not yet copied into the file.
    Yes,
    /// Leave it: the check of `apigateway --check`, which changes no file.
    // NOTE: a schema still only in the -wal file is then not seen, so the start may still
    // reject a file that this check passed.
    No,
}

fn not_a_database(path: &Path) -> StoreError {
    StoreError::NotDatabase {
        path: path.to_owned(),
    }
}

/// The parts of a database's schema that [`check_not_foreign`] reads.
struct Schema {
    /// Tables other than SQLite's own (`sqlite_*`).
    tables: Vec<String>,
    /// Whether the `requests` table has the log's `ts_us` column.
    requests_has_ts: bool,
    /// The version and checksum of each migration applied, in order.
    applied: Vec<(i64, Vec<u8>)>,
}

impl Schema {
    fn is_request_log(&self) -> bool {
        let has = |name: &str| self.tables.iter().any(|table| table == name);
        match self.tables.len() {
            0 => true,
            1 => has(MIGRATIONS_TABLE),
            _ => has(MIGRATIONS_TABLE) && has("requests") && self.requests_has_ts,
        }
    }
}

/// sqlx's table of applied migrations.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Lists the database's tables other than SQLite's own (`sqlite_*`).
pub(crate) const TABLES_QUERY: &str = "SELECT name FROM sqlite_master WHERE type = 'table' \
     AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'";

async fn read_schema(connection: &mut SqliteConnection) -> Result<Schema, sqlx::Error> {
    let tables: Vec<String> = sqlx::query_scalar(TABLES_QUERY)
        .fetch_all(&mut *connection)
        .await?;
    let requests_has_ts = if tables.iter().any(|table| table == "requests") {
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info('requests')")
                .fetch_all(&mut *connection)
                .await?;
        columns.iter().any(|column| column == "ts_us")
    } else {
        false
    };
    let applied: Vec<(i64, Vec<u8>)> = if tables.iter().any(|table| table == MIGRATIONS_TABLE) {
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *connection)
            .await?
    } else {
        Vec::new()
    };
    Ok(Schema {
        tables,
        requests_has_ts,
        applied,
    })
}

/// Returns whether an SQLite extended result code is `SQLITE_NOTADB` (26): the file is not a
/// database, or is encrypted.
fn is_not_database(code: Option<&str>) -> bool {
    const SQLITE_NOTADB: i64 = 26;
    code.and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_NOTADB)
}

/// Returns whether an SQLite extended result code is one of `SQLITE_READONLY`'s (8 in its
/// low byte), such as 1544 for a folder that cannot be written.
fn is_read_only(code: Option<&str>) -> bool {
    const SQLITE_READONLY: i64 = 8;
    code.and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_READONLY)
}

/// Returns whether an SQLite extended result code is one of `SQLITE_IOERR`'s (10 in its low
/// byte), such as 4874 for a `-shm` file that cannot grow, or `SQLITE_FULL` (13).
fn is_disk_error(code: Option<&str>) -> bool {
    const SQLITE_IOERR: i64 = 10;
    const SQLITE_FULL: i64 = 13;
    code.and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| matches!(code & 0xff, SQLITE_IOERR | SQLITE_FULL))
}

/// Returns whether an SQLite extended result code is one of `SQLITE_CANTOPEN`'s (14 in its
/// low byte).
fn is_cannot_open(code: Option<&str>) -> bool {
    const SQLITE_CANTOPEN: i64 = 14;
    code.and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_CANTOPEN)
}

/// Returns whether the process can create a file in the folder of `path`, by creating and
/// removing one. A symbolic link is followed, because SQLite creates its -wal and -shm files
/// beside the file the link names. A folder still to be created is judged by the nearest one
/// that exists. Any error other than a denied permission or a read-only file system counts as
/// writable, so that the caller reports SQLite's own error.
fn folder_is_writable(path: &Path) -> bool {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let folder = target
        .ancestors()
        .skip(1)
        .map(|folder| {
            if folder.as_os_str().is_empty() {
                Path::new(".")
            } else {
                folder
            }
        })
        .find(|folder| folder.is_dir())
        .unwrap_or_else(|| Path::new("."));
    let probe = folder.join(format!(".write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(error) => !is_denied(&error),
    }
}

/// Fails when `connection` cannot write. SQLite opens a file that its process may not write
/// read-only without an error, and an up-to-date schema needs no write, so without this check
/// the gateway would start and then lose every batch.
async fn ensure_writable(connection: &mut SqliteConnection, path: &Path) -> Result<(), StoreError> {
    let open_error = |source| classify_sqlx(source, path);
    // A table created in a transaction that is rolled back needs a writable file but leaves
    // it as it was. Taking the write lock alone succeeds on a read-only connection.
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *connection)
        .await
        .map_err(open_error)?;
    let probe = sqlx::query("CREATE TABLE write_probe (x)")
        .execute(&mut *connection)
        .await;
    sqlx::query("ROLLBACK")
        .execute(&mut *connection)
        .await
        .map_err(open_error)?;
    match probe {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(error)) if is_read_only(error.code().as_deref()) => {
            Err(StoreError::ReadOnly {
                path: path.to_owned(),
            })
        }
        Err(source) => Err(open_error(source)),
    }
}

/// Opens an existing request log read-only, so that it works whether or not a gateway is
/// writing to it.
pub(crate) async fn open_reader(path: &Path) -> Result<SqlitePool, StoreError> {
    if path.is_dir() {
        return Err(StoreError::IsFolder {
            path: path.to_owned(),
        });
    }
    let open_error = |source: sqlx::Error| match &source {
        sqlx::Error::Database(error) if is_not_database(error.code().as_deref()) => {
            not_a_database(path)
        }
        _ => StoreError::Open {
            path: path.to_owned(),
            source,
        },
    };
    // sqlx warns about every statement slower than a second, with its whole text. Queries of
    // statistics over a large window take seconds by design, so those notes go to debug.
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(BUSY_TIMEOUT)
        .log_slow_statements(log::LevelFilter::Debug, SLOW_READER_STATEMENT);
    let pool = SqlitePoolOptions::new()
        .max_connections(READER_CONNECTIONS)
        .connect_with(options)
        .await
        .map_err(open_error)?;

    let checked = check_reader_schema(&pool, path, &open_error).await;
    if checked.is_err() {
        pool.close().await;
    }
    checked.map(|()| pool)
}

/// Checks that the database has a `requests` table with every column that the reader's
/// queries select, because SQLite's own "no such column" error names neither the file nor
/// the fix.
async fn check_reader_schema(
    pool: &SqlitePool,
    path: &Path,
    open_error: impl Fn(sqlx::Error) -> StoreError,
) -> Result<(), StoreError> {
    // A file that is not a database can open without error and fail at its first query.
    let tables: Vec<String> = sqlx::query_scalar(TABLES_QUERY)
        .fetch_all(pool)
        .await
        .map_err(&open_error)?;
    if tables.is_empty() {
        return Err(StoreError::EmptyDatabase {
            path: path.to_owned(),
        });
    }
    if !tables.iter().any(|table| table == "requests") {
        return Err(StoreError::NotRequestLog {
            path: path.to_owned(),
        });
    }

    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('requests')")
        .fetch_all(pool)
        .await
        .map_err(open_error)?;
    let missing = missing_columns(&columns);
    if !missing.is_empty() {
        return Err(StoreError::ForeignRequestsTable {
            path: path.to_owned(),
            missing: missing.join(", "),
        });
    }
    Ok(())
}

/// Checks what can be checked about a database path without creating anything: that it does
/// not name a folder, that no file is where its folder would be created, and that an existing
/// file is an SQLite database.
///
/// # Errors
///
/// Returns [`StoreError::IsFolder`], [`StoreError::CreateFolder`],
/// [`StoreError::DanglingLink`] or [`StoreError::NotDatabase`].
pub fn check_database_path(path: &Path) -> Result<(), StoreError> {
    if path.is_dir() {
        return Err(StoreError::IsFolder {
            path: path.to_owned(),
        });
    }
    // SQLite would create a missing file at the link's target, and fails when the target's
    // folder is missing, so a link must name an existing file.
    if path.is_symlink() && !path.exists() {
        return Err(StoreError::DanglingLink {
            path: path.to_owned(),
        });
    }
    if !is_database_or_missing(path) {
        return Err(StoreError::NotDatabase {
            path: path.to_owned(),
        });
    }
    // The nearest ancestor that exists must be a folder, or creating the rest fails.
    let existing = path.ancestors().skip(1).find(|ancestor| {
        !ancestor.as_os_str().is_empty() && std::fs::symlink_metadata(ancestor).is_ok()
    });
    if let Some(ancestor) = existing
        && !ancestor.is_dir()
    {
        return Err(StoreError::CreateFolder {
            path: path.parent().unwrap_or(ancestor).to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is a file, not a folder", ancestor.display()),
            ),
        });
    }
    Ok(())
}

/// Checks a database path as the gateway's start would, without writing to the database.
/// It runs the path checks of [`check_database_path`], checks that the file is not another
/// program's database and that the process can write the file and its folder. On an existing
/// log it then runs the start's checks: the write lock, the recorded migrations, the
/// `requests` table and a time-limited integrity check. This is what `apigateway --check`
/// runs.
///
/// The last checks open the file as SQLite does, so a reader's read marks in the -shm file
/// may change. When no other connection is open and a -wal file remains from a crash, closing
/// that connection copies the -wal file into the database, as the start would.
///
/// # Errors
///
/// Returns the [`StoreError`] that the start would fail with.
pub async fn check_database(path: &Path) -> Result<(), StoreError> {
    check_database_path(path)?;
    check_not_foreign(path, ReadWal::No).await?;
    let read_only = || StoreError::ReadOnly {
        path: path.to_owned(),
    };
    // A missing folder under one the process cannot write fails as the start would.
    if let Some(folder) = path
        .parent()
        .filter(|folder| !folder.as_os_str().is_empty())
        && !folder.exists()
        && !folder_is_writable(path)
    {
        return Err(StoreError::CreateFolder {
            path: folder.to_owned(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        });
    }
    if path.exists() {
        let denied = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .is_err_and(|error| is_denied(&error));
        if denied {
            return Err(read_only());
        }
    }
    // WAL mode creates two files beside the database, so its folder must be writable too.
    if !folder_is_writable(path) {
        return Err(read_only());
    }
    if std::fs::metadata(path).is_ok_and(|metadata| metadata.len() > 0) {
        let owned = path.to_owned();
        tokio::task::spawn_blocking(move || verify_existing(&owned))
            .await
            .map_err(StoreError::WriterTask)??;
    }
    Ok(())
}

/// Runs the start's [`verify_database`] on a connection of its own. The connection neither
/// creates the file nor changes its journal mode. Opening a file in WAL mode creates its -wal
/// and -shm files when they are missing, and closing the last connection removes them again.
fn verify_existing(path: &Path) -> Result<(), StoreError> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = rusqlite::Connection::open_with_flags(path, flags)
        .map_err(|source| verify::classify(source, path))?;
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(|source| verify::classify(source, path))?;
    let verified = verify_database(&connection, path);
    let _ = connection.close();
    verified
}

/// Maps an SQLite error of the start's sqlx connections as [`verify::classify`] maps the
/// writer's: a damaged file, a lock held by another process, a read-only file.
fn classify_sqlx(source: sqlx::Error, path: &Path) -> StoreError {
    let code = source
        .as_database_error()
        .and_then(|error| error.code())
        .and_then(|code| code.parse::<i32>().ok());
    let message = source
        .as_database_error()
        .map(|error| error.message().to_owned())
        .unwrap_or_default();
    match code.map(|code| code & 0xff) {
        Some(rusqlite::ffi::SQLITE_CORRUPT) => StoreError::Corrupt {
            path: path.to_owned(),
            problem: message,
        },
        Some(rusqlite::ffi::SQLITE_NOTADB) => not_a_database(path),
        Some(rusqlite::ffi::SQLITE_BUSY | rusqlite::ffi::SQLITE_LOCKED) => StoreError::Locked {
            path: path.to_owned(),
        },
        Some(rusqlite::ffi::SQLITE_READONLY) => StoreError::ReadOnly {
            path: path.to_owned(),
        },
        _ => StoreError::Open {
            path: path.to_owned(),
            source,
        },
    }
}

/// Returns whether `path` is missing, an empty file, or a file that starts with SQLite's
/// header. An empty file is what SQLite creates before its first write.
fn is_database_or_missing(path: &Path) -> bool {
    const HEADER: &[u8; 16] = b"SQLite format 3\0";
    let Ok(metadata) = std::fs::metadata(path) else {
        return true;
    };
    if !metadata.is_file() {
        return false;
    }
    if metadata.len() == 0 {
        return true;
    }
    let mut start = [0u8; 16];
    match std::fs::File::open(path).and_then(|mut file| file.read_exact(&mut start)) {
        Ok(()) => &start == HEADER,
        // A file shorter than the header is not a database. One the process cannot read is
        // left for the open to report.
        Err(error) => error.kind() != std::io::ErrorKind::UnexpectedEof,
    }
}

/// Returns whether an I/O error is a denied permission or a read-only file system.
fn is_denied(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

fn create_folder(path: &Path) -> Result<(), StoreError> {
    let Some(folder) = path
        .parent()
        .filter(|folder| !folder.as_os_str().is_empty())
    else {
        return Ok(());
    };
    std::fs::create_dir_all(folder).map_err(|source| StoreError::CreateFolder {
        path: folder.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn insert_connection_limits_wal_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.db");
        open_writer(&path).await.unwrap().close().await.unwrap();
        let connection = connect_for_inserts(&path).unwrap();
        let limit: i64 = connection
            .query_row("PRAGMA journal_size_limit", [], |row| row.get(0))
            .unwrap();
        assert_eq!(limit, WAL_SIZE_LIMIT);
    }

    #[tokio::test]
    async fn read_only_connection_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.db");
        let mut writable = open_writer(&path).await.unwrap();
        ensure_writable(&mut writable, &path).await.unwrap();
        writable.close().await.unwrap();

        // SQLite opens a file that the process may not write like this, without an error.
        let options = SqliteConnectOptions::new().filename(&path).read_only(true);
        let mut read_only = SqliteConnection::connect_with(&options).await.unwrap();
        let error = ensure_writable(&mut read_only, &path).await.unwrap_err();
        assert!(matches!(error, StoreError::ReadOnly { .. }), "{error:?}");
        assert!(error.to_string().contains("is read-only"), "{error}");
    }

    #[test]
    fn read_only_codes_are_recognized() {
        for code in ["8", "264", "520", "776", "1032", "1288", "1544"] {
            assert!(is_read_only(Some(code)), "{code}");
        }
        for code in [None, Some("5"), Some("14"), Some("readonly")] {
            assert!(!is_read_only(code), "{code:?}");
        }
    }

    #[test]
    fn disk_error_codes_are_recognized() {
        // SQLITE_IOERR and its extended codes (read, write, -shm size), and SQLITE_FULL.
        for code in ["10", "266", "778", "4874", "13"] {
            assert!(is_disk_error(Some(code)), "{code}");
        }
        for code in [None, Some("8"), Some("14"), Some("26"), Some("ioerr")] {
            assert!(!is_disk_error(code), "{code:?}");
        }
    }

    #[test]
    fn cannot_open_codes_are_recognized() {
        // SQLITE_CANTOPEN and its extended codes, such as SQLITE_CANTOPEN_ISDIR (526).
        for code in ["14", "270", "526", "782"] {
            assert!(is_cannot_open(Some(code)), "{code}");
        }
        for code in [None, Some("8"), Some("1544"), Some("cantopen")] {
            assert!(!is_cannot_open(code), "{code:?}");
        }
    }

    #[test]
    fn writable_folder_is_found_writable_and_left_clean() {
        let dir = tempfile::tempdir().unwrap();
        assert!(folder_is_writable(&dir.path().join("requests.db")));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
