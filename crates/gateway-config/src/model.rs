//! The configuration file's sections, each with its defaults.
//!
//! Every struct rejects unknown fields and fills missing ones from its `Default`, so a file with
//! one route is a complete configuration.

use crate::{duration, method, networks};
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The listener and its timeouts.
    pub server: ServerConfig,
    /// Connections from the gateway to backends.
    pub proxy: ProxyConfig,
    /// The routes, matched by path.
    pub routes: Vec<RouteConfig>,
    /// The default rate limit; a route may override it.
    pub rate_limiting: RateLimitConfig,
    /// The default CORS policy; a route may override it.
    pub cors: CorsConfig,
    /// The default active health check; a route may override it.
    pub health_check: HealthCheckConfig,
    /// The SQLite request log.
    pub request_log: RequestLogConfig,
    /// Process logs and the per-request access line.
    pub logging: LoggingConfig,
    /// Access to the admin endpoints.
    pub admin: AdminConfig,
}

/// Access to the admin endpoints, `/admin/*`. `/health` is open to every client, for load
/// balancers and orchestrators.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Client addresses allowed to use `/admin/*`, as CIDRs or single addresses. The client is
    /// the one rate limiting uses: the peer, or behind `server.trusted_proxies` the address
    /// from `X-Forwarded-For`. An empty list closes the endpoints to everyone. Default: the
    /// loopback networks, `127.0.0.0/8` and `::1`.
    #[serde(deserialize_with = "networks::deserialize")]
    pub allowed_clients: Vec<IpNet>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            allowed_clients: vec![
                IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
                IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ],
        }
    }
}

/// The listener and its timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `0.0.0.0`.
    pub host: String,
    /// TCP port to listen on. Default 8080.
    pub port: u16,
    /// Maximum time to receive a request head. On a keep-alive connection the time runs from
    /// the end of the previous response, so it also closes idle connections. Default 30s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub read_timeout: Duration,
    /// Maximum time a response may go without a byte written to the client. Default 30s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub write_timeout: Duration,
    /// Time in-flight requests get to finish after a stop signal. Default 10s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown_timeout: Duration,
    /// Worker threads, each with its own runtime, listener and backend pools. Default: one
    /// per CPU core.
    pub workers: Option<usize>,
    /// Peers whose `X-Forwarded-For` is trusted, written as CIDRs or single addresses.
    /// Default: none.
    #[serde(deserialize_with = "networks::deserialize")]
    pub trusted_proxies: Vec<IpNet>,
}

impl ServerConfig {
    /// Returns the number of workers: `workers` when set, else the number of CPU cores this
    /// process may use.
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".to_owned(),
            port: 8080,
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            workers: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Connections from the gateway to backends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Maximum time to open a TCP connection to a backend. Default 5s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,
    /// Maximum wait for the backend's response head without progress: request body bytes
    /// sent and each interim response received start the wait again.
    /// Default 30s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub response_timeout: Duration,
    /// Time an idle pooled backend connection is kept. Default 90s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub pool_idle_timeout: Duration,
    /// Maximum idle pooled connections per backend. Default 256.
    pub pool_max_idle_per_backend: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_backend: 256,
        }
    }
}

/// One route: a path pattern, the methods it accepts and its backend pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path pattern: `:name` matches one segment and a final `*name` matches the rest.
    pub path: String,
    /// The backend pool.
    pub backends: Vec<BackendConfig>,
    /// Accepted methods. `None`, the default, accepts every method but TRACE. An empty list fails
    /// validation, since it would read as no method, and so does the field written without a
    /// value.
    #[serde(default, deserialize_with = "method::deserialize_list")]
    pub methods: Option<Vec<String>>,
    /// Send the client's `Host` header to the backend instead of the backend's authority.
    #[serde(default)]
    pub preserve_host: bool,
    /// Fields that replace the top-level `health_check` for this route's backends.
    #[serde(default)]
    pub health_check: HealthCheckOverride,
    /// Fields that replace the top-level `rate_limiting` for this route.
    #[serde(default)]
    pub rate_limiting: RateLimitOverride,
    /// Fields that replace the top-level `cors` for this route.
    #[serde(default)]
    pub cors: CorsOverride,
}

/// One backend of a route's pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Base URL, `http://host:port` with an optional path prefix.
    pub url: String,
    /// Share of the route's requests relative to the other backends. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// The key that decides which requests share one rate-limit bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// One bucket per client IP address.
    ClientIp,
    /// One bucket for all clients.
    Global,
}

