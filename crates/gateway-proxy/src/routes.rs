//! The route table: route paths compiled once into a radix tree, with each route's methods,
//! backend pool and settings.

use gateway_balancer::{Backend, HealthPolicy, Pool};
use gateway_config::{Config, HealthCheckConfig, match_form, route_patterns};
use http::{HeaderValue, Method, Uri};
use std::collections::HashMap;
use std::sync::Arc;

/// Methods a route may accept, in the order an `Allow` header lists them.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// The bit of a route's method set that accepts every method outside [`METHODS`].
const EXTENSION_METHODS: u16 = 1 << 15;

/// The bits of TRACE and CONNECT in a route's method set.
const TRACE: u16 = 1 << 7;
const CONNECT: u16 = 1 << 8;

/// One route, ready for the request path.
#[derive(Debug)]
pub struct Route {
    /// Position of the route in the configuration file.
    pub index: usize,
    /// The route's path as configured, such as `/api/users/*filepath`.
    pub pattern: Arc<str>,
    /// The backend pool.
    pub pool: Pool,
    /// Whether the client's `Host` header is forwarded.
    pub preserve_host: bool,
    // Bit i set when METHODS[i] is accepted, and `EXTENSION_METHODS` when methods outside
    // METHODS are, as they are when the route lists none.
    methods: u16,
    // The methods outside METHODS that the route lists, such as PURGE. Only a request with
    // such a method compares them, so standard methods cost one bit test.
    extensions: Box<[Method]>,
    allow: HeaderValue,
    targets: Vec<Target>,
}

/// The forwarder's view of a backend, computed once.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) backend_id: u64,
    pub(crate) host: HeaderValue,
    // The URL's path without its final slash, when it has one beyond "/".
    pub(crate) prefix: Option<Arc<str>>,
}

impl Route {
    /// Returns whether the route accepts `method`.
    pub fn accepts(&self, method: &Method) -> bool {
        match METHODS.iter().position(|m| m == method) {
            Some(i) => self.methods & (1 << i) != 0,
            None => self.methods & EXTENSION_METHODS != 0 || self.extensions.contains(method),
        }
    }

    /// Returns the `Allow` header value listing the accepted methods.
    pub fn allow(&self) -> &HeaderValue {
        &self.allow
    }

    pub(crate) fn target(&self, backend: &Backend) -> Option<&Target> {
        self.targets.iter().find(|t| t.backend_id == backend.id())
    }
}

/// The result of looking up a request in the route table.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    /// The route serves this request.
    Found(&'a Arc<Route>),
    /// No route matches the path.
    NotFound,
    /// A route matches the path but not the method.
    MethodNotAllowed(&'a Arc<Route>),
}

/// A failure to build the route table from a validated configuration.
#[derive(Debug, thiserror::Error)]
pub enum RouteTableError {
    /// A route path did not compile; validation normally catches this first.
    #[error("route {path:?} is invalid: {message}")]
    InvalidPath {
        /// The route's path.
        path: String,
        /// The reason the path is invalid.
        message: String,
    },
    /// A backend URL did not parse; validation normally catches this first.
    #[error("backend url {url:?} is invalid")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// The parse error.
        #[source]
        source: http::uri::InvalidUri,
    },
}

/// Every route, compiled once, and the distinct backends they share.
#[derive(Debug)]
pub struct RouteTable {
    router: matchit::Router<usize>,
    routes: Vec<Arc<Route>>,
    backends: Vec<(Arc<Backend>, HealthCheckConfig)>,
}

