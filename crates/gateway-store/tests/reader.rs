//! The read queries: filtered listings and statistics.

#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_entry_matches, config, record};
use gateway_config::RequestLogConfig;
use gateway_store::{
    LogCursor, LogEntry, LogFilter, LogPage, LogReader, QueryCancel, RequestLog, RequestRecord,
    StatusFilter, Summary,
};
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

fn ids(entries: &[LogEntry]) -> Vec<String> {
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
        before: None,
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

/// Reads every page of `filter`, starting at the newest row, and checks that each page but
/// the last is full and names its last entry as the next cursor.
async fn walk_pages(reader: &LogReader, filter: &LogFilter) -> Vec<LogPage> {
    let mut pages = Vec::new();
    let mut filter = filter.clone();
    loop {
        let page = reader.page(&filter).await.unwrap();
        let Some(next) = page.next else {
            pages.push(page);
            return pages;
        };
        assert_eq!(
            page.entries.len(),
            filter.limit as usize,
            "page {}",
            pages.len()
        );
        assert_eq!(Some(next), page.entries.last().map(LogEntry::cursor));
        assert!(pages.len() < 1000, "no last page after 1000 pages");
        filter.before = Some(next);
        pages.push(page);
    }
}

fn cursors(entries: &[LogEntry]) -> Vec<LogCursor> {
    entries.iter().map(LogEntry::cursor).collect()
}

/// 250 records, five to each of 50 microseconds. Consecutive records are seven microseconds
/// apart modulo 50, so insert order (and `id` order) is not time order.
fn shared_time_records() -> Vec<RequestRecord> {
    (0..250u64)
        .map(|i| record(i, BASE_US + ((i * 7) % 50) as i64))
        .collect()
}

#[tokio::test]
async fn pages_list_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    write_all(&config, &shared_time_records()).await;
    let reader = LogReader::open(&config.database).await.unwrap();
    let everything = reader
        .recent(&LogFilter {
            limit: LogFilter::MAX_LIMIT,
            ..LogFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(everything.len(), 250);
    let expected = cursors(&everything);
    assert!(
        expected.windows(2).all(|pair| pair[0] > pair[1]),
        "not newest first: {expected:?}"
    );

    // 7 splits the groups of five rows that share a microsecond, and 10 ends the last page on
    // the oldest row, where the page must still report that no row is left.
    for limit in [1, 7, 10, 249, 250, 251, LogFilter::MAX_LIMIT] {
        let filter = LogFilter {
            limit,
            ..LogFilter::default()
        };
        let pages = walk_pages(&reader, &filter).await;
        let walked: Vec<LogCursor> = pages
            .iter()
            .flat_map(|page| cursors(&page.entries))
            .collect();
        assert_eq!(walked, expected, "limit {limit}");
        assert_eq!(
            pages.len(),
            250_usize.div_ceil(limit as usize),
            "limit {limit}"
        );
        let last = pages.last().unwrap();
        assert!(!last.entries.is_empty(), "limit {limit}: empty last page");
        assert_eq!(last.next, None, "limit {limit}");
    }
}

#[tokio::test]
async fn page_ends_at_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    // 40 rows whose `User-Agent` takes 10 KB each.
    let records: Vec<RequestRecord> = (0..40u64)
        .map(|i| RequestRecord {
            user_agent: Some("a".repeat(10_000)),
            ..record(i, BASE_US + i as i64)
        })
        .collect();
    write_all(&config, &records).await;
    let reader = LogReader::open(&config.database).await.unwrap();
    let everything = cursors(&reader.recent(&LogFilter::default()).await.unwrap());
    assert_eq!(everything.len(), 40);

    let mut filter = LogFilter::default();
    let mut walked = Vec::new();
    let never = QueryCancel::default();
    loop {
        let page = reader.page_within(&filter, 35_000, &never).await.unwrap();
        // Three rows fit in 35,000 bytes, and a fourth would not.
        assert!(
            page.entries.len() == 3 || page.next.is_none(),
            "{} rows on a page",
            page.entries.len()
        );
        walked.extend(cursors(&page.entries));
        match page.next {
            Some(next) => filter.before = Some(next),
            None => break,
        }
    }
    assert_eq!(walked, everything, "a row was lost or repeated");

    // A row larger than the whole budget still makes a page, so that paging goes on.
    let page = reader
        .page_within(&LogFilter::default(), 10, &never)
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert!(page.next.is_some());
}

#[tokio::test]
async fn cancelled_query_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    let records: Vec<RequestRecord> = (0..5_000u64)
        .map(|i| record(i, BASE_US + i as i64))
        .collect();
    write_all(&config, &records).await;
    let reader = LogReader::open(&config.database).await.unwrap();

    let cancel = QueryCancel::default();
    cancel.cancel();
    assert!(reader.stats_cancellable(BASE_US, &cancel).await.is_err());
    let filter = LogFilter {
        route: Some("/no/such/route".to_owned()),
        ..LogFilter::default()
    };
    assert!(
        reader
            .page_within(&filter, usize::MAX, &cancel)
            .await
            .is_err()
    );

    // The flag of a cancelled query stays with that query: the connections it used serve the
    // next queries whole.
    for _ in 0..4 {
        let stats = reader.stats(BASE_US).await.unwrap();
        assert_eq!(stats.total.requests, 5_000);
        assert_eq!(reader.page(&filter).await.unwrap().entries.len(), 0);
    }
}

