//! Configuration errors as a user meets them: `apigateway --check` and a plain start both
//! name the file, every invalid field with its path, and what to write instead. Start errors
//! (a taken port, an unopenable request log) and the read commands' argument errors name the
//! field or option to change too.

use gateway_tests::{GatewayProcess, binary, free_port};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `apigateway` with `args` and waits for it; every case here exits without serving.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(binary("apigateway"));
    child.args(args).env_remove("RUST_LOG");
    child.output().expect("run apigateway")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn repo_file(name: &str) -> String {
    format!("{}/../{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A file with one problem of each kind: zero port, zero weight, invalid URL, a standard
/// method in lowercase, a route that repeats another's path, and a scheme other than http.
const BROKEN: &str = r#"
server:
  host: 127.0.0.1
  port: 0
routes:
  - path: "/api/users/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
        weight: 0
      - url: "not a url"
    methods: ["GET", "post"]
  - path: "/api/users/*rest"
    backends:
      - url: "ftp://127.0.0.1:9002"
"#;

/// Each invalid field of [`BROKEN`] and a word of the fix its message must contain.
const BROKEN_FIELDS: [(&str, &str); 6] = [
    ("server.port", "65535"),
    ("routes[0].backends[0].weight", "at least 1"),
    ("routes[0].backends[1].url", "http://"),
    ("routes[0].methods[1]", "POST"),
    ("routes[1].path", "distinct path"),
    ("routes[1].backends[0].url", "http://"),
];

#[test]
fn shipped_configs_pass_check() {
    for name in ["config/gateway.yaml", "config/gateway.example.yaml"] {
        let path = repo_file(name);
        let output = run(&["--check", "--config", &path]);
        assert!(
            output.status.success(),
            "{name}: exit {} stderr:\n{}",
            output.status,
            stderr(&output)
        );
        let text = stdout(&output);
        assert!(text.contains("ok"), "{name}: stdout {text:?}");
        assert!(text.contains(name), "{name}: stdout {text:?}");
    }
}

/// Some Windows editors save UTF-8 with a byte order mark, which YAML allows.
#[test]
fn check_accepts_byte_order_mark() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("gateway.yaml");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(ROUTE.as_bytes());
    std::fs::write(&path, bytes).expect("write config");
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    assert!(
        output.status.success(),
        "exit {} stderr:\n{}",
        output.status,
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("ok"),
        "stdout {:?}",
        stdout(&output)
    );
}

#[test]
fn check_lists_every_problem() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = write_config(dir.path(), BROKEN);
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    assert!(!output.status.success(), "exit {}", output.status);
    let text = stderr(&output);
    assert!(text.contains(&path_text), "file not named:\n{text}");
    for (field, fix) in BROKEN_FIELDS {
        let line = text
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("{field} not named:\n{text}"));
        assert!(line.contains(fix), "{field} gives no fix ({fix:?}): {line}");
    }
    assert!(
        !stdout(&output).contains("ok"),
        "stdout says ok: {}",
        stdout(&output)
    );
}

/// YAML's null and boolean words and numbers reach a method list as text, so `--check`
/// must reject them rather than pass a route that takes a method named `~`.
#[test]
fn check_rejects_yaml_words_as_methods() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = format!("{ROUTE}    methods: [PURGE, ~, null, yes, 12, .inf]\n");
    let path = write_config(dir.path(), &config);
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{text}");
    for (field, reason) in [
        ("routes[0].methods[1]", "YAML reads ~ as a null value"),
        (
            "routes[0].methods[2]",
            "YAML reads the word null as a null value",
        ),
        (
            "routes[0].methods[3]",
            "YAML 1.1 reads the word yes as a boolean",
        ),
        ("routes[0].methods[4]", "must start with a letter"),
        ("routes[0].methods[5]", "must start with a letter"),
    ] {
        let line = text
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("{field} not named:\n{text}"));
        assert!(
            line.contains(reason),
            "{field} gives no reason ({reason:?}): {line}"
        );
    }
    assert!(
        !text.contains("routes[0].methods[0]"),
        "PURGE rejected:\n{text}"
    );
}

