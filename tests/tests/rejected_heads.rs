//! Request heads that the gateway's server rejects before routing. Each gets its 4xx and a
//! closed connection, one access line on stdout and one request log row. The row has the
//! method, path, User-Agent and client address as far as the head could be read.

use gateway_tests::{GatewayProcess, MockProcess, RawConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};
use std::path::Path;
use std::time::{Duration, Instant};

/// The client address that a trusted proxy names in `X-Forwarded-For`.
const FORWARDED_CLIENT: &str = "203.0.113.7";

/// One malformed request and what the gateway must record for it.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
    error_kind: &'static str,
    /// The method and path in the row, `-` when the request line did not parse.
    method: &'static str,
    path: &'static str,
    /// The User-Agent in the row: present only when every line of the head parsed.
    user_agent: Option<&'static str>,
    client_ip: &'static str,
}

fn cases() -> Vec<Case> {
    let whole = |name, path: &'static str, framing: &str, status, error_kind| Case {
        name,
        bytes: format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nUser-Agent: probe/1\r\n\
             X-Forwarded-For: {FORWARDED_CLIENT}\r\n{framing}\r\n"
        )
        .into_bytes(),
        status,
        error_kind,
        method: "POST",
        path,
        user_agent: Some("probe/1"),
        client_ip: FORWARDED_CLIENT,
    };
    let bad_field = |name, path: &'static str, field: &[u8]| {
        let mut bytes = format!(
            "GET {path} HTTP/1.1\r\nHost: a\r\nUser-Agent: probe/1\r\n\
             X-Forwarded-For: {FORWARDED_CLIENT}\r\n"
        )
        .into_bytes();
        bytes.extend_from_slice(field);
        bytes.extend_from_slice(b"\r\n\r\n");
        Case {
            name,
            bytes,
            status: 400,
            error_kind: "invalid_request",
            method: "GET",
            path,
            user_agent: None,
            client_ip: "127.0.0.1",
        }
    };
    let mut long_line = b"GET /api/".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', 70 * 1024));
    long_line.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    let mut large_head = b"GET /api/large HTTP/1.1\r\nUser-Agent: probe/1\r\nX-Long: ".to_vec();
    large_head.extend(std::iter::repeat_n(b'a', 70 * 1024));
    large_head.extend_from_slice(b"\r\n\r\n");

    vec![
        whole(
            "two different Content-Lengths",
            "/api/lengths",
            "Content-Length: 1\r\nContent-Length: 2\r\n",
            400,
            "invalid_request",
        ),
        whole(
            "Content-Length with Transfer-Encoding",
            "/api/smuggle",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            400,
            "invalid_request",
        ),
        whole(
            "Transfer-Encoding not ending in chunked",
            "/api/gzip",
            "Transfer-Encoding: chunked, gzip\r\n",
            400,
            "unsupported_transfer_coding",
        ),
        bad_field("folded field", "/api/folded", b" folded"),
        bad_field("space before colon", "/api/space", b"X-Space : 1"),
        bad_field("NUL in value", "/api/nul", b"X-Nul: a\0b"),
        bad_field("CR in value", "/api/cr", b"X-Cr: a\rb"),
        Case {
            name: "bad request line",
            bytes: b"\x16\x03\x01\x00\xa5 \"quoted\" HTTP/1.1\r\n\r\n".to_vec(),
            status: 400,
            error_kind: "invalid_request",
            method: "-",
            path: "-",
            user_agent: None,
            client_ip: "127.0.0.1",
        },
        Case {
            name: "HTTP/2 connection preface",
            bytes: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            status: 505,
            error_kind: "invalid_request",
            method: "-",
            path: "-",
            user_agent: None,
            client_ip: "127.0.0.1",
        },
        Case {
            name: "request line too long",
            bytes: long_line,
            status: 414,
            error_kind: "invalid_request",
            method: "-",
            path: "-",
            user_agent: None,
            client_ip: "127.0.0.1",
        },
        Case {
            name: "head too large",
            bytes: large_head,
            status: 431,
            error_kind: "invalid_request",
            method: "GET",
            path: "/api/large",
            user_agent: None,
            client_ip: "127.0.0.1",
        },
    ]
}

