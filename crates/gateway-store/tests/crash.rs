//! A process that dies mid-write leaves a sound file with every committed row.
//!
//! The parent test runs this test binary again as a child, filtered to `crash_child`. The
//! child commits a known set of rows, keeps the writer busy with more, and aborts the process.

#![allow(clippy::unwrap_used)]

mod common;

use common::{config, count_rows, record, wait_for_rows};
use gateway_store::{RequestLog, now_us};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const DATABASE_VARIABLE: &str = "GATEWAY_STORE_CRASH_DATABASE";
const COMMITTED: u64 = 2_000;

#[test]
fn process_abort_keeps_committed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());

    let child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--test-threads=1"])
        .env(DATABASE_VARIABLE, &config.database)
        .output()
        .unwrap();
    let output = String::from_utf8_lossy(&child.stdout);
    assert!(
        !child.status.success(),
        "the child should abort, got {}: {output}",
        child.status
    );
    assert!(output.contains("running 1 test"), "{output}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut connection = common::connect(&config.database).await;
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(integrity, "ok");

        let committed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM requests WHERE CAST(substr(request_id, 5) AS INTEGER) < ?",
        )
        .bind(COMMITTED as i64)
        .fetch_one(&mut connection)
        .await
        .unwrap();
        assert_eq!(committed, COMMITTED as i64);
        assert!(count_rows(&config.database).await >= COMMITTED as i64);

        // The writer can open the file again and append to it.
        let (log, writer) = RequestLog::open(&config).await.unwrap();
        let writer = writer.spawn();
        log.record(record(1_000_000, now_us()));
        let summary = writer.shutdown().await.unwrap();
        assert_eq!(summary.written, 1);
    });
}

#[test]
#[ignore = "runs only as the child of process_abort_keeps_committed_rows"]
fn crash_child() {
    let Some(database) = std::env::var_os(DATABASE_VARIABLE) else {
        return;
    };
    let database = PathBuf::from(database);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut config = config(std::path::Path::new("/unused"));
        config.database = database;
        config.batch_size = 64;
        config.flush_interval = Duration::from_millis(10);
        let (log, writer) = RequestLog::open(&config).await.unwrap();
        let _writer = writer.spawn();

        for i in 0..COMMITTED {
            log.record(record(i, now_us()));
        }
        let committed = wait_for_rows(&config.database, COMMITTED as i64).await;
        assert_eq!(committed, COMMITTED as i64);

        // Keep the writer inside transactions, then die without any cleanup.
        for i in COMMITTED..COMMITTED + 50_000 {
            log.record(record(i, now_us()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::process::abort();
    });
}