#[tokio::test]
async fn pages_keep_other_filters() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    let mut records = mixed_records();
    // Rows of one microsecond on both sides of the filters.
    for i in 150..170u64 {
        let mut late = record(i, BASE_US + 120 * 1_000_000);
        if i % 2 == 0 {
            late.status = 503;
            late.route = Some(Arc::from("/orders"));
        }
        records.push(late);
    }
    write_all(&config, &records).await;
    let reader = LogReader::open(&config.database).await.unwrap();

    let filters = [
        LogFilter {
            status: Some(StatusFilter::Class(5)),
            ..LogFilter::default()
        },
        LogFilter {
            status: Some(StatusFilter::Code(404)),
            ..LogFilter::default()
        },
        LogFilter {
            route: Some("/orders".to_owned()),
            since_us: Some(BASE_US + 60 * 1_000_000),
            ..LogFilter::default()
        },
        LogFilter {
            status: Some(StatusFilter::Code(200)),
            route: Some("/items/:id".to_owned()),
            ..LogFilter::default()
        },
    ];
    for filter in filters {
        let all = reader
            .recent(&LogFilter {
                limit: LogFilter::MAX_LIMIT,
                ..filter.clone()
            })
            .await
            .unwrap();
        assert!(all.len() > 3, "{filter:?} matches {} rows", all.len());

        let pages = walk_pages(
            &reader,
            &LogFilter {
                limit: 3,
                ..filter.clone()
            },
        )
        .await;
        let walked: Vec<LogEntry> = pages.into_iter().flat_map(|page| page.entries).collect();
        assert_eq!(cursors(&walked), cursors(&all), "{filter:?}");
        assert_eq!(ids(&walked), ids(&all), "{filter:?}");
    }
}

#[tokio::test]
async fn cursor_is_stable_while_rows_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    let first: Vec<_> = (0..20u64)
        .map(|i| record(i, BASE_US + i as i64 * 1_000))
        .collect();
    write_all(&config, &first).await;
    let reader = LogReader::open(&config.database).await.unwrap();
    let filter = LogFilter {
        limit: 8,
        ..LogFilter::default()
    };
    let newest = reader.page(&filter).await.unwrap();
    let next = newest.next.unwrap();
    assert_eq!(next.ts_us, BASE_US + 12_000);

    // Newer requests, one of the cursor's microsecond (a higher id, so newer in the listing's
    // order), and an older one that ended late.
    let later = [
        record(100, BASE_US + 50_000),
        record(101, BASE_US + 12_000),
        record(102, BASE_US + 3_500),
    ];
    write_all(&config, &later).await;

    let second = reader
        .page(&LogFilter {
            before: Some(next),
            ..filter.clone()
        })
        .await
        .unwrap();
    let expected: Vec<String> = (4..12).rev().map(|i| format!("req-{i}")).collect();
    assert_eq!(ids(&second.entries), expected);

    let rest = reader
        .page(&LogFilter {
            before: second.next,
            ..filter
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&rest.entries),
        ["req-102", "req-3", "req-2", "req-1", "req-0"]
    );
    assert_eq!(rest.next, None);
}

#[tokio::test]
async fn page_serializes_next_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let config = keep_everything(dir.path());
    write_all(&config, &[record(1, BASE_US), record(2, BASE_US)]).await;
    let reader = LogReader::open(&config.database).await.unwrap();

    let filter = LogFilter {
        limit: 1,
        ..LogFilter::default()
    };
    let page = reader.page(&filter).await.unwrap();
    let json = serde_json::to_value(&page).unwrap();
    assert_eq!(json["next"], format!("{BASE_US}.2"));
    assert_eq!(json["entries"][0]["request_id"], "req-2");

    let before = Some(page.next.unwrap());
    let last = reader.page(&LogFilter { before, ..filter }).await.unwrap();
    let json = serde_json::to_value(&last).unwrap();
    assert_eq!(json["next"], serde_json::Value::Null);
    assert_eq!(json["entries"][0]["request_id"], "req-1");
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
