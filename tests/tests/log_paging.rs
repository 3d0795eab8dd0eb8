//! Paging through the request log with `before`, against the real gateway: `/admin/logs`
//! returns each page's `next` cursor, and `apigateway logs --before` prints it. A walk of the
//! pages lists every matching row once, also while new requests arrive and when rows share one
//! `ts_us`.

use gateway_tests::{GatewayProcess, MockProcess, Reply, binary, get, log_config, route_yaml};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const USERS_ROUTE: &str = "/api/users/*filepath";

/// Requests sent through the route before the walk.
const TRAFFIC: usize = 60;

/// Rows written straight into the database, three to each microsecond.
const INSERTED: usize = 150;

/// A row's position in the listing's order, newest first.
type Key = (i64, i64);

fn start_gateway(backend_url: &str) -> GatewayProcess {
    GatewayProcess::start(&log_config(
        "  database: \"{dir}/gateway.db\"\n  flush_interval: 20ms",
        &route_yaml(USERS_ROUTE, backend_url),
    ))
}

async fn open_database(path: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(5));
    SqliteConnection::connect_with(&options)
        .await
        .unwrap_or_else(|error| panic!("open {}: {error}", path.display()))
}

/// Returns the keys of the route's rows, newest first, read straight from the file.
async fn route_keys(path: &Path, status_from: i64, status_to: i64) -> Vec<Key> {
    let mut connection = open_database(path).await;
    let rows = sqlx::query(
        "SELECT ts_us, id FROM requests WHERE route = ? AND status >= ? AND status < ? \
         ORDER BY ts_us DESC, id DESC",
    )
    .bind(USERS_ROUTE)
    .bind(status_from)
    .bind(status_to)
    .fetch_all(&mut connection)
    .await
    .expect("select keys");
    connection.close().await.expect("close database");
    rows.iter()
        .map(|row| (row.get("ts_us"), row.get("id")))
        .collect()
}

/// Writes `INSERTED` rows of the route, three to each microsecond, spread over the time of the
/// traffic's rows from its oldest to its newest. A gateway rarely records two requests in one
/// microsecond, so these rows make the ties that the cursor's `id` must break. They go in
/// oldest last, so their `id` order is the reverse of their time order. Every fourth is a 503.
async fn insert_tied_rows(path: &Path, oldest_us: i64, newest_us: i64) {
    let mut connection = open_database(path).await;
    let mut transaction = connection.begin().await.expect("begin");
    let groups = (INSERTED / 3) as i64;
    for k in 0..INSERTED {
        let group = (INSERTED - 1 - k) as i64 / 3;
        let ts_us = oldest_us + (newest_us - oldest_us) * group / (groups - 1);
        let status = if k % 4 == 0 { 503 } else { 200 };
        sqlx::query(
            "INSERT INTO requests (ts_us, request_id, method, path, route, status, latency_us, \
             bytes_received, bytes_sent, retried) VALUES (?, ?, 'GET', ?, ?, ?, 1000, 0, 0, 0)",
        )
        .bind(ts_us)
        .bind(format!("inserted-{k}"))
        .bind(format!("/api/users/inserted/{k}"))
        .bind(USERS_ROUTE)
        .bind(status)
        .execute(&mut *transaction)
        .await
        .expect("insert row");
    }
    transaction.commit().await.expect("commit");
    connection.close().await.expect("close database");
}

/// Polls until the route has `expected` rows or 10 seconds pass.
async fn wait_for_route_rows(path: &Path, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = route_keys(path, 0, 1000).await.len();
        if rows >= expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} of {expected} rows written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entry_keys(entries: &[Value]) -> Vec<Key> {
    entries
        .iter()
        .map(|entry| {
            let ts_us = entry["ts_us"].as_i64().expect("ts_us");
            let id = entry["id"].as_i64().expect("id");
            (ts_us, id)
        })
        .collect()
}

fn cursor(key: Key) -> String {
    format!("{}.{}", key.0, key.1)
}

