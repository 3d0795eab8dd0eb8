//! `request_log.max_rows` on a real file: the writer deletes the oldest rows once the log
//! exceeds the cap, keeps the newest, and the file stops growing once the cap is reached.

#![allow(clippy::unwrap_used)]

mod common;

use common::{config, count_rows, record};
use gateway_config::RequestLogConfig;
use gateway_store::{RequestLog, now_us};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

fn capped(dir: &Path, max_rows: u64) -> RequestLogConfig {
    RequestLogConfig {
        max_rows,
        flush_interval: Duration::from_millis(20),
        ..config(dir)
    }
}

/// Polls until the writer has committed every queued record, for at most 10 seconds.
async fn wait_until_written(log: &RequestLog) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.queued() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(log.queued(), 0, "the writer did not catch up");
}

/// Returns the request ids left in the file, oldest first.
async fn request_ids_left(path: &Path) -> Vec<String> {
    let mut connection = common::connect(path).await;
    let ids = sqlx::query_scalar("SELECT request_id FROM requests ORDER BY ts_us, id")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    sqlx::Connection::close(connection).await.unwrap();
    ids
}

/// Returns the database's size in bytes as SQLite reads it, with the pages still in the WAL.
async fn database_bytes(path: &Path) -> i64 {
    let mut connection = common::connect(path).await;
    let bytes = sqlx::query_scalar(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    sqlx::Connection::close(connection).await.unwrap();
    bytes
}

#[tokio::test]
async fn cap_keeps_newest_rows() {
    const MAX_ROWS: u64 = 2000;
    const ROUND: u64 = 1000;
    const ROUNDS: u64 = 30;

    let dir = tempfile::tempdir().unwrap();
    let config = capped(dir.path(), MAX_ROWS);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();
    let start_us = now_us();

    // Fifteen times the cap, so that the freed pages are reused many times over.
    let mut bytes_at_cap = 0;
    for round in 0..ROUNDS {
        for i in round * ROUND..(round + 1) * ROUND {
            log.record(record(i, start_us + i as i64));
        }
        wait_until_written(&log).await;

        let rows = count_rows(&config.database).await;
        let written = (round + 1) * ROUND;
        assert_eq!(
            rows,
            written.min(MAX_ROWS) as i64,
            "rows after round {round}"
        );
        let bytes = database_bytes(&config.database).await;
        if round == 3 {
            bytes_at_cap = bytes;
        }
        if round > 3 {
            assert!(
                bytes <= bytes_at_cap + bytes_at_cap / 4,
                "round {round}: the file grew from {bytes_at_cap} to {bytes} bytes"
            );
        }
    }

    let summary = writer.shutdown().await.unwrap();
    assert_eq!(summary.written, ROUNDS * ROUND, "{summary:?}");
    assert_eq!(summary.capped, ROUNDS * ROUND - MAX_ROWS, "{summary:?}");

    let newest: Vec<String> = (ROUNDS * ROUND - MAX_ROWS..ROUNDS * ROUND)
        .map(|i| format!("req-{i}"))
        .collect();
    assert_eq!(request_ids_left(&config.database).await, newest);
}

#[tokio::test]
async fn backlog_stays_near_cap() {
    const MAX_ROWS: u64 = 1000;

    let dir = tempfile::tempdir().unwrap();
    let config = capped(dir.path(), MAX_ROWS);
    let (log, writer) = RequestLog::open(&config).await.unwrap();

    // Queued before the writer starts, so it takes them as one backlog of many batches.
    let start_us = now_us();
    for i in 0..20_000 {
        log.record(record(i, start_us + i as i64));
    }
    let writer = writer.spawn();
    let mut max_seen = 0;
    while log.queued() > 0 {
        max_seen = max_seen.max(count_rows(&config.database).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let summary = writer.shutdown().await.unwrap();

    // The writer deletes after each transaction of `batch_size` rows.
    let batch_size = config.batch_size as i64;
    assert!(
        max_seen <= MAX_ROWS as i64 + batch_size,
        "{max_seen} rows seen during the backlog"
    );
    assert_eq!(count_rows(&config.database).await, MAX_ROWS as i64);
    assert_eq!(summary.capped, 20_000 - MAX_ROWS, "{summary:?}");
}

#[tokio::test]
async fn lower_cap_trims_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();
    let start_us = now_us();
    for i in 0..12_000 {
        log.record(record(i, start_us + i as i64));
    }
    drop(log);
    assert_eq!(writer.shutdown().await.unwrap().written, 12_000);

    // No new rows: the writer's first pass brings the file down to the new cap, in chunks.
    let config = capped(dir.path(), 100);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_rows(&config.database).await > 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(log);
    let summary = writer.shutdown().await.unwrap();

    assert_eq!(summary.capped, 11_900, "{summary:?}");
    let newest: Vec<String> = (11_900..12_000).map(|i| format!("req-{i}")).collect();
    assert_eq!(request_ids_left(&config.database).await, newest);
}
