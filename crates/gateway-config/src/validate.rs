//! Checks that run after parsing, collecting every problem with its field path.

use crate::Problem;
use crate::method::check_method;
use crate::model::{
    BackendConfig, Config, CorsConfig, DEFAULT_MAX_ROWS, HealthCheckConfig,
    MAX_REQUESTS_PER_SECOND, MIN_REQUESTS_PER_SECOND, RateLimitConfig,
};
use crate::origin::{OPAQUE_ORIGIN, check_origin};
use crate::route_conflict::RouteSet;
use crate::route_path::{
    dot_segment, invalid_percent_encoding, is_admin_path, match_form, merge_slashes, push_encoded,
    resolve_dot_segments, route_patterns,
};
use http::Uri;
use http::uri::PathAndQuery;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// Largest backend weight; larger weights make the round-robin counters overflow-prone and are
/// never needed to express a ratio.
pub(crate) const MAX_WEIGHT: u32 = 10_000;

/// Largest `proxy.pool_max_idle_per_backend`. Each worker allocates its pool for each backend
/// at full size when the gateway starts, about 32 bytes a slot. So a mistyped count in the
/// millions takes gigabytes before the first request, and a larger one makes the start panic.
/// An idle connection also uses a file descriptor in the gateway and a connection slot in the
/// backend, so even 10,000 idle connections to one backend are more than a pool needs.
pub(crate) const MAX_POOL_IDLE_PER_BACKEND: usize = 10_000;

/// Largest `rate_limiting.ipv6_prefix`: the bits of an IPv6 address.
pub(crate) const MAX_IPV6_PREFIX: u8 = 128;

/// Largest `server.workers`. Current servers have at most a few hundred hardware threads, and a
/// mistyped count far above that makes the runtime fail to start its threads and abort.
pub(crate) const MAX_WORKERS: usize = 1024;

struct Problems(Vec<Problem>);

/// A section of a route that overrides the top-level section of the same name.
struct Section<'a> {
    /// The section's name at the top level, such as `cors`.
    name: &'static str,
    /// The section's path in the file, such as `routes[2].cors`.
    path: String,
    /// Returns whether the route sets the field of this name.
    sets: &'a dyn Fn(&str) -> bool,
}

impl<'a> Section<'a> {
    fn new(route: &str, name: &'static str, sets: &'a dyn Fn(&str) -> bool) -> Section<'a> {
        Section {
            name,
            path: format!("{route}.{name}"),
            sets,
        }
    }
}

impl Problems {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Checks a route's `section` with `validate`, given its values with the top level's
    /// applied (`effective`) and the top level's own (`top`). A problem that the top level has
    /// too, in a field that the route does not set, is left to the top level's report.
    fn check_section<T>(
        &mut self,
        section: &Section<'_>,
        effective: &T,
        top: &T,
        validate: fn(&mut Problems, &str, &T),
    ) {
        let mut found = Problems(Vec::new());
        validate(&mut found, &section.path, effective);
        let mut inherited = Problems(Vec::new());
        validate(&mut inherited, section.name, top);
        for problem in found.0 {
            let rest = problem
                .field
                .strip_prefix(&section.path)
                .unwrap_or_default();
            let name = rest
                .trim_start_matches('.')
                .split(['.', '['])
                .next()
                .unwrap_or_default();
            // Compared by field alone: the message may differ with a value the route sets,
            // such as `enabled`, while the fix belongs to the top level all the same.
            let reported = inherited
                .0
                .iter()
                .any(|other| other.field.strip_prefix(section.name) == Some(rest));
            if (section.sets)(name) {
                self.0.push(problem);
            } else if !reported {
                // The inherited value fails only with the route's own values, so the route
                // reports it, saying where the value comes from.
                self.0.push(Problem {
                    message: format!(
                        "{} (this value comes from the top-level {})",
                        problem.message, section.name
                    ),
                    ..problem
                });
            }
        }
    }

    /// Checks that a period such as a retention is not zero. `example` is a typical value.
    fn positive(&mut self, field: &str, value: Duration, example: &str) {
        if value.is_zero() {
            self.push(field, format!("must be greater than zero, like {example}"));
        }
    }

