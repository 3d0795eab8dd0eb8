//! Backends that restart quickly, slow readers past the write timeout, and request targets
//! with unusual authorities.

use gateway_tests::{GatewayProcess, MockProcess, get, raw_request};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn two_backend_gateway(first: &str, second: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
request_log:
  database: "{{dir}}/gateway.db"
health_check:
  interval: 10s
  timeout: 2s
routes:
  - path: "/api/*rest"
    backends:
      - url: "{first}"
      - url: "{second}"
"#
    ))
}

#[tokio::test]
async fn route_recovers_soon_after_every_backend_restarts() {
    let mut first = MockProcess::start("First");
    let mut second = MockProcess::start("Second");
    let gateway = two_backend_gateway(&first.url, &second.url);
    assert_eq!(get(&format!("{}/api/warm", gateway.url)).await.status, 200);

    // Both backends go away for a moment, and the requests sent meanwhile may fail.
    let (first_port, second_port) = (first.addr.port(), second.addr.port());
    first.kill();
    second.kill();
    for i in 0..4 {
        let _ = get(&format!("{}/api/blip/{i}", gateway.url)).await;
    }
    let _first = MockProcess::start_on("First", first_port);
    let _second = MockProcess::start_on("Second", second_port);

    // Both backends accept again, so the route must not stay empty until the next probes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut statuses = Vec::new();
    for i in 0..10 {
        statuses.push(get(&format!("{}/api/after/{i}", gateway.url)).await.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        statuses.iter().any(|status| *status == 200),
        "every request in the 2.5 s after both backends came back failed: {statuses:?}"
    );
}

#[test]
fn steady_slow_reader_keeps_its_download() {
    let mock = MockProcess::start("Big");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  write_timeout: 1s
request_log:
  enabled: false
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    ));

    let mut stream = TcpStream::connect(gateway.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    stream
        .write_all(b"GET /api/big?size=500000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("write request");

    // Reads at most 64 KiB every 10 ms for 4 s, four write timeouts. The reader never stops,
    // so the socket buffers drain and the gateway can write again well within each write
    // timeout, and the download must not be cut.
    let start = Instant::now();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut received = 0usize;
    while start.elapsed() < Duration::from_secs(4) {
        match stream.read(&mut buffer) {
            Ok(0) => panic!("the download ended after {received} bytes"),
            Ok(n) => received += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == ErrorKind::TimedOut => {}
            Err(error) => panic!("the download failed after {received} bytes: {error}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(received > 1_000_000, "only {received} bytes arrived in 4 s");
}

fn echo_gateway() -> (MockProcess, GatewayProcess) {
    let mock = MockProcess::start("Echo");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
request_log:
  enabled: false
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    ));
    (mock, gateway)
}

#[test]
fn absolute_form_credentials_are_not_forwarded() {
    let (_mock, gateway) = echo_gateway();
    let reply = raw_request(
        gateway.addr,
        b"GET http://user:secret@other:1/api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        !reply.contains("secret"),
        "the password reached the backend or the reply: {reply}"
    );
}

#[test]
fn absolute_form_without_host_is_rejected() {
    let (_mock, gateway) = echo_gateway();
    let reply = raw_request(
        gateway.addr,
        b"GET http://other:1/api/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "got: {reply}");
    assert!(reply.contains("missing Host header"), "got: {reply}");
}

#[test]
fn host_with_non_numeric_port_is_rejected() {
    let (_mock, gateway) = echo_gateway();
    let reply = raw_request(
        gateway.addr,
        b"GET /api/x HTTP/1.1\r\nHost: a:xyz\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "got: {reply}");
}