#[test]
fn start_with_invalid_config_fails() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = write_config(dir.path(), BROKEN);
    let path_text = path.display().to_string();

    let output = run(&["--config", &path_text]);
    assert!(!output.status.success(), "exit {}", output.status);
    let text = stderr(&output);
    assert!(text.contains(&path_text), "file not named:\n{text}");
    for (field, _) in BROKEN_FIELDS {
        assert!(text.contains(field), "{field} not named:\n{text}");
    }
    assert!(
        !stdout(&output).contains("listening"),
        "started anyway: {}",
        stdout(&output)
    );
}

#[test]
fn unknown_field_names_field_and_line() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = write_config(
        dir.path(),
        "server:\n  host: 127.0.0.1\n  hots: example\nroutes: []\n",
    );
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    assert!(!output.status.success(), "exit {}", output.status);
    let text = stderr(&output);
    assert!(text.contains(&path_text), "file not named:\n{text}");
    assert!(text.contains("hots"), "field not named:\n{text}");
    assert!(
        text.contains(&format!("{path_text}:3")) || text.contains("line 3"),
        "line 3 not named:\n{text}"
    );
    assert!(
        text.contains("host"),
        "valid field names not listed:\n{text}"
    );
}

#[test]
fn nested_unknown_field_names_path() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = write_config(
        dir.path(),
        "routes:\n  - path: \"/a/*rest\"\n    backends:\n      - url: \"http://127.0.0.1:1\"\n        wieght: 2\n",
    );
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    assert!(!output.status.success(), "exit {}", output.status);
    let text = stderr(&output);
    assert!(
        text.contains("routes[0].backends[0].wieght"),
        "field path not named:\n{text}"
    );
    assert!(
        text.contains("weight"),
        "the right name is not offered:\n{text}"
    );
}

#[test]
fn unresolvable_backend_host_warned() {
    let dir = tempfile::tempdir().expect("temporary folder");
    // `.invalid` names never resolve (RFC 2606).
    let path = write_config(
        dir.path(),
        "server:\n  host: 127.0.0.1\nrequest_log:\n  enabled: false\nroutes:\n  - path: \"/a/*rest\"\n    backends:\n      - url: \"http://127.0.0.1:1\"\n      - url: \"http://backend.invalid:8080\"\n",
    );
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    assert!(output.status.success(), "exit {}", output.status);
    let text = stderr(&output);
    assert!(
        text.contains(
            "warning: routes[0].backends[1].url: host \"backend.invalid\" does not resolve"
        ),
        "{text}"
    );
    assert!(!text.contains("backends[0]"), "{text}");
}

/// The parser's own message already contains the field path and the position, so the error
/// line should contain each once.
#[test]
fn parse_error_says_each_fact_once() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = write_config(dir.path(), "server:\n  host: 127.0.0.1\n  hots: example\n");
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    let text = stderr(&output);
    assert_eq!(text.matches("server").count(), 1, "{text}");
    assert!(!text.contains("at line 3 column 3"), "{text}");
}

#[test]
fn wrong_type_names_field() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = write_config(dir.path(), "server:\n  port: abc\n");
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    assert!(!output.status.success(), "exit {}", output.status);
    let text = stderr(&output);
    assert!(text.contains("server.port"), "field not named:\n{text}");
    assert!(text.contains("abc"), "value not shown:\n{text}");
}

#[test]
fn missing_file_names_path() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("absent").join("gateway.yaml");
    let path_text = path.display().to_string();

    for args in [
        vec!["--check", "--config", &path_text],
        vec!["--config", &path_text],
    ] {
        let output = run(&args);
        assert!(!output.status.success(), "{args:?}: exit {}", output.status);
        let text = stderr(&output);
        assert!(
            text.contains(&path_text),
            "{args:?}: path not named:\n{text}"
        );
        assert!(
            text.contains("failed to read"),
            "{args:?}: failure not described:\n{text}"
        );
    }
}