    /// Checks a timeout or interval against [`MIN_TIMER`] and [`MAX_TIMER`], and returns
    /// whether it is in that range.
    fn check_timer(&mut self, field: &str, value: Duration) -> bool {
        let valid = (MIN_TIMER..=MAX_TIMER).contains(&value);
        if !valid {
            // The duration reader takes `M` for months of 2,630,016 s, so `1M` meant as a
            // minute would show only as that many seconds.
            let month_hint = if value > MAX_TIMER && value.as_secs().is_multiple_of(MONTH_SECS) {
                " (M is a month, m a minute)"
            } else {
                ""
            };
            self.push(
                field,
                format!(
                    "must be {TIMER_RANGE}, got {}{month_hint}: write a duration like 5s or 500ms",
                    crate::duration::format(value)
                ),
            );
        }
        valid
    }
}

/// Minimum timeout or interval accepted. tokio's timers have millisecond granularity (tokio
/// 1.54 `time::sleep` docs), so a shorter one is no more precise, and a read or write timeout
/// of a few nanoseconds expires before any request can be served.
const MIN_TIMER: Duration = Duration::from_millis(1);

/// Seconds in the duration reader's month, `M`: 30.44 days.
const MONTH_SECS: u64 = 2_630_016;

/// Maximum timeout or interval accepted: a week, far above any useful timeout. The server, the
/// health checker and the request log writer add these to `Instant::now()`, which panics on
/// overflow for durations near the parser's maximum of u64::MAX seconds.
const MAX_TIMER: Duration = Duration::from_secs(7 * 86_400);

