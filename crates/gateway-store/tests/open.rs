//! Opening paths that cannot hold a request log, for writing and for reading.

#![allow(clippy::unwrap_used)]

mod common;

use common::config;
use gateway_store::{LogReader, RequestLog, StoreError};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn assert_names_path(error: &StoreError, path: &Path) {
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "message `{message}` does not name {}",
        path.display()
    );
}

#[tokio::test]
async fn missing_folders_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.database = dir.path().join("a/b/c/requests.db");

    let (_log, writer) = RequestLog::open(&config).await.unwrap();
    writer.spawn().shutdown().await.unwrap();

    assert!(config.database.is_file());
    LogReader::open(&config.database).await.unwrap();
}

#[tokio::test]
async fn folder_at_database_path_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    std::fs::create_dir_all(&config.database).unwrap();

    let error = gateway_store::check_database_path(&config.database).unwrap_err();
    assert!(matches!(error, StoreError::IsFolder { .. }), "{error:?}");
    let error = RequestLog::open(&config).await.unwrap_err();
    assert!(matches!(error, StoreError::IsFolder { .. }), "{error:?}");
    assert_names_path(&error, &config.database);
    assert!(
        error.to_string().contains("gateway.db"),
        "no fix given: {error}"
    );

    let error = LogReader::open(&config.database).await.unwrap_err();
    assert!(matches!(error, StoreError::IsFolder { .. }), "{error:?}");
    assert_names_path(&error, &config.database);
}

#[tokio::test]
async fn garbage_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    std::fs::create_dir_all(config.database.parent().unwrap()).unwrap();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&config.database, &garbage).unwrap();

    let error = gateway_store::check_database(&config.database)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotDatabase { .. }), "{error:?}");
    let error = RequestLog::open(&config).await.unwrap_err();
    assert!(matches!(error, StoreError::NotDatabase { .. }), "{error:?}");
    assert_names_path(&error, &config.database);

    let error = LogReader::open(&config.database).await.unwrap_err();
    assert!(matches!(error, StoreError::NotDatabase { .. }), "{error:?}");
    assert_names_path(&error, &config.database);
    assert!(error.to_string().contains("--database"), "{error}");

    // Neither attempt may have rewritten the file.
    assert_eq!(std::fs::read(&config.database).unwrap(), garbage);
}

#[tokio::test]
async fn file_in_place_of_folder_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    config.database = blocker.join("requests.db");

    let error = RequestLog::open(&config).await.unwrap_err();
    assert!(
        matches!(error, StoreError::CreateFolder { .. }),
        "{error:?}"
    );
    assert_names_path(&error, &blocker);
}

#[tokio::test]
async fn unwritable_folder_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("read-only");
    std::fs::create_dir(&folder).unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o500)).unwrap();

    // Root ignores directory permissions, so this case cannot fail for root: skip it there.
    let probe = folder.join("probe");
    if std::fs::write(&probe, b"").is_ok() {
        eprintln!("skipped: this user can write into a 0o500 folder (running as root)");
        return;
    }

    let mut config = config(dir.path());
    config.database = folder.join("requests.db");
    let error = gateway_store::check_database(&config.database)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::ReadOnly { .. }), "{error:?}");
    let error = RequestLog::open(&config).await.unwrap_err();
    assert!(matches!(error, StoreError::ReadOnly { .. }), "{error:?}");
    assert_names_path(&error, &config.database);
}

#[tokio::test]
async fn device_and_short_file_fail_check() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.db");
    std::fs::write(&short, b"SQLite").unwrap();
    for path in [Path::new("/dev/null"), short.as_path()] {
        let error = gateway_store::check_database(path).await.unwrap_err();
        assert!(matches!(error, StoreError::NotDatabase { .. }), "{error:?}");
        assert_names_path(&error, path);
    }

    // A missing file and an empty one pass, and the check creates nothing.
    let missing = dir.path().join("missing.db");
    gateway_store::check_database(&missing).await.unwrap();
    assert!(!missing.exists(), "the check created the file");
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    gateway_store::check_database(&empty).await.unwrap();
}

#[tokio::test]
async fn reader_rejects_missing_file_without_creating_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");

    let error = LogReader::open(&path).await.unwrap_err();

    assert!(matches!(error, StoreError::Open { .. }), "{error:?}");
    assert_names_path(&error, &path);
    assert!(!path.exists());
}

/// Creates the SQLite database `path` with the table `create`, as another program would.
async fn create_database(path: &Path, create: &str) {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut connection = sqlx::ConnectOptions::connect(&options).await.unwrap();
    sqlx::query(create).execute(&mut connection).await.unwrap();
    sqlx::Connection::close(connection).await.unwrap();
}

