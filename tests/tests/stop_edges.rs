//! Requests that end without a response, and stops at the edges. A request whose client
//! closes first gets a row that names its route. A request cut off at
//! `server.shutdown_timeout` still gets its access line and is counted by the request log. A
//! stop with an unread stdout keeps to the one-second bound that the README gives.

use gateway_tests::{
    ConfigFile, GatewayProcess, MockProcess, RawConnection, binary, quick_stop_config,
    start_slow_request,
};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Returns the number after `name=` in a `key=value` log line.
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

/// Returns the status, route and error kind of the rows with `path`.
/// The status, route, backend and error kind of one request log row.
type Row = (i64, Option<String>, Option<String>, Option<String>);

async fn rows_with_path(database: &Path, path: &str) -> Vec<Row> {
    let options = SqliteConnectOptions::new()
        .filename(database)
        .busy_timeout(Duration::from_secs(5));
    let mut connection = SqliteConnection::connect_with(&options)
        .await
        .unwrap_or_else(|error| panic!("open {}: {error}", database.display()));
    let rows =
        sqlx::query_as("SELECT status, route, backend, error_kind FROM requests WHERE path = ?")
            .bind(path)
            .fetch_all(&mut connection)
            .await
            .expect("read rows");
    connection.close().await.expect("close database");
    rows
}

/// Stops `gateway` cleanly with SIGTERM, checks that it exits 0, and returns the status, route,
/// backend and error kind of its request log rows with `path`.
async fn stop_and_read_rows(gateway: &mut GatewayProcess, path: &str) -> Vec<Row> {
    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    rows_with_path(&gateway.dir().join("gateway.db"), path).await
}

/// A client that closes its connection before the response gets a row with status 499, the
/// error kind `client_closed`, and the route and the backend of its request, although no
/// response named them.
#[tokio::test]
async fn closed_client_row_names_backend() {
    let mock = MockProcess::start("Slow");
    let mut gateway = GatewayProcess::start(&quick_stop_config(&mock.url));
    let slow = start_slow_request(&gateway, &mock, "/api/given-up?delay=3000").await;
    slow.abort();
    let _ = slow.await;
    gateway
        .wait_for_line(&["access", "/api/given-up"], Duration::from_secs(5))
        .expect("access line of the closed request");

    let rows = stop_and_read_rows(&mut gateway, "/api/given-up").await;
    let expected = (
        499,
        Some("/api/*rest".to_owned()),
        Some(mock.url.clone()),
        Some("client_closed".to_owned()),
    );
    assert_eq!(rows, vec![expected]);
}

/// A client that leaves in the middle of a response body gets a row that keeps the status and
/// marks the response incomplete, so that it does not read as a success.
#[tokio::test]
async fn download_left_midway_row_is_incomplete() {
    let mock = MockProcess::start("Big");
    let mut gateway = GatewayProcess::start(&quick_stop_config(&mock.url));

    let mut stream = TcpStream::connect(gateway.addr).expect("connect");
    stream
        .write_all(b"GET /api/left?size=50000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send request");
    let mut buffer = vec![0u8; 64 * 1024];
    let mut received = 0;
    while received < 100_000 {
        let read = stream.read(&mut buffer).expect("read response");
        assert!(read > 0, "closed after {received} bytes");
        received += read;
    }
    drop(stream);
    gateway
        .wait_for_line(&["access", "/api/left"], Duration::from_secs(5))
        .expect("access line of the download");

    let rows = stop_and_read_rows(&mut gateway, "/api/left").await;
    let expected = (
        200,
        Some("/api/*rest".to_owned()),
        Some(mock.url.clone()),
        Some("response_incomplete".to_owned()),
    );
    assert_eq!(rows, vec![expected]);
}

/// A request cut off at the drain deadline gets an access line with status 499 and the error
/// kind `shutdown`. The request log either writes its row or counts it as dropped, so that
/// written plus dropped still equals the requests served.
#[tokio::test]
async fn cut_off_request_gets_line_and_row() {
    let mock = MockProcess::start("Slow");
    let mut gateway = GatewayProcess::start(&quick_stop_config(&mock.url));
    let slow = start_slow_request(&gateway, &mock, "/api/cut-off?delay=5000").await;

    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits after the 1 s shutdown_timeout");
    assert!(!status.success(), "exit status {status} after a cut-off");
    let _ = slow.await;

    let line = gateway.wait_for_line(&["access", "/api/cut-off"], Duration::from_secs(2));
    let output = gateway.lines().join("\n");
    let line = line.unwrap_or_else(|| panic!("no access line for the cut-off request:\n{output}"));
    assert!(line.contains("status=499"), "{line}");
    assert!(line.contains("completed=false"), "{line}");
    assert!(line.contains("error=\"shutdown\""), "{line}");
    let backend = format!("backend=\"{}\"", mock.url);
    assert!(line.contains(&backend), "{line}");
    let last = gateway.wait_for_line(&["stopped, with requests cut off"], Duration::from_secs(2));
    assert!(
        last.is_some_and(|line| line.contains("cut_off=1")),
        "{output}"
    );

    let closed = gateway
        .wait_for_line(&["request log closed"], Duration::from_secs(2))
        .expect("closing line of the request log");
    let dropped = log_field(&closed, "dropped").expect("dropped= in closing line");
    let rows = count_rows_with_path(&gateway.dir().join("gateway.db"), "/api/cut-off").await;
    assert_eq!(
        rows + i64::try_from(dropped).expect("dropped fits i64"),
        1,
        "the cut-off request is neither a row nor a drop: rows {rows}, closing line `{closed}`"
    );
}

/// With stdout a pipe that no process reads, a stop waits at most a second for access lines,
/// so a gateway with no request in flight exits within two seconds of SIGTERM.
#[test]
fn unread_stdout_stop_is_bounded() {
    let mock = MockProcess::start("Backend");
    let file = ConfigFile::write(&quick_stop_config(&mock.url));

    // The pipe is never read, so once its kernel buffer (64 KiB on Linux) is full every
    // write to stdout blocks.
    let mut child = Command::new(binary("apigateway"))
        .arg("--config")
        .arg(&file.path)
        .current_dir(file.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start apigateway");
    let addr: SocketAddr = format!("127.0.0.1:{}", file.port).parse().expect("address");
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
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        exited.is_some(),
        "gateway still running 10 s after SIGTERM while its stdout was not read"
    );
    assert!(
        waited < Duration::from_secs(2),
        "gateway took {waited:?} to exit with an unread stdout"
    );
}

/// A connection whose client sent part of a head and stopped is closed at the drain deadline,
/// but no request was in flight, so the stop is clean: exit status 0 and `stopped`.
#[test]
fn partial_head_at_deadline_stops_cleanly() {
    let mock = MockProcess::start("Unused");
    let mut gateway = GatewayProcess::start(&quick_stop_config(&mock.url));
    let mut partial = RawConnection::open(gateway.addr).expect("connect");
    partial
        .send(b"GET /api/half HTTP/1.1\r\nHost: gateway\r\n")
        .expect("send part of a head");
    // Long enough for the gateway to read the bytes before the stop.
    std::thread::sleep(Duration::from_millis(200));

    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits after the 1 s shutdown_timeout");
    let output = gateway.lines().join("\n");
    assert!(status.success(), "exit status {status}:\n{output}");
    assert!(
        gateway
            .wait_for_line(&["stopped"], Duration::from_secs(2))
            .is_some_and(|line| !line.contains("cut off")),
        "{output}"
    );
}