impl RouteTable {
    /// Compiles the routes of `config`. Routes that list the same backend URL share one
    /// [`Backend`], whose health check settings come from the first route that lists it.
    ///
    /// # Errors
    ///
    /// Returns [`RouteTableError`] for a path or URL that validation would have rejected.
    pub fn new(config: &Config) -> Result<RouteTable, RouteTableError> {
        let mut router = matchit::Router::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut by_url: HashMap<String, usize> = HashMap::new();
        let mut backends: Vec<(Arc<Backend>, HealthCheckConfig)> = Vec::new();
        let mut implicit = Vec::new();

        for (index, route) in config.routes.iter().enumerate() {
            let patterns =
                route_patterns(&route.path).map_err(|message| RouteTableError::InvalidPath {
                    path: route.path.clone(),
                    message,
                })?;
            for pattern in patterns {
                // `route_patterns` returns them in the form that request paths are matched in.
                if pattern.implicit {
                    implicit.push((pattern.pattern, index));
                } else if let Err(error) = router.insert(pattern.pattern, index) {
                    return Err(RouteTableError::InvalidPath {
                        path: route.path.clone(),
                        message: error.to_string(),
                    });
                }
            }

            let health = route.effective_health_check(&config.health_check);
            let mut entries = Vec::with_capacity(route.backends.len());
            let mut targets = Vec::with_capacity(route.backends.len());
            for backend in &route.backends {
                let url: Uri =
                    backend
                        .url
                        .parse()
                        .map_err(|source| RouteTableError::InvalidUrl {
                            url: backend.url.clone(),
                            source,
                        })?;
                let key = gateway_config::backend_key(&url);
                let shared = match by_url.get(&key) {
                    Some(&i) => Arc::clone(&backends[i].0),
                    None => {
                        let policy = health_policy(&health);
                        let created = Arc::new(Backend::new(url.clone(), policy));
                        by_url.insert(key, backends.len());
                        backends.push((Arc::clone(&created), health.clone()));
                        created
                    }
                };
                targets.push(target_for(&shared, &url)?);
                entries.push((shared, backend.weight));
            }

            let MethodSet {
                bits: methods,
                extensions,
                allow,
            } = method_set(route.methods.as_deref().unwrap_or_default());
            routes.push(Arc::new(Route {
                index,
                pattern: Arc::from(route.path.as_str()),
                pool: Pool::new(entries),
                preserve_host: route.preserve_host,
                methods,
                extensions,
                allow,
                targets,
            }));
        }

        // The bare prefixes that catch-alls add go in last, so that an explicit route with the
        // same path keeps it. A failed insert means such a route exists.
        for (pattern, index) in implicit {
            let _ = router.insert(pattern, index);
        }

        Ok(RouteTable {
            router,
            routes,
            backends,
        })
    }

    /// Looks up the route for `method` and `path`, matching the path in the form
    /// [`match_form`] returns.
    pub fn find(&self, method: &Method, path: &str) -> RouteMatch<'_> {
        self.find_match_form(method, &match_form(path))
    }

    /// Looks up the route for `method` and `path`, a path that [`match_form`] returned.
    pub fn find_match_form(&self, method: &Method, path: &str) -> RouteMatch<'_> {
        let Ok(matched) = self.router.at(path) else {
            return RouteMatch::NotFound;
        };
        let route = &self.routes[*matched.value];
        if route.accepts(method) {
            RouteMatch::Found(route)
        } else {
            RouteMatch::MethodNotAllowed(route)
        }
    }

    /// Returns the routes in configuration order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Returns each distinct backend once, with the health check settings it is probed with.
    pub fn backends(&self) -> &[(Arc<Backend>, HealthCheckConfig)] {
        &self.backends
    }
}

/// Thresholds for a backend's health. Without active health checks nothing could bring a
/// backend back, so failed requests never take it out of rotation.
fn health_policy(health: &HealthCheckConfig) -> HealthPolicy {
    if health.enabled {
        HealthPolicy {
            unhealthy_threshold: health.unhealthy_threshold,
            healthy_threshold: health.healthy_threshold,
        }
    } else {
        HealthPolicy {
            unhealthy_threshold: u32::MAX,
            healthy_threshold: 1,
        }
    }
}

fn target_for(backend: &Backend, url: &Uri) -> Result<Target, RouteTableError> {
    let authority = url.authority().map_or("", |a| a.as_str());
    let host = HeaderValue::from_str(authority).map_err(|_| RouteTableError::InvalidPath {
        path: url.to_string(),
        message: "the backend authority is not a valid Host header".to_owned(),
    })?;
    let path = url.path().trim_end_matches('/');
    Ok(Target {
        backend_id: backend.id(),
        host,
        prefix: (!path.is_empty()).then(|| Arc::from(path)),
    })
}

/// A route's accepted methods, compiled from its `methods` list.
struct MethodSet {
    bits: u16,
    extensions: Box<[Method]>,
    allow: HeaderValue,
}