/// One row of the request log.
#[derive(Debug)]
struct LoggedRow {
    request_id: String,
    method: String,
    path: String,
    status: i64,
    latency_us: i64,
    client_ip: Option<String>,
    user_agent: Option<String>,
    route: Option<String>,
    backend: Option<String>,
    error_kind: Option<String>,
}

async fn read_rows(path: &Path) -> Vec<LoggedRow> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(5));
    let mut connection = SqliteConnection::connect_with(&options)
        .await
        .unwrap_or_else(|error| panic!("open {}: {error}", path.display()));
    let rows = sqlx::query(
        "SELECT request_id, method, path, status, latency_us, client_ip, user_agent, route, \
         backend, error_kind FROM requests ORDER BY id",
    )
    .fetch_all(&mut connection)
    .await
    .expect("select rows");
    connection.close().await.expect("close database");
    rows.iter()
        .map(|row| LoggedRow {
            request_id: row.get("request_id"),
            method: row.get("method"),
            path: row.get("path"),
            status: row.get("status"),
            latency_us: row.get("latency_us"),
            client_ip: row.get("client_ip"),
            user_agent: row.get("user_agent"),
            route: row.get("route"),
            backend: row.get("backend"),
            error_kind: row.get("error_kind"),
        })
        .collect()
}

/// Waits up to 10 seconds for the request log to hold `count` rows, and returns them.
async fn wait_for_rows(path: &Path, count: usize) -> Vec<LoggedRow> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = read_rows(path).await;
        if rows.len() >= count || Instant::now() >= deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rejected_heads_are_logged() {
    let mock = MockProcess::start("Backend");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  trusted_proxies: ["127.0.0.1"]
health_check:
  enabled: false
request_log:
  database: "{{dir}}/gateway.db"
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    ));

    let cases = cases();
    for case in &cases {
        let mut connection = RawConnection::open(gateway.addr).expect("connect");
        connection
            .set_read_timeout(Duration::from_secs(5))
            .expect("read timeout");
        connection.send(&case.bytes).expect(case.name);
        let response = connection
            .read_response()
            .unwrap_or_else(|error| panic!("{}: no response: {error}", case.name));
        assert_eq!(response.status, case.status, "{}", case.name);
        assert!(
            connection.wait_closed(),
            "{}: connection left open",
            case.name
        );
    }

    let rows = wait_for_rows(&gateway.dir().join("gateway.db"), cases.len()).await;
    assert_eq!(rows.len(), cases.len(), "one row per request: {rows:#?}");
    for (case, row) in cases.iter().zip(&rows) {
        let name = case.name;
        assert_eq!(row.status, i64::from(case.status), "{name}: {row:?}");
        assert_eq!(row.error_kind.as_deref(), Some(case.error_kind), "{name}");
        assert_eq!(row.method, case.method, "{name}");
        assert_eq!(row.path, case.path, "{name}");
        assert_eq!(row.user_agent.as_deref(), case.user_agent, "{name}");
        assert_eq!(row.client_ip.as_deref(), Some(case.client_ip), "{name}");
        assert_eq!(row.request_id.len(), 32, "{name}: {row:?}");
        assert!(row.latency_us >= 0, "{name}: {row:?}");
        // Only a rejected transfer coding names the route its path matches, as the router's
        // own rejection of that kind does.
        let route = (case.error_kind == "unsupported_transfer_coding").then_some("/api/*rest");
        assert_eq!(row.route.as_deref(), route, "{name}");
        assert_eq!(row.backend, None, "{name}");
    }

    for case in &cases {
        let status = format!("status={}", case.status);
        let error = format!("error=\"{}\"", case.error_kind);
        let method = format!("method={}", case.method);
        let path = format!("path=\"{}\"", case.path);
        let client_ip = format!("client_ip={}", case.client_ip);
        let parts = [
            " INFO access: ",
            &method,
            &path,
            &status,
            &error,
            &client_ip,
        ];
        let line = gateway.wait_for_line(&parts, Duration::from_secs(5));
        assert!(
            line.is_some(),
            "{}: no access line with {parts:?} in:\n{}",
            case.name,
            gateway.lines().join("\n")
        );
    }
    let access_lines = gateway
        .lines()
        .iter()
        .filter(|line| line.contains(" INFO access: "))
        .count();
    assert_eq!(access_lines, cases.len(), "one access line per request");
}