/// [`MIN_TIMER`] and [`MAX_TIMER`] as the configuration file writes them.
const TIMER_RANGE: &str = "between 1ms and 7d";

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
        if let Err(message) = check_host(&server.host) {
            problems.push("server.host", message);
        }
        if server.port == 0 {
            problems.push("server.port", "must be between 1 and 65535, got 0");
        }
        problems.check_timer("server.read_timeout", server.read_timeout);
        problems.check_timer("server.write_timeout", server.write_timeout);
        problems.check_timer("server.shutdown_timeout", server.shutdown_timeout);
        match server.workers {
            Some(0) => problems.push(
                "server.workers",
                format!(
                    "must be between 1 and {MAX_WORKERS}, got 0: write a count or leave it out for one per CPU core"
                ),
            ),
            Some(workers) if workers > MAX_WORKERS => problems.push(
                "server.workers",
                format!(
                    "must be between 1 and {MAX_WORKERS}, got {workers}: write a count or leave it out for one per CPU core"
                ),
            ),
            _ => {}
        }

        let proxy = &self.proxy;
        problems.check_timer("proxy.connect_timeout", proxy.connect_timeout);
        problems.check_timer("proxy.response_timeout", proxy.response_timeout);
        problems.check_timer("proxy.pool_idle_timeout", proxy.pool_idle_timeout);
        if proxy.pool_max_idle_per_backend > MAX_POOL_IDLE_PER_BACKEND {
            problems.push(
                "proxy.pool_max_idle_per_backend",
                format!(
                    "must be at most {MAX_POOL_IDLE_PER_BACKEND}, got {}: each worker allocates \
                     its pool at full size at start, so write the number of idle connections \
                     to keep per backend, like 256, or 0 to turn pooling off",
                    proxy.pool_max_idle_per_backend
                ),
            );
        }
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
        let mut router = RouteSet::new();
        // Routes that list the same backend URL share one backend, with one health check: the
        // first route's. A later route with other settings would have them ignored.
        let mut first_listed: HashMap<String, usize> = HashMap::new();
        for (i, route) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            match route_patterns(&route.path) {
                Ok(patterns) => {
                    if is_admin_path(&match_form(&route.path)) {
                        problems.push(
                            format!("{field}.path"),
                            format!(
                                "no request can reach {:?}, because the gateway serves /health, /admin and every path under /admin/ itself: choose a path outside them",
                                route.path
                            ),
                        );
                    }
                    for pattern in patterns {
                        // The bare prefix a catch-all adds yields to explicit routes.
                        if pattern.implicit {
                            continue;
                        }
                        if let Err(conflict) = router.insert(&pattern.pattern, i) {
                            problems.push(
                                format!("{field}.path"),
                                conflict.message(&route.path, &self.routes),
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
            match &route.methods {
                Some(methods) if methods.is_empty() => problems.push(
                    format!("{field}.methods"),
                    "an empty list of methods: leave `methods` out to accept every method but TRACE, or \
                     list the methods the route takes",
                ),
                Some(methods) => {
                    for (j, method) in methods.iter().enumerate() {
                        if let Err(message) = check_method(method) {
                            problems.push(format!("{field}.methods[{j}]"), message);
                        }
                    }
                }
                None => {}
            }

            // A route's sections are checked with the top-level values they inherit.
            if !route.rate_limiting.is_empty() {
                problems.check_section(
                    &Section::new(&field, "rate_limiting", &|name| {
                        route.rate_limiting.sets(name)
                    }),
                    &route.effective_rate_limit(&self.rate_limiting),
                    &self.rate_limiting,
                    validate_rate_limit,
                );
            }
            let cors = route.effective_cors(&self.cors);
            if cors != self.cors {
                problems.check_section(
                    &Section::new(&field, "cors", &|name| route.cors.sets(name)),
                    &cors,
                    &self.cors,
                    validate_cors,
                );
            }
            let health = route.effective_health_check(&self.health_check);
            if health != self.health_check {
                problems.check_section(
                    &Section::new(&field, "health_check", &|name| {
                        route.health_check.sets(name)
                    }),
                    &health,
                    &self.health_check,
                    validate_health_check,
                );
            }
            let mut in_route: HashMap<String, usize> = HashMap::new();
            for (j, backend) in route.backends.iter().enumerate() {
                // The proxy shares backends by the same key.
                let key = backend
                    .url
                    .parse::<Uri>()
                    .map_or_else(|_| backend.url.clone(), |url| backend_key(&url));
                // Listed twice, one backend would get two turns in the order and two rows in
                // /admin/backends, where a weight gives the same share with one entry.
                if let Some(earlier) = in_route.insert(key.clone(), j) {
                    problems.push(
                        format!("{field}.backends[{j}].url"),
                        format!(
                            "{:?} is the same backend as backends[{earlier}] ({:?}): list it once, and give it a larger weight for a larger share",
                            backend.url, route.backends[earlier].url
                        ),
                    );
                }
                let first = *first_listed.entry(key).or_insert(i);
                let first_health = self.routes[first].effective_health_check(&self.health_check);
                // With both checks off, no probe runs, so their other fields do not matter.
                let both_off = !first_health.enabled && !health.enabled;
                if first != i && first_health != health && !both_off {
                    problems.push(
                        format!("{field}.backends[{j}].url"),
                        format!(
                            "{:?} is also a backend of routes[{first}] ({:?}) with other health_check settings, but a backend has one health check: give both routes the same health_check settings",
                            backend.url, self.routes[first].path
                        ),
                    );
                }
            }
        }
    }

    fn validate_request_log(&self, problems: &mut Problems) {
        let log = &self.request_log;
        let database = log.database.as_os_str().as_encoded_bytes();
        if database.is_empty() {
            problems.push(
                "request_log.database",
                "must name a file, like data/gateway.db",
            );
        } else if database == b":memory:" {
            problems.push(
                "request_log.database",
                "\":memory:\" names SQLite's in-memory database, which keeps nothing and \
                 which the log's readers cannot see: name a file, like data/gateway.db",
            );
        } else if database.starts_with(b"file:") {
            // SQLite reads such a name as a URI, so the rows would go to the file the URI
            // names, while the gateway's checks and `apigateway logs` look at another.
            problems.push(
                "request_log.database",
                format!(
                    "\"{}\" starts with `file:`, which SQLite reads as a URI: name the file \
                     itself, like data/gateway.db, or write ./{} for a file of that name",
                    log.database.display(),
                    log.database.display()
                ),
            );
        }
        if log.batch_size == 0 {
            problems.push("request_log.batch_size", "must be at least 1, got 0");
        } else if log.batch_size > MAX_BATCH_SIZE {
            problems.push(
                "request_log.batch_size",
                format!(
                    "must be at most {MAX_BATCH_SIZE}, got {}: a larger transaction holds the \
                     database lock longer and writes no faster",
                    log.batch_size
                ),
            );
        }
        if log.queue_capacity == 0 {
            problems.push("request_log.queue_capacity", "must be at least 1, got 0");
        } else if log.queue_capacity > MAX_QUEUE_CAPACITY {
            problems.push(
                "request_log.queue_capacity",
                format!(
                    "must be at most {MAX_QUEUE_CAPACITY}, got {}: a full queue that size \
                     holds gigabytes of rows",
                    log.queue_capacity
                ),
            );
        }
        problems.check_timer("request_log.flush_interval", log.flush_interval);
        problems.positive("request_log.retention", log.retention, "7d or 30d");
        if log.max_rows == 0 || log.max_rows > MAX_LOG_ROWS {
            problems.push(
                "request_log.max_rows",
                format!(
                    "must be between 1 and {MAX_LOG_ROWS}, got {}: write the number of newest \
                     rows to keep, or leave it out for {DEFAULT_MAX_ROWS}, about 1.8 to 3.1 GB",
                    log.max_rows
                ),
            );
        }
    }
}

/// Largest `request_log.batch_size` accepted.
pub(crate) const MAX_BATCH_SIZE: usize = 100_000;

/// Largest `request_log.max_rows` accepted. At 150 to 300 bytes a row, a log of that many rows
/// takes 150 to 300 GB.
pub(crate) const MAX_LOG_ROWS: u64 = 1_000_000_000;

/// Largest `request_log.queue_capacity` accepted. A queued row takes about 200 bytes.
pub(crate) const MAX_QUEUE_CAPACITY: usize = 10_000_000;

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

/// Example listen addresses, quoted by every `server.host` message.
const HOST_EXAMPLES: &str = "0.0.0.0 (every IPv4 interface), 127.0.0.1 (this machine only), :: (every interface) or localhost";

/// Checks that `host` is an IP address or a syntactically valid host name, so that binding
/// can only fail for reasons outside the file.
fn check_host(host: &str) -> Result<(), String> {
    if host.trim().is_empty() {
        return Err(format!(
            "must not be empty: write an address like {HOST_EXAMPLES}"
        ));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        && inner.parse::<Ipv6Addr>().is_ok()
    {
        return Err(format!(
            "{host:?} has brackets: write the IPv6 address without them, like {inner}"
        ));
    }
    if !is_host_name(host) {
        return Err(format!(
            "{host:?} is neither an IP address nor a host name: write an address like {HOST_EXAMPLES}"
        ));
    }
    Ok(())
}

/// Returns whether `name` is a host name by RFC 1123: dot-separated labels of 1 to 63
/// letters, digits and hyphens, not starting or ending with a hyphen, 253 bytes at most. The
/// last label is not all digits (RFC 1123 section 2.1 keeps names apart from addresses), so
/// `127.0.0.300` is a mistyped address, not a name.
fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let numeric_top = name
        .rsplit('.')
        .next()
        .is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit()));
    !name.is_empty()
        && !numeric_top
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Checks that `url` is an absolute `http` URL with a host, a port from 1 to 65535 when one
/// is written, no user name or password, and no query or fragment.
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
        // A zone (`[fe80::1%25eth0]`) names an interface of this machine, which the backend's
        // `Host` header and the address lookup cannot carry.
        Some(host) if host.starts_with('[') && host.contains('%') => {
            return Err(format!(
                "{url:?} has an IPv6 zone, which backend URLs cannot use: write an address without a zone (not a link-local fe80:: one) or the backend's host name"
            ));
        }
        Some(host) if !host.is_empty() => {}
        _ => {
            return Err(format!(
                "{url:?} has no host: write it like http://127.0.0.1:9001"
            ));
        }
    }
    let authority = uri.authority().map_or("", |a| a.as_str());
    if let Some((_, host)) = authority.rsplit_once('@') {
        // The URL is not repeated, so the password does not reach logs or terminals.
        return Err(format!(
            "a backend URL must not contain a user name or password, because the gateway would send them on in the Host header: remove the part before '@' and write it like http://{host}"
        ));
    }
    if port_text(authority) == Some("") {
        return Err(format!(
            "{url:?} has a ':' but no port after it: write a port from 1 to 65535 or remove the ':'"
        ));
    }
    if let Some(port) = port_text(authority) {
        match port.parse::<u16>() {
            Ok(0) => {
                return Err(format!(
                    "{url:?} has port 0: write the port the backend listens on"
                ));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "port {port:?} of {url:?} is invalid: write a port from 1 to 65535"
                ));
            }
        }
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(format!("{url:?} must not have a query or fragment"));
    }
    check_backend_path(url, uri.path())
}

