//! Graceful shutdown: SIGTERM stops accepting, lets in-flight requests finish within
//! `server.shutdown_timeout`, cuts them off after it, and a second signal stops at once.
//! SIGHUP changes nothing but a warning.

use gateway_tests::{GatewayProcess, MockProcess, RawConnection, start_slow_request};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn start(shutdown_timeout: &str) -> (MockProcess, GatewayProcess) {
    let mock = MockProcess::start("Slow");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  shutdown_timeout: {shutdown_timeout}
request_log:
  database: "{{dir}}/gateway.db"
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    ));
    (mock, gateway)
}

#[tokio::test]
async fn sigterm_drains_in_flight_request() {
    let (mock, mut gateway) = start("10s");
    let slow = start_slow_request(&gateway, &mock, "/api/slow?delay=2000").await;

    gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = TcpStream::connect(gateway.addr);
    assert!(
        refused.is_err(),
        "a new connection was accepted after SIGTERM"
    );

    let reply = slow
        .await
        .expect("request task")
        .expect("in-flight request completes during the drain");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), "close");

    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits before shutdown_timeout");
    assert!(status.success(), "exit status {status}");
    assert!(
        gateway
            .wait_for_line(&["drained"], Duration::from_secs(2))
            .is_some(),
        "no drained line; output:\n{}",
        gateway.lines().join("\n")
    );
}

#[tokio::test]
async fn shutdown_timeout_cuts_off_slow_request() {
    let (mock, mut gateway) = start("1s");
    let slow = start_slow_request(&gateway, &mock, "/api/slow?delay=5000").await;

    let signalled = Instant::now();
    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(5))
        .expect("gateway exits within 5 s of SIGTERM with shutdown_timeout 1s");
    let waited = signalled.elapsed();
    assert!(!status.success(), "exit status {status} after a cut-off");
    assert!(
        waited >= Duration::from_millis(800),
        "exited after {waited:?}, before the 1 s shutdown_timeout"
    );

    let warning = gateway.wait_for_line(&["WARN", "cutting off"], Duration::from_secs(2));
    assert!(
        warning.is_some(),
        "no warning about cut-off requests; output:\n{}",
        gateway.lines().join("\n")
    );

    let outcome = slow.await.expect("request task");
    assert!(
        outcome.as_ref().map_or(true, |reply| reply.status != 200),
        "cut-off request still got 200"
    );
}

/// Sends SIGTERM, waits for the drain to start, sends SIGTERM again, and checks that the
/// gateway exits with status 130 within `timeout`.
fn stop_twice(gateway: &mut GatewayProcess, timeout: Duration) {
    gateway.signal("TERM");
    assert!(
        gateway
            .wait_for_line(&["draining"], Duration::from_secs(5))
            .is_some(),
        "no draining line after the first SIGTERM"
    );
    // A signal within 100 ms of the first counts as the same one.
    std::thread::sleep(Duration::from_millis(300));
    gateway.signal("TERM");
    let status = gateway
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("gateway still running {timeout:?} after the second SIGTERM"));
    assert_eq!(status.code(), Some(130), "exit status {status}");
}

#[tokio::test]
async fn repeated_signal_still_drains() {
    let (mock, mut gateway) = start("10s");
    let slow = start_slow_request(&gateway, &mock, "/api/slow?delay=1500").await;

    // As GNU `timeout` delivers it: to the gateway, then again to its process group.
    gateway.signal("TERM");
    std::thread::sleep(Duration::from_millis(20));
    gateway.signal("TERM");

    let reply = slow
        .await
        .expect("request task")
        .expect("in-flight request completes during the drain");
    assert_eq!(reply.status, 200);
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits after the drain");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn second_signal_stops_at_once() {
    let (mock, mut gateway) = start("10s");
    let _slow = start_slow_request(&gateway, &mock, "/api/slow?delay=5000").await;

    stop_twice(&mut gateway, Duration::from_secs(2));
    // The warning is queued for the log writer thread just before the exit, and still
    // reaches stdout.
    assert!(
        gateway
            .wait_for_line(&["second stop signal received"], Duration::from_secs(2))
            .is_some(),
        "no warning line for the second SIGTERM: {:?}",
        gateway.lines()
    );
}

