//! Everything built once from the configuration and shared by every connection.

use crate::access_line::AccessLines;
use gateway_config::{Config, RateLimitConfig, RouteConfig};
use gateway_middleware::client_ip::{ClientIp, NetworkSet, TrustedProxies};
use gateway_middleware::cors::{Cors, CorsLayer, CorsPolicy};
use gateway_middleware::rate_limit::{
    RATELIMIT, RATELIMIT_POLICY, RateLimit, RateLimitLayer, RateLimiter,
};
use gateway_proxy::routes::RouteTableError;
use gateway_proxy::server::Inbound;
use gateway_proxy::{BackendClient, Forward, RouteTable};
use gateway_store::{LogReader, RequestLog};
use http::Request;
use http::header::{self, HeaderName};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tower::Layer;
use tower::util::Either;

/// A route's service: CORS (when on), then the rate limit (when on), then the forwarder.
///
/// CORS is outside the rate limit, so the CORS layer responds to preflights without taking a
/// token, and 429 responses carry the CORS headers a script needs to read them.
pub(crate) type RouteService = Either<Cors<LimitOrForward>, LimitOrForward>;
pub(crate) type LimitOrForward = Either<RateLimit<Forward>, Forward>;

/// The headers the rate limit adds to responses, exposed to scripts on routes with both a
/// rate limit and CORS.
const RATE_LIMIT_HEADERS: [HeaderName; 3] = [header::RETRY_AFTER, RATELIMIT, RATELIMIT_POLICY];

/// A failure to build the gateway from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The route table could not be compiled.
    #[error("failed to build the route table")]
    Routes(#[from] RouteTableError),
}

/// The gateway's immutable state: configuration, routes and per-route services.
#[derive(Debug)]
pub struct Gateway {
    pub(crate) config: Arc<Config>,
    pub(crate) table: Arc<RouteTable>,
    pub(crate) routes: Vec<RouteService>,
    /// The top-level CORS policy, when it is on, for responses of no route: a path that
    /// matches none, or a request rejected before routing.
    pub(crate) unrouted_cors: Option<CorsPolicy>,
    /// Backend connections shared by every route.
    pub(crate) client: BackendClient,
    pub(crate) limiters: Vec<Arc<RateLimiter>>,
    pub(crate) trusted: TrustedProxies,
    /// Clients allowed to use `/admin/*`.
    pub(crate) admin_clients: NetworkSet,
    pub(crate) draining: AtomicBool,
    pub(crate) started: Instant,
    pub(crate) request_log: OnceLock<RequestLogState>,
    /// The writer of access lines, when they are on.
    pub(crate) access_lines: Option<AccessLines>,
    /// Notifications for a stop that does not wait for the drain: the second stop signal's
    /// request, and the server's notice that no request is in flight any more.
    pub(crate) stop_now: StopNow,
}

/// The two notifications of a stop that cuts off in-flight requests at once.
#[derive(Debug)]
pub(crate) struct StopNow {
    /// The request's flag, true once requested. A flag rather than a notification, so that a
    /// server that starts waiting after the request still finds it set.
    pub(crate) requested: tokio::sync::watch::Sender<bool>,
    pub(crate) done: tokio::sync::Notify,
}

impl Default for StopNow {
    fn default() -> Self {
        StopNow {
            requested: tokio::sync::watch::Sender::new(false),
            done: tokio::sync::Notify::new(),
        }
    }
}

/// The open request log: the queue the request path writes to and a reader for the admin
/// endpoints.
#[derive(Debug)]
pub(crate) struct RequestLogState {
    pub(crate) log: RequestLog,
    pub(crate) reader: LogReader,
    /// One permit: admin queries on the request log run one at a time.
    pub(crate) query_slot: Arc<tokio::sync::Semaphore>,
}

impl Gateway {
    /// Commits the request log rows queued so far, for at most `timeout`, before a process
    /// exit that skips the writer's stop. Returns whether every row was committed, and true
    /// when the log is off.
    pub async fn commit_request_log(&self, timeout: std::time::Duration) -> bool {
        match self.request_log.get() {
            Some(state) => state.log.commit_now(timeout).await,
            None => true,
        }
    }

    /// Returns the request log rows dropped because the queue was full and those whose batch
    /// failed, since the start, or `None` when the log is off.
    pub fn request_log_losses(&self) -> Option<(u64, u64)> {
        self.request_log
            .get()
            .map(|state| (state.log.dropped(), state.log.failed()))
    }

    /// Returns how many request log rows wait to be committed, 0 when the log is off.
    pub fn queued_request_log_rows(&self) -> usize {
        self.request_log.get().map_or(0, |state| state.log.queued())
    }

