//! Checks that run after parsing, collecting every problem with its field path.

use crate::Problem;
use crate::model::{BackendConfig, Config, CorsConfig, HealthCheckConfig, RateLimitConfig};
use crate::route_path::route_patterns;
use http::{Method, Uri};
use std::time::Duration;

/// Methods a route or a CORS policy may list.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

/// Largest backend weight; larger weights make the round-robin counters overflow-prone and are
/// never needed to express a ratio.
const MAX_WEIGHT: u32 = 10_000;

struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    fn positive(&mut self, field: &str, value: Duration) {
        if value.is_zero() {
            self.push(field, "must be greater than zero, like 5s or 500ms");
        }
    }
}

impl Config {
    /// Checks every value and returns each problem found, in file order; empty when valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Problems(Vec::new());
        self.validate_server(&mut problems);
        self.validate_routes(&mut problems);
        validate_rate_limit(&mut problems, "rate_limiting", &self.rate_limiting);
        validate_cors(&mut problems, "cors", &self.cors);
        validate_health_check(&mut problems, "health_check", &self.health_check);
        self.validate_request_log(&mut problems);
        problems.0
    }

    fn validate_server(&self, problems: &mut Problems) {
        let server = &self.server;
        if server.host.trim().is_empty() {
            problems.push(
                "server.host",
                "must not be empty: write an address like 0.0.0.0 or 127.0.0.1",
            );
        }
        if server.port == 0 {
            problems.push("server.port", "must be between 1 and 65535, got 0");
        }
        problems.positive("server.read_timeout", server.read_timeout);
        problems.positive("server.write_timeout", server.write_timeout);
        problems.positive("server.shutdown_timeout", server.shutdown_timeout);
        if server.workers == Some(0) {
            problems.push(
                "server.workers",
                "must be at least 1, or left out for one per CPU core",
            );
        }

        let proxy = &self.proxy;
        problems.positive("proxy.connect_timeout", proxy.connect_timeout);
        problems.positive("proxy.response_timeout", proxy.response_timeout);
        problems.positive("proxy.pool_idle_timeout", proxy.pool_idle_timeout);
    }

    fn validate_routes(&self, problems: &mut Problems) {
        if self.routes.is_empty() {
            problems.push(
                "routes",
                "must list at least one route with a path and backends",
            );
        }

        // Insert every route's patterns into a router like the proxy's, so conflicts are
        // reported here with both routes named rather than when the proxy starts.
        let mut router = matchit::Router::new();
        for (i, route) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            match route_patterns(&route.path) {
                Ok(patterns) => {
                    for pattern in patterns {
                        // The bare prefix a catch-all adds yields to explicit routes.
                        if pattern.implicit {
                            continue;
                        }
                        if router.insert(pattern.pattern.as_str(), i).is_err() {
                            let other = conflicting_route(&router, &pattern.pattern)
                                .map(|j| format!("routes[{j}].path {:?}", self.routes[j].path))
                                .unwrap_or_else(|| "another route".to_owned());
                            problems.push(
                                format!("{field}.path"),
                                format!(
                                    "{:?} conflicts with {other}: both match the same requests; give each route a distinct path",
                                    route.path
                                ),
                            );
                        }
                    }
                }
                Err(message) => problems.push(format!("{field}.path"), message),
            }

            if route.backends.is_empty() {
                problems.push(
                    format!("{field}.backends"),
                    "must list at least one backend with a url",
                );
            }
            for (j, backend) in route.backends.iter().enumerate() {
                validate_backend(problems, &format!("{field}.backends[{j}]"), backend);
            }
            for (j, method) in route.methods.iter().enumerate() {
                check_method(problems, &format!("{field}.methods[{j}]"), method);
            }

            let rate_limit = route.effective_rate_limit(&self.rate_limiting);
            if !route.rate_limiting.is_empty() {
                validate_rate_limit(problems, &format!("{field}.rate_limiting"), &rate_limit);
            }
            let cors = route.effective_cors(&self.cors);
            if cors != self.cors {
                validate_cors(problems, &format!("{field}.cors"), &cors);
            }
            let health = route.effective_health_check(&self.health_check);
            if health != self.health_check {
                validate_health_check(problems, &format!("{field}.health_check"), &health);
            }
        }
    }

    fn validate_request_log(&self, problems: &mut Problems) {
        let log = &self.request_log;
        if log.database.as_os_str().is_empty() {
            problems.push(
                "request_log.database",
                "must name a file, like data/gateway.db",
            );
        }
        if log.batch_size == 0 {
            problems.push("request_log.batch_size", "must be at least 1, got 0");
        }
        if log.queue_capacity == 0 {
            problems.push("request_log.queue_capacity", "must be at least 1, got 0");
        }
        problems.positive("request_log.flush_interval", log.flush_interval);
        problems.positive("request_log.retention", log.retention);
    }
}

