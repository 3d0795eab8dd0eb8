//! The access line as a user reads it on the gateway's stdout: the JSON format, one line per
//! request up to a clean stop, and the log directive that turns the lines off. Lines of requests
//! cut off by a stop, and a stop with an unread stdout, are tested in `stop_edges.rs`.

use bytes::Bytes;
use gateway_tests::{GatewayProcess, MockProcess, get, request};
use http::Method;
use std::time::Duration;

/// Starts a gateway with one route to `backend_url` and `logging` as its logging section.
fn gateway(backend_url: &str, logging: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
request_log:
  enabled: false
health_check:
  enabled: false
routes:
  - path: "/api/*rest"
    backends:
      - url: "{backend_url}"
logging:
{logging}
"#
    ))
}

/// Returns the access lines among `lines`, in either format.
fn access_lines(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|line| line.contains(" INFO access: ") || line.contains("\"target\":\"access\""))
        .collect()
}

#[tokio::test]
async fn json_access_line_parses_back() {
    let mock = MockProcess::start("Json");
    let gateway = gateway(&mock.url, "  format: json");

    let url = format!("{}/api/items/%22quoted%22?page=2", gateway.url);
    let reply = request(
        Method::GET,
        &url,
        &[("x-request-id", "client-chosen-id.42")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);

    let line = gateway
        .wait_for_line(&["\"target\":\"access\""], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no access line in:\n{}", gateway.lines().join("\n")));
    let value: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"));
    assert_eq!(value["level"], "INFO");
    assert_eq!(value["method"], "GET");
    assert_eq!(value["path"], "/api/items/%22quoted%22");
    assert_eq!(value["status"], 200);
    assert_eq!(value["backend"], mock.url.as_str());
    assert_eq!(value["client_ip"], "127.0.0.1");
    assert_eq!(value["request_id"], "client-chosen-id.42");
    assert_eq!(value["retried"], false);
    assert_eq!(value["error"], "-");
    assert_eq!(value["completed"], true);
    assert!(value["latency_ms"].as_f64().is_some(), "{line}");
    let timestamp = value["timestamp"].as_str().unwrap_or_default();
    assert!(timestamp.ends_with('Z'), "{line}");
    assert_eq!(
        timestamp.len(),
        "2026-01-31T12:00:00.250000Z".len(),
        "{line}"
    );
}

#[tokio::test]
async fn clean_stop_prints_every_line() {
    let mock = MockProcess::start("Count");
    let mut gateway = gateway(&mock.url, "  format: text");

    let total = 300;
    for n in 0..total {
        let reply = get(&format!("{}/api/count/{n}", gateway.url)).await;
        assert_eq!(reply.status, 200);
    }
    gateway.signal("TERM");
    let status = gateway.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );

    let lines = gateway.lines();
    let access = access_lines(&lines);
    assert_eq!(access.len(), total, "one line per request");
    for n in 0..total {
        let path = format!("path=\"/api/count/{n}\" ");
        let count = access.iter().filter(|line| line.contains(&path)).count();
        assert_eq!(count, 1, "lines for request {n}");
    }
    // The lines are out before the gateway reports its stop.
    let stopped = lines.iter().position(|line| line.contains("stopped"));
    let last_access = lines
        .iter()
        .rposition(|line| line.contains(" INFO access: "));
    assert!(
        last_access < stopped,
        "stopped at {stopped:?}, last line at {last_access:?}"
    );
}

/// Access lines follow `logging.access_log`, not the level: a `warn` level keeps them, and
/// only a directive for the `access` target turns them off.
#[tokio::test]
async fn level_leaves_lines_unless_access_named() {
    let mock = MockProcess::start("Quiet");
    // The gateway's own target stays at info, so that its start line still shows.
    let warn = gateway(&mock.url, "  level: \"warn,apigateway=info\"");
    let off = gateway(&mock.url, "  level: \"warn,apigateway=info,access=off\"");

    for n in 0..5 {
        assert_eq!(
            get(&format!("{}/api/quiet/{n}", warn.url)).await.status,
            200
        );
        assert_eq!(get(&format!("{}/api/quiet/{n}", off.url)).await.status, 200);
    }
    // Longer than the writer's flush interval, so a line would have been written by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(access_lines(&warn.lines()).len(), 5, "{:?}", warn.lines());
    assert!(access_lines(&off.lines()).is_empty(), "{:?}", off.lines());
}