/// Checks the path prefix of a backend URL for the spellings that route paths reject. The
/// gateway puts the prefix in front of every path it forwards, so a `.` or `..` segment would
/// send requests to other paths than the prefix, and a `%` must start a percent-encoding.
/// `path` is the URL's path as written, at the end of `url`, since a query or fragment was
/// rejected before.
fn check_backend_path(url: &str, path: &str) -> Result<(), String> {
    // A URL without a path gets "/" from the parser, which needs no check.
    let Some(before_path) = url.strip_suffix(path) else {
        return Ok(());
    };
    if path.contains('\\') {
        let fixed = format!("{before_path}{}", merge_slashes(&path.replace('\\', "/")));
        return Err(format!(
            "{url:?} contains '\\' in its path, which RFC 3986 does not allow, and backends \
             differ on it (many read it as '/'): write {fixed:?}, or %5C for a literal backslash"
        ));
    }
    if path.contains("//") {
        return Err(format!(
            "{url:?} has an empty segment ('//') in its path, which backends differ on (NGINX \
             merges repeated slashes, others keep them): write {:?}",
            format!("{before_path}{}", merge_slashes(path))
        ));
    }
    if let Some(at) = invalid_percent_encoding(path) {
        let text: String = path[at..].chars().take(3).collect();
        return Err(format!(
            "{url:?} contains {text:?} in its path, which is not a percent-encoding ('%' and two \
             hex digits), so the backend would reject or misread every forwarded path: write '%' \
             as %25, like {:?}",
            format!("{before_path}{}%25{}", &path[..at], &path[at + 1..])
        ));
    }
    if let Some(segment) = dot_segment(path) {
        let fix = match resolve_dot_segments(path) {
            Some(resolved) => {
                let resolved_url = format!("{before_path}{resolved}");
                format!("write the URL it resolves to, {resolved_url:?}")
            }
            None => "remove that segment".to_owned(),
        };
        return Err(format!(
            "segment {segment:?} of the path of {url:?} is a '.' or '..' segment, which the \
             backend would resolve, so requests would reach other paths than the prefix: {fix}"
        ));
    }
    Ok(())
}

