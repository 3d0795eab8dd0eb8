//! The read queries: filtered listings and statistics.

#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_entry_matches, config, record};
use gateway_config::RequestLogConfig;
use gateway_store::{LogFilter, LogReader, RequestLog, RequestRecord, StatusFilter, Summary};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const BASE_US: i64 = 1_700_000_000_000_000;

/// Writes `records` through the queue and waits until they are committed.
async fn write_all(config: &RequestLogConfig, records: &[RequestRecord]) {
    let (log, writer) = RequestLog::open(config).await.unwrap();
    let writer = writer.spawn();
    for record in records {
        log.record(record.clone());
    }
    let summary = writer.shutdown().await.unwrap();
    assert_eq!(summary.written, records.len() as u64);
}

/// Returns a config whose retention keeps rows from `BASE_US`, which lies in 2023.
fn keep_everything(dir: &Path) -> RequestLogConfig {
    RequestLogConfig {
        retention: Duration::from_secs(100 * 365 * 86_400),
        ..config(dir)
    }
}

fn ids(entries: &[gateway_store::LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|entry| entry.request_id.clone())
        .collect()
}

/// 150 records one second apart: every 11th is a 404 without a route, every 10th a 503, the
/// rest 200 on `/items/:id`.
fn mixed_records() -> Vec<RequestRecord> {
    (0..150u64)
        .map(|i| {
            let mut record = record(i, BASE_US + i as i64 * 1_000_000);
            if i % 10 == 0 && i % 11 != 0 {
                record.status = 503;
                record.route = Some(Arc::from("/orders"));
            }
            record
        })
        .collect()
}

#[tokio::test]
async fn recent_lists_newest_first_with_default_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    let records = mixed_records();
    write_all(&config, &records).await;
    let reader = LogReader::open(&config.database).await.unwrap();

    let entries = reader.recent(&LogFilter::default()).await.unwrap();

    assert_eq!(entries.len(), 100);
    let expected: Vec<_> = (50..150).rev().map(|i| format!("req-{i}")).collect();
    assert_eq!(ids(&entries), expected);
    assert_entry_matches(&entries[0], &records[149]);
}

#[tokio::test]
async fn recent_applies_each_filter() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    let records = mixed_records();
    write_all(&config, &records).await;
    let reader = LogReader::open(&config.database).await.unwrap();
    let all = LogFilter {
        limit: LogFilter::MAX_LIMIT,
        ..LogFilter::default()
    };
    let expect = |keep: &dyn Fn(&RequestRecord) -> bool| -> Vec<String> {
        let mut ids: Vec<_> = records.iter().filter(|r| keep(r)).collect();
        ids.sort_by_key(|r| std::cmp::Reverse(r.timestamp_us));
        ids.iter().map(|r| r.request_id.clone()).collect()
    };

    let limited = LogFilter {
        limit: 7,
        ..all.clone()
    };
    assert_eq!(
        ids(&reader.recent(&limited).await.unwrap()),
        expect(&|_| true)[..7]
    );

    let not_found = LogFilter {
        status: Some(StatusFilter::Code(404)),
        ..all.clone()
    };
    let entries = reader.recent(&not_found).await.unwrap();
    assert_eq!(entries.len(), 14);
    assert_eq!(ids(&entries), expect(&|r| r.status == 404));

    let server_errors = LogFilter {
        status: Some("5xx".parse().unwrap()),
        ..all.clone()
    };
    let entries = reader.recent(&server_errors).await.unwrap();
    assert_eq!(entries.len(), 13);
    assert_eq!(ids(&entries), expect(&|r| r.status >= 500));

    let client_errors = LogFilter {
        status: Some(StatusFilter::Class(4)),
        ..all.clone()
    };
    assert_eq!(
        ids(&reader.recent(&client_errors).await.unwrap()),
        expect(&|r| r.status == 404)
    );

    let route = LogFilter {
        route: Some("/orders".to_owned()),
        ..all.clone()
    };
    assert_eq!(
        ids(&reader.recent(&route).await.unwrap()),
        expect(&|r| r.route.as_deref() == Some("/orders"))
    );

    let since = LogFilter {
        since_us: Some(BASE_US + 140 * 1_000_000),
        ..all.clone()
    };
    let entries = reader.recent(&since).await.unwrap();
    assert_eq!(entries.len(), 10);
    assert_eq!(
        ids(&entries),
        expect(&|r| r.timestamp_us >= BASE_US + 140 * 1_000_000)
    );

    let combined = LogFilter {
        limit: 2,
        status: Some(StatusFilter::Code(200)),
        route: Some("/items/:id".to_owned()),
        since_us: Some(BASE_US + 100 * 1_000_000),
    };
    let expected = expect(&|r| {
        r.status == 200 && r.route.is_some() && r.timestamp_us >= BASE_US + 100 * 1_000_000
    });
    assert_eq!(ids(&reader.recent(&combined).await.unwrap()), expected[..2]);

    let nothing = LogFilter {
        route: Some("/missing".to_owned()),
        ..all
    };
    assert!(reader.recent(&nothing).await.unwrap().is_empty());
}