    /// Ends the requests still in flight during a drain, as the drain deadline does, so that
    /// each gets its access line and request log row as cut off by the stop. Waits at most
    /// `timeout` for the server to end them, and returns whether none is left in flight.
    pub async fn cut_off_requests(&self, timeout: std::time::Duration) -> bool {
        let done = self.stop_now.done.notified();
        self.stop_now.requested.send_replace(true);
        tokio::time::timeout(timeout, done).await.is_ok()
    }

    /// Builds the route table and every route's layer stack from a validated configuration.
    ///
    /// # Errors
    ///
    /// Returns [`BuildError`] when a route cannot be compiled, which validation normally
    /// prevents.
    pub fn new(config: Config) -> Result<Gateway, BuildError> {
        let table = Arc::new(RouteTable::new(&config)?);
        let backend_ids = table.backends().iter().map(|(backend, _)| backend.id());
        let client = BackendClient::new(&config.proxy, backend_ids, config.server.worker_count());
        let mut routes = Vec::with_capacity(table.routes().len());
        let mut limiters = Limiters::default();

        for (route, route_config) in table.routes().iter().zip(&config.routes) {
            let mut forward = Forward::new(Arc::clone(route), client.clone());
            // Only the access line and the request log read what the forwarder reports.
            if !config.logging.access_log && !config.request_log.enabled {
                forward = forward.without_info();
            }

            let limiter = limiters.for_route(route_config, &config.rate_limiting);
            let is_limited = limiter.is_some();
            let inner = match limiter {
                Some(limiter) => Either::Left(RateLimitLayer::new(limiter).layer(forward)),
                None => Either::Right(forward),
            };

            let cors = route_config.effective_cors(&config.cors);
            let service = if cors.enabled {
                let mut policy =
                    CorsPolicy::new(&cors).with_methods_limited_to(|method| route.accepts(method));
                if is_limited {
                    policy = policy.with_exposed_headers(RATE_LIMIT_HEADERS);
                }
                Either::Left(CorsLayer::new(Arc::new(policy)).layer(inner))
            } else {
                Either::Right(inner)
            };
            routes.push(service);
        }

        let unrouted_cors = config.cors.enabled.then(|| CorsPolicy::new(&config.cors));
        Ok(Gateway {
            unrouted_cors,
            client,
            trusted: TrustedProxies::new(config.server.trusted_proxies.clone()),
            admin_clients: NetworkSet::new(config.admin.allowed_clients.clone()),
            config: Arc::new(config),
            table,
            routes,
            limiters: limiters.all,
            draining: AtomicBool::new(false),
            started: Instant::now(),
            request_log: OnceLock::new(),
            access_lines: None,
            stop_now: StopNow::default(),
        })
    }

    /// Prints an access line for every request through `lines`. Without this call the
    /// gateway prints none, whatever the value of `logging.access_log`, because the caller
    /// decides where stdout goes and how the log filter applies.
    pub fn with_access_lines(mut self, lines: AccessLines) -> Gateway {
        self.access_lines = Some(lines);
        self
    }

    /// Returns the configuration the gateway was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Returns the compiled routes and their backends.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// Returns whether a layer reads the client's address from the request's [`ClientIp`]
    /// extension: a rate limit keys its buckets by it, and the access line and the request
    /// log record it. Without them the extension is not added, which saves its allocation.
    pub(crate) fn reads_client_ip(&self) -> bool {
        !self.limiters.is_empty() || self.access_lines.is_some() || self.request_log.get().is_some()
    }

    /// Returns the client's address of `request`: its [`ClientIp`] extension, else the one
    /// the trusted proxies give for the peer that the server recorded on its body.
    pub(crate) fn client_ip(&self, request: &Request<Inbound>) -> Option<IpAddr> {
        if let Some(client) = ClientIp::of(request.extensions()) {
            return Some(client);
        }
        let peer = request.body().peer()?;
        Some(self.trusted.client_ip(peer, request.headers()))
    }

    /// Returns whether the gateway is draining after a stop signal.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Returns the CORS policy of the route at `index` in the route table, or `None` when
    /// CORS is off for it.
    pub(crate) fn route_cors(&self, index: usize) -> Option<&CorsPolicy> {
        match self.routes.get(index)? {
            Either::Left(cors) => Some(cors.policy()).filter(|policy| policy.is_enabled()),
            Either::Right(_) => None,
        }
    }
}

