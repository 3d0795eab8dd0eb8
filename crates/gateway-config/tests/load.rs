//! Loading whole configuration files: the original format, defaults and error reports.

use gateway_config::{Config, ConfigError, RateLimitKey};
use std::time::Duration;

const ORIGINAL: &str = r#"
server:
  host: "0.0.0.0"
  port: 8080
  read_timeout: 30s
  write_timeout: 30s
  shutdown_timeout: 10s
routes:
  - path: "/api/users/*filepath"
    backends:
      - url: "http://localhost:9001"
        weight: 2
      - url: "http://localhost:9002"
        weight: 1
    methods: ["GET", "POST", "PUT", "DELETE"]
  - path: "/api/orders/*filepath"
    backends:
      - url: "http://localhost:9003"
        weight: 1
    methods: ["GET", "POST", "PUT", "DELETE"]
rate_limiting:
  enabled: true
  requests_per_second: 100
  burst: 50
cors:
  enabled: true
  allowed_origins: ["*"]
  allowed_methods: ["GET", "POST", "PUT", "DELETE"]
"#;

fn problems(text: &str) -> Vec<String> {
    match Config::from_yaml(text, "test.yaml") {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(|p| p.to_string()).collect()
        }
        Err(other) => panic!("expected validation problems, got {other}"),
        Ok(_) => panic!("expected validation problems, the file was accepted"),
    }
}

#[test]
fn original_format_loads() {
    let config = Config::from_yaml(ORIGINAL, "gateway.yaml").unwrap();
    assert_eq!(config.server.port, 8080);
    assert_eq!(config.server.read_timeout, Duration::from_secs(30));
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.routes[0].backends[0].weight, 2);
    assert_eq!(config.routes[1].backends[0].url, "http://localhost:9003");
    assert!(config.rate_limiting.enabled);
    assert_eq!(config.rate_limiting.burst, 50);
    assert_eq!(config.rate_limiting.key, RateLimitKey::ClientIp);
    assert!(config.cors.enabled);
    assert!(config.health_check.enabled);
    assert_eq!(config.health_check.interval, Duration::from_secs(10));
    assert_eq!(config.health_check.unhealthy_threshold, 3);
}

#[test]
fn minimal_file_gets_defaults() {
    let text = "routes:\n  - path: /x/*rest\n    backends:\n      - url: http://127.0.0.1:9001\n";
    let config = Config::from_yaml(text, "min.yaml").unwrap();
    assert_eq!(config.server.host, "0.0.0.0");
    assert_eq!(config.server.port, 8080);
    assert_eq!(config.routes[0].backends[0].weight, 1);
    assert!(config.routes[0].methods.is_empty());
    assert!(!config.rate_limiting.enabled);
    assert!(config.request_log.enabled);
}

#[test]
fn unknown_field_names_path_and_line() {
    let text = "server:\n  port: 8080\n  prot: 9\nroutes: []\n";
    let error = Config::from_yaml(text, "bad.yaml").unwrap_err();
    let ConfigError::Parse {
        field,
        line,
        message,
        ..
    } = &error
    else {
        panic!("expected a parse error, got {error}");
    };
    assert_eq!(field, "server.prot");
    assert_eq!(*line, Some(3));
    assert!(message.contains("prot"), "{message}");
    assert!(error.to_string().starts_with("bad.yaml:3:"), "{error}");
}

#[test]
fn bad_duration_names_field() {
    let text = "server:\n  read_timeout: 30\n";
    let error = Config::from_yaml(text, "bad.yaml").unwrap_err();
    let text = error.to_string();
    assert!(text.contains("server.read_timeout"), "{text}");
    assert!(text.contains("30s, 500ms or 1m"), "{text}");
}

#[test]
fn every_problem_is_collected() {
    let text = r#"
server:
  port: 0
routes:
  - path: "/api/users/*filepath"
    backends:
      - url: "http://localhost:9001"
        weight: 1
      - url: "http://localhost:9002"
        weight: 0
    methods: ["GET", "FETCH", "post"]
  - path: "/api/users/*other"
    backends:
      - url: "localhost:9003"
  - path: "/empty"
    backends: []
  - path: "/tls"
    backends:
      - url: "https://example.com"
"#;
    let found = problems(text);
    let expect = [
        "server.port: must be between 1 and 65535, got 0",
        "routes[0].backends[1].weight: must be at least 1, got 0",
        "routes[0].methods[1]: unknown HTTP method \"FETCH\"",
        "routes[0].methods[2]: unknown HTTP method \"post\": write it in capitals: \"POST\"",
        "routes[1].path: \"/api/users/*other\" conflicts with routes[0].path \"/api/users/*filepath\": both match",
        "routes[1].backends[0].url:",
        "routes[2].backends: must list at least one backend",
        "routes[3].backends[0].url: scheme \"https\"",
    ];
    for prefix in expect {
        assert!(
            found.iter().any(|p| p.starts_with(prefix)),
            "missing {prefix:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

#[test]
fn duplicate_route_path_is_rejected() {
    let text = r#"
routes:
  - path: "/a/:id"
    backends: [{url: "http://127.0.0.1:1"}]
  - path: "/a/:name"
    backends: [{url: "http://127.0.0.1:2"}]
"#;
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with("routes[1].path:"), "{found:#?}");
}

#[test]
fn explicit_route_wins_over_bare_prefix() {
    let text = r#"
routes:
  - path: "/api/users/*rest"
    backends: [{url: "http://127.0.0.1:1"}]
  - path: "/api/users"
    backends: [{url: "http://127.0.0.1:2"}]
"#;
    Config::from_yaml(text, "ok.yaml").unwrap();
}

#[test]
fn credentials_with_any_origin_rejected() {
    let text = r#"
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
cors:
  enabled: true
  allowed_origins: ["*"]
  allow_credentials: true
"#;
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("cors.allow_credentials:"),
        "{found:#?}"
    );
    assert!(found[0].contains("list the allowed origins"), "{found:#?}");
}

#[test]
fn route_overrides_apply_field_by_field() {
    let text = r#"
health_check:
  interval: 5s
rate_limiting:
  enabled: true
  requests_per_second: 10
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
    health_check:
      unhealthy_threshold: 5
    rate_limiting:
      burst: 3
      key: global
"#;
    let config = Config::from_yaml(text, "ok.yaml").unwrap();
    let route = &config.routes[0];
    let health = route.effective_health_check(&config.health_check);
    assert_eq!(health.interval, Duration::from_secs(5));
    assert_eq!(health.unhealthy_threshold, 5);
    assert_eq!(health.healthy_threshold, 2);
    let limit = route.effective_rate_limit(&config.rate_limiting);
    assert!(limit.enabled);
    assert_eq!(limit.requests_per_second, 10);
    assert_eq!(limit.burst, 3);
    assert_eq!(limit.key, RateLimitKey::Global);
}

#[test]
fn health_timeout_longer_than_interval_rejected() {
    let text = r#"
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
health_check:
  interval: 1s
  timeout: 2s
"#;
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with("health_check.timeout:"), "{found:#?}");
}

#[test]
fn committed_config_files_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    for name in ["gateway.yaml", "gateway.example.yaml"] {
        let path = root.join(name);
        if let Err(error) = Config::load(&path) {
            panic!("{} does not load: {error}", path.display());
        }
    }
}
