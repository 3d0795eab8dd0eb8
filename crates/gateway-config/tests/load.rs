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
    assert!(config.routes[0].methods.is_none());
    assert!(!config.rate_limiting.enabled);
    assert_eq!(config.rate_limiting.ipv6_prefix, 64);
    assert!(config.request_log.enabled);
}

#[test]
fn ipv6_prefix_out_of_range_is_rejected() {
    let route = "routes:\n  - path: /a\n    backends: [{url: \"http://127.0.0.1:1\"}]\n";
    let found = problems(&format!("rate_limiting:\n  ipv6_prefix: 0\n{route}"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("rate_limiting.ipv6_prefix: must be between 1 and 128, got 0"),
        "{found:#?}"
    );
    assert!(found[0].contains("key: global"), "{found:#?}");

    let found = problems(&format!("{route}    rate_limiting: {{ipv6_prefix: 129}}\n"));
    assert_eq!(
        found,
        [
            "routes[0].rate_limiting.ipv6_prefix: must be between 1 and 128, got 129; 128 gives \
          each IPv6 address its own bucket"
        ]
    );

    // Past the type's range, the message names the field's range, not the type's.
    let error = Config::from_yaml(
        &format!("rate_limiting:\n  ipv6_prefix: 300\n{route}"),
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("must be between 1 and 128, got `300`"),
        "{error}"
    );
}

#[test]
fn route_ipv6_prefix_replaces_top_level() {
    let text = "rate_limiting: {enabled: true, ipv6_prefix: 48}\nroutes:\n  - path: /a\n    backends: [{url: \"http://127.0.0.1:1\"}]\n    rate_limiting: {ipv6_prefix: 128}\n  - path: /b\n    backends: [{url: \"http://127.0.0.1:1\"}]\n";
    let config = Config::from_yaml(text, "ok.yaml").unwrap();
    let first = config.routes[0].effective_rate_limit(&config.rate_limiting);
    let second = config.routes[1].effective_rate_limit(&config.rate_limiting);
    assert_eq!(first.ipv6_prefix, 128);
    assert_eq!(second.ipv6_prefix, 48);
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
fn month_duration_is_named() {
    let found = problems(
        "proxy:\n  connect_timeout: 1M\nroutes:\n  - path: /a\n    backends: [{url: \"http://127.0.0.1:1\"}]\n",
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with("proxy.connect_timeout:"), "{found:#?}");
    assert!(
        found[0].contains("(M is a month, m a minute)"),
        "{found:#?}"
    );
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
    methods: ["GET", "GET POST", "post"]
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
        "routes[0].methods[1]: invalid HTTP method \"GET POST\": list each method as an item of its own, like [\"GET\", \"POST\"]",
        "routes[0].methods[2]: \"post\" is not POST, because methods are case-sensitive, and clients send the standard methods in capitals, so \"post\" would match only requests that send it as written: write it in capitals, \"POST\"",
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
fn overlapping_routes_name_shared_path() {
    let text = r#"
routes:
  - path: "/a/:id"
    backends: [{url: "http://127.0.0.1:1"}]
  - path: "/a/*rest"
    backends: [{url: "http://127.0.0.1:2"}]
  - path: "/b/:id/c"
    backends: [{url: "http://127.0.0.1:1"}]
  - path: "/b/*rest"
    backends: [{url: "http://127.0.0.1:2"}]
  - path: "/d/:id"
    backends: [{url: "http://127.0.0.1:1"}]
  - path: "/d/:name"
    backends: [{url: "http://127.0.0.1:2"}]
"#;
    let found = problems(text);
    assert_eq!(found.len(), 3, "{found:#?}");
    let expect = [
        "routes[1].path: \"/a/*rest\" conflicts with routes[0].path \"/a/:id\": both match /a/1, but",
        "routes[3].path: \"/b/*rest\" conflicts with routes[2].path \"/b/:id/c\": both match /b/1/c, but",
        "routes[5].path: \"/d/:name\" conflicts with routes[4].path \"/d/:id\": both match the same paths",
    ];
    for (problem, prefix) in found.iter().zip(expect) {
        assert!(problem.starts_with(prefix), "{problem}");
    }
    for problem in &found[..2] {
        assert!(
            problem.contains("one has a literal segment and the other a parameter"),
            "{problem}"
        );
    }
    assert!(found[2].contains("distinct path"), "{}", found[2]);
}

#[test]
fn literal_segment_may_overlap_parameter() {
    let text = r#"
routes:
  - path: "/a/:id"
    backends: [{url: "http://127.0.0.1:1"}]
  - path: "/a/list"
    backends: [{url: "http://127.0.0.1:2"}]
  - path: "/a/list/*rest"
    backends: [{url: "http://127.0.0.1:2"}]
  - path: "/b/:id/c"
    backends: [{url: "http://127.0.0.1:1"}]
  - path: "/b/:name/d"
    backends: [{url: "http://127.0.0.1:2"}]
"#;
    if let Err(error) = Config::from_yaml(text, "test.yaml") {
        panic!("overlapping routes were rejected: {error}");
    }
}

#[test]
fn equivalent_route_spellings_conflict() {
    let text = r#"
routes:
  - path: "/api/login"
    backends: [{url: "http://127.0.0.1:9001"}]
  - path: "/api/%6Cogin"
    backends: [{url: "http://127.0.0.1:9001"}]
  - path: "/%c3%bc/:id"
    backends: [{url: "http://127.0.0.1:9001"}]
  - path: "/%C3%BC/:name"
    backends: [{url: "http://127.0.0.1:9001"}]
"#;
    let found = problems(text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with(
            "routes[1].path: \"/api/%6Cogin\" conflicts with routes[0].path \"/api/login\""
        ),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with(
            "routes[3].path: \"/%C3%BC/:name\" conflicts with routes[2].path \"/%c3%bc/:id\""
        ),
        "{found:#?}"
    );
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

/// Any website can send `Origin: null` from a sandboxed iframe, so with credentials allowed
/// it could read responses made with the user's cookies.
#[test]
fn credentials_with_null_origin_rejected() {
    let top_level = r#"
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
cors:
  enabled: true
  allowed_origins: ["capacitor://localhost", "null"]
  allow_credentials: true
"#;
    let found = problems(top_level);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "cors.allow_credentials: cannot be true while allowed_origins contains \"null\""
        ),
        "{found:#?}"
    );
    assert!(found[0].contains("sandboxed iframe"), "{found:#?}");
    assert!(
        found[0].contains("set allow_credentials: false"),
        "{found:#?}"
    );

    let route = r#"
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
    cors: {allowed_origins: ["null"]}
cors:
  enabled: true
  allowed_origins: ["capacitor://localhost"]
  allow_credentials: true
"#;
    let found = problems(route);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].cors.allow_credentials: cannot be true"),
        "{found:#?}"
    );
    assert!(
        found[0].ends_with("(this value comes from the top-level cors)"),
        "{found:#?}"
    );

    let without_credentials = top_level.replace("allow_credentials: true", "");
    Config::from_yaml(&without_credentials, "test.yaml").unwrap();
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
    assert_eq!(limit.requests_per_second, 10.0);
    assert_eq!(limit.burst, 3);
    assert_eq!(limit.key, RateLimitKey::Global);
}

