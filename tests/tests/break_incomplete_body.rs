//! A client that announces a body and stops sending it is at fault, so the gateway must not
//! respond with a 5xx status that blames the backend.

use gateway_tests::{GatewayProcess, MockProcess, RawConnection};
use std::time::Duration;

#[test]
#[ignore = "an unfinished request body gets 504 backend_timeout after proxy.response_timeout"]
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
