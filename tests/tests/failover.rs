//! Failover: a backend that dies leaves rotation without failing idempotent requests, comes
//! back when it recovers, and non-idempotent requests are never sent twice.

use bytes::Bytes;
use gateway_tests::{
    GatewayProcess, MockProcess, admin_backends, backend_state, free_port, get, request,
    wait_for_health,
};
use http::Method;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Health check interval of these tests; the bounds below are multiples of it.
const INTERVAL: Duration = Duration::from_secs(1);
/// Slack on top of each bound, for process scheduling on a loaded machine.
const MARGIN: Duration = Duration::from_secs(2);

const HEALTH_CHECK: &str = "
health_check:
  interval: 1s
  unhealthy_threshold: 3
  healthy_threshold: 2
  timeout: 500ms
";

fn two_backend_gateway(first: &str, second: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
request_log:
  database: "{{dir}}/gateway.db"
{HEALTH_CHECK}
routes:
  - path: "/api/*rest"
    backends:
      - url: "{first}"
        weight: 2
      - url: "{second}"
        weight: 1
"#
    ))
}

/// One request of the steady client stream.
#[derive(Debug)]
struct Sent {
    at: Duration,
    status: u16,
    server: String,
}

/// Sends a GET every 20 ms until `stop` is set or 15 seconds pass.
async fn steady_stream(gateway_url: String, stop: Arc<AtomicBool>) -> Vec<Sent> {
    let start = Instant::now();
    let mut sent = Vec::new();
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(15) {
        let url = format!("{gateway_url}/api/stream/{i}");
        let (status, server) = match request(Method::GET, &url, &[], Bytes::new()).await {
            Ok(reply) => {
                let server = reply.header("x-mock-server").to_owned();
                (reply.status.as_u16(), server)
            }
            Err(_) => (0, String::new()),
        };
        sent.push(Sent {
            at: start.elapsed(),
            status,
            server,
        });
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sent
}

#[tokio::test]
async fn killed_backend_fails_over_and_returns() {
    let primary = MockProcess::start("Primary");
    let mut secondary = MockProcess::start("Secondary");
    let secondary_port = secondary.addr.port();
    let secondary_url = secondary.url.clone();
    let gateway = two_backend_gateway(&primary.url, &secondary.url);

    let stop = Arc::new(AtomicBool::new(false));
    let stream = tokio::spawn(steady_stream(gateway.url.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Kill the weight-1 backend while requests flow.
    secondary.kill();
    let down = wait_for_health(&gateway.url, &secondary_url, false, 3 * INTERVAL + MARGIN).await;
    // A panic here drops the runtime, which cancels the client stream.
    let (entry, _) = down
        .unwrap_or_else(|last| panic!("killed backend still healthy after 3 intervals: {last}"));
    assert!(
        entry["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "unhealthy backend has no last_error: {entry}"
    );

    // Bring it back on the same port.
    let _restarted = MockProcess::start_on("Secondary", secondary_port);
    let up = wait_for_health(&gateway.url, &secondary_url, true, 2 * INTERVAL + MARGIN).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = stream.await.expect("client stream task");
    if let Err(last) = up {
        panic!("restarted backend still unhealthy after 2 intervals: {last}");
    }

    let failed: Vec<String> = sent
        .iter()
        .filter(|s| s.status != 200)
        .map(|s| format!("{} at {:?}", s.status, s.at))
        .collect();
    assert!(sent.len() > 20, "only {} requests sent", sent.len());
    assert!(
        failed.is_empty(),
        "{} of {} GETs failed during failover: {failed:?}",
        failed.len(),
        sent.len()
    );
    assert!(
        sent.iter().any(|s| s.server == "Secondary"),
        "no request reached the weight-1 backend"
    );

    // With both healthy again, the next 30 requests split 2:1.
    let mut primary_count = 0;
    let mut secondary_count = 0;
    for i in 0..30 {
        let reply = get(&format!("{}/api/after/{i}", gateway.url)).await;
        assert_eq!(reply.status, 200, "request {i} after recovery");
        match reply.header("x-mock-server") {
            "Primary" => primary_count += 1,
            "Secondary" => secondary_count += 1,
            other => panic!("unknown server {other:?}"),
        }
    }
    assert_eq!(primary_count, 20);
    assert_eq!(secondary_count, 10);

    for entry in admin_backends(&gateway.url).await {
        assert_eq!(entry["in_flight"], 0, "{entry}");
    }

    // The restarted backend keeps its last error, dated before it became healthy again, and
    // counts its passing checks beyond the healthy threshold of 2.
    let recovered = wait_for_passing_checks(&gateway.url, &secondary_url, 3).await;
    assert!(
        recovered["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "recovered backend lost its last_error: {recovered}"
    );
    let failed_at = timestamp(&recovered, "last_error_at");
    let healthy_at = timestamp(&recovered, "last_transition");
    assert!(failed_at <= healthy_at, "{recovered}");

    // The backend that never failed counts its passing checks too.
    let primary_state = wait_for_passing_checks(&gateway.url, &primary.url, 1).await;
    assert_eq!(primary_state["last_error"], Value::Null, "{primary_state}");
    assert_eq!(
        primary_state["last_error_at"],
        Value::Null,
        "{primary_state}"
    );
}

/// Polls `/admin/backends` until `backend_url` reports at least `count` consecutive passing
/// checks, for at most two intervals and the margin, and returns its entry.
async fn wait_for_passing_checks(gateway_url: &str, backend_url: &str, count: u64) -> Value {
    let deadline = Instant::now() + 2 * INTERVAL + MARGIN;
    loop {
        let entry = backend_state(gateway_url, backend_url).await;
        if entry["consecutive_successes"].as_u64() >= Some(count) {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "{backend_url} has fewer than {count} consecutive successes: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parses the RFC 3339 timestamp in `field` of an `/admin/backends` entry.
fn timestamp(entry: &Value, field: &str) -> SystemTime {
    let text = entry[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {entry}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|error| panic!("{field} {text:?}: {error}"))
}

#[tokio::test]
async fn failed_connect_is_retried_for_post() {
    let live = MockProcess::start("Live");
    let dead_solo = format!("http://127.0.0.1:{}", free_port());
    let dead_mixed = format!("http://127.0.0.1:{}", free_port());
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
request_log:
  database: "{{dir}}/gateway.db"
health_check:
  enabled: false
routes:
  - path: "/solo/*rest"
    backends:
      - url: "{dead_solo}"
  - path: "/mixed/*rest"
    backends:
      - url: "{dead_mixed}"
      - url: "{live}"
"#,
        live = live.url
    ));

    // A route whose only backend is dead: nothing to retry on, whatever the method.
    let post = request(
        Method::POST,
        &format!("{}/solo/order", gateway.url),
        &[],
        "payload",
    )
    .await
    .expect("POST");
    assert_eq!(post.status, 502);
    assert_eq!(post.json()["status"], 502);
    let get_reply = get(&format!("{}/solo/order", gateway.url)).await;
    assert_eq!(get_reply.status, 502);

    // A dead and a live backend: a POST whose connect to the dead one fails goes to the live
    // one, since none of it was sent, and reaches it exactly once.
    let stats_url = format!("{}/_mock/stats", live.url);
    for i in 0..4 {
        let before = get(&stats_url).await.json()["requests"].as_u64();
        let post = request(
            Method::POST,
            &format!("{}/mixed/order/{i}", gateway.url),
            &[],
            "payload",
        )
        .await
        .expect("POST");
        let after = get(&stats_url).await.json()["requests"].as_u64();
        assert_eq!(post.status, 200, "POST {i}");
        assert_eq!(
            post.json()["body_length"],
            7,
            "POST {i}: the whole body arrived"
        );
        assert_eq!(after, before.map(|n| n + 1), "POST {i} reached Live once");

        let reply = get(&format!("{}/mixed/item/{i}", gateway.url)).await;
        assert_eq!(reply.status, 200, "GET {i} is retried on the live backend");
    }
}

#[tokio::test]
async fn all_backends_down_gives_fast_503() {
    let mut first = MockProcess::start("First");
    let mut second = MockProcess::start("Second");
    let gateway = two_backend_gateway(&first.url, &second.url);
    let urls = [first.url.clone(), second.url.clone()];

    first.kill();
    second.kill();
    for url in &urls {
        if let Err(last) = wait_for_health(&gateway.url, url, false, 3 * INTERVAL + MARGIN).await {
            panic!("killed backend {url} still healthy after 3 intervals: {last}");
        }
    }

    let started = Instant::now();
    let reply = get(&format!("{}/api/anything", gateway.url)).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["status"], 503);
    let retry_after = reply.header("retry-after");
    assert!(
        retry_after.parse::<u32>().is_ok(),
        "Retry-After {retry_after:?} is not a number of seconds"
    );
    // A correctness bound: the gateway must respond from backend state, not after trying to
    // connect.
    assert!(elapsed < Duration::from_secs(1), "503 took {elapsed:?}");
}

#[tokio::test]
async fn backend_that_times_out_leaves_rotation() {
    // The health check probes every minute and passes, so only the timeouts can take the
    // backend out.
    let slow = MockProcess::start("Hung");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
proxy:
  response_timeout: 300ms
request_log:
  database: "{{dir}}/gateway.db"
health_check:
  interval: 60s
  unhealthy_threshold: 3
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        slow.url
    ));
    let state = gateway_tests::backend_state(&gateway.url, &slow.url).await;
    assert_eq!(state["healthy"], true, "{state}");

    for i in 0..3 {
        let reply = get(&format!("{}/api/slow/{i}?delay=1000", gateway.url)).await;
        assert_eq!(reply.status, 504, "request {i}");
    }
    let state = gateway_tests::backend_state(&gateway.url, &slow.url).await;
    assert_eq!(state["healthy"], false, "{state}");
    let reply = get(&format!("{}/api/next", gateway.url)).await;
    assert_eq!(reply.status, 503);
}

#[tokio::test]
async fn down_backend_share_split_by_weight() {
    let first = MockProcess::start("First");
    let mut second = MockProcess::start("Second");
    let third = MockProcess::start("Third");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
request_log:
  database: "{{dir}}/gateway.db"
{HEALTH_CHECK}
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
      - url: "{}"
      - url: "{}"
"#,
        first.url, second.url, third.url
    ));

    second.kill();
    let second_url = second.url.clone();
    if let Err(last) =
        wait_for_health(&gateway.url, &second_url, false, 3 * INTERVAL + MARGIN).await
    {
        panic!("killed backend still healthy after 3 intervals: {last}");
    }

    // The dead backend's turns are shared by the other two, not all given to the one after it
    // in the order.
    let mut first_count = 0;
    let mut third_count = 0;
    for i in 0..60 {
        let reply = get(&format!("{}/api/share/{i}", gateway.url)).await;
        assert_eq!(reply.status, 200, "request {i}");
        match reply.header("x-mock-server") {
            "First" => first_count += 1,
            "Third" => third_count += 1,
            other => panic!("request {i} reached {other:?}"),
        }
    }
    assert_eq!(first_count, 30);
    assert_eq!(third_count, 30);
}

#[tokio::test]
async fn retries_leave_first_tries_in_turn() {
    let live = MockProcess::start("Live");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
request_log:
  database: "{{dir}}/gateway.db"
health_check:
  enabled: false
routes:
  - path: "/pair/*rest"
    backends:
      - url: "{dead}"
      - url: "{live}"
"#,
        live = live.url
    ));

    // One request at a time, so no other request's pick comes between a first try and its
    // retry. Each backend keeps every other first try.
    for i in 0..10 {
        let reply = get(&format!("{}/pair/item/{i}", gateway.url)).await;
        assert_eq!(reply.status, 200, "GET {i}");
    }
    let dead_state = backend_state(&gateway.url, &dead).await;
    let live_state = backend_state(&gateway.url, &live.url).await;
    assert_eq!(dead_state["total_requests"], 5, "{dead_state}");
    assert_eq!(live_state["total_requests"], 10, "{live_state}");
}