#[tokio::test]
async fn second_signal_keeps_every_row() {
    // A flush interval longer than the test keeps the rows queued until the stop.
    let mock = MockProcess::start("Rows");
    let mut gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  shutdown_timeout: 10s
request_log:
  database: "{{dir}}/gateway.db"
  flush_interval: 30s
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    ));
    for i in 0..5 {
        let reply = gateway_tests::get(&format!("{}/api/done/{i}", gateway.url)).await;
        assert_eq!(reply.status, 200);
    }
    let _slow = start_slow_request(&gateway, &mock, "/api/slow?delay=5000").await;

    stop_twice(&mut gateway, Duration::from_secs(3));
    // The server's own stop or the signal's exit, whichever comes first, closes the log.
    let closed = gateway.wait_for_line(&["request log closed"], Duration::from_secs(2));
    assert!(
        closed.is_some(),
        "no closing line for the request log; output:\n{}",
        gateway.lines().join("\n")
    );

    // Every finished request has its row, and the slow one, ended by the second signal,
    // has its row as cut off by the stop.
    let path = gateway.dir().join("gateway.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true);
    let mut connection = sqlx::ConnectOptions::connect(&options)
        .await
        .expect("open the request log");
    let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT path, status, error_kind FROM requests WHERE path LIKE '/api/%' ORDER BY path",
    )
    .fetch_all(&mut connection)
    .await
    .expect("read rows");
    let mut expected: Vec<(String, i64, Option<String>)> = (0..5)
        .map(|i| (format!("/api/done/{i}"), 200, None))
        .collect();
    expected.push(("/api/slow".to_owned(), 499, Some("shutdown".to_owned())));
    assert_eq!(rows, expected);

    let line = gateway.wait_for_line(&["access", "/api/slow"], Duration::from_secs(2));
    assert!(
        line.is_some_and(|line| line.contains("status=499")),
        "no access line with status 499 for the cut-off request: {:?}",
        gateway.lines()
    );
}

#[tokio::test]
async fn health_is_never_ok_while_draining() {
    let (mock, gateway) = start("10s");
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    let before = connection
        .exchange(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("first /health");
    assert_eq!(before.status, 200);

    // The slow request keeps the drain going while /health is asked again.
    let _slow = start_slow_request(&gateway, &mock, "/api/slow?delay=3000").await;
    gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The gateway may close the idle connection instead of responding, but it must not
    // report itself healthy.
    match connection.exchange(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n") {
        Ok(reply) => {
            assert_eq!(reply.status, 503, "/health during the drain");
            assert_eq!(reply.json()["status"], "draining");
        }
        Err(error) => {
            assert!(
                error.kind() != std::io::ErrorKind::WouldBlock
                    && error.kind() != std::io::ErrorKind::TimedOut,
                "/health hung during the drain: {error}"
            );
        }
    }
}

#[tokio::test]
async fn sighup_is_logged_and_ignored() {
    let (mock, mut gateway) = start("10s");
    let slow = start_slow_request(&gateway, &mock, "/api/slow?delay=500").await;

    gateway.signal("HUP");
    let warning = gateway.wait_for_line(&["WARN", "SIGHUP"], Duration::from_secs(5));
    assert!(
        warning.is_some(),
        "no warning about SIGHUP; output:\n{}",
        gateway.lines().join("\n")
    );
    let reply = slow
        .await
        .expect("request task")
        .expect("the request in flight at SIGHUP completes");
    assert_eq!(reply.status, 200);
    assert_ne!(reply.header("connection"), "close");
    let reply = gateway_tests::get(&format!("{}/api/after", gateway.url)).await;
    assert_eq!(reply.status, 200);
    assert!(
        gateway.wait_exit(Duration::from_millis(200)).is_none(),
        "the gateway exited after SIGHUP"
    );
}
