//! The SQLite request log end to end, with the real gateway and mock backends. The gateway
//! writes one row per request, keeps committed rows through `kill -9` and counts the rows it
//! drops. The rows are served through `/admin/logs`, `/admin/stats` and the `logs` and `stats`
//! commands, and a database that cannot be opened stops the gateway at start.

use bytes::Bytes;
use gateway_tests::{
    GatewayProcess, MockProcess, Reply, binary, free_port, get, log_config, request, route_yaml,
};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

const USERS_ROUTE: &str = "/api/users/*filepath";
const ORDERS_ROUTE: &str = "/api/orders/*filepath";

// --- A kept-alive client -------------------------------------------------------------------------

/// One request of a test's plan.
#[derive(Debug, Clone)]
struct Planned {
    method: Method,
    /// Path and query, such as `/api/users/7?i=7`.
    target: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Planned {
    fn get(target: String) -> Planned {
        Planned {
            method: Method::GET,
            target,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    fn header(mut self, name: &str, value: String) -> Planned {
        self.headers.push((name.to_owned(), value));
        self
    }
}

/// One HTTP/1.1 connection that stays open and carries requests one after another.
struct KeepAlive {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> Result<KeepAlive, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|error| format!("connect to {addr}: {error}"))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| format!("handshake with {addr}: {error}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(KeepAlive {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends `planned` and reads the whole response.
    async fn send(&mut self, planned: &Planned) -> Result<Reply, String> {
        self.sender
            .ready()
            .await
            .map_err(|error| format!("connection closed: {error}"))?;
        let mut builder = Request::builder()
            .method(planned.method.clone())
            .uri(planned.target.as_str())
            .header("host", self.host.as_str());
        for (name, value) in &planned.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder
            .body(Full::new(planned.body.clone()))
            .expect("valid test request");
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|error| format!("{} {}: {error}", planned.method, planned.target))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| format!("body of {}: {error}", planned.target))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// Sends every plan over `connections` kept-alive connections (plan `i` on connection
/// `i % connections`, in order) and returns the replies in plan order.
///
/// # Errors
///
/// Returns the first failed exchange, or a timeout when the whole run takes longer than
/// `limit`.
async fn send_all(
    addr: SocketAddr,
    plans: &[Planned],
    connections: usize,
    limit: Duration,
) -> Result<Vec<Reply>, String> {
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let mine: Vec<(usize, Planned)> = plans
            .iter()
            .enumerate()
            .skip(connection)
            .step_by(connections)
            .map(|(index, plan)| (index, plan.clone()))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut client = KeepAlive::open(addr).await?;
            let mut replies = Vec::with_capacity(mine.len());
            for (index, plan) in mine {
                replies.push((index, client.send(&plan).await?));
            }
            Ok::<_, String>(replies)
        }));
    }

    let joined = tokio::time::timeout(limit, async {
        let mut all = Vec::new();
        for task in tasks {
            all.push(task.await.expect("client task"));
        }
        all
    })
    .await
    .map_err(|_| format!("{} requests took longer than {limit:?}", plans.len()))?;

    let mut replies: Vec<Option<Reply>> = (0..plans.len()).map(|_| None).collect();
    for result in joined {
        for (index, reply) in result? {
            replies[index] = Some(reply);
        }
    }
    Ok(replies
        .into_iter()
        .map(|reply| reply.expect("every plan has a reply"))
        .collect())
}

/// Unwraps the replies of [`send_all`], or panics with the error, the gateway's exit status
/// and its output, so that a failed exchange shows whether the gateway was still running.
fn expect_replies(result: Result<Vec<Reply>, String>, gateway: &mut GatewayProcess) -> Vec<Reply> {
    result.unwrap_or_else(|error| {
        let status = gateway.wait_exit(Duration::from_millis(100));
        panic!(
            "{error}\ngateway on {} exited: {status:?}; its output:\n{}",
            gateway.addr,
            gateway.lines().join("\n")
        )
    })
}

// --- Reading the database ------------------------------------------------------------------------

/// One row of the `requests` table.
#[derive(Debug, Clone)]
struct LoggedRow {
    id: i64,
    ts_us: i64,
    request_id: String,
    method: String,
    path: String,
    query: Option<String>,
    route: Option<String>,
    status: i64,
    latency_us: i64,
    client_ip: Option<String>,
    user_agent: Option<String>,
    backend: Option<String>,
    bytes_received: i64,
    bytes_sent: i64,
    error_kind: Option<String>,
    retried: bool,
}

/// Opens an existing database for reading and writing, as a restarted gateway would, so that
/// SQLite recovers the write-ahead log of a killed writer.
async fn open_database(path: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(5));
    SqliteConnection::connect_with(&options)
        .await
        .unwrap_or_else(|error| panic!("open {}: {error}", path.display()))
}

async fn read_rows(path: &Path) -> Vec<LoggedRow> {
    let mut connection = open_database(path).await;
    let rows = sqlx::query(
        "SELECT id, ts_us, request_id, method, path, query, route, status, latency_us, \
         client_ip, user_agent, backend, bytes_received, bytes_sent, error_kind, retried \
         FROM requests ORDER BY id",
    )
    .fetch_all(&mut connection)
    .await
    .expect("select rows");
    connection.close().await.expect("close database");
    rows.iter()
        .map(|row| LoggedRow {
            id: row.get("id"),
            ts_us: row.get("ts_us"),
            request_id: row.get("request_id"),
            method: row.get("method"),
            path: row.get("path"),
            query: row.get("query"),
            route: row.get("route"),
            status: row.get("status"),
            latency_us: row.get("latency_us"),
            client_ip: row.get("client_ip"),
            user_agent: row.get("user_agent"),
            backend: row.get("backend"),
            bytes_received: row.get("bytes_received"),
            bytes_sent: row.get("bytes_sent"),
            error_kind: row.get("error_kind"),
            retried: row.get("retried"),
        })
        .collect()
}

async fn count_rows(path: &Path) -> i64 {
    let mut connection = open_database(path).await;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests")
        .fetch_one(&mut connection)
        .await
        .expect("count rows");
    connection.close().await.expect("close database");
    count
}

async fn integrity_check(path: &Path) -> String {
    let mut connection = open_database(path).await;
    let result: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut connection)
        .await
        .expect("run integrity_check");
    connection.close().await.expect("close database");
    result
}

// --- The gateway's own output --------------------------------------------------------------------

/// The counts of the gateway's last line, `request log closed written=N dropped=M failed=F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClosedCounts {
    written: u64,
    dropped: u64,
    failed: u64,
}

fn log_field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace().find_map(|word| {
        let value = word.strip_prefix(name)?.strip_prefix('=')?;
        value.parse().ok()
    })
}