/// The rate limiters of the routes, built while the routes are.
#[derive(Default)]
struct Limiters {
    /// The limiter built from the top-level `rate_limiting`, created by the first route that
    /// inherits it.
    shared: Option<Arc<RateLimiter>>,
    /// Every distinct limiter, once each.
    all: Vec<Arc<RateLimiter>>,
}

impl Limiters {
    /// Returns the limiter of `route`, or `None` when its rate limit is off.
    ///
    /// Routes without a `rate_limiting` override share one limiter, so the top-level limit
    /// (and the one bucket of `key: global`) spans all of them. A route with an override gets
    /// its own limiter, even when the override repeats the top-level values.
    fn for_route(
        &mut self,
        route: &RouteConfig,
        top_level: &RateLimitConfig,
    ) -> Option<Arc<RateLimiter>> {
        if route.rate_limiting.is_empty() {
            if !top_level.enabled {
                return None;
            }
            let shared = self.shared.get_or_insert_with(|| {
                let limiter = Arc::new(RateLimiter::new(top_level));
                self.all.push(Arc::clone(&limiter));
                limiter
            });
            return Some(Arc::clone(shared));
        }

        let limit = route.effective_rate_limit(top_level);
        if !limit.enabled {
            return None;
        }
        let limiter = Arc::new(RateLimiter::new(&limit));
        self.all.push(Arc::clone(&limiter));
        Some(limiter)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::{HeaderMap, HeaderValue};

    const APP: &str = "https://app.example.com";

    /// Builds a gateway from YAML `top_level` sections and the route items `routes`.
    fn gateway(top_level: &str, routes: &[&str]) -> Gateway {
        let mut yaml = format!("{top_level}\nroutes:\n");
        for (index, extra) in routes.iter().enumerate() {
            yaml.push_str(&format!(
                "  - path: \"/r{index}/*rest\"\n    backends: [{{url: \"http://127.0.0.1:9\"}}]\n"
            ));
            if !extra.is_empty() {
                yaml.push_str(&format!("    {extra}\n"));
            }
        }
        Gateway::new(Config::from_yaml(&yaml, "test.yaml").unwrap()).unwrap()
    }

    /// Returns the `Access-Control-Expose-Headers` the route at `index` sends to `APP`.
    fn exposed_headers(gateway: &Gateway, index: usize) -> String {
        let mut request = HeaderMap::new();
        request.insert(http::header::ORIGIN, HeaderValue::from_static(APP));
        let mut response = HeaderMap::new();
        gateway
            .route_cors(index)
            .unwrap()
            .apply(&request, &mut response);
        response
            .get(http::header::ACCESS_CONTROL_EXPOSE_HEADERS)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn inheriting_routes_share_one_limiter() {
        let gateway = gateway(
            "rate_limiting: {enabled: true, burst: 3, key: global}",
            &["", "", "rate_limiting: {burst: 5}"],
        );

        assert_eq!(gateway.limiters.len(), 2, "{:?}", gateway.limiters);

        // Each route service holds one reference to its limiter, and `limiters` one more.
        assert_eq!(Arc::strong_count(&gateway.limiters[0]), 3);
        assert_eq!(Arc::strong_count(&gateway.limiters[1]), 2);
    }

    #[test]
    fn override_enables_limit_on_one_route() {
        let gateway = gateway(
            "rate_limiting: {enabled: false}",
            &["", "rate_limiting: {enabled: true}", ""],
        );

        assert_eq!(gateway.limiters.len(), 1, "{:?}", gateway.limiters);
        assert_eq!(Arc::strong_count(&gateway.limiters[0]), 2);
    }

    #[test]
    fn disabled_limit_builds_no_limiter() {
        let gateway = gateway(
            "rate_limiting: {enabled: true}",
            &["rate_limiting: {enabled: false}"],
        );

        assert!(gateway.limiters.is_empty(), "{:?}", gateway.limiters);
    }

    #[test]
    fn limited_route_exposes_rate_limit_headers() {
        let cors = format!(
            "cors: {{enabled: true, allowed_origins: [\"{APP}\"], exposed_headers: [X-Total, Retry-After]}}"
        );
        let top_level = format!("{cors}\nrate_limiting: {{enabled: true}}");
        let gateway = gateway(
            &top_level,
            &[
                "",
                "rate_limiting: {enabled: false}",
                "cors: {enabled: false}",
            ],
        );

        assert_eq!(
            exposed_headers(&gateway, 0),
            "x-total, retry-after, ratelimit, ratelimit-policy"
        );
        assert_eq!(exposed_headers(&gateway, 1), "x-total, retry-after");
        assert!(gateway.route_cors(2).is_none(), "CORS is off on route 2");
    }
}
