//! Requests to a running `mockserver`: the echo, `/health`, `/_mock/stats` and every knob.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Connection, MockServer};
use serde_json::json;

#[test]
fn echo_reports_request_fields() {
    let server = MockServer::start_single("Echo-1");
    let mut connection = Connection::open(server.addr());

    let response = connection.request(
        "PUT",
        "/api/users/7?sort=name&empty",
        &[("X-Trace", "abc")],
        b"hello",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("x-mock-server"), Some("Echo-1"));

    let echo = response.json();
    assert_eq!(echo["server"], "Echo-1");
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/api/users/7");
    assert_eq!(echo["query"], "sort=name&empty");
    assert_eq!(echo["headers"]["x-trace"], "abc");
    assert_eq!(echo["headers"]["host"], "mock.test");
    assert_eq!(echo["body_length"], 5);
}

#[test]
fn echo_query_is_null_without_query() {
    let server = MockServer::start_single("Echo-2");
    let echo = Connection::open(server.addr()).get("/plain").json();
    assert_eq!(echo["query"], json!(null));
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["body_length"], 0);
}

#[test]
fn echo_joins_repeated_headers() {
    let server = MockServer::start_single("Echo-3");
    let mut connection = Connection::open(server.addr());
    let echo = connection
        .request(
            "GET",
            "/",
            &[("X-Tag", "one"), ("X-Tag", "two"), ("x-tag", "three")],
            b"",
        )
        .json();
    assert_eq!(echo["headers"]["x-tag"], "one, two, three");
}

#[test]
fn echo_counts_one_mib_post_body() {
    let server = MockServer::start_single("Echo-4");
    let mut connection = Connection::open(server.addr());
    let body = vec![7u8; 1024 * 1024];

    let echo = connection.request("POST", "/upload", &[], &body).json();
    assert_eq!(echo["body_length"], 1024 * 1024);
    assert_eq!(echo["headers"]["content-length"], "1048576");
}

#[test]
fn echo_counts_chunked_request_body() {
    let server = MockServer::start_single("Echo-5");
    let mut connection = Connection::open(server.addr());

    connection.write_head("POST", "/chunked", &[("Transfer-Encoding", "chunked")], 0);
    connection
        .stream()
        .write_all(b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    let echo = connection.read_response(false).json();
    assert_eq!(echo["body_length"], 8);
}

#[test]
fn connection_is_kept_alive() {
    let server = MockServer::start_single("Echo-6");
    let mut connection = Connection::open(server.addr());
    for index in 0..5 {
        let response = connection.get(&format!("/round/{index}"));
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["path"], format!("/round/{index}"));
    }
}

#[test]
fn head_request_gets_no_body() {
    let server = MockServer::start_single("Echo-7");
    let mut connection = Connection::open(server.addr());
    let response = connection.request("HEAD", "/thing", &[], b"");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-mock-server"), Some("Echo-7"));

    // The next response on the same connection still parses, so no body bytes were sent.
    assert_eq!(connection.get("/after").json()["path"], "/after");
}

#[test]
fn health_returns_ok_with_name() {
    let server = MockServer::start_single("Healthy");
    let response = Connection::open(server.addr()).get("/health");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("x-mock-server"), Some("Healthy"));
    assert_eq!(
        response.json(),
        json!({ "status": "ok", "server": "Healthy" })
    );
}

#[test]
fn stats_count_only_echoed_requests() {
    let server = MockServer::start_single("Counted");
    let mut connection = Connection::open(server.addr());

    let stats = connection.get("/_mock/stats").json();
    assert_eq!(stats, json!({ "server": "Counted", "requests": 0 }));

    connection.get("/health");
    connection.get("/a");
    connection.request("POST", "/b", &[], b"x");
    connection.get("/c?status=abc");
    connection.get("/_mock/stats");

    let stats = connection.get("/_mock/stats").json();
    assert_eq!(stats["requests"], 3);
}

#[test]
fn status_knob_sets_status() {
    let server = MockServer::start_single("Status");
    let mut connection = Connection::open(server.addr());

    let response = connection.get("/x?status=503");
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["path"], "/x");

    let response = connection.request("GET", "/x", &[("X-Mock-Status", "418")], b"");
    assert_eq!(response.status, 418);

    let response = connection.request("GET", "/x?status=201", &[("X-Mock-Status", "500")], b"");
    assert_eq!(
        response.status, 201,
        "the query parameter must win over the header"
    );

    let response = connection.get("/x?status=204");
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());
    assert_eq!(connection.get("/still-open").status, 200);
}