#[tokio::test]
async fn reader_rejects_database_without_requests_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    create_database(&path, "CREATE TABLE things (id INTEGER PRIMARY KEY)").await;

    let error = LogReader::open(&path).await.unwrap_err();

    assert!(
        matches!(error, StoreError::NotRequestLog { .. }),
        "{error:?}"
    );
    assert_names_path(&error, &path);
    let message = error.to_string();
    assert!(
        message.contains("is an SQLite database without the gateway's request log table"),
        "{message}"
    );
    assert!(
        message.contains("request_log.database file with --database"),
        "no fix given: {message}"
    );
    assert!(!message.contains("start the gateway"), "{message}");
}

#[tokio::test]
async fn reader_rejects_foreign_requests_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crawler.db");
    create_database(
        &path,
        "CREATE TABLE requests (id INTEGER PRIMARY KEY, path TEXT, status INTEGER)",
    )
    .await;

    let error = LogReader::open(&path).await.unwrap_err();

    assert!(
        matches!(error, StoreError::ForeignRequestsTable { .. }),
        "{error:?}"
    );
    assert_names_path(&error, &path);
    let message = error.to_string();
    assert!(
        message.contains("is not the gateway's request log"),
        "{message}"
    );
    assert!(message.contains("ts_us, request_id, method"), "{message}");
    assert!(
        !message.contains(" path,"),
        "present column listed: {message}"
    );
    assert!(message.contains("--database"), "no fix given: {message}");
}

#[tokio::test]
async fn reader_rejects_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    std::fs::write(&path, b"").unwrap();

    let error = LogReader::open(&path).await.unwrap_err();

    assert!(
        matches!(error, StoreError::EmptyDatabase { .. }),
        "{error:?}"
    );
    assert_names_path(&error, &path);
    assert!(
        error.to_string().contains("start the gateway once"),
        "no fix given: {error}"
    );
}

/// Writes a request log in `dir`, changes its migration table with `statement`, and returns
/// the errors of the check and of the start on it, which must be the same kind.
async fn errors_after_migration_change(
    dir: &std::path::Path,
    statement: &str,
) -> (StoreError, StoreError) {
    use sqlx::{Connection, SqliteConnection};

    let config = config(dir);
    let (_log, writer) = RequestLog::open(&config).await.unwrap();
    writer.spawn().shutdown().await.unwrap();

    let url = format!("sqlite://{}", config.database.display());
    let mut connection = SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(statement)
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();

    let checked = gateway_store::check_database(&config.database)
        .await
        .unwrap_err();
    let started = RequestLog::open(&config).await.unwrap_err();
    assert_names_path(&started, &config.database);
    assert!(
        started.to_string().contains("move the file away"),
        "{started}"
    );
    (checked, started)
}

#[tokio::test]
async fn database_of_newer_version_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    // A migration this version does not have, as a newer gateway would record it.
    let (checked, started) = errors_after_migration_change(
        dir.path(),
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from a newer version', 1, x'00', 0)",
    )
    .await;
    for error in [checked, started] {
        assert!(
            matches!(error, StoreError::NewerSchema { version: 9999, .. }),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn changed_migration_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    // A checksum that no build of this schema records, as a modified build would leave it.
    let (checked, started) = errors_after_migration_change(
        dir.path(),
        "UPDATE _sqlx_migrations SET checksum = x'01' WHERE version = 2",
    )
    .await;
    for error in [checked, started] {
        assert!(
            matches!(error, StoreError::ChangedMigration { version: 2, .. }),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn file_in_place_of_folder_fails_check() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();

    let path = blocker.join("deeper").join("requests.db");
    let error = gateway_store::check_database_path(&path).unwrap_err();
    assert!(
        matches!(error, StoreError::CreateFolder { .. }),
        "{error:?}"
    );
    // A path whose folders are still to be created passes.
    let fresh = dir.path().join("a").join("b").join("requests.db");
    gateway_store::check_database_path(&fresh).unwrap();
    assert!(!dir.path().join("a").exists(), "the check created a folder");
}

/// Creates an SQLite file named `name` in `dir` with the table `create`, as another program
/// would, and checks that the check and the start reject it as foreign and leave it as it was.
async fn assert_foreign_left_alone(dir: &Path, name: &str, create: &str) {
    let mut config = config(dir);
    config.database = dir.join(name);
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&config.database)
        .create_if_missing(true);
    let mut connection = sqlx::ConnectOptions::connect(&options).await.unwrap();
    sqlx::query(create).execute(&mut connection).await.unwrap();
    sqlx::Connection::close(connection).await.unwrap();
    let before = std::fs::read(&config.database).unwrap();

    let error = gateway_store::check_database(&config.database)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::ForeignDatabase { .. }),
        "{error:?}"
    );
    let error = RequestLog::open(&config).await.unwrap_err();
    assert!(
        matches!(error, StoreError::ForeignDatabase { .. }),
        "{error:?}"
    );
    assert_names_path(&error, &config.database);
    assert!(
        std::fs::read(&config.database).unwrap() == before,
        "the file was changed"
    );
}