/// Returns the text after the port colon of `authority`, or `None` when it has no port.
/// [`Uri::port_u16`] cannot tell a missing port from one above 65535, because both are `None`.
fn port_text(authority: &str) -> Option<&str> {
    // An IPv6 host is bracketed, so a port colon can only follow the closing bracket.
    let after_host = match authority.rfind(']') {
        Some(end) => &authority[end + 1..],
        None => authority,
    };
    after_host.rsplit_once(':').map(|(_, port)| port)
}

fn validate_rate_limit(problems: &mut Problems, field: &str, limit: &RateLimitConfig) {
    let rate = limit.requests_per_second;
    let rate_field = format!("{field}.requests_per_second");
    // The values are checked while the limit is off too, so that an invalid rate is found
    // before the limit is turned on.
    let off_fix = if limit.enabled {
        "set enabled: false to turn the limit off"
    } else {
        "the limit is off, but its values must still be valid: remove the field or set a rate"
    };
    if rate.is_nan() {
        problems.push(rate_field, format!("must be a number, got .nan; {off_fix}"));
    } else if rate <= 0.0 {
        problems.push(
            rate_field,
            format!(
                "must be greater than 0, got {}; {off_fix}",
                yaml_number(rate)
            ),
        );
    } else if rate < MIN_REQUESTS_PER_SECOND {
        problems.push(
            rate_field,
            format!(
                "must be at least one request per hour (1/3600, written 0.000278 or more), got \
                 {}: buckets live in memory and start full again after a restart or reload, so \
                 a slower limit would not hold; for a stricter limit, also lower burst",
                yaml_number(rate)
            ),
        );
    } else if rate > MAX_REQUESTS_PER_SECOND {
        // The limiter adds a token every 1 / rate seconds, kept in whole nanoseconds, so a
        // faster rate would refill at once and limit nothing.
        problems.push(
            rate_field,
            format!(
                "must be at most {MAX_REQUESTS_PER_SECOND} (one token a nanosecond), got {}; to \
                 not limit at all, set enabled: false",
                yaml_number(rate)
            ),
        );
    }
    if limit.burst == 0 {
        problems.push(format!("{field}.burst"), "must be at least 1, got 0");
    }
    if limit.ipv6_prefix == 0 {
        problems.push(
            format!("{field}.ipv6_prefix"),
            "must be between 1 and 128, got 0; for one bucket shared by every client, set \
             key: global",
        );
    } else if limit.ipv6_prefix > MAX_IPV6_PREFIX {
        problems.push(
            format!("{field}.ipv6_prefix"),
            format!(
                "must be between 1 and 128, got {}; 128 gives each IPv6 address its own bucket",
                limit.ipv6_prefix
            ),
        );
    }
}