#[tokio::test]
async fn recent_limit_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    let records: Vec<_> = (0..10_050).map(|i| record(i, BASE_US + i as i64)).collect();
    write_all(&config, &records).await;
    let reader = LogReader::open(&config.database).await.unwrap();

    let filter = LogFilter {
        limit: u32::MAX,
        ..LogFilter::default()
    };
    let entries = reader.recent(&filter).await.unwrap();

    assert_eq!(entries.len(), LogFilter::MAX_LIMIT as usize);
    assert_eq!(entries[0].request_id, "req-10049");
}

#[tokio::test]
async fn reader_sees_rows_while_writer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();
    log.record(record(1, BASE_US));
    common::wait_for_rows(&config.database, 1).await;

    let reader = LogReader::open(&config.database).await.unwrap();
    let entries = reader.recent(&LogFilter::default()).await.unwrap();

    assert_eq!(ids(&entries), ["req-1"]);
    writer.shutdown().await.unwrap();
}

#[tokio::test]
async fn entry_serializes_every_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    write_all(&config, &[record(21, BASE_US + 250_000)]).await;
    let reader = LogReader::open(&config.database).await.unwrap();

    let entries = reader.recent(&LogFilter::default()).await.unwrap();
    let json = serde_json::to_value(&entries[0]).unwrap();

    assert_eq!(json["timestamp"], "2023-11-14T22:13:20.250000Z");
    assert_eq!(json["ts_us"], BASE_US + 250_000);
    assert_eq!(json["request_id"], "req-21");
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/items/21");
    assert_eq!(json["query"], "page=21");
    assert_eq!(json["route"], "/items/:id");
    assert_eq!(json["status"], 200);
    assert_eq!(json["latency_us"], 1021);
    assert_eq!(json["client_ip"], "::1");
    assert_eq!(json["user_agent"], "test-agent/1.0");
    assert_eq!(json["backend"], "http://127.0.0.1:9001");
    assert_eq!(json["bytes_received"], 21);
    assert_eq!(json["bytes_sent"], 42);
    assert_eq!(json["error_kind"], serde_json::Value::Null);
    assert_eq!(json["retried"], true);
}

/// Builds a record on `route` through `backend` with the given latency and status.
fn timed(
    i: u64,
    route: Option<&str>,
    backend: Option<&str>,
    ms: u64,
    status: u16,
) -> RequestRecord {
    RequestRecord {
        route: route.map(Arc::from),
        backend: backend.map(Arc::from),
        latency_us: ms * 1000,
        status,
        ..record(i, BASE_US + i as i64)
    }
}