#[test]
fn folder_as_config_gives_hint() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("create folder");
    let with_file = dir.path().join("config");
    std::fs::create_dir(&with_file).expect("create folder");
    let inside = write_config(&with_file, ROUTE);

    for (folder, hint) in [
        (
            &empty,
            "pass the YAML configuration file itself with --config PATH".to_owned(),
        ),
        (
            &with_file,
            format!(
                "pass the configuration file in it, --config {}",
                inside.display()
            ),
        ),
    ] {
        let folder_text = folder.display().to_string();
        let output = run(&["--check", "--config", &folder_text]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{folder_text}: exit {}",
            output.status
        );
        let text = stderr(&output);
        assert!(
            text.contains(&format!("failed to read config file {folder_text}")),
            "{folder_text}: failure not described:\n{text}"
        );
        assert!(
            text.contains(&format!("hint: {folder_text} is a folder: {hint}")),
            "{folder_text}: no hint:\n{text}"
        );
    }
}

#[test]
fn version_prints_version() {
    let output = run(&["--version"]);
    assert!(output.status.success(), "exit {}", output.status);
    assert_eq!(
        stdout(&output).trim(),
        format!("apigateway {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Runs `apigateway` with `args` like [`run`], but kills it after 10 seconds, for cases that
/// would serve if the error under test were missed.
fn run_bounded(args: &[&str]) -> Output {
    let mut child = Command::new(binary("apigateway"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start apigateway");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("poll apigateway").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "apigateway was still running after 10 s; stdout:\n{}",
                stdout(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

/// A route to a port where nothing listens; these cases stop before any request.
const ROUTE: &str =
    "routes:\n  - path: /api/*rest\n    backends:\n      - url: http://127.0.0.1:9\n";

/// Sections with four settings that have no effect: a route's rate limit fields while rate
/// limiting is off, a route's CORS fields while its CORS is off, a method listed twice, and
/// CORS that allows no origin. `{port}` and `{dir}` are left for [`GatewayProcess::start`] to
/// fill in.
const WITHOUT_EFFECT: &str = r#"
server:
  host: 127.0.0.1
  port: {port}
request_log:
  database: "{dir}/gateway.db"
health_check:
  enabled: false
cors:
  enabled: true
  allowed_origins: []
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9"
    rate_limiting:
      requests_per_second: 5
  - path: "/b/*rest"
    backends:
      - url: "http://127.0.0.1:9"
    methods: [GET, GET]
    cors:
      enabled: false
      allowed_origins: ["https://app.example.com"]
"#;

#[test]
fn check_warns_about_settings_without_effect() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = WITHOUT_EFFECT
        .replace("{port}", &free_port().to_string())
        .replace("{dir}", &dir.path().display().to_string());
    let path = write_config(dir.path(), &config);
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "stderr:\n{text}");
    assert!(
        stdout(&output).contains("ok"),
        "stdout {:?}",
        stdout(&output)
    );
    for (field, fix) in [
        ("routes[0].rate_limiting", "add enabled: true"),
        ("routes[1].cors", "set enabled: true"),
        ("routes[1].methods", "list each method once"),
        ("cors.allowed_origins", "list the allowed origins"),
    ] {
        let prefix = format!("apigateway: {path_text}: warning: {field}: ");
        let line = text
            .lines()
            .find(|line| line.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{field} not named:\n{text}"));
        assert!(line.contains(fix), "{field} gives no fix ({fix:?}): {line}");
    }
}

#[test]
fn start_logs_settings_without_effect() {
    let gateway = GatewayProcess::start(WITHOUT_EFFECT);
    let lines = gateway.lines();
    for (field, fix) in [
        ("routes[0].rate_limiting", "add enabled: true"),
        ("routes[1].cors", "set enabled: true"),
        ("routes[1].methods", "list each method once"),
        ("cors.allowed_origins", "list the allowed origins"),
    ] {
        let line = lines
            .iter()
            .find(|line| line.contains(&format!("field={field} ")))
            .unwrap_or_else(|| panic!("{field} not logged:\n{}", lines.join("\n")));
        assert!(line.contains("WARN"), "not a warning: {line}");
        assert!(line.contains(fix), "{field} gives no fix ({fix:?}): {line}");
    }
}

#[test]
fn check_rejects_bad_backend_urls() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = write_config(
        dir.path(),
        r#"
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:99999"
      - url: "http://user:secret@127.0.0.1:9001"
      - url: "http://127.0.0.1:0"
      - url: "http://127.0.0.1:9756/../x"
      - url: "http://127.0.0.1:9757/%zz"
"#,
    );
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    assert_eq!(output.status.code(), Some(2), "exit {}", output.status);
    let text = stderr(&output);
    for (field, fix) in [
        ("routes[0].backends[0].url", "1 to 65535"),
        ("routes[0].backends[1].url", "user name or password"),
        ("routes[0].backends[2].url", "port 0"),
        (
            "routes[0].backends[3].url",
            "write the URL it resolves to, \"http://127.0.0.1:9756/x\"",
        ),
        ("routes[0].backends[4].url", "write '%' as %25"),
    ] {
        let line = text
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("{field} not named:\n{text}"));
        assert!(line.contains(fix), "{field} gives no fix ({fix:?}): {line}");
    }
    assert!(!text.contains("secret"), "password printed:\n{text}");
}

#[test]
fn invalid_log_level_stops_serving() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {}\nlogging:\n  level: \"foo=bar=baz[\"\n{ROUTE}",
        free_port()
    );
    let path = write_config(dir.path(), &config);
    let path_text = path.display().to_string();

    let output = run_bounded(&["--config", &path_text]);
    assert_eq!(output.status.code(), Some(2), "exit {}", output.status);
    let text = stderr(&output);
    assert!(text.contains(&path_text), "file not named:\n{text}");
    assert!(text.contains("logging.level"), "field not named:\n{text}");
}

/// A misspelled level is a valid filter for `tracing` (a target name) that logs nothing, so
/// `--check` rejects it by name instead of letting the gateway run silent.
#[test]
fn misspelled_log_level_is_rejected() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let check = |level: &str| {
        let config = format!(
            "server:\n  host: 127.0.0.1\n  port: {}\nlogging:\n  level: \"{level}\"\n{ROUTE}",
            free_port()
        );
        let path = write_config(dir.path(), &config);
        run(&["--check", "--config", &path.display().to_string()])
    };

    for level in ["warning", "infoo", "verbose", "info,dbug", "", " , "] {
        let output = check(level);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{level}: exit {}",
            output.status
        );
        let text = stderr(&output);
        assert!(
            text.contains("logging.level"),
            "{level}: field not named:\n{text}"
        );
        assert!(
            text.contains("is not a level") || text.contains("it is empty"),
            "{level}: no fix given:\n{text}"
        );
    }
    for level in [
        "warn",
        "INFO",
        "off",
        "3",
        " info ",
        "info, gateway_proxy=debug",
    ] {
        let output = check(level);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{level}: {}",
            stderr(&output)
        );
    }
}