/// Starts a gateway with one worker and one route, `/api/*rest`, to `preferred` (weight 100)
/// and `other` (weight 1), so that the first requests go to `preferred`. Health checks and the
/// request log are off.
fn preferred_and_other(preferred: &str, other: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  workers: 1
request_log:
  enabled: false
health_check:
  enabled: false
routes:
  - path: "/api/*rest"
    backends:
      - url: "{preferred}"
        weight: 100
      - url: "{other}"
        weight: 1
"#
    ))
}

/// Sends `method` to a gateway in front of `Dying` (weight 100) and `Other` (weight 1), on the
/// connection to `Dying` that a warm-up left in the pool. `Dying` keeps the request for 2 s
/// and is killed while it does. Returns the response and the requests `Other` served.
async fn request_to_dying_backend(method: Method) -> (gateway_tests::Reply, serde_json::Value) {
    let mut dying = MockProcess::start("Dying");
    let other = MockProcess::start("Other");
    // One worker, so that the request finds the connection the warm-up left in its pool.
    let gateway = preferred_and_other(&dying.url, &other.url);

    // The first turns go to Dying, and this one leaves a pooled connection to it.
    let warm = get(&format!("{}/api/warm", gateway.url)).await;
    assert_eq!(warm.json()["server"], "Dying");

    let url = format!("{}/api/item/1?delay=2000", gateway.url);
    let pending = tokio::spawn(async move { request(method, &url, &[], Bytes::new()).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_state(&gateway.url, &dying.url).await["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the request never reached Dying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dying.kill();

    let reply = pending.await.expect("task").expect("response");
    let served = get(&format!("{}/_mock/stats", other.url)).await;
    (reply, served.json()["requests"].clone())
}

/// A request on a pooled connection whose backend dies while handling it is sent once more to
/// that backend alone. The backend may have acted on a DELETE, so when it cannot be reached
/// the client gets 502 rather than a second backend's response.
#[tokio::test]
async fn resend_never_reaches_second_backend() {
    let (reply, other_served) = request_to_dying_backend(Method::DELETE).await;
    assert_eq!(
        reply.status,
        502,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(other_served, 0, "Other got the DELETE");
    // The DELETE reached the backend, so the failure is the backend's, not a failed connect.
    assert_eq!(reply.json()["error"], "backend failed");
}

/// A GET requests no change, so when its resend cannot reach the backend that died while
/// handling it, another backend serves it.
#[tokio::test]
async fn safe_resend_reaches_second_backend() {
    let (reply, other_served) = request_to_dying_backend(Method::GET).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["server"], "Other");
    assert_eq!(other_served, 1);
}

/// A backend whose health endpoint fails leaves rotation after `unhealthy_threshold` checks,
/// although it still serves the requests sent to it in between.
#[tokio::test]
async fn failing_checks_outweigh_served_requests() {
    let sick = MockProcess::start("Sick");
    let well = MockProcess::start("Well");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
request_log:
  enabled: false
routes:
  - path: "/api/*rest"
    health_check:
      path: "/hc?status=503"
      interval: 300ms
      timeout: 200ms
      unhealthy_threshold: 3
    backends:
      - url: "{sick}"
  - path: "/other/*rest"
    backends:
      - url: "{well}"
"#,
        sick = sick.url,
        well = well.url
    ));

    // Requests keep reaching Sick, faster than its checks fail.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (url, stop) = (
            format!("{}/api/still-served", gateway.url),
            Arc::clone(&stop),
        );
        async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = get(&url).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let left = wait_for_health(&gateway.url, &sick.url, false, 3 * INTERVAL + MARGIN).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic task");
    let (entry, _) = left.unwrap_or_else(|entry| panic!("Sick stayed in rotation: {entry}"));
    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|error| error.starts_with("health check failed")),
        "{entry}"
    );
}

/// Starts a backend that accepts each connection and closes it without reading or responding,
/// on a thread that ends with the test process. Returns its URL.
fn closing_backend() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            drop(connection);
        }
    });
    url
}

/// A backend that closes a new connection before any response byte fails a GET, which
/// requests no change, over to another backend. A POST may have been acted on, so it gets
/// 502 instead.
#[tokio::test]
async fn closed_connection_sends_only_safe_methods_on() {
    let closing = closing_backend();
    let other = MockProcess::start("Other");
    let gateway = preferred_and_other(&closing, &other.url);

    let get_reply = get(&format!("{}/api/item", gateway.url)).await;
    assert_eq!(
        get_reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&get_reply.body)
    );
    assert_eq!(get_reply.json()["server"], "Other");

    let post = request(
        Method::POST,
        &format!("{}/api/item", gateway.url),
        &[],
        Bytes::from_static(b"{}"),
    )
    .await
    .expect("POST");
    assert_eq!(post.status, 502, "{}", String::from_utf8_lossy(&post.body));
}
