//! Configuration errors as a user meets them: `apigateway --check` and a plain start both
//! name the file, every invalid field with its path, and what to write instead.

use gateway_tests::binary;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// A file with one problem of each kind: zero port, zero weight, invalid URL, unknown
/// method, a route that repeats another's path, and a scheme other than http.
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
    methods: ["GET", "FETCH"]
  - path: "/api/users/*rest"
    backends:
      - url: "ftp://127.0.0.1:9002"
"#;

/// Each invalid field of [`BROKEN`] and a word of the fix its message must contain.
const BROKEN_FIELDS: [(&str, &str); 6] = [
    ("server.port", "65535"),
    ("routes[0].backends[0].weight", "at least 1"),
    ("routes[0].backends[1].url", "http://"),
    ("routes[0].methods[1]", "GET"),
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
fn version_prints_version() {
    let output = run(&["--version"]);
    assert!(output.status.success(), "exit {}", output.status);
    assert_eq!(
        stdout(&output).trim(),
        format!("apigateway {}", env!("CARGO_PKG_VERSION"))
    );
}