/// Serving takes `RUST_LOG` over `logging.level`, so `--check` rejects a misspelled one too.
#[test]
fn misspelled_rust_log_fails_check() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {}\n{ROUTE}",
        free_port()
    );
    let path = write_config(dir.path(), &config);
    let output = Command::new(binary("apigateway"))
        .args(["--check", "--config", &path.display().to_string()])
        .env("RUST_LOG", "warning")
        .output()
        .expect("run apigateway");
    assert_eq!(output.status.code(), Some(2), "exit {}", output.status);
    let text = stderr(&output);
    assert!(text.contains("RUST_LOG"), "variable not named:\n{text}");
    assert!(text.contains("is not a level"), "no fix given:\n{text}");
}

#[test]
fn port_in_use_names_fields_and_address() {
    let port_holder = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = port_holder.local_addr().expect("local address").port();
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\nrequest_log:\n  enabled: false\n{ROUTE}"
    );
    let path = write_config(dir.path(), &config);
    let path_text = path.display().to_string();

    let output = run_bounded(&["--config", &path_text]);
    assert!(!output.status.success(), "exit {}", output.status);
    let text = stderr(&output);
    assert!(
        text.contains("server.host"),
        "host field not named:\n{text}"
    );
    assert!(
        text.contains("server.port"),
        "port field not named:\n{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "address not named:\n{text}"
    );
    assert!(
        text.contains("another process"),
        "no hint about the port being taken:\n{text}"
    );
}