#[test]
fn database_names_sqlite_reads_otherwise_rejected() {
    for (database, expected) in [
        (
            ":memory:",
            "request_log.database: \":memory:\" names SQLite's in-memory database",
        ),
        (
            "file:data/log.db",
            "request_log.database: \"file:data/log.db\" starts with `file:`",
        ),
    ] {
        let text = format!(
            "routes:\n  - path: \"/a\"\n    backends: [{{url: \"http://127.0.0.1:1\"}}]\n\
             request_log:\n  database: \"{database}\"\n"
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].starts_with(expected), "{found:#?}");
    }
    let text = "routes:\n  - path: \"/a\"\n    backends: [{url: \"http://127.0.0.1:1\"}]\n\
                request_log:\n  database: \"./file:data/log.db\"\n";
    assert!(Config::from_yaml(text, "test.yaml").is_ok());
}

#[test]
fn huge_request_log_sizes_rejected() {
    let text = r#"
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
request_log:
  batch_size: 100000000
  queue_capacity: 100000000000
"#;
    let found = problems(text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("request_log.batch_size: must be at most 100000,"),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("request_log.queue_capacity: must be at most 10000000,"),
        "{found:#?}"
    );
}

#[test]
fn max_rows_defaults_to_ten_million() {
    let config = Config::from_yaml(ONE_ROUTE, "test.yaml").unwrap();
    assert_eq!(config.request_log.max_rows, 10_000_000);

    let text = format!("request_log:\n  max_rows: 1000\n{ONE_ROUTE}");
    let config = Config::from_yaml(&text, "test.yaml").unwrap();
    assert_eq!(config.request_log.max_rows, 1000);
}

#[test]
fn max_rows_out_of_range_rejected() {
    for rows in ["1", "1000000000"] {
        let text = format!("request_log:\n  max_rows: {rows}\n{ONE_ROUTE}");
        if let Err(error) = Config::from_yaml(&text, "test.yaml") {
            panic!("max_rows {rows} was rejected: {error}");
        }
    }
    for rows in ["0", "1000000001", "18446744073709551615"] {
        let found = problems(&format!("request_log:\n  max_rows: {rows}\n{ONE_ROUTE}"));
        assert_eq!(found.len(), 1, "{rows}: {found:#?}");
        assert!(
            found[0].starts_with(&format!(
                "request_log.max_rows: must be between 1 and 1000000000, got {rows}:"
            )),
            "{rows}: {found:#?}"
        );
        assert!(
            found[0].contains("or leave it out for 10000000"),
            "{rows}: {found:#?}"
        );
    }
}

#[test]
fn max_rows_parse_errors_name_range() {
    for (value, got) in [
        ("-1", "got `-1`"),
        ("abc", "got string \"abc\""),
        ("1.5", "got the floating-point number `1.5`"),
    ] {
        let error = parse_error(&format!("request_log:\n  max_rows: {value}\n{ONE_ROUTE}"));
        assert!(
            error.contains("request_log.max_rows: must be"),
            "{value}: {error}"
        );
        assert!(
            error.contains("between 1 and 1000000000"),
            "{value}: {error}"
        );
        assert!(error.contains(got), "{value}: {error}");
    }
}

#[test]
fn huge_pool_size_rejected() {
    for size in ["0", "10000"] {
        let text = format!("proxy:\n  pool_max_idle_per_backend: {size}\n{ONE_ROUTE}");
        if let Err(error) = Config::from_yaml(&text, "test.yaml") {
            panic!("pool_max_idle_per_backend {size} was rejected: {error}");
        }
    }
    for size in ["10001", "100000000", "1000000000000000000"] {
        let found = problems(&format!(
            "proxy:\n  pool_max_idle_per_backend: {size}\n{ONE_ROUTE}"
        ));
        assert_eq!(found.len(), 1, "{size}: {found:#?}");
        assert!(
            found[0].starts_with(&format!(
                "proxy.pool_max_idle_per_backend: must be at most 10000, got {size}:"
            )),
            "{size}: {found:#?}"
        );
    }
}

#[test]
fn backend_listed_twice_in_route_rejected() {
    let found = problems(
        "routes:\n  - path: /a/*rest\n    backends:\n      - url: \"http://127.0.0.1:9001\"\n      - url: \"http://127.0.0.1:9002\"\n      - url: \"http://127.0.0.1:9001/\"\n",
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].backends[2].url:"),
        "{found:#?}"
    );
    assert!(
        found[0].contains("same backend as backends[0]"),
        "{found:#?}"
    );
    assert!(found[0].contains("larger weight"), "{found:#?}");

    // Spellings of one server and prefix: host case, a port's leading zero, a trailing slash.
    for (first, second) in [
        ("http://LOCALHOST:9751", "http://localhost:9751"),
        ("http://127.0.0.1:9751", "http://127.0.0.1:09751"),
        ("http://127.0.0.1:9751/v1", "http://127.0.0.1:9751/v1/"),
        ("http://127.0.0.1", "http://127.0.0.1:80"),
    ] {
        let text = format!(
            "routes:\n  - path: /a/*rest\n    backends:\n      - url: \"{first}\"\n      - url: \"{second}\"\n"
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{first} {second}: {found:#?}");
        assert!(
            found[0].contains("same backend as backends[0]"),
            "{found:#?}"
        );
    }

    // The same backend in two routes is fine.
    let text = "routes:\n  - path: /a/*rest\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n  - path: /b/*rest\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n";
    if let Err(error) = Config::from_yaml(text, "test.yaml") {
        panic!("a backend shared by two routes was rejected: {error}");
    }
}

#[test]
fn admin_path_spellings_are_rejected() {
    for path in ["/%68ealth", "/%61dmin/x", "//admin/*rest"] {
        let found = problems(&route_with_path(path));
        assert_eq!(found.len(), 1, "{path}: {found:#?}");
        assert!(
            found[0].contains("no request can reach"),
            "{path}: {found:#?}"
        );
    }
}

#[test]
fn health_check_path_must_be_request_target() {
    for path in ["/", "/ready?full=1", "/v1/status%20page", "/a;b/c:d@e"] {
        let text = format!("health_check:\n  path: \"{path}\"\n{ONE_ROUTE}");
        if let Err(error) = Config::from_yaml(&text, "test.yaml") {
            panic!("health check path {path:?} was rejected: {error}");
        }
    }
    for (path, field, fix) in [
        ("/h h", "health_check.path", "like \"/h%20h\""),
        ("/a<b>", "health_check.path", "like \"/a%3Cb%3E\""),
        (
            "/ready?x=\\\"1\\\"",
            "health_check.path",
            "like \"/ready?x=%221%22\"",
        ),
        ("/ready#top", "health_check.path", "fragment"),
        ("health", "health_check.path", "must start with '/'"),
        ("/h\u{fc}", "health_check.path", "like \"/h%C3%BC\""),
        ("/h?q=\u{fc}", "health_check.path", "like \"/h?q=%C3%BC\""),
        ("/h\\\\x", "health_check.path", "like \"/h%5Cx\""),
        ("/h%zz", "health_check.path", "like \"/h%25zz\""),
    ] {
        let text = format!("health_check:\n  path: \"{path}\"\n{ONE_ROUTE}");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{path}: {found:#?}");
        assert!(
            found[0].starts_with(&format!("{field}: ")),
            "{path}: {found:#?}"
        );
        assert!(found[0].contains(fix), "{path}: {found:#?}");
    }

    // A dot segment would make the probe leave the backend URL's path prefix.
    let found = problems(&format!(
        "health_check:\n  path: \"/../health\"\n{ONE_ROUTE}    health_check: {{path: \"/v1/%2e%2e/ready\"}}\n"
    ));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0]
            .starts_with("routes[0].health_check.path: segment \"%2e%2e\" of \"/v1/%2e%2e/ready\""),
        "{found:#?}"
    );
    assert!(
        found[0].ends_with("write the path it resolves to, \"/ready\""),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("health_check.path: segment \"..\" of \"/../health\""),
        "{found:#?}"
    );

    // A route's own health check path is checked as well.
    let found = problems(
        "routes:\n  - path: /a/*rest\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n    health_check: {path: \"/h h\"}\n",
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].health_check.path: \"/h h\" is not a valid request path"),
        "{found:#?}"
    );
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