/// Walks `/admin/logs?{query}` from the newest page to the last, sending one more request
/// through the route before each page after the first. Checks each page's `next` and returns
/// the keys of every entry in order, and the number of pages.
async fn walk_admin_pages(
    gateway: &GatewayProcess,
    mock_path: &str,
    query: &str,
    limit: usize,
) -> (Vec<Key>, usize) {
    let mut keys = Vec::new();
    let mut before = None;
    for page in 0.. {
        assert!(page < 100, "{query}: no last page after 100 pages");
        if page > 0 {
            let reply = get(&format!("{}{mock_path}/new-{page}", gateway.url)).await;
            assert_eq!(reply.status, 200, "request between pages");
        }
        let mut url = format!("{}/admin/logs?{query}&limit={limit}", gateway.url);
        if let Some(before) = &before {
            url.push_str(&format!("&before={before}"));
        }
        let reply = get(&url).await;
        assert_eq!(
            reply.status,
            200,
            "{url}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        let entries = body["entries"].as_array().expect("entries array");
        assert_eq!(body["count"], entries.len(), "{url}");
        let page_keys = entry_keys(entries);
        keys.extend_from_slice(&page_keys);

        let next = body
            .get("next")
            .unwrap_or_else(|| panic!("{url}: no next field: {body}"));
        if next.is_null() {
            assert!(!entries.is_empty(), "{url}: empty last page");
            return (keys, page + 1);
        }
        assert_eq!(
            entries.len(),
            limit,
            "{url}: a page before the last is full"
        );
        let last = *page_keys.last().expect("a full page has a last entry");
        assert_eq!(next.as_str(), Some(cursor(last).as_str()), "{url}: next");
        before = Some(cursor(last));
    }
    unreachable!("the loop returns or panics")
}

/// Asserts that no row is listed twice.
fn assert_unique(keys: &[Key], listing: &str) {
    let unique: HashSet<&Key> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "{listing}: a row is listed twice");
}

/// Asserts a 400 whose message contains each of `parts`.
fn assert_rejected(reply: &Reply, parts: &[&str], request: &str) {
    assert_eq!(reply.status, 400, "{request}");
    let message = reply.json()["error"].as_str().unwrap_or("").to_owned();
    for part in parts {
        assert!(
            message.contains(part),
            "{request}: `{part}` missing from {message}"
        );
    }
}

