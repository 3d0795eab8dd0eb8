//! Request logs that the start rejects: damaged pages, a half-applied schema, a lock held by
//! another connection. `check_database`, which `apigateway --check` runs, must reject each
//! with the start's own error.

#![allow(clippy::unwrap_used)]

mod common;

use common::config;
use gateway_config::RequestLogConfig;
use gateway_store::{RequestLog, StoreError, now_us};
use std::io::{Seek, SeekFrom, Write};

/// Creates a log with `rows` rows and closes it, so that the database file alone contains them.
async fn create_log(dir: &std::path::Path, rows: u64) -> RequestLogConfig {
    let config = config(dir);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();
    for i in 0..rows {
        log.record(common::record(i, now_us()));
    }
    let summary = writer.shutdown().await.unwrap();
    assert_eq!(summary.written, rows, "{summary:?}");
    config
}

fn execute(path: &std::path::Path, sql: &str) {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection.execute_batch(sql).unwrap();
    connection.close().unwrap();
}

fn page_size(path: &std::path::Path) -> u64 {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .unwrap()
}

/// Asserts that the check and the start fail with the same error, that it names the file and
/// that it contains `fix`. Returns the start's error.
async fn assert_rejected_alike(config: &RequestLogConfig, fix: &str) -> StoreError {
    let checked = gateway_store::check_database(&config.database)
        .await
        .expect_err("the check passed a log that the start rejects");
    let opened = RequestLog::open(config)
        .await
        .expect_err("the start accepted the log");
    assert_eq!(checked.to_string(), opened.to_string());
    let message = opened.to_string();
    assert!(
        message.contains(&config.database.display().to_string()),
        "no file named: {message}"
    );
    assert!(message.contains(fix), "no fix given: {message}");
    opened
}

#[tokio::test]
async fn corrupt_pages_fail_check_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = create_log(dir.path(), 5000).await;
    let page = page_size(&config.database);

    // Pages 3 and 4 hold rows or index entries of the `requests` table.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&config.database)
        .unwrap();
    file.seek(SeekFrom::Start(2 * page)).unwrap();
    let noise: Vec<u8> = (0..2 * page).map(|i| (i * 131 + 7) as u8).collect();
    file.write_all(&noise).unwrap();
    drop(file);

    let error = assert_rejected_alike(&config, ".recover").await;
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    assert!(error.to_string().contains("move the file away"), "{error}");
}

#[tokio::test]
async fn truncated_file_fails_check_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = create_log(dir.path(), 5000).await;
    let size = std::fs::metadata(&config.database).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&config.database)
        .unwrap();
    file.set_len(size / 2).unwrap();
    drop(file);

    let error = assert_rejected_alike(&config, ".recover").await;
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
}

#[tokio::test]
async fn failed_migration_fails_check_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = create_log(dir.path(), 10).await;
    execute(
        &config.database,
        "UPDATE _sqlx_migrations SET success = 0 WHERE version = 2",
    );

    let error = assert_rejected_alike(&config, "move the file away").await;
    assert!(
        matches!(error, StoreError::FailedMigration { version: 2, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn missing_requests_table_fails_check_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = create_log(dir.path(), 10).await;
    execute(&config.database, "DROP TABLE requests");

    let error = assert_rejected_alike(&config, "move the file away").await;
    assert!(
        matches!(error, StoreError::BrokenSchema { .. }),
        "{error:?}"
    );
    assert!(!error.to_string().contains("--database"), "{error}");
}

#[tokio::test]
async fn missing_column_fails_check_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = create_log(dir.path(), 10).await;
    execute(&config.database, "ALTER TABLE requests DROP COLUMN retried");

    let error = assert_rejected_alike(&config, "move the file away").await;
    assert!(
        matches!(error, StoreError::BrokenSchema { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("retried"), "{error}");
}

/// Waits out the busy timeout twice, once for the check and once for the start.
#[tokio::test]
async fn held_write_lock_fails_check_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = create_log(dir.path(), 10).await;
    let holder = rusqlite::Connection::open(&config.database).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let error = assert_rejected_alike(&config, "another process").await;
    assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");

    holder.execute_batch("ROLLBACK").unwrap();
    gateway_store::check_database(&config.database)
        .await
        .unwrap();
    let (_log, writer) = RequestLog::open(&config).await.unwrap();
    writer.spawn().shutdown().await.unwrap();
}

#[tokio::test]
async fn intact_log_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = create_log(dir.path(), 5000).await;
    gateway_store::check_database(&config.database)
        .await
        .unwrap();
}
