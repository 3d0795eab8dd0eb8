//! Configuration files that the gateway cannot serve as written. `apigateway --check` must
//! reject each with the field's path and exit status 2, as serving does.

use gateway_tests::binary;
use std::process::{Command, Output};

/// Writes `text` to a temporary file and runs `apigateway` on it with `args` before
/// `--config`, until it exits.
fn run_on(text: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, text).expect("write config");
    Command::new(binary("apigateway"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run apigateway")
}

/// Writes `text` to a temporary file and runs `apigateway --check` on it.
fn check(text: &str) -> Output {
    run_on(text, &["--check"])
}

fn assert_rejected(text: &str, field: &str) {
    let output = check(text);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "--check accepted the file; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.contains(field), "message names no {field}: {stderr}");
}

#[test]
fn check_rejects_an_invalid_log_level() {
    assert_rejected(
        r#"
logging:
  level: "foo=bar=baz["
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#,
        "logging.level",
    );
}

#[test]
fn check_rejects_a_backend_port_out_of_range() {
    assert_rejected(
        r#"
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:99999"
"#,
        "routes[0].backends[0].url",
    );
}

#[test]
fn check_rejects_credentials_in_a_backend_url() {
    assert_rejected(
        r#"
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://user:secret@127.0.0.1:9001"
"#,
        "routes[0].backends[0].url",
    );
}

#[test]
fn check_rejects_a_host_that_is_no_address() {
    assert_rejected(
        r#"
server:
  host: "not a host"
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#,
        "server.host",
    );
}

/// A name under `.invalid` never resolves, by its reservation for that purpose.
const UNRESOLVABLE_HOST_CONFIG: &str = r#"
server:
  host: "gateway.invalid"
  port: 19981
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#;

#[test]
fn check_rejects_unresolvable_host() {
    assert_rejected(UNRESOLVABLE_HOST_CONFIG, "server.host");
}

#[test]
fn serving_unresolvable_host_exits_2() {
    let output = run_on(UNRESOLVABLE_HOST_CONFIG, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("server.host"),
        "message names no field: {stderr}"
    );
    assert!(
        stderr.contains("gateway.invalid"),
        "message names no host: {stderr}"
    );
}

/// 192.0.2.0/24 is reserved for documentation (RFC 5737), so no test machine has it.
const FOREIGN_HOST_CONFIG: &str = r#"
server:
  host: "192.0.2.1"
  port: 19982
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#;

#[test]
fn check_rejects_an_address_of_another_machine() {
    assert_rejected(FOREIGN_HOST_CONFIG, "server.host");
}

#[test]
fn serving_an_address_of_another_machine_exits_2() {
    let output = run_on(FOREIGN_HOST_CONFIG, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("server.host"),
        "message names no field: {stderr}"
    );
}

#[test]
fn check_passes_while_another_process_holds_the_port() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = holder.local_addr().expect("address").port();
    let output = check(&format!(
        r#"
server:
  host: "127.0.0.1"
  port: {port}
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#
    ));
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_rejects_folder_as_database() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let folder = dir.path().display().to_string();
    assert_rejected(
        &format!(
            r#"
request_log:
  database: "{folder}"
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#
        ),
        "request_log.database",
    );
}

#[test]
fn check_rejects_files_that_are_no_request_log() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let text_file = dir.path().join("notes.db");
    std::fs::write(&text_file, "not a database\n").expect("write text file");
    for (database, problem) in [
        (text_file.display().to_string(), "not an SQLite database"),
        ("/dev/null".to_owned(), "not an SQLite database"),
    ] {
        let output = check(&format!(
            r#"
request_log:
  database: "{database}"
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#
        ));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{database}: {stderr}");
        assert!(
            stderr.contains("request_log.database"),
            "{database}: {stderr}"
        );
        assert!(stderr.contains(problem), "{database}: {stderr}");
    }
    let text = std::fs::read_to_string(&text_file).expect("read text file");
    assert_eq!(text, "not a database\n", "the check changed the file");
}

#[test]
fn check_rejects_a_route_path_that_cannot_match() {
    assert_rejected(
        r#"
routes:
  - path: "/api/ünïcödé/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#,
        "routes[0].path",
    );
}

#[test]
fn check_rejects_too_many_workers() {
    assert_rejected(
        r#"
server:
  workers: 100000
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#,
        "server.workers",
    );
}

/// A read or write timeout of 1ns expires before any request can be served, and a shutdown
/// that waits for billions of days never ends.
#[test]
fn check_rejects_timeouts_out_of_range() {
    let output = check(
        r#"
server:
  read_timeout: 1ns
  write_timeout: 1ns
  shutdown_timeout: 9999999999d
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    for field in [
        "server.read_timeout",
        "server.write_timeout",
        "server.shutdown_timeout",
    ] {
        let line = stderr
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("{field} not named: {stderr}"));
        assert!(
            line.contains("between 1ms and 7d"),
            "{field} gives no range: {line}"
        );
    }
}

#[test]
fn check_rejects_routes_under_admin_paths() {
    for path in ["/health", "/admin/*rest"] {
        assert_rejected(
            &format!(
                r#"
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
  - path: "{path}"
    backends:
      - url: "http://127.0.0.1:9002"
"#
            ),
            "routes[1].path",
        );
    }
}

#[test]
fn check_rejects_a_wildcard_inside_an_origin() {
    assert_rejected(
        r#"
cors:
  enabled: true
  allowed_origins: ["https://*.example.com"]
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#,
        "cors.allowed_origins[0]",
    );
}

/// Each worker allocates its backend pools at full size when the gateway starts, so a count
/// in the quintillions would make the start panic.
#[test]
fn check_rejects_a_huge_pool() {
    assert_rejected(
        r#"
proxy:
  pool_max_idle_per_backend: 1000000000000000000
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#,
        "proxy.pool_max_idle_per_backend: must be at most 10000",
    );
}

/// A health check path that is no valid request target makes every probe fail, which takes
/// every backend out of rotation.
#[test]
fn check_rejects_invalid_health_path() {
    assert_rejected(
        r#"
health_check:
  path: "/h h"
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#,
        "health_check.path: \"/h h\" is not a valid request path",
    );
}

/// No request reaches a route with a `.` or `..` segment, since the gateway responds 400 to
/// those, nor one with an invalid percent-encoding. An empty segment matches as if it were not
/// there, so it is rejected as well.
#[test]
fn check_rejects_unreachable_route_paths() {
    for path in ["/f/../g", "/k/.", "/j/%2e%2e", "/k/%zz", "/e//f"] {
        assert_rejected(
            &format!(
                r#"
routes:
  - path: "{path}"
    backends:
      - url: "http://127.0.0.1:9001"
"#
            ),
            "routes[0].path",
        );
    }
}

/// Routes are matched on a normal form of the path, so two spellings of one path are the same
/// route, which the start would reject as a conflict.
#[test]
fn check_rejects_equivalent_route_spellings() {
    assert_rejected(
        r#"
routes:
  - path: "/api/login"
    backends:
      - url: "http://127.0.0.1:9001"
  - path: "/api/%6Cogin"
    backends:
      - url: "http://127.0.0.1:9001"
"#,
        "routes[1].path",
    );
}

#[test]
fn check_names_path_both_routes_match() {
    assert_rejected(
        r#"
routes:
  - path: "/a/:id"
    backends:
      - url: "http://127.0.0.1:9001"
  - path: "/a/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
"#,
        "routes[1].path: \"/a/*rest\" conflicts with routes[0].path \"/a/:id\": both match /a/1",
    );
}