#[tokio::test]
async fn stats_use_nearest_rank_percentiles() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    let mut records = Vec::new();

    // `/a`: latencies 1..=100 ms in shuffled order, with 10 4xx and 5 5xx, split across two
    // backends by parity.
    for ms in (1..=100u64).map(|n| (n * 37) % 100 + 1) {
        let status = match ms {
            1..=10 => 429,
            11..=15 => 502,
            _ => 200,
        };
        let backend = if ms % 2 == 0 {
            "http://even"
        } else {
            "http://odd"
        };
        records.push(timed(
            records.len() as u64,
            Some("/a"),
            Some(backend),
            ms,
            status,
        ));
    }
    // `/b`: three requests, 7 ms each. One request without a route or a backend.
    for _ in 0..3 {
        records.push(timed(
            records.len() as u64,
            Some("/b"),
            Some("http://odd"),
            7,
            200,
        ));
    }
    records.push(timed(records.len() as u64, None, None, 1, 404));
    // One old request, before the window.
    let mut old = timed(999, Some("/a"), Some("http://even"), 5000, 500);
    old.timestamp_us = BASE_US - 1;
    records.push(old);
    write_all(&config, &records).await;
    let reader = LogReader::open(&config.database).await.unwrap();

    let stats = reader.stats(BASE_US).await.unwrap();

    assert_eq!(stats.since_us, BASE_US);
    assert_eq!(stats.total.requests, 104);
    assert_eq!(stats.total.errors_4xx, 11);
    assert_eq!(stats.total.errors_5xx, 5);

    let routes: Vec<_> = stats.routes.iter().map(|r| r.route.as_deref()).collect();
    assert_eq!(routes, [Some("/a"), Some("/b"), None]);
    let a = stats.routes[0].summary;
    assert_eq!(
        a,
        Summary {
            requests: 100,
            errors_4xx: 10,
            errors_5xx: 5,
            latency_p50_us: 50_000,
            latency_p95_us: 95_000,
            latency_p99_us: 99_000,
        }
    );
    let b = stats.routes[1].summary;
    assert_eq!(b.requests, 3);
    assert_eq!(b.latency_p50_us, 7_000);
    assert_eq!(b.latency_p99_us, 7_000);
    assert_eq!(stats.routes[2].summary.errors_4xx, 1);

    let backends: Vec<_> = stats
        .backends
        .iter()
        .map(|b| b.backend.as_deref())
        .collect();
    assert_eq!(backends, [Some("http://odd"), Some("http://even"), None]);
    // Odd latencies 1, 3, ..., 99 plus three of 7 ms: 53 values.
    let odd = stats.backends[0].summary;
    assert_eq!(odd.requests, 53);
    assert_eq!(odd.errors_4xx, 5);
    assert_eq!(odd.errors_5xx, 3);
    // Ranks 27, 51 and 53 of 1, 3, 5, 7, 7, 7, 7, 9, ..., 99.
    assert_eq!(odd.latency_p50_us, 47_000);
    assert_eq!(odd.latency_p95_us, 95_000);
    assert_eq!(odd.latency_p99_us, 99_000);
    // Even latencies 2, 4, ..., 100: ranks 25, 48 and 50.
    let even = stats.backends[1].summary;
    assert_eq!(even.requests, 50);
    assert_eq!(even.latency_p50_us, 50_000);
    assert_eq!(even.latency_p95_us, 96_000);
    assert_eq!(even.latency_p99_us, 100_000);

    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["routes"][0]["route"], "/a");
    assert_eq!(json["routes"][0]["latency_p95_us"], 95_000);
    assert_eq!(json["backends"][2]["backend"], serde_json::Value::Null);
}

#[tokio::test]
async fn stats_of_empty_window_are_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    write_all(&config, &[record(1, BASE_US)]).await;
    let reader = LogReader::open(&config.database).await.unwrap();

    let stats = reader.stats(BASE_US + 1).await.unwrap();

    assert_eq!(stats.total, Summary::default());
    assert!(stats.routes.is_empty());
    assert!(stats.backends.is_empty());
}