#[test]
fn foreign_address_does_not_blame_port() {
    // 192.0.2.1 is reserved for documentation (RFC 5737), so no interface of this machine
    // has it and binding fails before any packet is sent.
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = format!(
        "server:\n  host: 192.0.2.1\n  port: {}\nrequest_log:\n  enabled: false\n{ROUTE}",
        free_port()
    );
    let path = write_config(dir.path(), &config);
    let path_text = path.display().to_string();

    let output = run_bounded(&["--config", &path_text]);
    assert!(!output.status.success(), "exit {}", output.status);
    let text = stderr(&output);
    assert!(
        text.contains("server.host"),
        "host field not named:\n{text}"
    );
    assert!(text.contains("192.0.2.1"), "address not named:\n{text}");
    assert!(
        !text.contains("another process"),
        "blames another process:\n{text}"
    );
}

#[test]
fn unopenable_request_log_names_database() {
    let dir = tempfile::tempdir().expect("temporary folder");
    // A folder where the database file should be cannot be opened as SQLite.
    let database = dir.path().join("gateway.db");
    std::fs::create_dir(&database).expect("create folder");
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {}\nrequest_log:\n  database: \"{}\"\n{ROUTE}",
        free_port(),
        database.display()
    );
    let path = write_config(dir.path(), &config);
    let path_text = path.display().to_string();

    let output = run_bounded(&["--config", &path_text]);
    assert_eq!(output.status.code(), Some(2), "exit {}", output.status);
    let text = stderr(&output);
    assert!(
        text.contains(&format!("{path_text}: request_log.database:")),
        "file and field not named:\n{text}"
    );
    assert!(
        text.contains(&database.display().to_string()),
        "database path not named:\n{text}"
    );
}

#[test]
fn missing_default_config_gives_hint() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let output = Command::new(binary("apigateway"))
        .arg("--check")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("run apigateway");
    assert_eq!(output.status.code(), Some(2), "exit {}", output.status);
    let text = stderr(&output);
    assert!(
        text.contains("config/gateway.yaml"),
        "path not named:\n{text}"
    );
    assert!(
        text.contains("run from the repository root or pass --config PATH"),
        "no hint:\n{text}"
    );
}

/// Writes `config` into `dir`, checks it with `--check`, expects exit status 2, and returns
/// what the check printed on stderr.
fn rejected_config_errors(dir: &Path, config: &str) -> String {
    let path = write_config(dir, config);
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{config:?}: exit {}",
        output.status
    );
    stderr(&output)
}

#[test]
fn parse_errors_explain_the_fix() {
    let cases = [
        (
            "server:\n  port: -1\n",
            "server.port",
            "must be between 1 and 65535",
        ),
        (
            "server:\n  port: 70000\n",
            "server.port",
            "must be between 1 and 65535",
        ),
        (
            "server:\n\tport: 8080\n",
            ":2:1:",
            "indent with spaces, not tabs",
        ),
        (
            "server:\n  read_timeout: 99999999999999999999s\n",
            "server.read_timeout",
            "too large to read",
        ),
        (
            "server:\n  trusted_proxies: [10.0.0.0/8, nope, 10.0.0.0/33]\n",
            "server.trusted_proxies",
            "10.0.0.0/8, 127.0.0.1/32 or ::1/128",
        ),
        (
            "server: 5\n",
            "server",
            "must be a mapping of `name: value` fields, got integer `5`",
        ),
        ("server:\n  port:\n", "server.port", "got an empty value"),
        (
            "server:\n  workers: 99999999999999999999999\n",
            "server.workers",
            "must be between 1 and 1024, got `99999999999999999999999`\n",
        ),
        (
            "request_log:\n  batch_size: 99999999999999999999\n",
            "request_log.batch_size",
            "must be between 1 and 100000, got `99999999999999999999`\n",
        ),
        (
            "proxy:\n  pool_max_idle_per_backend: 18446744073709551616\n",
            "proxy.pool_max_idle_per_backend",
            "must be between 0 and 10000, got `18446744073709551616`\n",
        ),
    ];
    let dir = tempfile::tempdir().expect("temporary folder");
    for (config, field, fix) in cases {
        let text = rejected_config_errors(dir.path(), config);
        assert!(text.contains(field), "{config:?}: field not named:\n{text}");
        assert!(text.contains(fix), "{config:?}: no fix ({fix:?}):\n{text}");
    }
}

