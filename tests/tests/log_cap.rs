//! `request_log.max_rows` with the real gateway: once more requests arrive than the cap, the
//! oldest rows go, `/admin/logs` lists at most the cap and the newest rows, and the gateway
//! logs that it deleted rows.

use gateway_tests::{GatewayProcess, MockProcess, get, log_config, route_yaml};
use serde_json::Value;
use std::time::Duration;

const USERS_ROUTE: &str = "/api/users/*filepath";

const MAX_ROWS: usize = 50;

/// Requests sent one after another, so their rows' times follow their numbers.
const REQUESTS: usize = 200;

fn start_gateway(backend_url: &str) -> GatewayProcess {
    let request_log = format!(
        "  database: \"{{dir}}/gateway.db\"\n  flush_interval: 20ms\n  max_rows: {MAX_ROWS}"
    );
    GatewayProcess::start(&log_config(
        &request_log,
        &route_yaml(USERS_ROUTE, backend_url),
    ))
}

/// Returns the entries of `/admin/logs?limit=1000`, newest first, with the query's extra
/// `filter` terms.
async fn listing(gateway: &GatewayProcess, filter: &str) -> Vec<Value> {
    let reply = get(&format!("{}/admin/logs?limit=1000{filter}", gateway.url)).await;
    assert_eq!(
        reply.status,
        200,
        "/admin/logs: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["entries"]
        .as_array()
        .expect("entries array")
        .clone()
}

fn paths(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|entry| entry["path"].as_str().expect("path").to_owned())
        .collect()
}

#[tokio::test]
async fn admin_logs_show_newest_within_cap() {
    let mock = MockProcess::start("Users");
    let mut gateway = start_gateway(&mock.url);
    for i in 0..REQUESTS {
        let reply = get(&format!("{}/api/users/{i}", gateway.url)).await;
        assert_eq!(reply.status, 200, "request {i}");
    }

    // The newest row is listed once its batch is committed. Each listing is a request too,
    // whose row counts against the cap, so the polls are few.
    let newest = format!("/api/users/{}", REQUESTS - 1);
    let route = format!("&route={USERS_ROUTE}");
    for _ in 0..20 {
        let traffic = listing(&gateway, &route).await;
        if traffic.first().and_then(|entry| entry["path"].as_str()) == Some(newest.as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The writer enforces the cap after each transaction, so once the polls' own rows are
    // committed, the log has at most the cap.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let all = listing(&gateway, "").await;
    assert!(all.len() <= MAX_ROWS, "{} rows listed", all.len());
    let traffic: Vec<Value> = all
        .into_iter()
        .filter(|entry| entry["route"].as_str() == Some(USERS_ROUTE))
        .collect();
    // At most 20 polls take the place of traffic rows.
    assert!(traffic.len() >= MAX_ROWS - 21, "{:?}", paths(&traffic));
    let expected: Vec<String> = (REQUESTS - traffic.len()..REQUESTS)
        .rev()
        .map(|i| format!("/api/users/{i}"))
        .collect();
    assert_eq!(paths(&traffic), expected, "not the newest rows");

    let line = gateway.wait_for_line(
        &["request log reached max_rows", "max_rows=50"],
        Duration::from_secs(5),
    );
    assert!(line.is_some(), "no log line about deleted rows");

    gateway.signal("TERM");
    let status = gateway.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|status| status.success()), "{status:?}");
}