/// Formats `number` for a message: `.inf` and `-.inf` for infinities as YAML spells them,
/// whole numbers without a fractional part, and numbers longer than 20 characters, such as
/// `1e-30`, in exponent form.
fn yaml_number(number: f64) -> String {
    if number.is_infinite() {
        let sign = if number < 0.0 { "-" } else { "" };
        return format!("{sign}.inf");
    }
    let text = number.to_string();
    if text.len() > 20 {
        format!("{number:e}")
    } else {
        text
    }
}

fn validate_cors(problems: &mut Problems, field: &str, cors: &CorsConfig) {
    for (i, origin) in cors.allowed_origins.iter().enumerate() {
        if origin == "*" {
            continue;
        }
        // Origins are compared as whole strings, so a pattern like https://*.example.com
        // would match no browser's Origin header.
        if origin.contains('*') {
            problems.push(
                format!("{field}.allowed_origins[{i}]"),
                format!("wildcards inside an origin are not supported, so {origin:?} would match no request: list each origin, like https://app.example.com, or write \"*\" alone to allow any origin"),
            );
        } else if let Err(fix) = check_origin(origin) {
            problems.push(format!("{field}.allowed_origins[{i}]"), fix);
        }
    }
    if cors.allow_credentials && cors.allowed_origins.iter().any(|o| o == "*") {
        problems.push(
            format!("{field}.allow_credentials"),
            "cannot be true while allowed_origins contains \"*\", because browsers reject that pair: list the allowed origins instead",
        );
    } else if cors.allow_credentials && cors.allowed_origins.iter().any(|o| o == OPAQUE_ORIGIN) {
        // An error rather than a warning, because any website can send `Origin: null` by
        // running its script in a sandboxed iframe. So this pair lets every website read
        // responses made with the user's credentials, as `*` with credentials would, which
        // browsers reject. A page that really has the opaque origin, such as a file: page, can
        // send a token in a header such as Authorization, which needs no allow_credentials.
        problems.push(
            format!("{field}.allow_credentials"),
            "cannot be true while allowed_origins contains \"null\", because any website can send Origin: null from a sandboxed iframe and would read responses made with the user's cookies or other credentials: set allow_credentials: false and send a token in a header such as Authorization, or remove \"null\"",
        );
    }
    // On a request with credentials, browsers read `Access-Control-Expose-Headers: *` as a
    // header named `*` (Fetch standard, CORS protocol), so it would expose nothing.
    if cors.allow_credentials && cors.exposed_headers.iter().any(|h| h == "*") {
        problems.push(
            format!("{field}.exposed_headers"),
            "cannot contain \"*\" while allow_credentials is true, because browsers then read it as a header named \"*\" and expose nothing: list the header names instead",
        );
    }
    // Access-Control-Max-Age counts whole seconds, so a fraction would be cut, and a value
    // under a second sent as 0, which turns off the browser's preflight cache.
    if cors.max_age.subsec_nanos() != 0 {
        problems.push(
            format!("{field}.max_age"),
            format!(
                "must be whole seconds, got {}: write a duration like 600s or 10m, or 0s to turn off preflight caching",
                crate::duration::format(cors.max_age)
            ),
        );
    }
    for (i, method) in cors.allowed_methods.iter().enumerate() {
        if let Err(message) = check_method(method) {
            problems.push(format!("{field}.allowed_methods[{i}]"), message);
        }
    }
    for (list, name) in [
        (&cors.allowed_headers, "allowed_headers"),
        (&cors.exposed_headers, "exposed_headers"),
    ] {
        for (i, header) in list.iter().enumerate() {
            if header != "*" && http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                problems.push(
                    format!("{field}.{name}[{i}]"),
                    format!(
                        "invalid header name {header:?}: a header name is one token of letters, \
                         digits and the characters !#$%&'*+-.^_`|~, with no spaces, like \
                         X-Request-Id"
                    ),
                );
            }
        }
    }
}

