//! Slow clients. One that announces a body and stops sending it is at fault, so the gateway
//! must not respond with a 5xx status that blames the backend. One that stops reading must not
//! keep a response open past the write timeout.

use gateway_tests::{GatewayProcess, MockProcess, RawConnection};
use std::time::Duration;

#[test]
fn unfinished_body_is_not_blamed_on_the_backend() {
    let mock = MockProcess::start("Backend");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
proxy:
  response_timeout: 1s
request_log:
  database: "{{dir}}/gateway.db"
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    ));
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .set_read_timeout(Duration::from_secs(10))
        .expect("read timeout");
    let status = connection
        .exchange(b"POST /api/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhello")
        .map(|response| response.status);
    if let Ok(status) = status {
        assert!(
            status < 500,
            "an unfinished request body got {status}, which blames the backend"
        );
    }
}

/// A client that stops reading must not hold a response open past `server.write_timeout`.
#[test]
fn slow_reader_is_cut_off_at_write_timeout() {
    use std::io::{Read, Write};

    let mock = MockProcess::start("Backend");
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

    // 512 MiB is far more than the socket buffers between the three processes can hold, so
    // the gateway blocks on the client until the write timeout closes the connection.
    let size: u64 = 512 * 1024 * 1024;
    let mut stream = std::net::TcpStream::connect(gateway.addr).expect("connect");
    stream
        .write_all(format!("GET /api/big?size={size} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .expect("send request");
    std::thread::sleep(Duration::from_secs(3));

    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut received: u64 = 0;
    let mut buffer = vec![0u8; 1 << 16];
    let started = std::time::Instant::now();
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n as u64,
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the response kept streaming long after the write timeout"
        );
    }
    assert!(
        received < size,
        "the whole {size}-byte body arrived, so the write timeout never closed the connection"
    );
}