/// One route to a valid backend, appended to files that test other sections.
const ONE_ROUTE: &str =
    "routes:\n  - path: /a/*rest\n    backends:\n      - url: http://127.0.0.1:9001\n";

fn parse_error(text: &str) -> String {
    match Config::from_yaml(text, "test.yaml") {
        Err(error @ ConfigError::Parse { .. }) => error.to_string(),
        Err(other) => panic!("expected a parse error, got {other}"),
        Ok(_) => panic!("expected a parse error, the file was accepted"),
    }
}

#[test]
fn server_host_must_be_address_or_name() {
    for host in [
        "0.0.0.0",
        "127.0.0.1",
        "::",
        "::1",
        "localhost",
        "gw-1.internal.",
        "10.example",
        "host-2",
    ] {
        let text = format!("server:\n  host: \"{host}\"\n{ONE_ROUTE}");
        if let Err(error) = Config::from_yaml(&text, "test.yaml") {
            panic!("{host:?} was rejected: {error}");
        }
    }
    let invalid = [
        "not a host",
        "-lead.example",
        "a..b",
        "exa_mple.com",
        " ",
        "127.0.0.300",
        "10.0.0",
        "8080",
    ];
    for host in invalid {
        let found = problems(&format!("server:\n  host: \"{host}\"\n{ONE_ROUTE}"));
        assert_eq!(found.len(), 1, "{host:?}: {found:#?}");
        assert!(found[0].starts_with("server.host:"), "{host:?}: {found:#?}");
        for example in ["0.0.0.0", "127.0.0.1", "::", "localhost"] {
            assert!(found[0].contains(example), "{host:?}: {found:#?}");
        }
    }
    let found = problems(&format!("server:\n  host: \"[::1]\"\n{ONE_ROUTE}"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].contains("without them, like ::1"), "{found:#?}");
}

#[test]
fn backend_url_with_ipv6_zone_rejected() {
    let text = r#"
routes:
  - path: "/a/*rest"
    backends:
      - url: "http://[fe80::1%25eth0]:9001"
      - url: "http://[fe80::1]:9002"
"#;
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].backends[0].url:"),
        "{found:#?}"
    );
    assert!(found[0].contains("IPv6 zone"), "{found:#?}");
}

#[test]
fn backend_url_port_and_credentials_are_checked() {
    let text = r#"
routes:
  - path: "/a/*rest"
    backends:
      - url: "http://127.0.0.1:99999"
      - url: "http://user:secret@127.0.0.1:9001"
      - url: "http://[::1]:70000"
      - url: "http://127.0.0.1:"
      - url: "http://[::1]"
      - url: "http://[::1]:9002"
      - url: "http://localhost:65535"
"#;
    let found = problems(text);
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].backends[0].url: port \"99999\""),
        "{found:#?}"
    );
    assert!(found[0].contains("1 to 65535"), "{found:#?}");
    assert!(
        found[1].starts_with("routes[0].backends[1].url:"),
        "{found:#?}"
    );
    assert!(found[1].contains("user name or password"), "{found:#?}");
    assert!(
        !found[1].contains("secret"),
        "password repeated: {found:#?}"
    );
    assert!(
        found[2].starts_with("routes[0].backends[2].url: port \"70000\""),
        "{found:#?}"
    );
    assert!(
        found[3].starts_with("routes[0].backends[3].url:"),
        "{found:#?}"
    );
    assert!(found[3].contains("no port"), "{found:#?}");
}

#[test]
fn non_ascii_route_path_is_rejected() {
    let text = "routes:\n  - path: \"/api/ünïcödé/*rest\"\n    backends:\n      - url: http://127.0.0.1:9001\n";
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with("routes[0].path:"), "{found:#?}");
    assert!(found[0].contains("percent-encoded"), "{found:#?}");
    assert!(
        found[0].contains("/api/%C3%BCn%C3%AFc%C3%B6d%C3%A9/*rest"),
        "{found:#?}"
    );
}

/// Returns a configuration with one route whose path is `path`. YAML keeps a backslash in
/// single quotes as it is.
fn route_with_path(path: &str) -> String {
    format!("routes:\n  - path: '{path}'\n    backends:\n      - url: http://127.0.0.1:9001\n")
}

#[test]
fn unreachable_route_paths_are_rejected() {
    let cases = [
        ("/f/../g", "segment \"..\"", "\"/g\""),
        ("/k/.", "segment \".\"", "\"/k/\""),
        ("/j/%2e%2e", "segment \"%2e%2e\"", "\"/\""),
        ("/j/.%2E/x", "segment \".%2E\"", "\"/x\""),
        ("/p/..;v=1/x", "segment \"..;v=1\"", "\"/x\""),
        ("/p/.%3bv/*rest", "segment \".%3bv\"", "\"/p/*rest\""),
        ("/s/..%2fx", "segment \"..\"", "remove that segment"),
        ("/s/x%5C..", "segment \"..\"", "remove that segment"),
        ("/i/\\x", "browsers send as '/'", "\"/i/x\""),
        (
            "/k/%zz",
            "\"%zz\", which is not a percent-encoding",
            "\"/k/%25zz\"",
        ),
        ("/k/%4", "\"%4\"", "\"/k/%254\""),
        ("/e//f", "empty segment", "write \"/e/f\""),
        ("//e/:id", "empty segment", "write \"/e/:id\""),
        ("/e///*rest", "empty segment", "write \"/e/*rest\""),
        // The offered path must load itself: its slashes merged, and no admin path.
        (
            "/a/..//b",
            "segment \"..\"",
            "write the path it resolves to, \"/b\"",
        ),
        (
            "/health/../admin/x",
            "segment \"..\"",
            "remove that segment",
        ),
        ("/x/../health", "segment \"..\"", "remove that segment"),
    ];
    for (path, reason, fix) in cases {
        let found = problems(&route_with_path(path));
        assert_eq!(found.len(), 1, "{path}: {found:#?}");
        assert!(
            found[0].starts_with("routes[0].path:"),
            "{path}: {found:#?}"
        );
        assert!(found[0].contains(reason), "{path}: {found:#?}");
        assert!(found[0].contains(fix), "{path}: {found:#?}");
    }
}