fn validate_health_check(problems: &mut Problems, field: &str, check: &HealthCheckConfig) {
    if let Err(message) = check_health_path(&check.path) {
        problems.push(format!("{field}.path"), message);
    }
    let interval_valid = problems.check_timer(&format!("{field}.interval"), check.interval);
    let timeout_valid = problems.check_timer(&format!("{field}.timeout"), check.timeout);
    // Compared only when both are in range, so that one invalid value is reported once.
    if interval_valid && timeout_valid && check.timeout > check.interval {
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

/// Checks that a health check path is a request target in origin form (RFC 9112 section
/// 3.2.1): a path that starts with `/` and an optional query, as a probe's request line
/// carries them, without `.` or `..` segments.
fn check_health_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("must start with '/', got {path:?}"));
    }
    // `PathAndQuery` drops a fragment without an error, but a request never carries one.
    if path.contains('#') {
        return Err(format!(
            "{path:?} contains a fragment ('#...'), which a request never carries: remove it, or write %23 for a literal '#'"
        ));
    }
    if let Err(error) = path.parse::<PathAndQuery>() {
        return Err(format!(
            "{path:?} is not a valid request path ({error}), so every probe would fail: write it percent-encoded, like {:?}",
            percent_encode_target(path)
        ));
    }
    // `PathAndQuery` also takes UTF-8 and `\`, which would go out unencoded on the probe's
    // request line, where RFC 9112 allows neither.
    if path.bytes().any(|byte| !is_target_byte(byte)) {
        return Err(format!(
            "{path:?} contains characters that a request line cannot carry unencoded: write it percent-encoded, like {:?}",
            percent_encode_target(path)
        ));
    }
    if let Some(at) = invalid_percent_encoding(path) {
        return Err(format!(
            "{path:?} has a '%' that two hex digits do not follow, which is not a percent-encoding: write '%' as %25, like {:?}",
            format!("{}%25{}", &path[..at], &path[at + 1..])
        ));
    }
    // The probe goes to the backend URL's path prefix followed by this path, so a `.` or `..`
    // segment, which the backend resolves, would probe a path outside the prefix. A query is
    // not resolved, so dots in it are kept.
    let (path_only, query) = match path.find('?') {
        Some(at) => path.split_at(at),
        None => (path, ""),
    };
    if let Some(segment) = dot_segment(path_only) {
        let fix = match resolve_dot_segments(path_only) {
            Some(resolved) => format!(
                "write the path it resolves to, {:?}",
                format!("{resolved}{query}")
            ),
            None => "remove that segment".to_owned(),
        };
        return Err(format!(
            "segment {segment:?} of {path:?} is a '.' or '..' segment, which the backend would \
             resolve, so probes would reach other paths than the backend URL's prefix followed \
             by this path: {fix}"
        ));
    }
    Ok(())
}

