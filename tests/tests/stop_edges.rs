//! Stops at the edges: a request cut off at `server.shutdown_timeout` is still counted by the
//! request log, and a stop with an unread stdout keeps to the one-second bound that the README
//! gives.

use bytes::Bytes;
use gateway_tests::{GatewayProcess, MockProcess, backend_state, binary, free_port, get, request};
use http::Method;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn log_field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace().find_map(|word| {
        let value = word.strip_prefix(name)?.strip_prefix('=')?;
        value.parse().ok()
    })
}

async fn count_rows_with_path(database: &Path, path: &str) -> i64 {
    let options = SqliteConnectOptions::new()
        .filename(database)
        .busy_timeout(Duration::from_secs(5));
    let mut connection = SqliteConnection::connect_with(&options)
        .await
        .unwrap_or_else(|error| panic!("open {}: {error}", database.display()));
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE path = ?")
        .bind(path)
        .fetch_one(&mut connection)
        .await
        .expect("count rows");
    connection.close().await.expect("close database");
    count
}

/// A request cut off at the drain deadline gets an access line with status 499. The request
/// log must then either hold its row or count it as dropped, so that written plus dropped
/// still equals the requests served.
#[tokio::test]
async fn cut_off_request_is_logged_or_counted() {
    let mock = MockProcess::start("Slow");
    let mut gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  shutdown_timeout: 1s
health_check:
  enabled: false
request_log:
  database: "{{dir}}/gateway.db"
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    ));

    let url = format!("{}/api/slow?delay=5000", gateway.url);
    let slow = tokio::spawn(async move { request(Method::GET, &url, &[], Bytes::new()).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_state(&gateway.url, &mock.url).await["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "slow request not in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits after the 1 s shutdown_timeout");
    assert!(!status.success(), "exit status {status} after a cut-off");
    let _ = slow.await;

    let access = gateway.wait_for_line(&["access", "/api/slow"], Duration::from_secs(2));
    assert!(
        access
            .as_deref()
            .is_some_and(|line| line.contains("status=499")),
        "no access line with status 499 for the cut-off request; output:\n{}",
        gateway.lines().join("\n")
    );
    let closed = gateway
        .wait_for_line(&["request log closed"], Duration::from_secs(2))
        .expect("closing line of the request log");
    let dropped = log_field(&closed, "dropped").expect("dropped= in closing line");
    let rows = count_rows_with_path(&gateway.dir().join("gateway.db"), "/api/slow").await;
    assert_eq!(
        rows + i64::try_from(dropped).expect("dropped fits i64"),
        1,
        "the cut-off request is neither a row nor a drop: rows {rows}, closing line `{closed}`"
    );
}

/// With stdout a pipe that no process reads, a stop waits at most a second for access lines,
/// so a gateway with no request in flight must exit within two seconds of SIGTERM.
#[tokio::test]
async fn stop_with_unread_stdout_is_bounded() {
    let mock = MockProcess::start("Fast");
    let dir = tempfile::tempdir().expect("temporary folder");
    let port = free_port();
    let config = format!(
        r#"
server:
  host: 127.0.0.1
  port: {port}
health_check:
  enabled: false
request_log:
  enabled: false
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    );
    let config_path = dir.path().join("gateway.yaml");
    std::fs::write(&config_path, config).expect("write config");
    // This test never reads the stdout pipe, so it fills once the kernel's pipe buffer is full
    // (64 KiB by default on Linux).
    let mut child = Command::new(binary("apigateway"))
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start apigateway");

    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while request(Method::GET, &format!("{base}/health"), &[], Bytes::new())
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // About 200 bytes per access line, so 2000 requests fill the pipe several times over.
    for i in 0..2000 {
        let reply = get(&format!("{base}/api/fill?i={i}")).await;
        assert_eq!(reply.status, 200, "request {i}");
    }

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
    let signalled = Instant::now();
    let exited = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let waited = signalled.elapsed();
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(exited.is_some(), "gateway still running 10 s after SIGTERM");
    assert!(
        waited < Duration::from_secs(2),
        "gateway took {waited:?} to exit with an unread stdout"
    );
}