fn conflicting_route(router: &matchit::Router<usize>, pattern: &str) -> Option<usize> {
    // A literal version of the pattern finds the route that already claims it.
    let probe: String = pattern
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "x"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    router.at(&probe).ok().map(|matched| *matched.value)
}

fn validate_backend(problems: &mut Problems, field: &str, backend: &BackendConfig) {
    if let Err(message) = check_backend_url(&backend.url) {
        problems.push(format!("{field}.url"), message);
    }
    if backend.weight == 0 {
        problems.push(format!("{field}.weight"), "must be at least 1, got 0");
    } else if backend.weight > MAX_WEIGHT {
        problems.push(
            format!("{field}.weight"),
            format!("must be at most {MAX_WEIGHT}, got {}", backend.weight),
        );
    }
}

/// Checks that `url` is an absolute `http` URL with a host and no query or fragment.
fn check_backend_url(url: &str) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|error| {
        format!("invalid URL {url:?} ({error}): write it like http://127.0.0.1:9001")
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "scheme {other:?} of {url:?} is not supported: backends are reached over plain http://"
            ));
        }
        None => return Err(format!("{url:?} has no scheme: write it like http://{url}")),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => {}
        _ => {
            return Err(format!(
                "{url:?} has no host: write it like http://127.0.0.1:9001"
            ));
        }
    }
    if uri.port_u16() == Some(0) {
        return Err(format!(
            "{url:?} has port 0: write the port the backend listens on"
        ));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(format!("{url:?} must not have a query or fragment"));
    }
    Ok(())
}

fn check_method(problems: &mut Problems, field: &str, method: &str) {
    if !KNOWN_METHODS.contains(&method) {
        let hint = if KNOWN_METHODS.contains(&method.to_ascii_uppercase().as_str()) {
            format!("write it in capitals: {:?}", method.to_ascii_uppercase())
        } else {
            format!("use one of {}", KNOWN_METHODS.join(", "))
        };
        problems.push(field, format!("unknown HTTP method {method:?}: {hint}"));
    } else {
        debug_assert!(Method::from_bytes(method.as_bytes()).is_ok());
    }
}

fn validate_rate_limit(problems: &mut Problems, field: &str, limit: &RateLimitConfig) {
    if limit.requests_per_second == 0 {
        problems.push(
            format!("{field}.requests_per_second"),
            "must be at least 1, got 0; set enabled: false to turn the limit off",
        );
    }
    if limit.burst == 0 {
        problems.push(format!("{field}.burst"), "must be at least 1, got 0");
    }
}

fn validate_cors(problems: &mut Problems, field: &str, cors: &CorsConfig) {
    for (i, origin) in cors.allowed_origins.iter().enumerate() {
        if origin != "*" && !is_origin(origin) {
            problems.push(
                format!("{field}.allowed_origins[{i}]"),
                format!("invalid origin {origin:?}: write scheme and host, like https://app.example.com, or \"*\""),
            );
        }
    }
    if cors.allow_credentials && cors.allowed_origins.iter().any(|o| o == "*") {
        problems.push(
            format!("{field}.allow_credentials"),
            "cannot be true while allowed_origins contains \"*\", because browsers reject that pair: list the allowed origins instead",
        );
    }
    for (i, method) in cors.allowed_methods.iter().enumerate() {
        check_method(problems, &format!("{field}.allowed_methods[{i}]"), method);
    }
    for (list, name) in [
        (&cors.allowed_headers, "allowed_headers"),
        (&cors.exposed_headers, "exposed_headers"),
    ] {
        for (i, header) in list.iter().enumerate() {
            if header != "*" && http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                problems.push(
                    format!("{field}.{name}[{i}]"),
                    format!("invalid header name {header:?}"),
                );
            }
        }
    }
}

fn is_origin(origin: &str) -> bool {
    let Ok(uri) = origin.parse::<Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|host| !host.is_empty())
        && uri
            .path_and_query()
            .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
        && !origin.ends_with('/')
}

fn validate_health_check(problems: &mut Problems, field: &str, check: &HealthCheckConfig) {
    if !check.path.starts_with('/') {
        problems.push(
            format!("{field}.path"),
            format!("must start with '/', got {:?}", check.path),
        );
    }
    problems.positive(&format!("{field}.interval"), check.interval);
    problems.positive(&format!("{field}.timeout"), check.timeout);
    if check.timeout > check.interval {
        problems.push(
            format!("{field}.timeout"),
            format!(
                "must not be longer than interval ({:?} > {:?}), so one probe ends before the next starts",
                check.timeout, check.interval
            ),
        );
    }
    if check.unhealthy_threshold == 0 {
        problems.push(
            format!("{field}.unhealthy_threshold"),
            "must be at least 1, got 0",
        );
    }
    if check.healthy_threshold == 0 {
        problems.push(
            format!("{field}.healthy_threshold"),
            "must be at least 1, got 0",
        );
    }
}