/// The default of [`RateLimitConfig::ipv6_prefix`].
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The slowest [`RateLimitConfig::requests_per_second`]: one request per hour. Buckets live in
/// memory and start full after a restart or reload, so a slower limit would not hold, and an
/// idle client's bucket would stay in memory for `burst` hours or more.
pub const MIN_REQUESTS_PER_SECOND: f64 = 1.0 / 3600.0;

/// The fastest [`RateLimitConfig::requests_per_second`]: one token a nanosecond, the
/// resolution of the limiter's clock.
pub const MAX_REQUESTS_PER_SECOND: f64 = 1e9;

/// A token-bucket rate limit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Whether the limit applies. Default false.
    pub enabled: bool,
    /// Tokens added per second, a whole or decimal number such as `0.2` (one token every 5
    /// seconds), from [`MIN_REQUESTS_PER_SECOND`] to [`MAX_REQUESTS_PER_SECOND`]. Default 100.
    #[serde(deserialize_with = "rate::deserialize")]
    pub requests_per_second: f64,
    /// Bucket size: requests an idle client may send at once. Default 50.
    pub burst: u32,
    /// Bucket key. Default `client_ip`.
    pub key: RateLimitKey,
    /// With the `client_ip` key, the number of leading bits of an IPv6 address that pick its
    /// bucket. Default 64: one bucket per /64, the smallest block a subscriber's network gets,
    /// so a client cannot reach a fresh bucket by changing addresses within it. 128 gives each
    /// address its own bucket. IPv4 addresses are always keyed whole.
    pub ipv6_prefix: u8,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: false,
            requests_per_second: 100.0,
            burst: 50,
            key: RateLimitKey::ClientIp,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

/// A route's replacements for fields of [`RateLimitConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitOverride {
    /// Replaces `enabled`.
    pub enabled: Option<bool>,
    /// Replaces `requests_per_second`.
    #[serde(deserialize_with = "rate::deserialize_optional")]
    pub requests_per_second: Option<f64>,
    /// Replaces `burst`.
    pub burst: Option<u32>,
    /// Replaces `key`.
    pub key: Option<RateLimitKey>,
    /// Replaces `ipv6_prefix`.
    pub ipv6_prefix: Option<u8>,
}

impl RateLimitOverride {
    /// Returns `base` with this override's fields applied.
    pub fn apply(&self, base: &RateLimitConfig) -> RateLimitConfig {
        RateLimitConfig {
            enabled: self.enabled.unwrap_or(base.enabled),
            requests_per_second: self.requests_per_second.unwrap_or(base.requests_per_second),
            burst: self.burst.unwrap_or(base.burst),
            key: self.key.unwrap_or(base.key),
            ipv6_prefix: self.ipv6_prefix.unwrap_or(base.ipv6_prefix),
        }
    }

    /// Returns true when no field is set.
    pub fn is_empty(&self) -> bool {
        self.enabled.is_none()
            && self.requests_per_second.is_none()
            && self.burst.is_none()
            && self.key.is_none()
            && self.ipv6_prefix.is_none()
    }

    /// Returns whether the field `name` is set.
    pub(crate) fn sets(&self, name: &str) -> bool {
        match name {
            "enabled" => self.enabled.is_some(),
            "requests_per_second" => self.requests_per_second.is_some(),
            "burst" => self.burst.is_some(),
            "key" => self.key.is_some(),
            "ipv6_prefix" => self.ipv6_prefix.is_some(),
            _ => false,
        }
    }
}

/// A CORS policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Whether the gateway adds CORS headers and responds to preflights itself. Default false.
    pub enabled: bool,
    /// Allowed origins, or `*` for any. Default `["*"]`.
    pub allowed_origins: Vec<String>,
    /// Methods allowed in preflights, of those the route accepts. Default GET, POST, PUT,
    /// DELETE.
    pub allowed_methods: Vec<String>,
    /// Request headers allowed in preflights, or `*`. Default `Content-Type`, `Authorization`.
    pub allowed_headers: Vec<String>,
    /// Response headers exposed to scripts. Default none.
    pub exposed_headers: Vec<String>,
    /// Whether credentialed requests are allowed. Default false.
    pub allow_credentials: bool,
    /// Maximum time a browser may cache a preflight response. Default 10m.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            enabled: false,
            allowed_origins: vec!["*".to_owned()],
            allowed_methods: ["GET", "POST", "PUT", "DELETE"].map(String::from).to_vec(),
            allowed_headers: ["Content-Type", "Authorization"].map(String::from).to_vec(),
            exposed_headers: Vec::new(),
            allow_credentials: false,
            max_age: Duration::from_secs(600),
        }
    }
}

