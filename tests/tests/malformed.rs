//! Malformed requests: each gets a 4xx response or a closed connection within a bounded time,
//! and the gateway keeps serving other clients afterwards.

use gateway_tests::{GatewayProcess, MockProcess, RawConnection, get};
use std::io::ErrorKind;
use std::time::{Duration, Instant};

/// How a raw request ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    Closed,
}

fn start() -> (MockProcess, GatewayProcess) {
    let mock = MockProcess::start("Backend");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  read_timeout: 1s
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

/// Sends `bytes` on a new connection and reads one response, failing the test when the
/// gateway neither responds nor closes within 5 seconds.
fn send_raw(gateway: &GatewayProcess, bytes: &[u8]) -> Outcome {
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .set_read_timeout(Duration::from_secs(5))
        .expect("read timeout");
    if connection.send(bytes).is_err() {
        // The gateway closed while the request was still being written.
        return Outcome::Closed;
    }
    match connection.read_response() {
        Ok(response) => Outcome::Status(response.status),
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("gateway neither responded nor closed within 5 s")
        }
        Err(_) => Outcome::Closed,
    }
}

fn assert_rejected(case: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Status(status) => assert!(
            (400..500).contains(status),
            "{case}: expected a 4xx or a closed connection, got {status}"
        ),
        Outcome::Closed => {}
    }
}

async fn assert_still_serving(gateway: &GatewayProcess, case: &str) {
    let reply = get(&format!("{}/api/after", gateway.url)).await;
    assert_eq!(reply.status, 200, "request after {case}");
}

#[tokio::test]
async fn malformed_heads_are_rejected() {
    let (_mock, gateway) = start();
    let cases: &[(&str, &[u8])] = &[
        ("garbage request line", b"THIS IS NOT HTTP\r\n\r\n"),
        (
            "header without colon",
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n",
        ),
        (
            "invalid Content-Length",
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
        ),
        (
            "conflicting Content-Length values",
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "invalid chunk size",
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ),
    ];
    for (case, bytes) in cases {
        let outcome = send_raw(&gateway, bytes);
        assert_rejected(case, &outcome);
        assert_still_serving(&gateway, case).await;
    }
}

