//! The access line as a user reads it on the gateway's stdout. The tests cover the JSON format,
//! one line per request up to a clean stop, and the log level that turns the lines off. They
//! also cover a request cut off at the drain deadline and a stdout that is never read.

use bytes::Bytes;
use gateway_tests::{
    GatewayProcess, MockProcess, RawConnection, backend_state, binary, free_port, get, request,
};
use http::Method;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts a gateway with one route to `backend_url` and `logging` as its logging section.
fn gateway(backend_url: &str, logging: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
request_log:
  enabled: false
health_check:
  enabled: false
routes:
  - path: "/api/*rest"
    backends:
      - url: "{backend_url}"
logging:
{logging}
"#
    ))
}

/// Returns the access lines among `lines`, in either format.
fn access_lines(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|line| line.contains(" INFO access: ") || line.contains("\"target\":\"access\""))
        .collect()
}

#[tokio::test]
async fn json_access_line_parses_back() {
    let mock = MockProcess::start("Json");
    let gateway = gateway(&mock.url, "  format: json");

    let url = format!("{}/api/items/%22quoted%22?page=2", gateway.url);
    let reply = request(
        Method::GET,
        &url,
        &[("x-request-id", "client-chosen-id.42")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);

    let line = gateway
        .wait_for_line(&["\"target\":\"access\""], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no access line in:\n{}", gateway.lines().join("\n")));
    let value: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"));
    assert_eq!(value["level"], "INFO");
    assert_eq!(value["method"], "GET");
    assert_eq!(value["path"], "/api/items/%22quoted%22");
    assert_eq!(value["status"], 200);
    assert_eq!(value["backend"], mock.url.as_str());
    assert_eq!(value["client_ip"], "127.0.0.1");
    assert_eq!(value["request_id"], "client-chosen-id.42");
    assert_eq!(value["retried"], false);
    assert_eq!(value["error"], "-");
    assert_eq!(value["completed"], true);
    assert!(value["latency_ms"].as_f64().is_some(), "{line}");
    let timestamp = value["timestamp"].as_str().unwrap_or_default();
    assert!(timestamp.ends_with('Z'), "{line}");
    assert_eq!(
        timestamp.len(),
        "2026-01-31T12:00:00.250000Z".len(),
        "{line}"
    );
}

#[tokio::test]
async fn clean_stop_prints_every_line() {
    let mock = MockProcess::start("Count");
    let mut gateway = gateway(&mock.url, "  format: text");

    let total = 300;
    for n in 0..total {
        let reply = get(&format!("{}/api/count/{n}", gateway.url)).await;
        assert_eq!(reply.status, 200);
    }
    gateway.signal("TERM");
    let status = gateway.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );

    let lines = gateway.lines();
    let access = access_lines(&lines);
    assert_eq!(access.len(), total, "one line per request");
    for n in 0..total {
        let path = format!("path=\"/api/count/{n}\" ");
        let count = access.iter().filter(|line| line.contains(&path)).count();
        assert_eq!(count, 1, "lines for request {n}");
    }
    // The lines are out before the gateway reports its stop.
    let stopped = lines.iter().position(|line| line.contains("stopped"));
    let last_access = lines
        .iter()
        .rposition(|line| line.contains(" INFO access: "));
    assert!(
        last_access < stopped,
        "stopped at {stopped:?}, last line at {last_access:?}"
    );
}

#[tokio::test]
async fn warn_level_turns_lines_off() {
    let mock = MockProcess::start("Quiet");
    // The gateway's own target stays at info, so that its start line still shows.
    let gateway = gateway(&mock.url, "  level: \"warn,apigateway=info\"");

    for n in 0..5 {
        let reply = get(&format!("{}/api/quiet/{n}", gateway.url)).await;
        assert_eq!(reply.status, 200);
    }
    // Longer than the writer's flush interval, so a line would have been written by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        access_lines(&gateway.lines()).is_empty(),
        "{:?}",
        gateway.lines()
    );
}

/// Returns a configuration with one route to `backend_url`, `{port}` and `{dir}` left for
/// [`GatewayProcess::start`] to fill in.
fn draining_config(backend_url: &str, shutdown_timeout: &str) -> String {
    format!(
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
      - url: "{backend_url}"
"#
    )
}

#[tokio::test]
async fn cut_off_request_gets_access_line() {
    let mock = MockProcess::start("Slow");
    let mut gateway = GatewayProcess::start(&draining_config(&mock.url, "1s"));

    let url = format!("{}/api/cut-off-line?delay=5000", gateway.url);
    let slow = tokio::spawn(async move { request(Method::GET, &url, &[], Bytes::new()).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_state(&gateway.url, &mock.url).await["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "slow request not in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(5))
        .expect("gateway exits within 5 s of SIGTERM with shutdown_timeout 1s");
    assert!(!status.success(), "exit status {status} after a cut-off");
    let _ = slow.await;

    let line = gateway.wait_for_line(&["/api/cut-off-line"], Duration::from_secs(2));
    let output = gateway.lines().join("\n");
    let line = line.unwrap_or_else(|| panic!("no access line for the cut-off request:\n{output}"));
    assert!(line.contains("status=499"), "{line}");
    assert!(line.contains("completed=false"), "{line}");
    assert!(line.contains("error=\"shutdown\""), "{line}");
}

#[test]
fn unread_stdout_does_not_block_exit() {
    let mock = MockProcess::start("Backend");
    let dir = tempfile::tempdir().expect("temporary folder");
    let port = free_port();
    let text = draining_config(&mock.url, "1s")
        .replace("{port}", &port.to_string())
        .replace("{dir}", &dir.path().display().to_string());
    let config_path = dir.path().join("gateway.yaml");
    std::fs::write(&config_path, text).expect("write config");

    // The pipe is never read, so once its kernel buffer (64 KiB on Linux) is full every
    // write to stdout blocks.
    let mut child = Command::new(binary("apigateway"))
        .arg("--config")
        .arg(&config_path)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start apigateway");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("apigateway did not accept connections within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // About 350 KiB of access lines, several times the pipe's capacity.
    let path = format!("/api/{}", "x".repeat(1000));
    let mut connection = RawConnection::open(addr).expect("connect");
    for n in 0..300 {
        let head = format!("GET {path}?n={n} HTTP/1.1\r\nHost: a\r\n\r\n");
        let reply = connection.exchange(head.as_bytes()).expect("response");
        assert_eq!(reply.status, 200, "request {n}");
    }
    drop(connection);

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(5);
    let exited = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        exited.is_some(),
        "gateway still running 5 s after SIGTERM while its stdout was not read"
    );
}