/// Syntax errors are found where the structure stops making sense, which can be lines after
/// the fault, so their messages point at the fault rather than at a field path.
#[test]
fn syntax_errors_point_at_the_fault() {
    let cases = [
        // A key without its colon. The parser stops on the next line, and the path it
        // reached, `server`, is not where the fault is.
        (
            format!("server:\n  port: 9700\nrate_limiting\n  enabled: true\n{ROUTE}"),
            "a missing `:` after a key",
            ": server:",
        ),
        // An unclosed `{` reads the next section as part of a value.
        (
            format!("server: {{host: 127.0.0.1, port: 9700\n{ROUTE}"),
            "the `{` or `[` opened on line 1 is not closed before line 2",
            "expected u16",
        ),
        // A tab in a comment is not what the parser stopped at.
        (
            format!("server:\n  host: `x`\t# note\n{ROUTE}"),
            "look for an unclosed quote",
            "indent with spaces",
        ),
    ];
    let dir = tempfile::tempdir().expect("temporary folder");
    for (config, fix, misleading) in cases {
        let text = rejected_config_errors(dir.path(), &config);
        assert!(text.contains(fix), "{config:?}: no fix ({fix:?}):\n{text}");
        assert!(
            !text.contains(misleading),
            "{config:?}: misleading {misleading:?}:\n{text}"
        );
    }
}

#[test]
fn every_bad_trusted_proxy_is_named() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = write_config(
        dir.path(),
        &format!(
            "server:\n  trusted_proxies: [10.0.0.0/8, nope, 10.0.0.0/33, 192.168.0.1]\n{ROUTE}"
        ),
    );
    let path_text = path.display().to_string();

    let output = run(&["--check", "--config", &path_text]);
    assert_eq!(output.status.code(), Some(2), "exit {}", output.status);
    let text = stderr(&output);
    assert!(
        text.contains(r#"[1] "nope""#),
        "first bad entry not named:\n{text}"
    );
    assert!(
        text.contains(r#"[2] "10.0.0.0/33""#),
        "second bad entry not named:\n{text}"
    );
    assert!(
        !text.contains("192.168.0.1"),
        "bare address rejected:\n{text}"
    );
}

#[test]
fn logs_names_folder_and_missing_database() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let folder = dir.path().display().to_string();
    let missing = dir.path().join("absent.db").display().to_string();

    for (database, problem) in [(&folder, "is a folder"), (&missing, "not found")] {
        let output = run(&["logs", "--database", database]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{database}: exit {}",
            output.status
        );
        let text = stderr(&output);
        assert!(
            text.contains(database),
            "{database}: path not named:\n{text}"
        );
        assert!(
            text.contains(problem),
            "{database}: {problem:?} missing:\n{text}"
        );
    }
}

#[test]
fn invalid_limit_names_range() {
    for limit in ["-1", "+5", "0", "10001", "5.0", ""] {
        let output = run(&["logs", "--database", "unused.db", "--limit", limit]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{limit:?}: exit {}",
            output.status
        );
        let text = stderr(&output);
        assert!(
            text.contains("--limit"),
            "{limit:?}: option not named:\n{text}"
        );
        assert!(
            text.contains("from 1 to 10000"),
            "{limit:?}: range not given:\n{text}"
        );
    }
}