#[test]
fn size_knob_sends_exact_bytes() {
    let server = MockServer::start_single("Sized");
    let mut connection = Connection::open(server.addr());

    for size in [0u64, 1, 65_536, 65_537, 300_000] {
        let target = format!("/blob?size={size}");
        let response = connection.get(&target);
        assert_eq!(response.status, 200, "{target}");
        assert_eq!(
            response.header("content-length"),
            Some(size.to_string().as_str())
        );
        assert_eq!(response.body.len() as u64, size, "{target}");
        assert!(response.body.iter().all(|&byte| byte == b'x'), "{target}");
    }

    let response = connection.request("GET", "/blob", &[("X-Mock-Size", "10")], b"");
    assert_eq!(response.body, b"xxxxxxxxxx");
    assert_eq!(response.header("x-mock-server"), Some("Sized"));

    let response = connection.get("/blob?size=3&status=206");
    assert_eq!(response.status, 206);
    assert_eq!(response.body, b"xxx");
}

#[test]
fn chunks_knob_streams_chunks() {
    let server = MockServer::start_single("Chunky");
    let mut connection = Connection::open(server.addr());

    let response = connection.get("/stream?chunks=3&chunk_delay=10");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.body, b"chunk 0\nchunk 1\nchunk 2\n");

    let response = connection.request(
        "GET",
        "/stream",
        &[("X-Mock-Chunks", "2"), ("X-Mock-Chunk-Delay", "0")],
        b"",
    );
    assert_eq!(response.body, b"chunk 0\nchunk 1\n");
}

#[test]
fn first_chunk_arrives_before_delay_ends() {
    let server = MockServer::start_single("Slow");
    let mut connection = Connection::open(server.addr());

    // The second chunk is an hour away, so the first one can only be read if the server
    // streams it instead of buffering the body. The read timeout turns a bug into a failure.
    connection.write_head("GET", "/stream?chunks=2&chunk_delay=3600000", &[], 0);
    let (status, headers) = connection.read_head();
    assert_eq!(status, 200);
    assert!(headers.contains(&("transfer-encoding".to_owned(), "chunked".to_owned())));
    assert_eq!(connection.read_chunk().as_deref(), Some(&b"chunk 0\n"[..]));
}

#[test]
fn delay_knob_waits_before_responding() {
    let server = MockServer::start_single("Delayed");
    let mut connection = Connection::open(server.addr());

    let start = Instant::now();
    let response = connection.get("/late?delay=300");
    assert_eq!(response.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));

    let start = Instant::now();
    let response = connection.request("GET", "/late", &[("X-Mock-Delay", "200")], b"");
    assert_eq!(response.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(200));
}

#[test]
fn bad_knob_value_gets_400() {
    let server = MockServer::start_single("Strict");
    let mut connection = Connection::open(server.addr());

    // Each case: target, request headers, knob name and value the error must contain.
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );
    let cases: [Case; 7] = [
        ("/x?delay=soon", &[], "delay", "soon"),
        ("/x?size=1.5", &[], "size", "1.5"),
        ("/x?chunks=", &[], "chunks", "\"\""),
        ("/x?chunks=2&chunk_delay=-1", &[], "chunk_delay", "-1"),
        ("/x?status=600", &[], "status", "600"),
        ("/x?status=100", &[], "status", "100"),
        ("/x", &[("X-Mock-Delay", "later")], "X-Mock-Delay", "later"),
    ];
    for (target, headers, knob, value) in cases {
        let response = connection.request("GET", target, headers, b"");
        assert_eq!(response.status, 400, "{target} {headers:?}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.header("x-mock-server"), Some("Strict"));

        let body = response.json();
        assert_eq!(body["status"], 400, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(knob), "{error:?} does not name {knob}");
        assert!(error.contains(value), "{error:?} does not name {value}");
    }
}

#[test]
fn size_with_chunks_gets_400() {
    let server = MockServer::start_single("Strict-2");
    let response = Connection::open(server.addr()).get("/x?size=5&chunks=5");
    assert_eq!(response.status, 400);
    let error = response.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("size"), "{error}");
    assert!(error.contains("chunks"), "{error}");
}

#[test]
fn malformed_request_does_not_stop_server() {
    let server = MockServer::start_single("Sturdy");

    let mut bad = Connection::open(server.addr());
    bad.stream()
        .write_all(b"NOT HTTP AT ALL\r\n\x00\x01\r\n\r\n")
        .unwrap();
    let (status, _) = bad.read_head();
    assert_eq!(status, 400);

    let response = Connection::open(server.addr()).get("/health");
    assert_eq!(response.status, 200);
}