#[tokio::test]
async fn another_programs_database_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    assert_foreign_left_alone(
        dir.path(),
        "app.db",
        "CREATE TABLE users (id INTEGER PRIMARY KEY)",
    )
    .await;
}

/// Returns the names of the files in `dir`.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn check_of_own_log_creates_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (_log, writer) = RequestLog::open(&config).await.unwrap();
    writer.spawn().shutdown().await.unwrap();

    // The log copied on its own, without its -wal and -shm files.
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("copy.db");
    std::fs::copy(&config.database, &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();

    gateway_store::check_database(&copy).await.unwrap();
    assert_eq!(files_in(copy_dir.path()), ["copy.db"]);
    assert!(
        std::fs::read(&copy).unwrap() == before,
        "the file was changed"
    );
}

#[tokio::test]
async fn header_over_garbage_is_not_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    std::fs::create_dir_all(config.database.parent().unwrap()).unwrap();
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend((0..8192u32).map(|i| (i * 7 + 13) as u8));
    std::fs::write(&config.database, &bytes).unwrap();

    let error = gateway_store::check_database(&config.database)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotDatabase { .. }), "{error:?}");
    let error = RequestLog::open(&config).await.unwrap_err();
    assert!(matches!(error, StoreError::NotDatabase { .. }), "{error:?}");
    assert_eq!(std::fs::read(&config.database).unwrap(), bytes);
}

#[tokio::test]
async fn foreign_requests_table_is_foreign() {
    let dir = tempfile::tempdir().unwrap();
    assert_foreign_left_alone(
        dir.path(),
        "crawler.db",
        "CREATE TABLE requests (url TEXT, body BLOB)",
    )
    .await;
    assert_eq!(files_in(dir.path()), ["crawler.db"]);
}

#[tokio::test]
async fn check_leaves_wal_and_shm_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();
    for i in 0..20 {
        log.record(common::record(i, gateway_store::now_us()));
    }
    writer.shutdown().await.unwrap();
    // Another connection keeps a write in the -wal file, as a running gateway would.
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&config.database);
    let mut connection = sqlx::ConnectOptions::connect(&options).await.unwrap();
    sqlx::query("PRAGMA user_version = 7")
        .execute(&mut connection)
        .await
        .unwrap();
    let folder = config.database.parent().unwrap();
    let contents = || {
        files_in(folder)
            .into_iter()
            .map(|name| {
                let bytes = std::fs::read(folder.join(&name)).unwrap();
                (name, bytes)
            })
            .collect::<Vec<_>>()
    };
    let before = contents();

    gateway_store::check_database(&config.database)
        .await
        .unwrap();
    // The check reads through the -wal file as the start does, and a reader may update the
    // read marks in the -shm file, which is an index that SQLite rebuilds from the -wal file.
    let after = contents();
    let names = |files: &[(String, Vec<u8>)]| -> Vec<String> {
        files.iter().map(|(name, _)| name.clone()).collect()
    };
    assert_eq!(
        names(&after),
        names(&before),
        "the check added or removed a file"
    );
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        if !name.ends_with("-shm") {
            assert!(old == new, "the check changed {name}");
        }
    }
    assert!(
        before.iter().any(|(name, _)| name.ends_with("-shm")),
        "no -shm file to leave alone: {:?}",
        files_in(folder)
    );
    sqlx::Connection::close(connection).await.unwrap();
}

#[tokio::test]
async fn link_to_missing_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.database = dir.path().join("link.db");
    std::os::unix::fs::symlink(dir.path().join("absent/target.db"), &config.database).unwrap();

    let error = gateway_store::check_database(&config.database)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::DanglingLink { .. }),
        "{error:?}"
    );
    let error = RequestLog::open(&config).await.unwrap_err();
    assert!(
        matches!(error, StoreError::DanglingLink { .. }),
        "{error:?}"
    );
    assert_names_path(&error, &config.database);
}
