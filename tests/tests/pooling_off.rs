//! The `Connection` option that requests carry to backends, with pooling on and off.

use gateway_tests::{GatewayProcess, MockProcess, get};

/// Starts a gateway in front of `mock` with `pool_max_idle_per_backend` set to `max_idle`.
fn gateway(mock: &MockProcess, max_idle: u32) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  workers: 2
proxy:
  pool_max_idle_per_backend: {max_idle}
request_log:
  database: "{{dir}}/gateway.db"
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    ))
}

#[tokio::test]
async fn pooling_off_sends_connection_close() {
    let mock = MockProcess::start("Unpooled");
    let gateway = gateway(&mock, 0);
    for i in 0..3 {
        let reply = get(&format!("{}/api/item/{i}", gateway.url)).await;
        assert_eq!(reply.status, 200, "request {i}");
        let body = reply.json();
        assert_eq!(
            body["headers"]["connection"], "close",
            "request {i}: {body}"
        );
    }
}

#[tokio::test]
async fn pooling_on_keeps_connection_open() {
    let mock = MockProcess::start("Pooled");
    let gateway = gateway(&mock, 1);
    for i in 0..3 {
        let reply = get(&format!("{}/api/item/{i}", gateway.url)).await;
        assert_eq!(reply.status, 200, "request {i}");
        let body = reply.json();
        assert!(
            body["headers"].get("connection").is_none(),
            "request {i}: {body}"
        );
    }
}
