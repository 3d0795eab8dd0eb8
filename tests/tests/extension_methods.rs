//! Extension methods end to end, through the real gateway to a real mock backend. A route that
//! lists PURGE and WebDAV's PROPFIND forwards them and rejects other methods with 405 and an
//! `Allow` that names them. CORS preflights follow `allowed_methods`, and the access line and
//! the request log record the methods as sent.

use bytes::Bytes;
use gateway_tests::{GatewayProcess, MockProcess, Reply, get, request};
use http::Method;
use serde_json::Value;
use std::time::{Duration, Instant};

const ORIGIN: &str = "https://app.example.com";

/// The route's `Allow`: GET takes HEAD, and the extension methods follow in listed order.
const ALLOW: &str = "GET, HEAD, PURGE, PROPFIND";

/// Starts a mock backend and a gateway whose `/cache/*rest` route takes GET, PURGE and
/// PROPFIND, and whose CORS policy allows GET and PURGE.
fn start(name: &str) -> (MockProcess, GatewayProcess) {
    let mock = MockProcess::start(name);
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
health_check:
  enabled: false
request_log:
  database: "{{dir}}/gateway.db"
  flush_interval: 20ms
cors:
  enabled: true
  allowed_origins: ["{ORIGIN}"]
  allowed_methods: [GET, PURGE]
routes:
  - path: "/cache/*rest"
    backends:
      - url: "{}"
    methods: [GET, PURGE, PROPFIND]
"#,
        mock.url
    ));
    (mock, gateway)
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).expect("valid method")
}

/// Sends `method` to `url` with `headers` and `body`, panicking when the exchange fails.
async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: &'static str) -> Reply {
    request(
        method.clone(),
        url,
        headers,
        Bytes::from_static(body.as_bytes()),
    )
    .await
    .unwrap_or_else(|error| panic!("{method} {url} failed: {error:?}"))
}

/// Reads the number of requests the mock backend has echoed.
async fn backend_requests(mock: &MockProcess) -> u64 {
    let reply = get(&format!("{}/_mock/stats", mock.url)).await;
    assert_eq!(reply.status, 200, "mock stats status");
    reply.json()["requests"]
        .as_u64()
        .expect("requests is a number")
}

/// Polls `/admin/logs` until a row for `path` appears, for at most 5 seconds.
async fn logged_row(gateway: &GatewayProcess, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = get(&format!("{}/admin/logs?limit=100", gateway.url)).await;
        assert_eq!(reply.status, 200, "/admin/logs");
        let body = reply.json();
        let entries = body["entries"].as_array().expect("entries array");
        if let Some(row) = entries.iter().find(|entry| entry["path"] == path) {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no request log row for {path} in {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn purge_reaches_backend() {
    let (mock, gateway) = start("Purge");

    let reply = send(
        method("PURGE"),
        &format!("{}/cache/page?v=2", gateway.url),
        &[],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["server"], "Purge");
    assert_eq!(echo["method"], "PURGE");
    assert_eq!(echo["path"], "/cache/page");
    assert_eq!(echo["query"], "v=2");

    // A WebDAV method with a body reaches the backend with the body.
    let reply = send(
        method("PROPFIND"),
        &format!("{}/cache/dav", gateway.url),
        &[("depth", "1")],
        "<propfind/>",
    )
    .await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["method"], "PROPFIND");
    assert_eq!(echo["path"], "/cache/dav");
    assert_eq!(echo["body_length"], "<propfind/>".len(), "{echo}");
    assert_eq!(backend_requests(&mock).await, 2);
}

#[tokio::test]
async fn unlisted_method_gets_405() {
    let (mock, gateway) = start("NotAllowed");

    // MKCOL is not listed, and methods are case-sensitive, so `purge` is not PURGE.
    for name in ["MKCOL", "purge", "POST"] {
        let reply = send(method(name), &format!("{}/cache/x", gateway.url), &[], "").await;
        assert_eq!(reply.status, 405, "{name}");
        assert_eq!(reply.header("allow"), ALLOW, "{name}");
    }
    assert_eq!(backend_requests(&mock).await, 0);
}

#[tokio::test]
async fn purge_preflight_follows_allowed_methods() {
    let (mock, gateway) = start("Preflight");
    let preflight = |requested: &'static str| {
        let url = format!("{}/cache/x", gateway.url);
        async move {
            let headers = [
                ("origin", ORIGIN),
                ("access-control-request-method", requested),
            ];
            send(Method::OPTIONS, &url, &headers, "").await
        }
    };

    let allowed = preflight("PURGE").await;
    assert_eq!(allowed.status, 204);
    assert_eq!(allowed.header("access-control-allow-origin"), ORIGIN);
    assert_eq!(allowed.header("access-control-allow-methods"), "GET, PURGE");

    // The route takes PROPFIND, but `allowed_methods` does not list it.
    let refused = preflight("PROPFIND").await;
    assert_eq!(refused.status, 204);
    assert!(
        !refused.headers.contains_key("access-control-allow-origin"),
        "{:?}",
        refused.headers
    );
    assert_eq!(backend_requests(&mock).await, 0);

    // The actual PURGE from the allowed origin gets the CORS headers on the backend's response.
    let reply = send(
        method("PURGE"),
        &format!("{}/cache/x", gateway.url),
        &[("origin", ORIGIN)],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), ORIGIN);
}

#[tokio::test]
async fn purge_is_logged_as_sent() {
    let (_mock, gateway) = start("Logged");

    let forwarded = send(
        method("PURGE"),
        &format!("{}/cache/logged", gateway.url),
        &[],
        "",
    )
    .await;
    assert_eq!(forwarded.status, 200);
    let rejected = send(
        method("MKCOL"),
        &format!("{}/cache/rejected", gateway.url),
        &[],
        "",
    )
    .await;
    assert_eq!(rejected.status, 405);

    for (name, path, status) in [
        ("PURGE", "/cache/logged", "200"),
        ("MKCOL", "/cache/rejected", "405"),
    ] {
        let line = gateway
            .wait_for_line(
                &[&format!("method={name} "), &format!("path=\"{path}\"")],
                Duration::from_secs(5),
            )
            .unwrap_or_else(|| panic!("no access line in:\n{}", gateway.lines().join("\n")));
        assert!(line.contains(&format!("status={status} ")), "{line}");
    }

    let row = logged_row(&gateway, "/cache/logged").await;
    assert_eq!(row["method"], "PURGE", "{row}");
    assert_eq!(row["status"], 200, "{row}");
    assert_eq!(row["route"], "/cache/*rest", "{row}");
    let row = logged_row(&gateway, "/cache/rejected").await;
    assert_eq!(row["method"], "MKCOL", "{row}");
    assert_eq!(row["status"], 405, "{row}");
    assert_eq!(row["error_kind"], "method_not_allowed", "{row}");
}