/// Returns whether RFC 3986 allows `byte` unencoded in a path or a query, counting `%` as the
/// start of a percent-encoding.
fn is_target_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&byte)
}

/// Percent-encodes every byte of `target` that RFC 3986 does not allow unencoded in a path or
/// a query, so that a space becomes `%20`. A `%` is kept, as the start of an encoded byte.
fn percent_encode_target(target: &str) -> String {
    let mut encoded = String::with_capacity(target.len() * 3);
    for byte in target.bytes() {
        if is_target_byte(byte) {
            encoded.push(char::from(byte));
        } else {
            push_encoded(&mut encoded, byte);
        }
    }
    encoded
}

/// Returns the key under which backend URLs name one backend: the scheme and host in lower
/// case, the port as a number (80 when left out), and the path without a trailing `/`. So
/// `http://LOCALHOST:09001/v1/` and `http://localhost:9001/v1` are one backend, with one
/// health check, as they are one server and forward to the same paths.
pub fn backend_key(url: &Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("http").to_ascii_lowercase();
    let host = url.host().unwrap_or_default().to_ascii_lowercase();
    let authority = url.authority().map_or_else(String::new, |authority| {
        authority.as_str().to_ascii_lowercase()
    });
    let server = match url.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => {
            // A port that is no number up to 65535 keeps its text, so that the error about it
            // is not joined by one about a duplicate.
            let after_host = authority
                .rsplit_once(']')
                .map_or(&*authority, |(_, rest)| rest);
            if after_host.contains(':') {
                authority
            } else {
                format!("{host}:80")
            }
        }
    };
    let path = url.path().trim_end_matches('/');
    format!("{scheme}://{server}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_range_text_matches_bounds() {
        let (min, max) = TIMER_RANGE
            .strip_prefix("between ")
            .and_then(|range| range.split_once(" and "))
            .expect("range text");
        assert_eq!(crate::duration::parse(min), Ok(MIN_TIMER));
        assert_eq!(crate::duration::parse(max), Ok(MAX_TIMER));
    }

    #[test]
    fn health_path_dot_segments_rejected() {
        let cases = [
            (
                "/../health",
                "\"..\"",
                "write the path it resolves to, \"/health\"",
            ),
            (
                "/./health",
                "\".\"",
                "write the path it resolves to, \"/health\"",
            ),
            ("/v1/../health", "\"..\"", "resolves to, \"/health\""),
            ("/a/%2e%2e/health", "\"%2e%2e\"", "resolves to, \"/health\""),
            ("/a/%2E./health", "\"%2E.\"", "resolves to, \"/health\""),
            ("/health/..", "\"..\"", "resolves to, \"/\""),
            ("/health/..;x=1", "\"..;x=1\"", "resolves to, \"/\""),
            (
                "/../health?full=1",
                "\"..\"",
                "resolves to, \"/health?full=1\"",
            ),
            ("/a/..%2fhealth", "\"..\"", "remove that segment"),
            ("/a/..%5Chealth", "\"..\"", "remove that segment"),
        ];
        for (path, segment, fix) in cases {
            let message = check_health_path(path).expect_err(path);
            assert!(
                message.starts_with(&format!("segment {segment} of {path:?} is a '.' or '..'")),
                "{path}: {message}"
            );
            assert!(
                message.contains("backend URL's prefix"),
                "{path}: {message}"
            );
            assert!(message.ends_with(fix), "{path}: {message}");
        }
    }

    #[test]
    fn health_path_dots_inside_names_accepted() {
        for path in [
            "/health",
            "/.well-known/health",
            "/..health",
            "/a.b/c..d",
            "/health?next=../x",
            "/health?path=/./a",
        ] {
            assert_eq!(check_health_path(path), Ok(()), "{path}");
        }
    }
}