/// Sends SIGTERM, waits for exit status 0 and returns the counts of the closing line.
fn stop_cleanly(gateway: &mut GatewayProcess) -> ClosedCounts {
    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(30))
        .expect("gateway exits within 30 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let line = gateway
        .wait_for_line(&["request log closed"], Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "no `request log closed` line; output:\n{}",
                gateway.lines().join("\n")
            )
        });
    let field = |name| {
        log_field(&line, name).unwrap_or_else(|| panic!("no {name}= in closing line: {line}"))
    };
    ClosedCounts {
        written: field("written"),
        dropped: field("dropped"),
        failed: field("failed"),
    }
}

fn now_us() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since_epoch.as_micros()).expect("time fits i64")
}

// --- One row per request -------------------------------------------------------------------------

/// Builds the plan of request `i`: every tenth goes to an unrouted path, every tenth (offset by 7)
/// is a POST with a body, the rest are GETs. Every thirteenth brings its own request id.
fn mixed_plan(i: usize) -> Planned {
    let mut plan = if i % 10 == 3 {
        Planned::get(format!("/missing/{i}?i={i}"))
    } else if i % 10 == 7 {
        Planned {
            method: Method::POST,
            target: format!("/api/users/{i}?i={i}"),
            headers: vec![("content-type".to_owned(), "text/plain".to_owned())],
            body: Bytes::from("b".repeat(1 + i % 50)),
        }
    } else {
        Planned::get(format!("/api/users/{i}?i={i}"))
    };
    plan = plan.header("user-agent", format!("request-log-test/{i}"));
    if i.is_multiple_of(13) {
        plan = plan.header("x-request-id", format!("client-id-{i}"));
    }
    plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_row() {
    const REQUESTS: usize = 10_000;
    let mock = MockProcess::start("Users");
    let mut gateway = GatewayProcess::start(&log_config(
        "  database: \"{dir}/gateway.db\"",
        &route_yaml(USERS_ROUTE, &mock.url),
    ));

    let plans: Vec<Planned> = (0..REQUESTS).map(mixed_plan).collect();
    let start_us = now_us();
    let sent = send_all(gateway.addr, &plans, 8, Duration::from_secs(300)).await;
    let replies = expect_replies(sent, &mut gateway);
    let end_us = now_us();
    for (i, reply) in replies.iter().enumerate() {
        let expected = if i % 10 == 3 { 404 } else { 200 };
        assert_eq!(reply.status, expected, "status of {}", plans[i].target);
    }

    let closed = stop_cleanly(&mut gateway);
    assert_eq!(closed.written, REQUESTS as u64, "written on close");
    assert_eq!(closed.dropped, 0, "dropped on close");
    assert_eq!(closed.failed, 0, "failed on close");

    let rows = read_rows(&gateway.dir().join("gateway.db")).await;
    assert_eq!(rows.len(), REQUESTS, "rows in the database");
    let by_id: HashMap<&str, &LoggedRow> = rows
        .iter()
        .map(|row| (row.request_id.as_str(), row))
        .collect();
    assert_eq!(
        by_id.len(),
        REQUESTS,
        "distinct request ids in the database"
    );

    for (i, (plan, reply)) in plans.iter().zip(&replies).enumerate() {
        let request_id = reply.header("x-request-id");
        assert!(!request_id.is_empty(), "no X-Request-Id on reply {i}");
        if i.is_multiple_of(13) {
            assert_eq!(request_id, format!("client-id-{i}"), "client id kept");
        }
        let row = by_id
            .get(request_id)
            .unwrap_or_else(|| panic!("no row for request {i} with id {request_id}"));
        let unrouted = i % 10 == 3;
        let (path, query) = plan.target.split_once('?').expect("target has a query");

        assert_eq!(row.method, plan.method.as_str(), "method of request {i}");
        assert_eq!(row.path, path, "path of request {i}");
        assert_eq!(row.query.as_deref(), Some(query), "query of request {i}");
        assert_eq!(i64::from(reply.status.as_u16()), row.status, "status {i}");
        assert_eq!(row.client_ip.as_deref(), Some("127.0.0.1"), "client ip {i}");
        let user_agent = format!("request-log-test/{i}");
        assert_eq!(row.user_agent.as_deref(), Some(user_agent.as_str()));
        assert!(row.latency_us > 0, "latency_us of request {i}: {row:?}");
        assert!(
            (start_us..=end_us).contains(&row.ts_us),
            "ts_us of request {i} outside the run: {row:?}"
        );
        assert_eq!(
            row.bytes_received,
            plan.body.len() as i64,
            "bytes_received {i}"
        );
        assert_eq!(row.bytes_sent, reply.body.len() as i64, "bytes_sent {i}");
        assert!(!row.retried, "retried {i}");
        if unrouted {
            assert_eq!(row.route, None, "route of unrouted request {i}");
            assert_eq!(row.backend, None, "backend of unrouted request {i}");
            assert_eq!(row.error_kind.as_deref(), Some("no_route"), "error {i}");
        } else {
            assert_eq!(row.route.as_deref(), Some(USERS_ROUTE), "route {i}");
            assert_eq!(
                row.backend.as_deref(),
                Some(mock.url.as_str()),
                "backend {i}"
            );
            assert_eq!(row.error_kind, None, "error_kind of request {i}");
        }
    }

    assert!(
        rows.windows(2).all(|pair| pair[0].id < pair[1].id),
        "row ids increase"
    );
}

// --- Crash safety --------------------------------------------------------------------------------

/// Sends GETs on one kept-alive connection until `stop` is set, the connection fails, `limit`
/// requests were sent or 20 seconds passed, and returns the request ids of the 200 replies in
/// the order they were received.
async fn load_until_stopped(addr: SocketAddr, stop: Arc<AtomicBool>, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let Ok(mut client) = KeepAlive::open(addr).await else {
        return seen;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..limit {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        let plan = Planned::get(format!("/api/users/{i}"));
        match client.send(&plan).await {
            Ok(reply) if reply.status == 200 => {
                seen.push(reply.header("x-request-id").to_owned());
            }
            Ok(reply) => panic!("status {} during load", reply.status),
            Err(_) => break,
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_keeps_committed_rows() {
    let mock = MockProcess::start("Users");
    let mut gateway = GatewayProcess::start(&log_config(
        "  database: \"{dir}/gateway.db\"\n  flush_interval: 100ms",
        &route_yaml(USERS_ROUTE, &mock.url),
    ));
    let database = gateway.dir().join("gateway.db");

    // Rows that another connection has seen committed must survive the kill.
    let early: Vec<Planned> = (0..200)
        .map(|i| Planned::get(format!("/api/users/early-{i}")))
        .collect();
    let sent = send_all(gateway.addr, &early, 4, Duration::from_secs(60)).await;
    let early_replies = expect_replies(sent, &mut gateway);
    let early_ids: Vec<String> = early_replies
        .iter()
        .map(|reply| reply.header("x-request-id").to_owned())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_rows(&database).await < early_ids.len() as i64 {
        assert!(
            Instant::now() < deadline,
            "the first 200 rows were not committed within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Load on 4 connections, then SIGKILL about a second in.
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..4)
        .map(|_| tokio::spawn(load_until_stopped(gateway.addr, Arc::clone(&stop), 20_000)))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    gateway.signal("KILL");
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits after SIGKILL");
    assert!(!status.success(), "exit status after SIGKILL: {status}");
    stop.store(true, Ordering::Relaxed);
    let mut per_connection = Vec::new();
    for load in loads {
        per_connection.push(load.await.expect("load task"));
    }
    let served_during_load: usize = per_connection.iter().map(Vec::len).sum();
    assert!(
        served_during_load > 0,
        "no request succeeded during the load"
    );

    assert_eq!(integrity_check(&database).await, "ok", "integrity_check");
    let rows = read_rows(&database).await;
    let served: HashSet<&str> = early_ids
        .iter()
        .chain(per_connection.iter().flatten())
        .map(String::as_str)
        .collect();
    assert!(!rows.is_empty(), "no rows after the kill");
    assert!(
        rows.len() <= served.len(),
        "{} rows but only {} requests served",
        rows.len(),
        served.len()
    );
    for row in &rows {
        assert!(
            served.contains(row.request_id.as_str()),
            "row for a request the client never saw succeed: {row:?}"
        );
    }
    let logged: HashSet<&str> = rows.iter().map(|row| row.request_id.as_str()).collect();
    eprintln!(
        "after SIGKILL: {} rows of {} requests served ({} before the load)",
        rows.len(),
        served.len(),
        early_ids.len()
    );
    for id in &early_ids {
        assert!(logged.contains(id.as_str()), "committed row {id} lost");
    }

    // A connection sends its next request only after the previous response, whose row was
    // queued before, so each connection's rows are a prefix of what it was served.
    for (connection, ids) in per_connection.iter().enumerate() {
        let kept = ids.iter().filter(|id| logged.contains(id.as_str())).count();
        for (position, id) in ids.iter().enumerate() {
            assert_eq!(
                logged.contains(id.as_str()),
                position < kept,
                "connection {connection}: rows are not a prefix of its {} replies \
                 ({kept} kept, reply {position} differs)",
                ids.len()
            );
        }
    }

    // A gateway started on the recovered file appends to it.
    let rows_before = rows.len() as i64;
    let mut restarted = GatewayProcess::start(&log_config(
        &format!("  database: \"{}\"", database.display()),
        &route_yaml(USERS_ROUTE, &mock.url),
    ));
    let after: Vec<Planned> = (0..20)
        .map(|i| Planned::get(format!("/api/users/after-{i}")))
        .collect();
    let sent = send_all(restarted.addr, &after, 2, Duration::from_secs(30)).await;
    expect_replies(sent, &mut restarted);
    let closed = stop_cleanly(&mut restarted);
    assert_eq!(closed.written, 20, "rows written by the restarted gateway");
    assert_eq!(count_rows(&database).await, rows_before + 20);
    assert_eq!(
        integrity_check(&database).await,
        "ok",
        "integrity after restart"
    );
}

// --- Queue overflow ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_and_counts_rows() {
    const REQUESTS: usize = 2_000;
    const CONNECTIONS: usize = 50;
    let mock = MockProcess::start("Users");
    let mut gateway = GatewayProcess::start(&log_config(
        "  database: \"{dir}/gateway.db\"\n  queue_capacity: 1\n  batch_size: 1\n  \
         flush_interval: 10ms",
        &route_yaml(USERS_ROUTE, &mock.url),
    ));
    let database = gateway.dir().join("gateway.db");

    // Holding SQLite's write lock stalls the writer inside its busy timeout (5 s), so that
    // the queue of one fills and the burst must overflow it. The lock is released after 3 s
    // at most, before a stalled batch would fail.
    let mut lock = open_database(&database).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .expect("take the write lock");

    let plans: Vec<Planned> = (0..REQUESTS)
        .map(|i| Planned::get(format!("/api/users/{i}")))
        .collect();
    let addr = gateway.addr;
    let burst =
        tokio::spawn(
            async move { send_all(addr, &plans, CONNECTIONS, Duration::from_secs(120)).await },
        );
    let lock_released_at = Instant::now() + Duration::from_secs(3);
    while !burst.is_finished() && Instant::now() < lock_released_at {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sqlx::query("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("release the write lock");
    lock.close().await.expect("close the locking connection");

    let replies = expect_replies(burst.await.expect("burst task"), &mut gateway);
    let ok = replies.iter().filter(|reply| reply.status == 200).count();
    assert_eq!(
        ok, REQUESTS,
        "requests answered 200 while the log was stalled"
    );

    let stats = get(&format!("{}/admin/stats", gateway.url)).await;
    assert_eq!(stats.status, 200, "GET /admin/stats");
    let dropped_before_stop = stats.json()["request_log"]["dropped"]
        .as_u64()
        .expect("request_log.dropped in /admin/stats");
    assert!(
        dropped_before_stop > 0,
        "no row dropped with a stalled writer and a queue of one"
    );

    let closed = stop_cleanly(&mut gateway);
    eprintln!("after the burst: {closed:?}, {dropped_before_stop} dropped before the stop");
    // The /admin/stats request is served and recorded like the burst.
    let served = REQUESTS as u64 + 1;
    assert_eq!(closed.failed, 0, "failed batches");
    assert!(closed.dropped >= dropped_before_stop, "{closed:?}");
    assert_eq!(
        closed.written + closed.dropped,
        served,
        "written + dropped == served: {closed:?}"
    );
    let rows = count_rows(&database).await;
    assert_eq!(rows as u64, closed.written, "rows in the database");
    assert!(
        gateway
            .lines()
            .iter()
            .any(|line| line.contains("request log records dropped")),
        "no warning about dropped records"
    );
    let lines = gateway.lines();
    let closing = lines
        .iter()
        .find(|line| line.contains("request log closed"))
        .expect("closing line");
    assert!(
        closing.contains("WARN"),
        "a closing line with dropped rows is a warning: {closing}"
    );
}

// --- Readers -------------------------------------------------------------------------------------

/// Rows of a listing that are not requests to the admin endpoints themselves, which the
/// gateway records too.
fn traffic_entries(body: &Value) -> Vec<Value> {
    body.as_array()
        .or_else(|| body["entries"].as_array())
        .unwrap_or_else(|| panic!("no entries in {body}"))
        .iter()
        .filter(|entry| !entry["path"].as_str().unwrap_or("").starts_with("/admin"))
        .cloned()
        .collect()
}

async fn admin_logs(gateway: &GatewayProcess, query: &str) -> Value {
    let reply = get(&format!("{}/admin/logs?{query}", gateway.url)).await;
    assert_eq!(
        reply.status,
        200,
        "/admin/logs?{query}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    let entries = body["entries"].as_array().expect("entries array");
    assert_eq!(body["count"], entries.len(), "count of /admin/logs?{query}");
    assert_newest_first(entries, query);
    body
}

fn assert_newest_first(entries: &[Value], what: &str) {
    let keys: Vec<(i64, i64)> = entries
        .iter()
        .map(|entry| {
            (
                entry["ts_us"].as_i64().expect("ts_us"),
                entry["id"].as_i64().expect("id"),
            )
        })
        .collect();
    assert!(
        keys.windows(2).all(|pair| pair[0] > pair[1]),
        "{what}: entries not newest first: {keys:?}"
    );
}

fn request_ids(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|entry| entry["request_id"].as_str().expect("request_id").to_owned())
        .collect()
}

/// Finds the summary of the group whose `key` field is `name` (`None` for the null group).
fn group<'a>(groups: &'a Value, key: &str, name: Option<&str>) -> &'a Value {
    groups
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {groups}"))
        .iter()
        .find(|entry| entry[key].as_str() == name)
        .unwrap_or_else(|| panic!("no {key} {name:?} in {groups}"))
}

fn assert_percentiles_ordered(summary: &Value) {
    let p50 = summary["latency_p50_us"].as_u64().expect("p50");
    let p95 = summary["latency_p95_us"].as_u64().expect("p95");
    let p99 = summary["latency_p99_us"].as_u64().expect("p99");
    assert!(p50 > 0, "p50 is 0: {summary}");
    assert!(p50 <= p95, "p50 > p95: {summary}");
    assert!(p95 <= p99, "p95 > p99: {summary}");
}

/// Runs `apigateway ARGS` in `dir` and returns its output.
fn run_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(binary("apigateway"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run apigateway")
}

fn cli_json(dir: &Path, args: &[&str]) -> Value {
    let output = run_cli(dir, args);
    assert!(
        output.status.success(),
        "apigateway {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "apigateway {args:?} printed no JSON ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn assert_rejected(reply: &Reply, parameter: &str, what: &str) {
    assert_eq!(reply.status, 400, "{what}");
    let message = reply.json()["error"].as_str().unwrap_or("").to_owned();
    assert!(
        message.contains(parameter),
        "{what}: message does not name `{parameter}`: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_agree_with_traffic() {
    let users = MockProcess::start("Users");
    let orders = MockProcess::start("Orders");
    let routes = route_yaml(USERS_ROUTE, &users.url) + &route_yaml(ORDERS_ROUTE, &orders.url);
    let mut gateway = GatewayProcess::start(&log_config(
        "  database: \"{dir}/gateway.db\"\n  flush_interval: 50ms",
        &routes,
    ));
    let database = gateway.dir().join("gateway.db");
    let database_arg = database.display().to_string();

    // Two phases split by a timestamp, for the `since` filter.
    let mut first = Vec::new();
    first.extend((0..20).map(|i| Planned::get(format!("/api/users/{i}"))));
    first.extend((0..3).map(|i| Planned::get(format!("/api/users/e{i}?status=503"))));
    first.extend((0..6).map(|i| Planned::get(format!("/api/orders/{i}"))));
    first.extend((0..4).map(|i| Planned::get(format!("/nowhere/{i}"))));
    let mut second = Vec::new();
    second.extend((0..10).map(|i| Planned::get(format!("/api/users/late{i}"))));
    second.extend((0..4).map(|i| Planned::get(format!("/api/orders/e{i}?status=500"))));
    second.extend((0..3).map(|i| Planned::get(format!("/nowhere/late{i}"))));
    second.extend((0..2).map(|i| Planned {
        method: Method::POST,
        target: format!("/api/orders/new{i}"),
        headers: Vec::new(),
        body: Bytes::from_static(b"{\"item\":1}"),
    }));
    const TRAFFIC: usize = 52;

    let limit = Duration::from_secs(30);
    let sent = send_all(gateway.addr, &first, 1, limit).await;
    expect_replies(sent, &mut gateway);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let split = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let sent = send_all(gateway.addr, &second, 1, limit).await;
    let second_replies = expect_replies(sent, &mut gateway);
    let second_ids: HashSet<String> = second_replies
        .iter()
        .map(|reply| reply.header("x-request-id").to_owned())
        .collect();

    // Wait until the writer committed every row of the traffic.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = admin_logs(&gateway, "limit=10000").await;
        if traffic_entries(&body).len() == TRAFFIC {
            break;
        }
        assert!(Instant::now() < deadline, "rows not committed: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Filters of /admin/logs.
    let body = admin_logs(&gateway, "limit=5").await;
    assert_eq!(body["count"], 5, "limit=5");

    let body = admin_logs(&gateway, "status=404").await;
    let entries = traffic_entries(&body);
    assert_eq!(body["count"], 7, "status=404: {body}");
    for entry in &entries {
        assert_eq!(entry["status"], 404);
        assert_eq!(entry["route"], Value::Null);
        assert_eq!(entry["backend"], Value::Null);
        assert_eq!(entry["error_kind"], "no_route");
    }
    let body = admin_logs(&gateway, "status=4xx").await;
    assert_eq!(body["count"], 7, "status=4xx: {body}");
    let body = admin_logs(&gateway, "status=5xx").await;
    assert_eq!(body["count"], 7, "status=5xx: {body}");
    let body = admin_logs(&gateway, "status=503").await;
    assert_eq!(body["count"], 3, "status=503: {body}");

    let body = admin_logs(&gateway, &format!("route={ORDERS_ROUTE}")).await;
    assert_eq!(body["count"], 12, "route={ORDERS_ROUTE}: {body}");
    let all_orders = request_ids(body["entries"].as_array().expect("entries"));
    for entry in body["entries"].as_array().expect("entries") {
        assert_eq!(entry["route"], ORDERS_ROUTE);
        assert_eq!(entry["backend"], orders.url.as_str());
    }
    let body = admin_logs(&gateway, &format!("route={ORDERS_ROUTE}&limit=3")).await;
    let newest_orders = request_ids(body["entries"].as_array().expect("entries"));
    assert_eq!(newest_orders, all_orders[..3], "limit=3 keeps the newest");

    let since = humantime::format_rfc3339_micros(split).to_string();
    let body = admin_logs(&gateway, &format!("since={since}&limit=10000")).await;
    let late: HashSet<String> = request_ids(&traffic_entries(&body)).into_iter().collect();
    assert_eq!(late, second_ids, "since={since}");
    let body = admin_logs(
        &gateway,
        &format!("since={since}&route={USERS_ROUTE}&status=2xx"),
    )
    .await;
    assert_eq!(
        body["count"], 10,
        "since, route and status together: {body}"
    );
    let body = admin_logs(&gateway, "since=1h&limit=10000").await;
    assert_eq!(traffic_entries(&body).len(), TRAFFIC, "since=1h");

    // /admin/stats over the last five minutes.
    let reply = get(&format!("{}/admin/stats?window=5m", gateway.url)).await;
    assert_eq!(reply.status, 200, "/admin/stats?window=5m");
    let body = reply.json();
    assert_eq!(body["window"], "5m");
    assert_eq!(body["request_log"]["dropped"], 0, "dropped: {body}");
    assert_eq!(body["request_log"]["failed"], 0, "failed: {body}");
    let stats = &body["stats"];
    let users_route = group(&stats["routes"], "route", Some(USERS_ROUTE));
    assert_eq!(users_route["requests"], 33, "{users_route}");
    assert_eq!(users_route["errors_4xx"], 0, "{users_route}");
    assert_eq!(users_route["errors_5xx"], 3, "{users_route}");
    let orders_route = group(&stats["routes"], "route", Some(ORDERS_ROUTE));
    assert_eq!(orders_route["requests"], 12, "{orders_route}");
    assert_eq!(orders_route["errors_4xx"], 0, "{orders_route}");
    assert_eq!(orders_route["errors_5xx"], 4, "{orders_route}");
    let no_route = group(&stats["routes"], "route", None);
    assert_eq!(no_route["errors_4xx"], 7, "{no_route}");
    assert_eq!(no_route["errors_5xx"], 0, "{no_route}");
    let users_backend = group(&stats["backends"], "backend", Some(users.url.as_str()));
    assert_eq!(users_backend["requests"], 33, "{users_backend}");
    assert_eq!(users_backend["errors_5xx"], 3, "{users_backend}");
    let orders_backend = group(&stats["backends"], "backend", Some(orders.url.as_str()));
    assert_eq!(orders_backend["requests"], 12, "{orders_backend}");
    assert_eq!(orders_backend["errors_5xx"], 4, "{orders_backend}");
    let no_backend = group(&stats["backends"], "backend", None);
    assert_eq!(no_backend["errors_4xx"], 7, "{no_backend}");
    assert_eq!(stats["total"]["errors_4xx"], 7, "{}", stats["total"]);
    assert_eq!(stats["total"]["errors_5xx"], 7, "{}", stats["total"]);
    let total = stats["total"]["requests"].as_u64().expect("total requests");
    assert!(total >= TRAFFIC as u64, "total {total} below the traffic");
    for summary in [
        users_route,
        orders_route,
        no_route,
        users_backend,
        orders_backend,
        no_backend,
        &stats["total"],
    ] {
        assert_percentiles_ordered(summary);
    }
    let admin_users_route = users_route.clone();
    let admin_orders_route = orders_route.clone();

    // Rejected requests are recorded with status 400, so they come after the counts above.
    for (query, parameter) in [
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("limit=10001", "limit"),
        ("status=6xx", "status"),
        ("status=ok", "status"),
        ("since=yesterday", "since"),
        (
            "since=0s",
            "invalid since \"0s\": it must be longer than zero",
        ),
        ("since=2025-01-31T12:00:00+01:00", "%2B"),
        ("colour=red", "colour"),
    ] {
        let reply = get(&format!("{}/admin/logs?{query}", gateway.url)).await;
        assert_rejected(&reply, parameter, &format!("/admin/logs?{query}"));
    }

    let reply = get(&format!("{}/admin/stats?window=soon", gateway.url)).await;
    assert_rejected(&reply, "window", "/admin/stats?window=soon");
    let reply = get(&format!("{}/admin/stats?window=0s", gateway.url)).await;
    let zero_window = "invalid window \"0s\": it must be longer than zero";
    assert_rejected(&reply, zero_window, "/admin/stats?window=0s");
    let reply = get(&format!("{}/admin/stats?limit=5", gateway.url)).await;
    assert_rejected(&reply, "limit", "/admin/stats?limit=5");

    // The command line, on the file the stopped gateway left.
    let closed = stop_cleanly(&mut gateway);
    assert_eq!(closed.dropped, 0, "{closed:?}");
    let rows = read_rows(&database).await;
    assert_eq!(rows.len() as u64, closed.written, "rows against written");
    let dir = gateway.dir();
    let db = database_arg.as_str();

    let logs = cli_json(
        dir,
        &["logs", "--database", db, "--json", "--status", "404"],
    );
    let entries = logs.as_array().expect("logs --json prints an array");
    assert_eq!(entries.len(), 7, "logs --status 404");
    assert!(entries.iter().all(|entry| entry["status"] == 404));
    assert_newest_first(entries, "logs --status 404");
    // The text form ends a row with its error kind when it has one.
    let no_route = entries
        .iter()
        .filter(|entry| entry["error_kind"] == "no_route")
        .count();
    assert!(no_route > 0, "no 404 of the gateway's own: {entries:?}");
    let text = run_cli(dir, &["logs", "--database", db, "--status", "404"]);
    let text = String::from_utf8_lossy(&text.stdout);
    let lines = text
        .lines()
        .filter(|line| line.ends_with(" no_route"))
        .count();
    assert_eq!(lines, no_route, "logs --status 404 text: {text}");

    let logs = cli_json(
        dir,
        &["logs", "--database", db, "--json", "--route", ORDERS_ROUTE],
    );
    let entries = logs.as_array().expect("array");
    assert_eq!(request_ids(entries), all_orders, "logs --route");
    // A request's path in place of the pattern matches no row, and the output explains why.
    let text = run_cli(dir, &["logs", "--database", db, "--route", "/orders/42"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("0 requests\n"), "{text}");
    assert!(text.contains("not a request's path"), "{text}");

    let logs = cli_json(dir, &["logs", "--database", db, "--json", "--limit", "5"]);
    let entries = logs.as_array().expect("array");
    assert_eq!(entries.len(), 5, "logs --limit 5");
    let newest: Vec<String> = rows
        .iter()
        .rev()
        .take(5)
        .map(|row| row.request_id.clone())
        .collect();
    assert_eq!(
        request_ids(entries),
        newest,
        "logs --limit 5 shows the newest"
    );

    let single = run_cli(dir, &["logs", "--database", db, "--limit", "1"]);
    let text = String::from_utf8_lossy(&single.stdout);
    assert!(single.status.success(), "logs --limit 1: {text}");
    assert!(
        text.contains("\n1 request\n"),
        "logs --limit 1 total line: {text}"
    );
    let (_, hint) = text.split_once("\n1 request\n").unwrap_or_default();
    assert!(
        hint.starts_with("older requests match: run again with --before "),
        "logs --limit 1 next page line: {text}"
    );

    let logs = cli_json(
        dir,
        &[
            "logs",
            "--database",
            db,
            "--json",
            "--since",
            "1h",
            "--limit",
            "10000",
        ],
    );
    let entries = logs.as_array().expect("array");
    assert_eq!(entries.len(), rows.len(), "logs --since 1h");
    assert_eq!(
        traffic_entries(&logs).len(),
        TRAFFIC,
        "logs --since 1h traffic"
    );

    let stats = cli_json(dir, &["stats", "--database", db, "--json"]);
    let status_count = |class: i64| rows.iter().filter(|row| row.status / 100 == class).count();
    assert_eq!(stats["total"]["requests"], rows.len(), "stats total");
    assert_eq!(stats["total"]["errors_4xx"], status_count(4), "stats 4xx");
    assert_eq!(stats["total"]["errors_5xx"], 7, "stats 5xx");
    let users_route = group(&stats["routes"], "route", Some(USERS_ROUTE));
    assert_eq!(*users_route, admin_users_route, "stats users route");
    let orders_route = group(&stats["routes"], "route", Some(ORDERS_ROUTE));
    assert_eq!(*orders_route, admin_orders_route, "stats orders route");
    let users_backend = group(&stats["backends"], "backend", Some(users.url.as_str()));
    assert_eq!(users_backend["requests"], 33, "stats users backend");
    assert_percentiles_ordered(&stats["total"]);

    // A zero duration matches no request, so `--since` rejects it as `--window` does.
    for (command, option) in [("logs", "--since"), ("stats", "--window")] {
        let output = run_cli(dir, &[command, "--database", db, option, "0s"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{command} {option} 0s: {stderr}"
        );
        let name = option.trim_start_matches('-');
        let expected = format!("invalid {name} \"0s\": it must be longer than zero");
        assert!(
            stderr.contains(&expected),
            "{command} {option} 0s: {stderr}"
        );
    }

    // A missing database is an error that names the path, and is not created.
    let missing = dir.join("missing.db");
    let missing_arg = missing.display().to_string();
    for command in ["logs", "stats"] {
        let output = run_cli(dir, &[command, "--database", &missing_arg, "--json"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command} on a missing database");
        assert!(
            stderr.contains(&missing_arg),
            "{command}: message does not name the path: {stderr}"
        );
        assert!(!missing.exists(), "{command} created {missing_arg}");
    }
}

// --- A database that cannot be opened ------------------------------------------------------------

/// Starts the gateway with `config` in `dir` and returns its output once it exits.
///
/// # Panics
///
/// Panics, after killing it, when the gateway still runs after 20 seconds.
fn run_until_exit(dir: &Path, config: &str) -> Output {
    let config_path = dir.join("gateway.yaml");
    std::fs::write(&config_path, config).expect("write config");
    let child = Command::new(binary("apigateway"))
        .arg("--config")
        .arg(&config_path)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start apigateway");
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(Duration::from_secs(20)) {
        Ok(output) => output.expect("gateway output"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("the gateway still runs 20 s after start with an unusable database");
        }
    }
}

/// Makes `dir/gateway.db` unusable as `case` names (a folder, or a file of garbage bytes),
/// runs the gateway on it and returns the database path and the gateway's output.
fn run_on_unusable_database(dir: &Path, case: &str) -> (String, Output) {
    let database = dir.join("gateway.db");
    match case {
        "folder" => std::fs::create_dir(&database).expect("create folder"),
        "garbage" => {
            let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 131 % 251) as u8).collect();
            std::fs::write(&database, garbage).expect("write garbage");
        }
        _ => panic!("unknown case {case}"),
    }
    let config = log_config(
        &format!("  database: \"{}\"", database.display()),
        &route_yaml(USERS_ROUTE, "http://127.0.0.1:9"),
    )
    .replace("{port}", &free_port().to_string());
    let output = run_until_exit(dir, &config);
    (database.display().to_string(), output)
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn unusable_database_stops_start() {
    for case in ["folder", "garbage"] {
        let dir = tempfile::tempdir().expect("temporary folder");
        let (database, output) = run_on_unusable_database(dir.path(), case);
        let text = output_text(&output);
        assert!(
            !output.status.success(),
            "{case}: gateway exited with {} on an unusable database",
            output.status
        );
        assert!(
            text.contains(&database),
            "{case}: output does not name the database path:\n{text}"
        );
        if case == "garbage" {
            let kept = std::fs::read(&database).expect("read the garbage file");
            assert_eq!(kept.len(), 4096, "the garbage file was changed");
        }
    }
}

#[test]
fn unusable_database_logs_no_listening_line() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (_, output) = run_on_unusable_database(dir.path(), "folder");
    let text = output_text(&output);
    assert!(
        !text.contains("listening"),
        "a gateway that never serves logged that it is listening:\n{text}"
    );
}

/// A database file removed while the gateway runs is reported in the stop's closing line, which
/// is a warning instead of the usual counts, even when the stop comes before the writer's
/// periodic check found the removal.
#[tokio::test]
async fn commands_reject_other_programs_databases() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let cases = [
        (
            "app.db",
            "CREATE TABLE users (id INTEGER PRIMARY KEY)",
            "is an SQLite database without the gateway's request log table",
        ),
        (
            "crawler.db",
            "CREATE TABLE requests (url TEXT, body BLOB)",
            "has a `requests` table that is not the gateway's request log",
        ),
    ];
    for (name, create, problem) in cases {
        let path = dir.path().join(name);
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut connection = SqliteConnection::connect_with(&options)
            .await
            .expect("create the database");
        sqlx::query(create)
            .execute(&mut connection)
            .await
            .expect("create the table");
        connection.close().await.expect("close the database");

        let database = path.display().to_string();
        for command in ["logs", "stats"] {
            let output = run_cli(dir.path(), &[command, "--database", &database]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let case = format!("{command} on {name}");
            assert_eq!(output.status.code(), Some(2), "{case}: {stderr}");
            assert!(stderr.contains(&database), "{case}: no path: {stderr}");
            assert!(stderr.contains(problem), "{case}: {stderr}");
            assert!(
                stderr.contains("request_log.database file with --database"),
                "{case}: no fix given: {stderr}"
            );
            assert!(!stderr.contains("no such column"), "{case}: {stderr}");
        }
    }
}

#[tokio::test]
async fn removed_database_is_reported_at_stop() {
    let mock = MockProcess::start("Users");
    let mut gateway = GatewayProcess::start(&log_config(
        "  database: \"{dir}/gateway.db\"\n  flush_interval: 50ms",
        &route_yaml(USERS_ROUTE, &mock.url),
    ));
    let database = gateway.dir().join("gateway.db");
    let reply = get(&format!("{}/api/users/before", gateway.url)).await;
    assert_eq!(reply.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while count_rows(&database).await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }
    // The writer compares the path with its file at most once a second, before a batch, and
    // once more at the stop, which comes sooner here.
    let reply = get(&format!("{}/api/users/after", gateway.url)).await;
    assert_eq!(reply.status, 200);

    gateway.signal("TERM");
    gateway
        .wait_exit(Duration::from_secs(30))
        .expect("gateway exits after SIGTERM");
    let closed = gateway.wait_for_line(&["request log closed"], Duration::from_secs(5));
    let closed = closed.expect("closing line of the request log");
    assert!(closed.contains("WARN"), "{closed}");
    assert!(closed.contains("removed or replaced"), "{closed}");
}

/// A clean stop folds the write-ahead log into the database and removes it, with the admin
/// readers' connections open until the stop.
#[tokio::test]
async fn clean_stop_removes_wal_files() {
    let mock = MockProcess::start("Users");
    let mut gateway = GatewayProcess::start(&log_config(
        "  database: \"{dir}/gateway.db\"\n  flush_interval: 50ms",
        &route_yaml(USERS_ROUTE, &mock.url),
    ));
    for i in 0..20 {
        let reply = get(&format!("{}/api/users/{i}", gateway.url)).await;
        assert_eq!(reply.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listing = admin_logs(&gateway, "limit=5").await;
    assert_eq!(traffic_entries(&listing).len(), 5);

    let closed = stop_cleanly(&mut gateway);
    let database = gateway.dir().join("gateway.db");
    for suffix in ["-wal", "-shm"] {
        let file = format!("{}{suffix}", database.display());
        assert!(!Path::new(&file).exists(), "{file} left after a clean stop");
    }
    assert_eq!(count_rows(&database).await as u64, closed.written);
}

/// `bytes_received` counts the body bytes that arrived: the sum of a chunked upload's chunks,
/// and what came of a declared length before the client left.
#[tokio::test]
async fn bytes_received_counts_arrived_bytes() {
    let mock = MockProcess::start("Users");
    let mut gateway = GatewayProcess::start(&log_config(
        "  database: \"{dir}/gateway.db\"\n  flush_interval: 50ms",
        &route_yaml(USERS_ROUTE, &mock.url),
    ));

    let mut chunked = gateway_tests::RawConnection::open(gateway.addr).expect("connect");
    let reply = chunked
        .exchange(
            b"POST /api/users/chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n",
        )
        .expect("chunked upload");
    assert_eq!(reply.status, 200);

    let mut cut = gateway_tests::RawConnection::open(gateway.addr).expect("connect");
    let mut head =
        b"POST /api/users/cut HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n".to_vec();
    head.extend(std::iter::repeat_n(b'x', 1000));
    cut.send(&head).expect("send part of the body");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The body stops short of its length: the gateway logs the request when the client leaves.
    drop(cut);
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop_cleanly(&mut gateway);
    let rows = read_rows(&gateway.dir().join("gateway.db")).await;
    let received = |path: &str| {
        rows.iter()
            .find(|row| row.path == path)
            .unwrap_or_else(|| panic!("no row for {path}: {rows:?}"))
            .bytes_received
    };
    assert_eq!(received("/api/users/chunked"), 12);
    assert_eq!(received("/api/users/cut"), 1000);
}

#[tokio::test]
async fn gateway_answers_keep_their_route() {
    let mock = MockProcess::start("Orders");
    // The route leaves out OPTIONS, but its CORS policy still responds to preflights.
    let routes = format!(
        "{}    methods: [\"GET\"]\n    rate_limiting:\n      enabled: true\n      \
         requests_per_second: 1\n      burst: 1\n",
        route_yaml(ORDERS_ROUTE, &mock.url)
    );
    let config = log_config(
        "  database: \"{dir}/gateway.db\"\n  flush_interval: 50ms",
        &routes,
    ) + "cors:\n  enabled: true\n  allowed_origins: [\"*\"]\n";
    let mut gateway = GatewayProcess::start(&config);

    let mut statuses = Vec::new();
    for i in 0..3 {
        statuses.push(get(&format!("{}/api/orders/{i}", gateway.url)).await.status);
    }
    assert_eq!(statuses, [200, 429, 429], "one token, then the limit");
    let mut preflight = gateway_tests::RawConnection::open(gateway.addr).expect("connect");
    let reply = preflight
        .exchange(
            b"OPTIONS /api/orders/9 HTTP/1.1\r\nHost: a\r\nOrigin: https://app.test\r\n\
              Access-Control-Request-Method: GET\r\n\r\n",
        )
        .expect("preflight");
    assert_eq!(reply.status, 204, "preflight answered by the gateway");
    let missing = get(&format!("{}/nowhere", gateway.url)).await;
    assert_eq!(missing.status, 404);
    let mut post = gateway_tests::RawConnection::open(gateway.addr).expect("connect");
    let reply = post
        .exchange(b"POST /api/orders/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        .expect("POST");
    assert_eq!(reply.status, 405, "POST to a GET route");

    stop_cleanly(&mut gateway);
    let rows = read_rows(&gateway.dir().join("gateway.db")).await;
    let routed = |status: i64, method: &str| {
        rows.iter()
            .filter(|row| row.status == status && row.method == method)
            .map(|row| row.route.as_deref())
            .collect::<Vec<_>>()
    };
    assert_eq!(routed(200, "GET"), [Some(ORDERS_ROUTE)]);
    assert_eq!(routed(429, "GET"), [Some(ORDERS_ROUTE), Some(ORDERS_ROUTE)]);
    assert_eq!(routed(204, "OPTIONS"), [Some(ORDERS_ROUTE)]);
    assert_eq!(routed(404, "GET"), [None]);
    assert_eq!(routed(405, "POST"), [None]);
}

#[tokio::test]
async fn rejected_requests_name_no_route() {
    let mock = MockProcess::start("Users");
    let config = log_config(
        "  database: \"{dir}/gateway.db\"\n  flush_interval: 50ms",
        &route_yaml(USERS_ROUTE, &mock.url),
    );
    let mut gateway = GatewayProcess::start(&config);

    let cases: [&[u8]; 3] = [
        b"GET /api/users/../etc HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /api/users/%2e%2e/etc HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /api/users/7 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ];
    for request in cases {
        let mut connection = gateway_tests::RawConnection::open(gateway.addr).expect("connect");
        let reply = connection.exchange(request).expect("exchange");
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(request));
    }

    stop_cleanly(&mut gateway);
    let rows = read_rows(&gateway.dir().join("gateway.db")).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        assert_eq!(row.status, 400, "{row:?}");
        assert_eq!(row.route, None, "{row:?}");
        assert_eq!(
            row.error_kind.as_deref(),
            Some("invalid_request"),
            "{row:?}"
        );
    }
}

#[tokio::test]
async fn admin_errors_carry_error_kinds() {
    let mock = MockProcess::start("Users");
    let config = log_config(
        "  database: \"{dir}/gateway.db\"\n  flush_interval: 50ms",
        &route_yaml(USERS_ROUTE, &mock.url),
    );
    let mut gateway = GatewayProcess::start(&config);

    let cases: [(&[u8], u16); 5] = [
        (
            b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            405,
        ),
        (
            b"DELETE /admin/backends HTTP/1.1\r\nHost: localhost\r\n\r\n",
            405,
        ),
        (
            b"GET /admin/nothing HTTP/1.1\r\nHost: localhost\r\n\r\n",
            404,
        ),
        (
            b"GET /admin/logs?limit=0 HTTP/1.1\r\nHost: localhost\r\n\r\n",
            400,
        ),
        (b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", 200),
    ];
    for (request, status) in cases {
        let mut connection = gateway_tests::RawConnection::open(gateway.addr).expect("connect");
        let reply = connection.exchange(request).expect("exchange");
        assert_eq!(reply.status, status, "{}", String::from_utf8_lossy(request));
    }

    stop_cleanly(&mut gateway);
    let rows = read_rows(&gateway.dir().join("gateway.db")).await;
    let kinds: Vec<_> = rows
        .iter()
        .map(|row| {
            (
                row.method.as_str(),
                row.path.as_str(),
                row.status,
                row.error_kind.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("POST", "/health", 405, Some("method_not_allowed")),
            ("DELETE", "/admin/backends", 405, Some("method_not_allowed")),
            ("GET", "/admin/nothing", 404, Some("no_route")),
            ("GET", "/admin/logs", 400, Some("invalid_request")),
            ("GET", "/health", 200, None),
        ]
    );
}

// --- Disabled ------------------------------------------------------------------------------------

#[tokio::test]
async fn disabled_log_creates_no_file() {
    let mock = MockProcess::start("Users");
    let mut gateway = GatewayProcess::start(&log_config(
        "  enabled: false\n  database: \"{dir}/gateway.db\"",
        &route_yaml(USERS_ROUTE, &mock.url),
    ));
    for i in 0..5 {
        let reply = get(&format!("{}/api/users/{i}", gateway.url)).await;
        assert_eq!(reply.status, 200, "proxied request {i}");
    }
    for endpoint in ["/admin/logs", "/admin/stats"] {
        let reply = get(&format!("{}{endpoint}", gateway.url)).await;
        assert_eq!(reply.status, 404, "{endpoint} with the log disabled");
        let message = reply.json()["error"].as_str().unwrap_or("").to_owned();
        assert!(
            message.contains("disabled"),
            "{endpoint}: message does not say the log is disabled: {message}"
        );
    }

    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(30))
        .expect("gateway exits within 30 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let dir = gateway.dir();
    assert!(!dir.join("gateway.db").exists(), "gateway.db was created");
    assert!(
        !dir.join("data").exists(),
        "the default data folder was created"
    );
    let files: Vec<String> = std::fs::read_dir(dir)
        .expect("list the gateway folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(files, ["gateway.yaml"], "files in the gateway folder");
    assert!(
        !gateway
            .lines()
            .iter()
            .any(|line| line.contains("request log")),
        "request log lines with the log disabled"
    );
}

// --- Draining and retention ----------------------------------------------------------------------

#[tokio::test]
async fn drained_request_is_logged() {
    let mock = MockProcess::start("Slow");
    let mut gateway = GatewayProcess::start(&log_config(
        "  database: \"{dir}/gateway.db\"",
        &route_yaml(USERS_ROUTE, &mock.url),
    ));
    let url = format!("{}/api/users/slow?delay=1000", gateway.url);
    let slow = tokio::spawn(async move {
        request(
            Method::GET,
            &url,
            &[("user-agent", "drain-test")],
            Bytes::new(),
        )
        .await
    });
    // The backend delays its response by a second, and SIGTERM arrives while it is in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let closed_before_reply = slow.is_finished();
    let closed = stop_cleanly(&mut gateway);
    let reply = slow
        .await
        .expect("request task")
        .expect("in-flight request completes during the drain");
    assert!(
        !closed_before_reply,
        "the slow request ended before SIGTERM"
    );
    assert_eq!(reply.status, 200, "drained request");
    assert_eq!(closed.written, 1, "{closed:?}");

    let rows = read_rows(&gateway.dir().join("gateway.db")).await;
    assert_eq!(rows.len(), 1, "rows after the drain: {rows:?}");
    let row = &rows[0];
    assert_eq!(row.path, "/api/users/slow");
    assert_eq!(row.status, 200);
    assert_eq!(row.user_agent.as_deref(), Some("drain-test"));
    assert_eq!(row.request_id, reply.header("x-request-id"));
    assert!(
        row.latency_us >= 1_000_000,
        "latency_us {} is less than the backend's 1 s delay",
        row.latency_us
    );
}

#[tokio::test]
async fn restart_deletes_expired_rows() {
    let mock = MockProcess::start("Users");
    let routes = route_yaml(USERS_ROUTE, &mock.url);
    let mut first = GatewayProcess::start(&log_config(
        "  database: \"{dir}/gateway.db\"\n  retention: 1s",
        &routes,
    ));
    let database = first.dir().join("gateway.db");
    let old: Vec<Planned> = (0..30)
        .map(|i| Planned::get(format!("/api/users/old{i}")))
        .collect();
    let sent = send_all(first.addr, &old, 2, Duration::from_secs(30)).await;
    expect_replies(sent, &mut first);
    assert_eq!(
        stop_cleanly(&mut first).written,
        30,
        "rows of the first run"
    );
    assert_eq!(count_rows(&database).await, 30);

    // The writer deletes rows older than `retention` when it starts, and then only hourly, so
    // the rows of the second run stay.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut second = GatewayProcess::start(&log_config(
        &format!("  database: \"{}\"\n  retention: 1s", database.display()),
        &routes,
    ));
    let new: Vec<Planned> = (0..5)
        .map(|i| Planned::get(format!("/api/users/new{i}")))
        .collect();
    let sent = send_all(second.addr, &new, 1, Duration::from_secs(30)).await;
    expect_replies(sent, &mut second);
    stop_cleanly(&mut second);

    let rows = read_rows(&database).await;
    let paths: Vec<&str> = rows.iter().map(|row| row.path.as_str()).collect();
    assert_eq!(paths.len(), 5, "rows left after the restart: {paths:?}");
    assert!(
        paths.iter().all(|path| path.starts_with("/api/users/new")),
        "expired rows kept: {paths:?}"
    );
}

#[tokio::test]
async fn client_abort_is_logged() {
    let mock = MockProcess::start("Slow");
    let mut gateway = GatewayProcess::start(&log_config(
        "  database: \"{dir}/gateway.db\"",
        &route_yaml(USERS_ROUTE, &mock.url),
    ));

    // The client closes its connection while the backend delays its response by a second.
    let mut stream = std::net::TcpStream::connect(gateway.addr).expect("connect");
    std::io::Write::write_all(
        &mut stream,
        b"GET /api/users/abort?delay=1000 HTTP/1.1\r\nHost: gateway\r\n\
          X-Request-Id: client-abort-1\r\n\r\n",
    )
    .expect("send request");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    // Let the backend finish the request the gateway forwarded.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let reply = get(&format!("{}/_mock/stats", mock.url)).await;
    assert_eq!(
        reply.json()["requests"],
        1,
        "the backend served the request"
    );

    let closed = stop_cleanly(&mut gateway);
    let rows = read_rows(&gateway.dir().join("gateway.db")).await;
    let aborted: Vec<&LoggedRow> = rows
        .iter()
        .filter(|row| row.request_id == "client-abort-1")
        .collect();
    assert_eq!(
        aborted.len(),
        1,
        "rows for the aborted request (closing counts {closed:?}, all rows {rows:?})"
    );
}