/// A route's replacements for fields of [`CorsConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsOverride {
    /// Replaces `enabled`.
    pub enabled: Option<bool>,
    /// Replaces `allowed_origins`.
    pub allowed_origins: Option<Vec<String>>,
    /// Replaces `allowed_methods`. The field written without a value fails, as `methods` does.
    #[serde(default, deserialize_with = "method::deserialize_list")]
    pub allowed_methods: Option<Vec<String>>,
    /// Replaces `allowed_headers`.
    pub allowed_headers: Option<Vec<String>>,
    /// Replaces `exposed_headers`.
    pub exposed_headers: Option<Vec<String>>,
    /// Replaces `allow_credentials`.
    pub allow_credentials: Option<bool>,
    /// Replaces `max_age`.
    #[serde(deserialize_with = "duration::option::deserialize")]
    pub max_age: Option<Duration>,
}

impl CorsOverride {
    /// Returns whether the field `name` is set.
    pub(crate) fn sets(&self, name: &str) -> bool {
        match name {
            "enabled" => self.enabled.is_some(),
            "allowed_origins" => self.allowed_origins.is_some(),
            "allowed_methods" => self.allowed_methods.is_some(),
            "allowed_headers" => self.allowed_headers.is_some(),
            "exposed_headers" => self.exposed_headers.is_some(),
            "allow_credentials" => self.allow_credentials.is_some(),
            "max_age" => self.max_age.is_some(),
            _ => false,
        }
    }

    /// Returns `base` with this override's fields applied.
    pub fn apply(&self, base: &CorsConfig) -> CorsConfig {
        CorsConfig {
            enabled: self.enabled.unwrap_or(base.enabled),
            allowed_origins: pick(&self.allowed_origins, &base.allowed_origins),
            allowed_methods: pick(&self.allowed_methods, &base.allowed_methods),
            allowed_headers: pick(&self.allowed_headers, &base.allowed_headers),
            exposed_headers: pick(&self.exposed_headers, &base.exposed_headers),
            allow_credentials: self.allow_credentials.unwrap_or(base.allow_credentials),
            max_age: self.max_age.unwrap_or(base.max_age),
        }
    }
}

fn pick(value: &Option<Vec<String>>, base: &[String]) -> Vec<String> {
    value.clone().unwrap_or_else(|| base.to_vec())
}

/// An active health check of each backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Whether backends are probed. Default true.
    pub enabled: bool,
    /// Path requested with `GET` on the backend. Default `/health`.
    pub path: String,
    /// Time between probes. Default 10s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// Maximum time for one probe. Default 2s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// Consecutive failures that mark a healthy backend unhealthy. Default 3.
    pub unhealthy_threshold: u32,
    /// Consecutive passing probes that mark an unhealthy backend healthy. Default 2.
    pub healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            enabled: true,
            path: "/health".to_owned(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

/// A route's replacements for fields of [`HealthCheckConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckOverride {
    /// Replaces `enabled`.
    pub enabled: Option<bool>,
    /// Replaces `path`.
    pub path: Option<String>,
    /// Replaces `interval`.
    #[serde(deserialize_with = "duration::option::deserialize")]
    pub interval: Option<Duration>,
    /// Replaces `timeout`.
    #[serde(deserialize_with = "duration::option::deserialize")]
    pub timeout: Option<Duration>,
    /// Replaces `unhealthy_threshold`.
    pub unhealthy_threshold: Option<u32>,
    /// Replaces `healthy_threshold`.
    pub healthy_threshold: Option<u32>,
}

impl HealthCheckOverride {
    /// Returns whether the field `name` is set.
    pub(crate) fn sets(&self, name: &str) -> bool {
        match name {
            "enabled" => self.enabled.is_some(),
            "path" => self.path.is_some(),
            "interval" => self.interval.is_some(),
            "timeout" => self.timeout.is_some(),
            "unhealthy_threshold" => self.unhealthy_threshold.is_some(),
            "healthy_threshold" => self.healthy_threshold.is_some(),
            _ => false,
        }
    }

