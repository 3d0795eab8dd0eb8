//! Slow clients and slow responses. A client that announces a body and stops sending it is at
//! fault, so the gateway must not respond with a 5xx status that blames the backend. A
//! response that stops moving, because its client stopped reading or its backend stopped
//! sending, is cut after the write timeout, and one that keeps moving is not.

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
    let gateway = one_second_write_timeout(&mock);

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

/// A client that reads steadily at 300 KiB/s must keep receiving through a 1 s write timeout.
/// The body is far larger than the socket buffers, so the gateway keeps writing for as long
/// as the client reads. At this pace, half of a large send buffer takes longer than the
/// timeout to drain. So the gateway must write again after each small step that the client
/// reads, not only when half of the buffer is free.
#[test]
fn steady_slow_reader_is_not_cut() {
    use std::io::{Read, Write};

    const RATE: f64 = 300.0 * 1024.0;
    const READING: Duration = Duration::from_secs(5);
    let mock = MockProcess::start("Backend");
    let gateway = one_second_write_timeout(&mock);
    let size: u64 = 512 * 1024 * 1024;
    let mut stream = std::net::TcpStream::connect(gateway.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .write_all(format!("GET /api/big?size={size} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .expect("send request");
    let started = std::time::Instant::now();
    let mut received: usize = 0;
    let mut buffer = [0u8; 16 * 1024];
    while started.elapsed() < READING {
        match stream.read(&mut buffer) {
            Ok(0) => panic!(
                "closed after {:?} and {received} bytes read",
                started.elapsed()
            ),
            Err(error) => panic!(
                "read failed after {:?} and {received} bytes: {error}",
                started.elapsed()
            ),
            Ok(n) => received += n,
        }
        // Sleeps until the bytes read so far match the rate.
        let due = Duration::from_secs_f64(received as f64 / RATE);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Starts a gateway in front of `mock` with a write timeout of 1 s and no request log.
fn one_second_write_timeout(mock: &MockProcess) -> GatewayProcess {
    GatewayProcess::start(&format!(
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
    ))
}

/// A stream that sends a chunk every 400 ms for 3 s outlives a 1 s write timeout.
#[test]
fn streamed_response_outlives_write_timeout() {
    let mock = MockProcess::start("Stream");
    let gateway = one_second_write_timeout(&mock);
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .set_read_timeout(Duration::from_secs(10))
        .expect("read timeout");
    let response = connection
        .exchange(b"GET /api/events?chunks=8&chunk_delay=400 HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("the stream was cut");
    assert_eq!(response.status, 200);
    let body = String::from_utf8_lossy(&response.body);
    assert!(body.ends_with("chunk 7\n"), "{body}");
}

/// A backend that stops sending in the middle of its body has the response cut within two
/// write timeouts, long before its next chunk.
#[test]
fn stalled_backend_response_is_cut() {
    use std::io::{Read, Write};

    let mock = MockProcess::start("Stalled");
    let gateway = one_second_write_timeout(&mock);
    let mut stream = std::net::TcpStream::connect(gateway.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .write_all(b"GET /api/events?chunks=3&chunk_delay=8000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send request");
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("chunk 0\n"), "{text}");
    assert!(!text.contains("chunk 1\n"), "{text}");
    assert!(
        elapsed < Duration::from_secs(5),
        "the stalled response stayed open for {elapsed:?}"
    );
}