fn method_set(methods: &[String]) -> MethodSet {
    let mut bits = 0u16;
    let mut extensions: Vec<Method> = Vec::new();
    for method in methods {
        if let Some(i) = METHODS.iter().position(|m| m.as_str() == method) {
            bits |= 1 << i;
        } else if let Ok(extension) = Method::from_bytes(method.as_bytes())
            && !extensions.contains(&extension)
        {
            // Validation has rejected a method that is not a token, so none is skipped here.
            extensions.push(extension);
        }
    }
    // RFC 9110 section 9.3.2: a resource that supports GET responds to HEAD the same way, without
    // the body, so listing GET accepts HEAD too.
    if bits & 1 != 0 {
        bits |= 1 << 1;
    }
    // A route that lists no methods accepts every method but TRACE, which a route must
    // list to accept. A backend that handles TRACE echoes the request back, cookies and
    // credentials included, which cross-site tracing attacks read. NGINX rejects TRACE with
    // 405 as well. CONNECT is left out too, because the server answers it with 501 before
    // routing, so its `Allow` does not offer it.
    if methods.is_empty() {
        bits = !(TRACE | CONNECT);
    }
    // The standard methods go first, in the order of METHODS, then the extension methods in
    // the order the route lists them.
    let listed: Vec<&str> = METHODS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, m)| m.as_str())
        .chain(extensions.iter().map(Method::as_str))
        .collect();
    let allow = HeaderValue::from_str(&listed.join(", "))
        .unwrap_or_else(|_| HeaderValue::from_static("GET"));
    MethodSet {
        bits,
        extensions: extensions.into_boxed_slice(),
        allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let text = r#"
routes:
  - path: "/api/users/*filepath"
    backends:
      - url: "http://127.0.0.1:9001"
        weight: 2
      - url: "http://127.0.0.1:9002"
    methods: ["GET", "POST", "PUT", "DELETE"]
  - path: "/api/orders/*filepath"
    backends:
      - url: "http://127.0.0.1:9003"
      - url: "http://127.0.0.1:9001"
  - path: "/items/:id/detail"
    backends:
      - url: "http://127.0.0.1:9001/v1/"
"#;
        RouteTable::new(&Config::from_yaml(text, "test.yaml").unwrap()).unwrap()
    }

    fn found(table: &RouteTable, method: Method, path: &str) -> Option<usize> {
        match table.find(&method, path) {
            RouteMatch::Found(route) => Some(route.index),
            _ => None,
        }
    }

    #[test]
    fn route_matching_table() {
        let table = table();
        let cases: [(&str, Option<usize>); 12] = [
            ("/api/users", Some(0)),
            ("/api/users/", Some(0)),
            ("/api/users/1", Some(0)),
            ("/api/users/1/orders", Some(0)),
            ("/api/usersX", None),
            ("/api/user", None),
            ("/api/orders/7", Some(1)),
            ("/api/orders", Some(1)),
            ("/items/5/detail", Some(2)),
            ("/items/5", None),
            ("/items/5/detail/more", None),
            ("/", None),
        ];
        for (path, expected) in cases {
            assert_eq!(found(&table, Method::GET, path), expected, "{path}");
        }
    }

    #[test]
    fn other_spellings_match_same_route() {
        let text = r#"
routes:
  - path: "/api/login"
    backends: [{url: "http://127.0.0.1:9001"}]
    methods: ["POST"]
  - path: "/%c3%bc/x"
    backends: [{url: "http://127.0.0.1:9001"}]
  - path: "/*rest"
    backends: [{url: "http://127.0.0.1:9002"}]
  - path: "/x%22y/*rest"
    backends: [{url: "http://127.0.0.1:9001"}]
  - path: '/a"b/<c>'
    backends: [{url: "http://127.0.0.1:9001"}]
"#;
        let table = RouteTable::new(&Config::from_yaml(text, "test.yaml").unwrap()).unwrap();
        // A character that a URI must not hold, sent as it is or encoded, takes the route
        // written either way.
        for path in ["/x%22y/1", "/x\"y/1"] {
            assert_eq!(found(&table, Method::GET, path), Some(3), "{path}");
        }
        for path in ["/a\"b/<c>", "/a%22b/%3Cc%3E", "/a%22b/<c%3e"] {
            assert_eq!(found(&table, Method::GET, path), Some(4), "{path}");
        }
        for path in [
            "/api/login",
            "/api/%6Cogin",
            "/api/%6cogin",
            "/%61pi/login",
            "/api//login",
            "//api///login",
            "/api\\login",
        ] {
            assert_eq!(found(&table, Method::POST, path), Some(0), "{path}");
            let get = table.find(&Method::GET, path);
            assert!(
                matches!(get, RouteMatch::MethodNotAllowed(_)),
                "{path}: {get:?}"
            );
        }
        for path in ["/%C3%BC/x", "/%c3%bc/x", "/%C3%bc/x", "/\u{fc}/x"] {
            assert_eq!(found(&table, Method::GET, path), Some(1), "{path}");
        }
        // Letter case, a trailing slash and reserved characters, encoded or not, still make
        // another path.
        for path in ["/api/Login", "/api/login/", "/api/login;x", "/api%2Flogin"] {
            assert_eq!(found(&table, Method::POST, path), Some(2), "{path}");
        }
    }

    #[test]
    fn excluded_method_is_not_allowed() {
        let table = table();
        match table.find(&Method::PATCH, "/api/users/1") {
            RouteMatch::MethodNotAllowed(route) => {
                assert_eq!(route.allow(), "GET, HEAD, POST, PUT, DELETE");
            }
            other => panic!("expected 405, got {other:?}"),
        }
    }

    #[test]
    fn listed_get_accepts_head() {
        let table = table();
        assert_eq!(found(&table, Method::HEAD, "/api/users/1"), Some(0));
    }

    #[test]
    fn route_without_methods_accepts_any_but_trace() {
        let table = table();
        assert_eq!(found(&table, Method::PATCH, "/api/orders/1"), Some(1));
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(found(&table, custom, "/api/orders/1"), Some(1));
        match table.find(&Method::TRACE, "/api/orders/1") {
            RouteMatch::MethodNotAllowed(route) => {
                let allow = route.allow().to_str().unwrap();
                assert!(allow.contains("PATCH"), "{allow}");
                assert!(!allow.contains("TRACE"), "{allow}");
                assert!(!allow.contains("CONNECT"), "{allow}");
            }
            other => panic!("expected 405, got {other:?}"),
        }
    }

    #[test]
    fn listed_trace_is_accepted() {
        assert_eq!(
            METHODS[7],
            Method::TRACE,
            "TRACE's bit must follow its place"
        );
        assert_eq!(METHODS[8], Method::CONNECT);
        let text = r#"
routes:
  - path: "/debug/*rest"
    backends: [{url: "http://127.0.0.1:9001"}]
    methods: ["GET", "TRACE"]
"#;
        let table = RouteTable::new(&Config::from_yaml(text, "test.yaml").unwrap()).unwrap();
        assert_eq!(found(&table, Method::TRACE, "/debug/x"), Some(0));
    }

    fn method(name: &str) -> Method {
        Method::from_bytes(name.as_bytes()).unwrap()
    }

    #[test]
    fn listed_extension_methods_accepted() {
        let text = r#"
routes:
  - path: "/dav/*rest"
    backends: [{url: "http://127.0.0.1:9001"}]
    methods: ["GET", "PURGE", "PROPFIND", "PURGE", "VERSION-CONTROL-X"]
"#;
        let table = RouteTable::new(&Config::from_yaml(text, "test.yaml").unwrap()).unwrap();
        // VERSION-CONTROL-X is longer than the 15 bytes that `Method` stores inline (http
        // 1.5), so it is compared in its allocated form.
        for name in ["GET", "HEAD", "PURGE", "PROPFIND", "VERSION-CONTROL-X"] {
            assert_eq!(found(&table, method(name), "/dav/a"), Some(0), "{name}");
        }
        // Methods are case-sensitive, so `purge` is another method than PURGE.
        for name in ["POST", "MKCOL", "purge", "PURGEX", "TRACE"] {
            match table.find(&method(name), "/dav/a") {
                RouteMatch::MethodNotAllowed(route) => {
                    assert_eq!(
                        route.allow(),
                        "GET, HEAD, PURGE, PROPFIND, VERSION-CONTROL-X",
                        "{name}"
                    );
                }
                other => panic!("{name}: expected 405, got {other:?}"),
            }
        }
    }

    #[test]
    fn extension_methods_alone_reject_get() {
        let text = r#"
routes:
  - path: "/cache/*rest"
    backends: [{url: "http://127.0.0.1:9001"}]
    methods: ["PURGE"]
"#;
        let table = RouteTable::new(&Config::from_yaml(text, "test.yaml").unwrap()).unwrap();
        assert_eq!(found(&table, method("PURGE"), "/cache/x"), Some(0));
        for standard in METHODS {
            match table.find(&standard, "/cache/x") {
                RouteMatch::MethodNotAllowed(route) => assert_eq!(route.allow(), "PURGE"),
                other => panic!("{standard}: expected 405, got {other:?}"),
            }
        }
    }

    #[test]
    fn shared_backend_is_one_instance() {
        let table = table();
        assert_eq!(table.backends().len(), 4);
        let users = table.routes()[0].pool.backends().next().unwrap().0;
        let orders = table.routes()[1].pool.backends().nth(1).unwrap().0;
        let prefixed = table.routes()[2].pool.backends().next().unwrap().0;
        assert!(Arc::ptr_eq(users, orders), "same URL shares one backend");
        assert!(
            !Arc::ptr_eq(users, prefixed),
            "a path prefix makes another backend"
        );
    }

    #[test]
    fn failures_without_health_check_keep_backend() {
        let text = r#"
health_check:
  enabled: false
routes:
  - path: "/a"
    backends:
      - url: "http://127.0.0.1:9001"
"#;
        let table = RouteTable::new(&Config::from_yaml(text, "test.yaml").unwrap()).unwrap();
        let (backend, _) = &table.backends()[0];
        for _ in 0..10 {
            backend.record_request_failure("connection refused");
        }
        assert!(backend.is_healthy());
    }

    #[test]
    fn target_keeps_path_prefix() {
        let table = table();
        let route = &table.routes()[2];
        let backend = route.pool.backends().next().unwrap().0;
        let target = route.target(backend).unwrap();
        assert_eq!(target.prefix.as_deref(), Some("/v1"));
        assert_eq!(target.host, "127.0.0.1:9001");
    }
}