#[test]
fn dotted_and_encoded_route_paths_load() {
    for path in [
        "/",
        "/a/",
        "/a/b.c",
        "/a/...",
        "/a/.x",
        "/a/x.",
        "/a/%2e%2ex",
        "/a/;x",
        "/m/a;b",
        "/n/a%2Fb",
        "/n/%25zz",
        "/api/%C3%BC/*rest",
    ] {
        if let Err(error) = Config::from_yaml(&route_with_path(path), "test.yaml") {
            panic!("{path} was rejected: {error}");
        }
    }
}

#[test]
fn trusted_proxies_accept_bare_addresses() {
    let text = format!(
        "server:\n  trusted_proxies: [10.0.0.0/8, 192.168.1.7, \"::1\", \"fd00::/8\"]\n{ONE_ROUTE}"
    );
    let config = Config::from_yaml(&text, "test.yaml").unwrap();
    let networks: Vec<String> = config
        .server
        .trusted_proxies
        .iter()
        .map(|network| network.to_string())
        .collect();
    assert_eq!(
        networks,
        ["10.0.0.0/8", "192.168.1.7/32", "::1/128", "fd00::/8"]
    );
}

#[test]
fn admin_clients_default_to_loopback() {
    let config = Config::from_yaml(ONE_ROUTE, "test.yaml").unwrap();
    let networks: Vec<String> = config
        .admin
        .allowed_clients
        .iter()
        .map(|network| network.to_string())
        .collect();
    assert_eq!(networks, ["127.0.0.0/8", "::1/128"]);

    let text = format!("admin:\n  allowed_clients: [10.1.2.3, \"192.0.2.0/24\"]\n{ONE_ROUTE}");
    let config = Config::from_yaml(&text, "test.yaml").unwrap();
    let networks: Vec<String> = config
        .admin
        .allowed_clients
        .iter()
        .map(|network| network.to_string())
        .collect();
    assert_eq!(networks, ["10.1.2.3/32", "192.0.2.0/24"]);

    let error = parse_error(&format!(
        "admin:\n  allowed_clients: [everyone]\n{ONE_ROUTE}"
    ));
    assert!(error.contains("admin.allowed_clients"), "{error}");
    assert!(error.contains(r#"[0] "everyone""#), "{error}");
}

#[test]
fn trusted_proxies_name_every_bad_entry() {
    let text = format!(
        "server:\n  trusted_proxies: [10.0.0.0/8, nope, 10.0.0.0/33, \"::1/129\"]\n{ONE_ROUTE}"
    );
    let error = parse_error(&text);
    assert!(error.contains("server.trusted_proxies"), "{error}");
    assert!(error.contains(r#"[1] "nope""#), "{error}");
    assert!(error.contains(r#"[2] "10.0.0.0/33""#), "{error}");
    assert!(error.contains(r#"[3] "::1/129""#), "{error}");
    assert!(!error.contains("[0]"), "{error}");
    assert!(
        error.contains("10.0.0.0/8, 127.0.0.1/32 or ::1/128"),
        "{error}"
    );
}

#[test]
fn out_of_range_port_names_range() {
    for port in ["-1", "70000"] {
        let error = parse_error(&format!("server:\n  port: {port}\n"));
        assert!(error.contains("server.port"), "{error}");
        assert!(error.contains("must be between 1 and 65535"), "{error}");
        assert!(error.contains(port), "{error}");
    }
}

#[test]
fn unclosed_quote_gets_hint() {
    let error = parse_error(
        "routes:\n  - path: \"/api/*rest\n    backends:\n      - url: \"http://127.0.0.1:9001\"\n",
    );
    assert!(error.contains("unclosed quote"), "{error}");
    assert!(!error.contains('?'), "unknown field shown: {error}");
}

#[test]
fn stray_indent_gets_hint() {
    for text in [
        "logging:\n  level: info\n   format: json\n",
        "routes:\n  - path: \"/a\"\n    backends: - url: \"http://127.0.0.1:9001\"\n",
    ] {
        let error = parse_error(text);
        assert!(error.contains("not well formed"), "{error}");
    }
}

#[test]
fn tab_indentation_gets_hint() {
    let error = parse_error("server:\n\tport: 8080\n");
    assert!(error.contains("indent with spaces, not tabs"), "{error}");
    assert!(!error.contains("at line"), "position repeated: {error}");
}

#[test]
fn huge_duration_gets_fix() {
    let error = parse_error("server:\n  read_timeout: 99999999999999999999s\n");
    assert!(error.contains("server.read_timeout"), "{error}");
    assert!(error.contains("too large to read"), "{error}");
    assert!(error.contains("like 30s or 7d"), "{error}");
}

#[test]
fn workers_must_be_between_1_and_1024() {
    for workers in ["1", "1024"] {
        let text = format!("server:\n  workers: {workers}\n{ONE_ROUTE}");
        if let Err(error) = Config::from_yaml(&text, "test.yaml") {
            panic!("workers {workers} was rejected: {error}");
        }
    }
    for workers in ["0", "1025", "100000"] {
        let found = problems(&format!("server:\n  workers: {workers}\n{ONE_ROUTE}"));
        assert_eq!(found.len(), 1, "{workers}: {found:#?}");
        assert!(
            found[0].starts_with(&format!(
                "server.workers: must be between 1 and 1024, got {workers}"
            )),
            "{workers}: {found:#?}"
        );
        assert!(
            found[0].contains("leave it out for one per CPU core"),
            "{workers}: {found:#?}"
        );
    }
    let error = parse_error(&format!("server:\n  workers: -1\n{ONE_ROUTE}"));
    assert!(
        error.contains("server.workers: must be between 1 and 1024, got `-1`"),
        "{error}"
    );
}

/// Every timeout and interval, as the YAML that sets it to `{}`.
const TIMER_FIELDS: [(&str, &str); 9] = [
    ("server.read_timeout", "server:\n  read_timeout: {}\n"),
    ("server.write_timeout", "server:\n  write_timeout: {}\n"),
    (
        "server.shutdown_timeout",
        "server:\n  shutdown_timeout: {}\n",
    ),
    ("proxy.connect_timeout", "proxy:\n  connect_timeout: {}\n"),
    ("proxy.response_timeout", "proxy:\n  response_timeout: {}\n"),
    (
        "proxy.pool_idle_timeout",
        "proxy:\n  pool_idle_timeout: {}\n",
    ),
    (
        "request_log.flush_interval",
        "request_log:\n  flush_interval: {}\n",
    ),
    (
        "health_check.timeout",
        "health_check:\n  interval: 7d\n  timeout: {}\n",
    ),
    (
        "health_check.interval",
        "health_check:\n  timeout: 1ms\n  interval: {}\n",
    ),
];

#[test]
fn timers_must_be_between_1ms_and_7d() {
    for (field, template) in TIMER_FIELDS {
        for value in ["1ms", "7d"] {
            let text = format!("{}{ONE_ROUTE}", template.replace("{}", value));
            if let Err(error) = Config::from_yaml(&text, "test.yaml") {
                panic!("{field}: {value} was rejected: {error}");
            }
        }
        // Values are shown in the file's own units, so that they can be pasted back.
        for (value, shown) in [
            ("0s", "0s"),
            ("1ns", "1ns"),
            ("999us", "999us"),
            ("7d 1s", "604801s"),
            ("9999999999d", "9999999999d"),
        ] {
            let text = format!("{}{ONE_ROUTE}", template.replace("{}", value));
            let found = problems(&text);
            let expected = format!(
                "{field}: must be between 1ms and 7d, got {shown}: write a duration like 5s or 500ms"
            );
            assert_eq!(found.len(), 1, "{field}: {value}: {found:#?}");
            assert_eq!(found[0], expected, "{field}: {value}");
        }
    }
}

#[test]
fn route_health_check_timers_are_checked() {
    let text = r#"
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
    health_check:
      interval: 9999999999d
"#;
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].health_check.interval: must be between 1ms and 7d,"),
        "{found:#?}"
    );
}

#[test]
fn routes_hidden_by_admin_paths_rejected() {
    for path in ["/health", "/admin", "/admin/*rest", "/admin/users/:id"] {
        let text = format!(
            "routes:\n  - path: \"{path}\"\n    backends: [{{url: \"http://127.0.0.1:1\"}}]\n"
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{path}: {found:#?}");
        assert!(
            found[0].starts_with(&format!("routes[0].path: no request can reach {path:?}")),
            "{path}: {found:#?}"
        );
        assert!(
            found[0].contains("choose a path outside them"),
            "{path}: {found:#?}"
        );
    }
    for path in [
        "/*rest",
        "/:section",
        "/health/*rest",
        "/healthz",
        "/api/admin/*rest",
    ] {
        let text = format!(
            "routes:\n  - path: \"{path}\"\n    backends: [{{url: \"http://127.0.0.1:1\"}}]\n"
        );
        if let Err(error) = Config::from_yaml(&text, "test.yaml") {
            panic!("{path} was rejected: {error}");
        }
    }
}

#[test]
fn byte_order_mark_is_skipped() {
    let text = format!("\u{feff}server:\n  port: 8081\n{ONE_ROUTE}");
    let config = Config::from_yaml(&text, "bom.yaml").unwrap();
    assert_eq!(config.server.port, 8081);

    let error = parse_error("\u{feff}server:\n  port: 8081\n  prot: 9\n");
    assert!(error.starts_with("test.yaml:3:3: server.prot:"), "{error}");
}

#[test]
fn shared_backend_with_other_health_checks_rejected() {
    let text = r#"
routes:
  - path: "/a/*rest"
    backends: [{url: "http://127.0.0.1:9001"}]
    health_check: {path: "/ready"}
  - path: "/b/*rest"
    backends: [{url: "http://127.0.0.1:9002"}, {url: "http://127.0.0.1:9001/"}]
"#;
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "routes[1].backends[1].url: \"http://127.0.0.1:9001/\" is also a backend of routes[0] (\"/a/*rest\")"
        ),
        "{found:#?}"
    );
    assert!(
        found[0].contains("give both routes the same health_check settings"),
        "{found:#?}"
    );

    // The same backend with the same settings is shared as before.
    let same = r#"
routes:
  - path: "/a/*rest"
    backends: [{url: "http://127.0.0.1:9001"}]
    health_check: {path: "/ready"}
  - path: "/b/*rest"
    backends: [{url: "http://127.0.0.1:9001"}]
    health_check: {path: "/ready"}
"#;
    Config::from_yaml(same, "test.yaml").unwrap();

    // With health checks off, no probe runs, so the settings cannot conflict.
    let off = r#"
health_check: {enabled: false}
routes:
  - path: "/a/*rest"
    backends: [{url: "http://127.0.0.1:9001"}]
  - path: "/b/*rest"
    backends: [{url: "http://127.0.0.1:9001"}]
    health_check: {path: "/status"}
"#;
    Config::from_yaml(off, "test.yaml").unwrap();
}

#[test]
fn wildcard_inside_origin_rejected() {
    let text = r#"
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
    cors:
      allowed_origins: ["https://app.example.com", "http://*"]
cors:
  enabled: true
  allowed_origins: ["https://*.example.com", "*"]
"#;
    let found = problems(text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with(
            "routes[0].cors.allowed_origins[1]: wildcards inside an origin are not supported, so \"http://*\""
        ),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with(
            "cors.allowed_origins[0]: wildcards inside an origin are not supported, so \"https://*.example.com\""
        ),
        "{found:#?}"
    );
    for problem in &found {
        assert!(
            problem.contains("list each origin, like https://app.example.com"),
            "{problem}"
        );
        assert!(
            problem.contains("write \"*\" alone to allow any origin"),
            "{problem}"
        );
    }
}

/// Origins are compared whole with a browser's `Origin`, which has a scheme, a host and a
/// port other than the default, and nothing else: any other entry would match no request.
#[test]
fn origin_that_matches_nothing_rejected() {
    let cases = [
        ("https://a.example:443", "write \"https://a.example\""),
        ("HTTP://a.example:080", "write \"HTTP://a.example\""),
        ("https://b.example#top", "an origin has no fragment"),
        (
            "https://user@c.example",
            "an origin has no user information",
        ),
        ("https://d.example:", "write \"https://d.example\""),
        (
            "https://a.example:99999",
            "the port must be a number from 1 to 65535",
        ),
        ("https://a.example/", "an origin has no path"),
        ("https://a.example?x=1", "an origin has no query"),
        ("ftp://a.example", "no request carries an ftp: origin"),
        ("Capacitor://localhost", "write \"capacitor://localhost\""),
        ("capacitor://localhost/", "an origin has no path"),
        ("NULL", "write \"null\""),
        ("a.example", "it has no scheme"),
        ("https://[::1", "the IPv6 address has no closing bracket"),
        ("https://", "the host is missing or not valid"),
        ("http://a.example:09700", "write \"http://a.example:9700\""),
        (
            "http://[0:0:0:0:0:0:0:1]:9705",
            "write \"http://[::1]:9705\"",
        ),
        ("http://[::1]:09700", "write \"http://[::1]:9700\""),
        (
            "http://[::FFFF:127.0.0.1]",
            "write \"http://[::ffff:7f00:1]\"",
        ),
        ("http://127.1", "write \"http://127.0.0.1\""),
        ("http://0x7f.0.0.1", "write \"http://127.0.0.1\""),
        ("http://010.0.0.1", "write \"http://8.0.0.1\""),
        ("http://127.000.000.001", "write \"http://127.0.0.1\""),
        ("http://2130706433:80", "write \"http://127.0.0.1\""),
        ("http://127.0.0.1.", "write \"http://127.0.0.1\""),
        ("http://256.0.0.1", "unless it is an IPv4 address"),
        ("http://1.2.3.4.5", "unless it is an IPv4 address"),
        ("http://09.0.0.1", "unless it is an IPv4 address"),
        (
            "http://[0::1]:99999",
            "the port must be a number from 1 to 65535",
        ),
        (
            "http://[0::1]:0",
            "the port must be a number from 1 to 65535",
        ),
        ("https://bücher.example", "xn-- labels"),
    ];
    for (origin, fix) in cases {
        let text = format!(
            "routes:\n  - path: \"/a\"\n    backends: [{{url: \"http://127.0.0.1:1\"}}]\n\
             cors:\n  enabled: true\n  allowed_origins: [{origin:?}]\n"
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{origin}: {found:#?}");
        assert!(
            found[0].starts_with("cors.allowed_origins[0]: "),
            "{origin}: {found:#?}"
        );
        assert!(found[0].contains(fix), "{origin}: {found:#?}");
    }

    let valid = r#"
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
cors:
  enabled: true
  allowed_origins: ["https://a.example:8443", "http://localhost:3000", "http://[::1]:8080", "https://B.Example", "http://127.0.0.1:3000", "https://xn--bcher-kva.example", "http://[2001:DB8::1]", "http://10.0.0.1"]
"#;
    Config::from_yaml(valid, "test.yaml").unwrap();

    let app_origins = r#"
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
    cors: {allowed_origins: ["tauri://localhost", "null"]}
cors:
  enabled: true
  allowed_origins: ["capacitor://localhost", "ionic://localhost", "chrome-extension://abcdefghijklmnopabcdefghijklmnop", "moz-extension://0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "app://localhost:8080"]
"#;
    Config::from_yaml(app_origins, "test.yaml").unwrap();
}

/// With credentials, browsers read an exposed `*` as a header named `*`.
#[test]
fn exposed_wildcard_with_credentials_rejected() {
    let text = r#"
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
cors:
  enabled: true
  allowed_origins: ["https://app.example"]
  allow_credentials: true
  exposed_headers: ["*"]
"#;
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "cors.exposed_headers: cannot contain \"*\" while allow_credentials is true"
        ),
        "{found:#?}"
    );
    assert!(
        found[0].contains("list the header names instead"),
        "{found:#?}"
    );
}

#[test]
fn invalid_cors_header_name_gets_fix() {
    let text = format!(
        "cors:\n  allowed_headers: [\"bad header\", Content-Type]\n  exposed_headers: [\"X:Total\"]\n{ONE_ROUTE}"
    );
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("cors.allowed_headers[0]: invalid header name \"bad header\": "),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("cors.exposed_headers[0]: invalid header name \"X:Total\": "),
        "{found:#?}"
    );
    for problem in &found {
        assert!(
            problem.contains("letters, digits and the characters !#$%&'*+-.^_`|~, with no spaces"),
            "{problem}"
        );
    }
}

#[test]
fn cors_max_age_is_whole_seconds() {
    let text = r#"
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
    cors:
      max_age: 1500ms
cors:
  max_age: 500ms
"#;
    let found = problems(text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[1].starts_with("cors.max_age: must be whole seconds, got 500ms"),
        "{found:#?}"
    );
    assert!(
        found[0].starts_with("routes[0].cors.max_age: must be whole seconds, got 1500ms"),
        "{found:#?}"
    );
    let whole = "routes:\n  - path: \"/a\"\n    backends: [{url: \"http://127.0.0.1:1\"}]\ncors:\n  max_age: 0s\n";
    let config = Config::from_yaml(whole, "test.yaml").unwrap();
    assert_eq!(config.cors.max_age, Duration::ZERO);
}

#[test]
fn parse_errors_use_yaml_terms() {
    let cases = [
        (
            "[1, 2]\n",
            "test.yaml:1:1: the file must be a mapping of sections, like `server:` and `routes:`, got a sequence",
        ),
        (
            "server: 5\n",
            "test.yaml:1:9: server: must be a mapping of `name: value` fields, got integer `5`",
        ),
        (
            "server:\n  port:\n",
            "test.yaml:2:8: server.port: must be a whole number between 1 and 65535, got an empty value",
        ),
        (
            "server:\n  workers: 99999999999999999999999\n",
            "test.yaml:2:12: server.workers: must be between 1 and 1024, got `99999999999999999999999`",
        ),
        (
            "rate_limiting:\n  enabled:\n",
            "test.yaml:2:11: rate_limiting.enabled: must be true or false, got an empty value",
        ),
        (
            "routes: {a: 1}\n",
            "test.yaml:1:9: routes: must be a sequence, got a mapping",
        ),
        (
            "server: {}\n---\nroutes: []\n",
            "test.yaml: the file contains more than one YAML document",
        ),
        (
            "server:\n  read_timeout:\n    - 30s\n",
            "test.yaml:3:5: server.read_timeout: must be a duration with a unit, like 30s, 500ms or 1m, got a sequence",
        ),
        (
            "health_check:\n  interval: {seconds: 10}\n",
            "test.yaml:2:13: health_check.interval: must be a duration with a unit, like 30s, 500ms or 1m, got a mapping",
        ),
        (
            "server:\n  write_timeout: 30\n",
            "test.yaml:2:18: server.write_timeout: invalid duration \"30\" (the unit is missing)",
        ),
    ];
    for (text, expected) in cases {
        let error = parse_error(text);
        assert!(error.starts_with(expected), "{text:?}: {error}");
        for rust_term in ["struct", "unit value", "u128", " map,"] {
            assert!(!error.contains(rust_term), "{text:?}: {error}");
        }
    }
}

#[test]
fn empty_methods_list_rejected_with_other_problems() {
    let text = "routes:\n  - path: /a\n    methods: []\n    backends:\n      - url: http://127.0.0.1:9001\n        weight: 0\n";
    let found = problems(text);
    let methods = found.iter().find(|p| p.starts_with("routes[0].methods: "));
    assert!(
        methods.is_some_and(|p| p.contains("leave `methods` out")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("routes[0].backends[0].weight: ")),
        "{found:#?}"
    );
}

#[test]
fn non_utf8_file_names_position() {
    let path = std::env::temp_dir().join(format!("latin1-{}.yaml", std::process::id()));
    std::fs::write(&path, b"server:\n  port: 9001 # caf\xe9\n").unwrap();
    let error = Config::load(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let message = error.to_string();
    assert!(
        message.ends_with(":2:19: the file is not UTF-8 text: save it as UTF-8"),
        "{message}"
    );
}

/// A zero rate is invalid whether the limit is on or off, and the fix fits each case.
#[test]
fn zero_rate_fix_fits_enabled() {
    let routes = "routes:\n  - path: \"/a\"\n    backends: [{url: \"http://127.0.0.1:1\"}]\n";
    let on = problems(&format!(
        "{routes}rate_limiting: {{enabled: true, requests_per_second: 0}}\n"
    ));
    assert_eq!(on.len(), 1, "{on:#?}");
    assert!(
        on[0].ends_with("must be greater than 0, got 0; set enabled: false to turn the limit off"),
        "{on:#?}"
    );

    let off = problems(&format!(
        "{routes}rate_limiting: {{enabled: false, requests_per_second: 0}}\n"
    ));
    assert_eq!(off.len(), 1, "{off:#?}");
    assert!(off[0].contains("the limit is off"), "{off:#?}");
    assert!(!off[0].contains("set enabled: false"), "{off:#?}");
}

/// A route section inherits the top-level values it leaves out. A problem in one of those is
/// reported once, at the top level, and a route that sets the field itself gets its own.
#[test]
fn inherited_problems_reported_once() {
    let text = r#"
rate_limiting: {requests_per_second: 0}
cors:
  allowed_origins: ["https://*.a.example"]
  max_age: 1500ms
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
    rate_limiting: {burst: 5}
    cors: {enabled: true}
  - path: "/b"
    backends: [{url: "http://127.0.0.1:1"}]
    rate_limiting: {requests_per_second: 0}
    cors: {max_age: 2500ms}
"#;
    let found = problems(text);
    let fields: Vec<&str> = found
        .iter()
        .map(|problem| problem.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        [
            "routes[1].rate_limiting.requests_per_second",
            "routes[1].cors.max_age",
            "rate_limiting.requests_per_second",
            "cors.allowed_origins[0]",
            "cors.max_age",
        ],
        "{found:#?}"
    );
}

/// An inherited problem stays with the top level even when the route changes its message,
/// here by turning the limit on.
#[test]
fn inherited_problem_with_other_message_reported_once() {
    let text = r#"
rate_limiting: {enabled: false, requests_per_second: 0}
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
    rate_limiting: {enabled: true}
"#;
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("rate_limiting.requests_per_second: "),
        "{found:#?}"
    );
}

/// A top-level value that fails only with a route's own values is reported at the route,
/// saying where the value comes from.
#[test]
fn inherited_value_failing_in_route_named() {
    let text = r#"
cors:
  allowed_origins: ["https://app.example"]
  exposed_headers: ["*"]
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
    cors: {allow_credentials: true}
"#;
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].cors.exposed_headers: "),
        "{found:#?}"
    );
    assert!(
        found[0].ends_with("(this value comes from the top-level cors)"),
        "{found:#?}"
    );
}

#[test]
fn rate_faster_than_nanosecond_rejected() {
    let found = problems(&format!(
        "rate_limiting:\n  requests_per_second: 2000000000\n{ONE_ROUTE}"
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("rate_limiting.requests_per_second: must be at most 1000000000"),
        "{found:#?}"
    );
    assert!(found[0].contains("enabled: false"), "{found:#?}");
    let fastest = format!("rate_limiting:\n  requests_per_second: 1000000000\n{ONE_ROUTE}");
    assert!(gateway_config::Config::from_yaml(&fastest, "test.yaml").is_ok());
}

#[test]
fn decimal_rates_accepted() {
    let text = format!(
        "rate_limiting:\n  requests_per_second: 0.2\n{ONE_ROUTE}    rate_limiting: \
         {{requests_per_second: 0.000278}}\n"
    );
    let config = Config::from_yaml(&text, "test.yaml").unwrap();
    assert_eq!(config.rate_limiting.requests_per_second, 0.2);
    let route = config.routes[0].effective_rate_limit(&config.rate_limiting);
    assert_eq!(route.requests_per_second, 0.000278);
    let text = format!("{ONE_ROUTE}    rate_limiting: {{requests_per_second: 0x10}}\n");
    let config = Config::from_yaml(&text, "test.yaml").unwrap();
    let route = config.routes[0].effective_rate_limit(&config.rate_limiting);
    assert_eq!(route.requests_per_second, 16.0);

    // YAML's other integer notations are whole numbers too.
    for (written, value) in [
        ("2.5", 2.5),
        ("1e3", 1000.0),
        ("7", 7.0),
        ("100", 100.0),
        ("0x10", 16.0),
        ("0o20", 16.0),
    ] {
        let text = format!("rate_limiting:\n  requests_per_second: {written}\n{ONE_ROUTE}");
        let config = Config::from_yaml(&text, "test.yaml").unwrap();
        assert_eq!(config.rate_limiting.requests_per_second, value, "{written}");
    }
}

#[test]
fn rate_below_one_per_hour_rejected() {
    for (written, shown) in [("0.0002", "0.0002"), ("1e-30", "1e-30")] {
        let found = problems(&format!(
            "rate_limiting:\n  requests_per_second: {written}\n{ONE_ROUTE}"
        ));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with(
                "rate_limiting.requests_per_second: must be at least one request per hour \
                 (1/3600, written 0.000278 or more), got "
            ),
            "{found:#?}"
        );
        assert!(found[0].contains(&format!("got {shown}: ")), "{found:#?}");
        assert!(found[0].contains("restart or reload"), "{found:#?}");
    }
}

#[test]
fn rate_not_positive_or_not_finite_rejected() {
    let cases = [
        ("-1", "must be greater than 0, got -1; "),
        ("-0.5", "must be greater than 0, got -0.5; "),
        ("-.inf", "must be greater than 0, got -.inf; "),
        (".nan", "must be a number, got .nan; "),
        (
            ".inf",
            "must be at most 1000000000 (one token a nanosecond), got .inf; ",
        ),
    ];
    for (written, message) in cases {
        let found = problems(&format!(
            "{ONE_ROUTE}    rate_limiting: {{enabled: true, requests_per_second: {written}}}\n"
        ));
        assert_eq!(found.len(), 1, "{written}: {found:#?}");
        assert!(
            found[0].starts_with(&format!(
                "routes[0].rate_limiting.requests_per_second: {message}"
            )),
            "{found:#?}"
        );
    }
}

#[test]
fn rate_of_wrong_type_names_number() {
    let message = parse_error(&format!(
        "rate_limiting:\n  requests_per_second: fast\n{ONE_ROUTE}"
    ));
    assert!(
        message.ends_with(
            "rate_limiting.requests_per_second: must be a number, whole or decimal, such as 10 \
             or 0.5, got string \"fast\""
        ),
        "{message}"
    );
}

#[test]
fn opaque_scheme_origin_points_to_null() {
    for origin in [
        "data:",
        "data:text/html,x",
        "about:blank",
        "data://x",
        "Data://x",
        "about://x",
        "javascript://x",
    ] {
        let found = problems(&format!(
            "cors:\n  enabled: true\n  allowed_origins: [\"{origin}\"]\n{ONE_ROUTE}"
        ));
        assert_eq!(found.len(), 1, "{origin}: {found:#?}");
        assert!(found[0].contains("write \"null\""), "{origin}: {found:#?}");
    }
}

#[test]
fn blob_origin_points_to_inner_origin() {
    for (origin, advice) in [
        (
            "blob:https://app.example/1",
            "write \"https://app.example\"",
        ),
        ("blob:null/abc", "write \"null\""),
        ("blob://x", "write that page's origin"),
        ("filesystem://x", "write that page's origin"),
    ] {
        let found = problems(&format!(
            "cors:\n  enabled: true\n  allowed_origins: [\"{origin}\"]\n{ONE_ROUTE}"
        ));
        assert_eq!(found.len(), 1, "{origin}: {found:#?}");
        assert!(found[0].contains(advice), "{origin}: {found:#?}");
    }
    let found = problems(&format!(
        "cors:\n  enabled: true\n  allowed_origins: [\"mailto:a@b\"]\n{ONE_ROUTE}"
    ));
    assert!(found[0].contains("no \"//\" and host"), "{found:#?}");
}

#[test]
fn backend_url_path_prefix_is_checked() {
    let text = r#"
routes:
  - path: "/a/*rest"
    backends:
      - url: "http://127.0.0.1:9001/../x"
      - url: "http://127.0.0.1:9002/%zz"
      - url: "http://127.0.0.1:9003/v1/%2E%2e/x"
      - url: "http://127.0.0.1:9004/v1/.;x"
      - url: "http://127.0.0.1:9005/v1/%2"
      - url: "http://127.0.0.1:9006/v1/..%2Fx"
"#;
    let found = problems(text);
    assert_eq!(found.len(), 6, "{found:#?}");
    assert!(
        found[0].starts_with(
            "routes[0].backends[0].url: segment \"..\" of the path of \
             \"http://127.0.0.1:9001/../x\" is a '.' or '..' segment"
        ),
        "{found:#?}"
    );
    assert!(
        found[0].ends_with("write the URL it resolves to, \"http://127.0.0.1:9001/x\""),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with(
            "routes[0].backends[1].url: \"http://127.0.0.1:9002/%zz\" contains \"%zz\" in its \
             path, which is not a percent-encoding"
        ),
        "{found:#?}"
    );
    assert!(
        found[1].ends_with("like \"http://127.0.0.1:9002/%25zz\""),
        "{found:#?}"
    );
    assert!(
        found[2].starts_with("routes[0].backends[2].url: segment \"%2E%2e\""),
        "{found:#?}"
    );
    assert!(
        found[2].ends_with("\"http://127.0.0.1:9003/x\""),
        "{found:#?}"
    );
    assert!(
        found[3].starts_with("routes[0].backends[3].url: segment \".;x\""),
        "{found:#?}"
    );
    assert!(
        found[3].ends_with("\"http://127.0.0.1:9004/v1/\""),
        "{found:#?}"
    );
    assert!(
        found[4].starts_with("routes[0].backends[4].url: \"http://127.0.0.1:9005/v1/%2\" contains"),
        "{found:#?}"
    );
    assert!(
        found[5].starts_with("routes[0].backends[5].url: segment \"..\""),
        "{found:#?}"
    );
    assert!(found[5].ends_with("remove that segment"), "{found:#?}");
}

#[test]
fn backend_prefix_rejects_backslash_and_empty_segment() {
    let text = r#"
routes:
  - path: "/a/*rest"
    backends:
      - url: 'http://127.0.0.1:9001/x\y'
      - url: "http://127.0.0.1:9002/a//b"
      - url: 'http://127.0.0.1:9003/a/\v1'
"#;
    let found = problems(text);
    assert_eq!(found.len(), 3, "{found:#?}");
    // The URL offered instead loads itself: its slashes are merged.
    assert!(
        found[2].contains("write \"http://127.0.0.1:9003/a/v1\""),
        "{found:#?}"
    );
    assert!(
        found[0].starts_with(
            "routes[0].backends[0].url: \"http://127.0.0.1:9001/x\\\\y\" contains '\\' in its \
             path"
        ),
        "{found:#?}"
    );
    assert!(
        found[0].contains("write \"http://127.0.0.1:9001/x/y\""),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with(
            "routes[0].backends[1].url: \"http://127.0.0.1:9002/a//b\" has an empty segment"
        ),
        "{found:#?}"
    );
    assert!(
        found[1].ends_with("write \"http://127.0.0.1:9002/a/b\""),
        "{found:#?}"
    );
}

#[test]
fn backend_url_path_prefix_accepts_valid_spellings() {
    // Dots inside a segment, percent-encodings and a trailing slash make a valid prefix.
    let text = r#"
routes:
  - path: "/a/*rest"
    backends:
      - url: "http://127.0.0.1:9001/v1.2/..x/%2E%2E%2Ex/"
      - url: "http://127.0.0.1:9002/%25/%C3%BC"
      - url: "http://127.0.0.1:9003"
      - url: "http://127.0.0.1:9004/"
"#;
    let config = match Config::from_yaml(text, "test.yaml") {
        Ok(config) => config,
        Err(error) => panic!("the file was rejected: {error}"),
    };
    assert_eq!(config.routes[0].backends.len(), 4);
}

#[test]
fn merge_key_named_with_fix() {
    let routes = "routes:\n  - path: /a\n    backends: [{url: \"http://127.0.0.1:1\"}]\n";
    let cases = [
        (
            "health_check:\n  <<: {timeout: 2s}\n",
            "test.yaml:2:3: health_check.<<: unknown field `<<`: YAML merge keys",
        ),
        (
            "health_check: &common\n  timeout: 2s\nrate_limiting: {}\ncors:\n  <<: *common\n",
            "test.yaml:5:3: cors.<<: unknown field `<<`: YAML merge keys",
        ),
    ];
    for (section, start) in cases {
        let message = parse_error(&format!("{section}{routes}"));
        assert!(message.starts_with(start), "{message}");
        assert!(message.contains("write the merged fields out"), "{message}");
        assert!(!message.contains("expected one of"), "{message}");
    }

    // A whole value reused with an alias is valid YAML that serde reads.
    let alias = "routes:\n  - path: /a\n    backends: &pool [{url: \"http://127.0.0.1:1\"}]\n  \
                 - path: /b\n    backends: *pool\n";
    let config = Config::from_yaml(alias, "test.yaml").unwrap();
    assert_eq!(config.routes[1].backends.len(), 1);
}