#[tokio::test]
async fn invalid_chunk_size_is_named() {
    let (_mock, gateway) = start();
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .set_read_timeout(Duration::from_secs(5))
        .expect("read timeout");
    let response = connection
        .exchange(b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .expect("response to a bad chunk size");
    assert_eq!(response.status, 400);
    let body = String::from_utf8_lossy(&response.body);
    assert!(body.contains("invalid chunked request body"), "{body}");
}

#[tokio::test]
async fn asterisk_target_gets_200() {
    let (mock, gateway) = start();
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .set_read_timeout(Duration::from_secs(5))
        .expect("read timeout");

    let options = connection
        .exchange(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("OPTIONS * response");
    assert_eq!(options.status, 200);
    assert_eq!(options.header("content-length"), Some("0"));
    assert!(options.body.is_empty());

    // An absolute-form target without a path requests information about the server too.
    let options_absolute = connection
        .exchange(b"OPTIONS http://a HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("OPTIONS http://a response");
    assert_eq!(options_absolute.status, 200);
    assert!(options_absolute.body.is_empty());

    // The connection stays open, and another method with the same target is refused.
    let get_asterisk = connection
        .exchange(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("GET * response");
    assert_eq!(get_asterisk.status, 400);

    let stats = get(&format!("{}/_mock/stats", mock.url)).await.json();
    assert_eq!(
        stats["requests"], 0,
        "an asterisk target reached the backend"
    );
    assert_still_serving(&gateway, "asterisk targets").await;
}

#[tokio::test]
async fn climbing_paths_get_400() {
    let (_mock, gateway) = start();
    let paths = [
        "/api/../x",
        "/api/%2e%2E/x",
        "/api/..%2fx",
        "/api/%2e%2e%5Cx",
        "/api/..;/x",
        "/api/.;v=1/x",
    ];
    for path in paths {
        let head = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        match send_raw(&gateway, head.as_bytes()) {
            Outcome::Status(status) => assert_eq!(status, 400, "{path}"),
            Outcome::Closed => panic!("{path}: connection closed without a response"),
        }
    }
    assert_still_serving(&gateway, "climbing paths").await;
}

#[tokio::test]
async fn huge_header_is_rejected() {
    let (mock, gateway) = start();
    let mut request = b"GET /api/huge HTTP/1.1\r\nHost: a\r\nX-Huge: ".to_vec();
    request.extend(std::iter::repeat_n(b'h', 100 * 1024));
    request.extend_from_slice(b"\r\n\r\n");

    let outcome = send_raw(&gateway, &request);
    assert_rejected("100 KiB header", &outcome);
    assert_still_serving(&gateway, "a 100 KiB header").await;

    // Only the request after the huge one may have reached the backend.
    let stats = get(&format!("{}/_mock/stats", mock.url)).await.json();
    assert_eq!(stats["requests"], 1, "{stats}");
}

#[tokio::test]
async fn header_count_limit_is_exact() {
    let (_mock, gateway) = start();
    let head = |fields: usize| {
        let mut request = b"GET /api/fields HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 1..fields {
            request.extend_from_slice(format!("X-Field-{i}: {i}\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        request
    };

    // 100 fields pass the gateway and, with the fields it adds, the backend too.
    assert_eq!(send_raw(&gateway, &head(100)), Outcome::Status(200));
    assert_eq!(send_raw(&gateway, &head(101)), Outcome::Status(431));
}

#[test]
fn trace_gets_405_unless_listed() {
    let (_mock, gateway) = start();
    let outcome = send_raw(
        &gateway,
        b"TRACE /api/echo HTTP/1.1\r\nHost: a\r\nCookie: session=secret\r\n\r\n",
    );
    assert_eq!(outcome, Outcome::Status(405));
}

/// The bytes a client sends right after CONNECT belong to the tunnel it asked for, so none of
/// them is read as a request: the gateway responds with 501 and closes.
#[tokio::test]
async fn connect_gets_501_and_closes() {
    let (_mock, gateway) = start();
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .set_read_timeout(Duration::from_secs(5))
        .expect("read timeout");
    let response = connection
        .exchange(
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\
              GET /api/tunnelled HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .expect("response to CONNECT");
    assert_eq!(response.status, 501);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(connection.wait_closed(), "the connection stayed open");
    assert_still_serving(&gateway, "CONNECT").await;
}

/// A target of characters that go to the backend percent-encoded, too long for the URI
/// parser once encoded, gets the status of a target that is too long as sent.
#[tokio::test]
async fn target_too_long_once_encoded_gets_414() {
    let (_mock, gateway) = start();
    let request = format!(
        "GET /api/{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "<".repeat(30_000)
    );
    assert_eq!(send_raw(&gateway, request.as_bytes()), Outcome::Status(414));
    assert_still_serving(&gateway, "a target too long once encoded").await;
}

/// A method longer than any route may list gets 501 rather than reaching a backend, also on a
/// route that lists no methods and so takes extension methods.
#[tokio::test]
async fn method_too_long_gets_501() {
    let (_mock, gateway) = start();
    let request = format!(
        "{} /api/users HTTP/1.1\r\nHost: a\r\n\r\n",
        "PURGE".repeat(100)
    );
    assert_eq!(send_raw(&gateway, request.as_bytes()), Outcome::Status(501));
    assert_still_serving(&gateway, "a method too long").await;
}

#[tokio::test]
async fn unfinished_head_is_cut_off() {
    let (_mock, gateway) = start();
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .set_read_timeout(Duration::from_secs(5))
        .expect("read timeout");
    connection
        .send(b"GET /api/slowloris HTTP/1.1\r\nHost: a\r\n")
        .expect("send partial head");

    let started = Instant::now();
    let closed = connection.wait_closed();
    let waited = started.elapsed();
    assert!(
        closed,
        "connection still open after {waited:?} with read_timeout 1s"
    );
    assert_still_serving(&gateway, "an unfinished head").await;

    // The stalled head is logged as NGINX logs it: 408, though no response was sent.
    let line = gateway.wait_for_line(
        &["status=408", "error=\"client_timeout\"", "completed=false"],
        Duration::from_secs(5),
    );
    assert!(line.is_some(), "{:#?}", gateway.lines());
    let row = wait_for_row(&gateway, "status=408").await;
    assert_eq!(row["error_kind"], "client_timeout", "{row}");
    assert_eq!(row["method"], "-", "{row}");
    assert_eq!(row["client_ip"], "127.0.0.1", "{row}");
}

/// Waits up to 5 seconds for a request log row that `/admin/logs?QUERY` lists, and returns the
/// newest.
async fn wait_for_row(gateway: &GatewayProcess, query: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = get(&format!("{}/admin/logs?{query}", gateway.url)).await;
        assert_eq!(reply.status, 200, "/admin/logs?{query}");
        let body = reply.json();
        if let Some(row) = body["entries"].as_array().and_then(|rows| rows.first()) {
            return row.clone();
        }
        assert!(Instant::now() < deadline, "no row for /admin/logs?{query}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn stalled_body_after_404_is_no_408() {
    let (_mock, gateway) = start();
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .set_read_timeout(Duration::from_secs(5))
        .expect("read timeout");
    // The 404 comes before the body, whose rest never does. The connection waits for that
    // rest past the read timeout of 1 s, which must not read as a stalled head.
    connection
        .send(b"POST /nothing HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        .expect("send head");
    tokio::time::sleep(Duration::from_millis(200)).await;
    connection.send(b"part").expect("send part of the body");
    assert!(connection.wait_closed(), "connection still open after 5 s");

    let not_found = gateway.wait_for_line(&["status=404"], Duration::from_secs(2));
    assert!(not_found.is_some(), "{:#?}", gateway.lines());
    let timeouts = gateway
        .lines()
        .iter()
        .filter(|line| line.contains("status=408"))
        .count();
    assert_eq!(timeouts, 0, "{:#?}", gateway.lines());
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let (_mock, gateway) = start();
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    let reply = connection
        .exchange(b"GET /api/first HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("first exchange");
    assert_eq!(reply.status, 200);

    connection
        .set_read_timeout(Duration::from_secs(5))
        .expect("read timeout");
    assert!(
        connection.wait_closed(),
        "idle keep-alive connection still open 5 s after read_timeout 1s"
    );
    // An idle connection that closes had no request, so nothing is logged for it.
    let timeouts = gateway
        .lines()
        .iter()
        .filter(|line| line.contains("status=408"))
        .count();
    assert_eq!(timeouts, 0, "{:#?}", gateway.lines());
}
