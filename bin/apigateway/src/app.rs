//! Everything built once from the configuration and shared by every connection.

use gateway_config::Config;
use gateway_middleware::client_ip::TrustedProxies;
use gateway_middleware::cors::{Cors, CorsLayer, CorsPolicy};
use gateway_middleware::rate_limit::{RateLimit, RateLimitLayer, RateLimiter};
use gateway_proxy::routes::RouteTableError;
use gateway_proxy::{BackendClient, Forward, RouteTable};
use gateway_store::{LogReader, RequestLog};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tower::Layer;
use tower::util::Either;

/// A route's service: rate limit (when on), then CORS (when on), then the forwarder.
pub(crate) type RouteService = Either<RateLimit<CorsOrForward>, CorsOrForward>;
pub(crate) type CorsOrForward = Either<Cors<Forward>, Forward>;

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
    pub(crate) limiters: Vec<Arc<RateLimiter>>,
    pub(crate) trusted: TrustedProxies,
    pub(crate) draining: AtomicBool,
    pub(crate) started: Instant,
    pub(crate) request_log: OnceLock<RequestLogState>,
}

/// The open request log: the queue the request path writes to and a reader for the admin
/// endpoints.
#[derive(Debug)]
pub(crate) struct RequestLogState {
    pub(crate) log: RequestLog,
    pub(crate) reader: LogReader,
}

impl Gateway {
    /// Builds the route table and every route's layer stack from a validated configuration.
    ///
    /// # Errors
    ///
    /// Returns [`BuildError`] when a route cannot be compiled, which validation normally
    /// prevents.
    pub fn new(config: Config) -> Result<Gateway, BuildError> {
        let table = Arc::new(RouteTable::new(&config)?);
        let client = BackendClient::new(&config.proxy);
        let mut routes = Vec::with_capacity(table.routes().len());
        let mut limiters = Vec::new();

        for (route, route_config) in table.routes().iter().zip(&config.routes) {
            let forward = Forward::new(Arc::clone(route), client);

            let cors = route_config.effective_cors(&config.cors);
            let inner = if cors.enabled {
                let policy = Arc::new(CorsPolicy::new(&cors));
                Either::Left(CorsLayer::new(policy).layer(forward))
            } else {
                Either::Right(forward)
            };

            let limit = route_config.effective_rate_limit(&config.rate_limiting);
            let service = if limit.enabled {
                let limiter = Arc::new(RateLimiter::new(&limit));
                limiters.push(Arc::clone(&limiter));
                Either::Left(RateLimitLayer::new(limiter).layer(inner))
            } else {
                Either::Right(inner)
            };
            routes.push(service);
        }

        Ok(Gateway {
            trusted: TrustedProxies::new(config.server.trusted_proxies.clone()),
            config: Arc::new(config),
            table,
            routes,
            limiters,
            draining: AtomicBool::new(false),
            started: Instant::now(),
            request_log: OnceLock::new(),
        })
    }

    /// The configuration the gateway was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The compiled routes and their backends.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// Returns whether the gateway is draining after a stop signal.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
