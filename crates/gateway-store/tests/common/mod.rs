//! Helpers shared by the integration tests: configs in temp folders, sample records and row
//! counts read straight from the file.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use gateway_config::RequestLogConfig;
use gateway_store::{LogEntry, RequestRecord};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Returns a config whose database is in a folder that does not exist yet.
pub fn config(dir: &Path) -> RequestLogConfig {
    RequestLogConfig {
        enabled: true,
        database: database_path(dir),
        batch_size: 512,
        flush_interval: Duration::from_millis(50),
        queue_capacity: 65_536,
        retention: Duration::from_secs(7 * 86_400),
        max_rows: gateway_config::DEFAULT_MAX_ROWS,
    }
}

pub fn database_path(dir: &Path) -> PathBuf {
    dir.join("data").join("requests.db")
}

/// Builds a record whose every field is derived from `i`, with optional fields set on some values
/// and empty on others.
pub fn record(i: u64, timestamp_us: i64) -> RequestRecord {
    let even = i.is_multiple_of(2);
    let no_route = i.is_multiple_of(11);
    let client_ip = if even {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    };
    RequestRecord {
        timestamp_us,
        request_id: format!("req-{i}"),
        method: Cow::Borrowed(if even { "GET" } else { "POST" }),
        path: format!("/items/{i}"),
        query: i.is_multiple_of(3).then(|| format!("page={i}")),
        route: (!no_route).then(|| Arc::from("/items/:id")),
        status: if no_route { 404 } else { 200 },
        latency_us: 1_000 + i,
        client_ip: (!i.is_multiple_of(13)).then_some(client_ip),
        user_agent: (!i.is_multiple_of(4)).then(|| "test-agent/1.0".to_owned()),
        backend: (!no_route).then(|| Arc::from("http://127.0.0.1:9001")),
        bytes_received: i,
        bytes_sent: 2 * i,
        error_kind: no_route.then_some("no_route"),
        retried: i.is_multiple_of(7),
    }
}

/// Asserts that `entry` contains every field of `record`.
pub fn assert_entry_matches(entry: &LogEntry, record: &RequestRecord) {
    assert_eq!(entry.ts_us, record.timestamp_us);
    assert_eq!(
        entry.timestamp,
        gateway_store::format_rfc3339(record.timestamp_us)
    );
    assert_eq!(entry.request_id, record.request_id);
    assert_eq!(entry.method, record.method);
    assert_eq!(entry.path, record.path);
    assert_eq!(entry.query, record.query);
    assert_eq!(entry.route.as_deref(), record.route.as_deref());
    assert_eq!(entry.status, record.status);
    assert_eq!(entry.latency_us, record.latency_us);
    assert_eq!(entry.client_ip, record.client_ip.map(|ip| ip.to_string()));
    assert_eq!(entry.user_agent, record.user_agent);
    assert_eq!(entry.backend.as_deref(), record.backend.as_deref());
    assert_eq!(entry.bytes_received, record.bytes_received);
    assert_eq!(entry.bytes_sent, record.bytes_sent);
    assert_eq!(entry.error_kind.as_deref(), record.error_kind);
    assert_eq!(entry.retried, record.retried);
}

/// Opens a plain read-only connection, independent of the crate's reader.
pub async fn connect(path: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    SqliteConnection::connect_with(&options).await.unwrap()
}

pub async fn count_rows(path: &Path) -> i64 {
    let mut connection = connect(path).await;
    let count = sqlx::query_scalar("SELECT COUNT(*) FROM requests")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    count
}

/// Polls the row count until it reaches `expected` or 10 seconds pass, and returns the last
/// count.
pub async fn wait_for_rows(path: &Path, expected: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = count_rows(path).await;
        if count >= expected || Instant::now() >= deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