fn run_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(binary("apigateway"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run apigateway")
}

/// Walks `apigateway logs` pages with `--limit {limit}`, following the `--before` value that
/// each text page prints, and returns the keys of the `--json` output of the same pages.
fn walk_cli_pages(dir: &Path, database: &str, limit: usize) -> (Vec<Key>, usize) {
    let limit_arg = limit.to_string();
    let mut keys = Vec::new();
    let mut before: Option<String> = None;
    for page in 0.. {
        assert!(page < 100, "logs: no last page after 100 pages");
        let mut args = vec![
            "logs",
            "--database",
            database,
            "--route",
            USERS_ROUTE,
            "--limit",
            &limit_arg,
        ];
        if let Some(before) = &before {
            args.extend(["--before", before]);
        }

        let output = run_cli(dir, &[&args[..], &["--json"]].concat());
        assert!(output.status.success(), "logs {args:?} --json failed");
        let entries: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON array");
        let page_keys = entry_keys(&entries);
        keys.extend_from_slice(&page_keys);

        let output = run_cli(dir, &args);
        assert!(output.status.success(), "logs {args:?} failed");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let hint = text
            .lines()
            .find_map(|line| line.split_once("run again with --before "))
            .map(|(_, cursor)| cursor.to_owned());
        let Some(hint) = hint else {
            assert!(!entries.is_empty(), "logs {args:?}: empty last page");
            return (keys, page + 1);
        };
        assert_eq!(
            entries.len(),
            limit,
            "logs {args:?}: a page before the last is full"
        );
        let last = *page_keys.last().expect("a full page has a last entry");
        assert_eq!(hint, cursor(last), "logs {args:?}: printed cursor");
        before = Some(hint);
    }
    unreachable!("the loop returns or panics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_list_every_row_once() {
    let users = MockProcess::start("Users");
    let gateway = start_gateway(&users.url);
    let database = gateway.dir().join("gateway.db");

    for i in 0..TRAFFIC {
        let reply = get(&format!("{}/api/users/{i}", gateway.url)).await;
        assert_eq!(reply.status, 200, "request {i}");
    }
    wait_for_route_rows(&database, TRAFFIC).await;
    let traffic = route_keys(&database, 0, 1000).await;
    let newest_us = traffic.first().expect("traffic rows").0;
    let oldest_us = traffic.last().expect("traffic rows").0;
    insert_tied_rows(&database, oldest_us, newest_us).await;
    let mut route_rows = TRAFFIC + INSERTED;

    let expected = route_keys(&database, 0, 1000).await;
    assert_eq!(expected.len(), route_rows);
    let tied = expected
        .windows(2)
        .filter(|pair| pair[0].0 == pair[1].0)
        .count();
    assert!(
        tied >= INSERTED / 3 * 2,
        "only {tied} rows share a microsecond"
    );
    let ids_ascending = expected
        .windows(2)
        .filter(|pair| pair[0].1 < pair[1].1)
        .count();
    assert!(ids_ascending > 0, "id order matches time order");

    // 40 splits groups of rows that share a microsecond. The requests sent between pages are
    // newer than every cursor, so they stay out of the walk.
    let query = format!("route={USERS_ROUTE}");
    let (walked, pages) = walk_admin_pages(&gateway, "/api/users", &query, 40).await;
    assert_eq!(pages, expected.len().div_ceil(40));
    assert_unique(&walked, &query);
    assert_eq!(walked, expected, "{query}");
    route_rows += pages - 1;

    // The other filters apply to every page. The 503 rows are only the inserted ones, so 19
    // ends the second page on the oldest of them, and that page is the last.
    let errors = route_keys(&database, 500, 600).await;
    assert_eq!(errors.len(), INSERTED.div_ceil(4));
    let query = format!("route={USERS_ROUTE}&status=5xx");
    for limit in [7, 19] {
        let (walked, pages) = walk_admin_pages(&gateway, "/api/users", &query, limit).await;
        assert_eq!(pages, errors.len().div_ceil(limit), "{query} by {limit}");
        assert_unique(&walked, &query);
        assert_eq!(walked, errors, "{query} by {limit}");
        route_rows += pages - 1;
    }

    wait_for_route_rows(&database, route_rows).await;
    let since = oldest_us + (newest_us - oldest_us) / 2;
    let since_time = std::time::UNIX_EPOCH + Duration::from_micros(since as u64);
    let since_text = humantime::format_rfc3339_micros(since_time).to_string();
    let recent: Vec<Key> = route_keys(&database, 0, 1000)
        .await
        .into_iter()
        .filter(|(ts_us, _)| *ts_us >= since)
        .collect();
    let query = format!("route={USERS_ROUTE}&since={since_text}");
    let (walked, pages) = walk_admin_pages(&gateway, "/api/users", &query, 9).await;
    assert_eq!(walked, recent, "{query}");
    route_rows += pages - 1;

    // The command line pages the same rows, with the gateway still running.
    wait_for_route_rows(&database, route_rows).await;
    let expected = route_keys(&database, 0, 1000).await;
    assert_eq!(expected.len(), route_rows);
    let database_arg = database.display().to_string();
    let (walked, pages) = walk_cli_pages(gateway.dir(), &database_arg, 50);
    assert_eq!(pages, expected.len().div_ceil(50));
    assert_unique(&walked, "logs --before");
    assert_eq!(walked, expected, "logs --before");
}

#[tokio::test]
async fn invalid_before_is_rejected() {
    let users = MockProcess::start("Users");
    let gateway = start_gateway(&users.url);

    for before in [
        "abc",
        "42",
        "1700000000000000.",
        "1.2.3",
        "%2B1.2",
        "1.2%20",
    ] {
        let query = format!("before={before}");
        let reply = get(&format!("{}/admin/logs?{query}", gateway.url)).await;
        let parts = ["before: invalid cursor", "<ts_us>.<id>", "`next`"];
        assert_rejected(&reply, &parts, &query);
    }
    let reply = get(&format!("{}/admin/logs?before=1.2&before=1.2", gateway.url)).await;
    assert_rejected(&reply, &["\"before\" is repeated"], "repeated before");
    let reply = get(&format!("{}/admin/logs?after=1.2", gateway.url)).await;
    assert_rejected(&reply, &["\"after\"", "since or before"], "after=1.2");

    let database = gateway.dir().join("gateway.db").display().to_string();
    let output = run_cli(
        gateway.dir(),
        &["logs", "--database", &database, "--before", "1.x"],
    );
    assert_eq!(output.status.code(), Some(2), "logs --before 1.x");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid cursor `1.x`"), "{stderr}");
    assert!(stderr.contains("<ts_us>.<id>"), "{stderr}");
}