    /// Returns `base` with this override's fields applied.
    pub fn apply(&self, base: &HealthCheckConfig) -> HealthCheckConfig {
        HealthCheckConfig {
            enabled: self.enabled.unwrap_or(base.enabled),
            path: self.path.clone().unwrap_or_else(|| base.path.clone()),
            interval: self.interval.unwrap_or(base.interval),
            timeout: self.timeout.unwrap_or(base.timeout),
            unhealthy_threshold: self.unhealthy_threshold.unwrap_or(base.unhealthy_threshold),
            healthy_threshold: self.healthy_threshold.unwrap_or(base.healthy_threshold),
        }
    }
}

/// The SQLite request log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLogConfig {
    /// Whether requests are recorded. Default true.
    pub enabled: bool,
    /// SQLite database file; its folder is created when missing. Default `data/gateway.db`.
    pub database: PathBuf,
    /// Maximum rows written in one transaction. Default 512.
    pub batch_size: usize,
    /// Maximum time a row waits before its batch is written. Default 1s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub flush_interval: Duration,
    /// Rows that may wait for the writer; more are dropped and counted. Default 65536.
    pub queue_capacity: usize,
    /// Age after which rows are deleted. Default 7d.
    #[serde(deserialize_with = "duration::deserialize")]
    pub retention: Duration,
    /// Maximum rows kept. Beyond it the oldest rows are deleted, whatever their age, so that
    /// a flood of requests cannot fill the disk before `retention` deletes them. Default
    /// [`DEFAULT_MAX_ROWS`].
    pub max_rows: u64,
}

/// Default `request_log.max_rows`. Measured with SQLite 3.40 on the log's schema, a row takes
/// about 176 bytes for a curl request and 313 bytes with a browser's User-Agent and a query
/// string, indexes included. So this many rows take about 1.8 to 3.1 GB. Rows with longer paths
/// or headers take more.
pub const DEFAULT_MAX_ROWS: u64 = 10_000_000;

impl Default for RequestLogConfig {
    fn default() -> Self {
        RequestLogConfig {
            enabled: true,
            database: PathBuf::from("data/gateway.db"),
            batch_size: 512,
            flush_interval: Duration::from_secs(1),
            queue_capacity: 65_536,
            retention: Duration::from_secs(7 * 86_400),
            max_rows: DEFAULT_MAX_ROWS,
        }
    }
}

/// Format of the process's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Process logs and the per-request access line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Line format. Default `text`.
    pub format: LogFormat,
    /// Whether each request prints an access line on stdout. Default true.
    pub access_log: bool,
    /// Default log filter, in `RUST_LOG` syntax; `RUST_LOG` replaces it. Default `info`.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Text,
            access_log: true,
            level: "info".to_owned(),
        }
    }
}

impl RouteConfig {
    /// Returns this route's health check: the top-level one with the route's fields applied.
    pub fn effective_health_check(&self, base: &HealthCheckConfig) -> HealthCheckConfig {
        self.health_check.apply(base)
    }

    /// Returns this route's rate limit: the top-level one with the route's fields applied.
    pub fn effective_rate_limit(&self, base: &RateLimitConfig) -> RateLimitConfig {
        self.rate_limiting.apply(base)
    }

    /// Returns this route's CORS policy: the top-level one with the route's fields applied.
    pub fn effective_cors(&self, base: &CorsConfig) -> CorsConfig {
        self.cors.apply(base)
    }
}

/// Reads `requests_per_second`: a decimal, or a whole number in any of YAML's notations
/// (`16`, `0x10`, `0o20`). serde_yaml_ng gives a hexadecimal or octal integer to a plain `f64`
/// field as a type error, so the value is read as whatever YAML made of it.
mod rate {
    use serde::Deserialize;
    use serde::de::{Deserializer, Error, Visitor};
    use std::fmt;

    /// A rate read from either a YAML integer or a float.
    struct Rate(f64);

    impl<'de> Deserialize<'de> for Rate {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Rate, D::Error> {
            deserializer.deserialize_any(RateVisitor).map(Rate)
        }
    }

    struct RateVisitor;

    impl Visitor<'_> for RateVisitor {
        type Value = f64;

        // The same word as a plain `f64` field's, so that the parse messages that name the
        // field's form stay as they are.
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("f64")
        }

        fn visit_f64<E: Error>(self, value: f64) -> Result<f64, E> {
            Ok(value)
        }

        fn visit_u64<E: Error>(self, value: u64) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_i64<E: Error>(self, value: i64) -> Result<f64, E> {
            Ok(value as f64)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Rate::deserialize(deserializer).map(|rate| rate.0)
    }

    pub(super) fn deserialize_optional<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<f64>, D::Error> {
        Option::<Rate>::deserialize(deserializer).map(|rate| rate.map(|rate| rate.0))
    }
}
