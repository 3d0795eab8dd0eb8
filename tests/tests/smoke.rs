//! The smallest end-to-end check: one gateway, one mock backend, one proxied request.

use gateway_tests::{GatewayProcess, MockProcess, get};

#[tokio::test]
async fn request_reaches_backend() {
    let mock = MockProcess::start("Solo");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
request_log:
  database: "{{dir}}/gateway.db"
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    ));
    let reply = get(&format!("{}/api/hello?x=1", gateway.url)).await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["server"], "Solo");
    assert_eq!(body["path"], "/api/hello");
    assert_eq!(body["query"], "x=1");
}
