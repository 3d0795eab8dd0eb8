//! CORS, following the CORS protocol of the WHATWG Fetch standard: the gateway responds to
//! preflights itself and adds CORS headers to actual responses.
//!
//! The gateway owns the CORS headers of the routes it covers: on a request with an `Origin`, it
//! sets or removes `Access-Control-Allow-Origin`, `Access-Control-Allow-Credentials` and
//! `Access-Control-Expose-Headers` whatever the backend sent. When those headers depend on the
//! `Origin`, every response carries `Vary: Origin`, including responses to requests without one.
//!
//! A request with more than one `Origin` field is treated as one from an origin that is not
//! allowed. RFC 6454 (section 7.3) forbids a user agent to send more than one, so such a
//! request comes from some other client, and it gets no `Access-Control-Allow-*` headers.

mod layer;
#[cfg(test)]
mod tests;

pub use layer::{Cors, CorsLayer, ResponseFuture};

use bytes::Bytes;
use gateway_config::CorsConfig;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

/// `Vary` of every preflight response: the three request headers it depends on.
const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

/// The origins that may read responses.
#[derive(Debug)]
enum Origins {
    /// `*`: any origin.
    Any,
    /// Serialized origins (`scheme://host[:port]` or `null`), with `http` and `https` ones
    /// lowercased. See [`origin_matches`].
    List(Vec<String>),
}

/// The request headers a preflight may request.
#[derive(Debug)]
enum RequestHeaders {
    /// `*`: the preflight response echoes the requested headers.
    Any,
    List(Vec<HeaderName>),
}

/// A CORS policy compiled once from a [`CorsConfig`], with every fixed header value built
/// ahead so a request does no formatting.
#[derive(Debug)]
pub struct CorsPolicy {
    enabled: bool,
    origins: Origins,
    allow_credentials: bool,
    methods: Vec<Method>,
    /// The CORS-safelisted methods (GET, HEAD, POST) that the route accepts, which pass a
    /// preflight's method check unlisted.
    safelisted: Vec<Method>,
    request_headers: RequestHeaders,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    exposed: Vec<HeaderName>,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

/// The `Origin` fields of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OriginFields<'a> {
    /// No `Origin` field.
    Missing,
    /// Exactly one `Origin` field, with this value.
    One(&'a HeaderValue),
    /// More than one `Origin` field, whose origins are never allowed.
    Several,
}

impl OriginFields<'_> {
    /// Reads the `Origin` fields of a request with `headers`.
    pub(crate) fn of(headers: &HeaderMap) -> OriginFields<'_> {
        // A scan of the few fields of a head costs less than a hashed lookup.
        let mut origins = headers
            .iter()
            .filter(|(name, _)| **name == header::ORIGIN)
            .map(|(_, value)| value);
        match (origins.next(), origins.next()) {
            (None, _) => OriginFields::Missing,
            (Some(origin), None) => OriginFields::One(origin),
            (Some(_), Some(_)) => OriginFields::Several,
        }
    }
}

/// Returns true when `request` is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. A plain `OPTIONS` is an actual request.
pub fn is_preflight<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    request.method() == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl CorsPolicy {
    /// Compiles `config`.
    ///
    /// A `*` anywhere in `allowed_origins` or `allowed_headers` allows any origin or header.
    /// Entries that are not valid method or header names are skipped, because config
    /// validation reports them before this. With `allow_credentials` and a `*` origin, which
    /// validation also rejects, the policy echoes the request's origin rather than send `*`,
    /// since browsers refuse `*` on credentialed requests.
    pub fn new(config: &CorsConfig) -> Self {
        let origins = if config.allowed_origins.iter().any(|origin| origin == "*") {
            Origins::Any
        } else {
            Origins::List(
                config
                    .allowed_origins
                    .iter()
                    .map(|origin| {
                        if is_http_origin(origin.as_bytes()) {
                            origin.to_ascii_lowercase()
                        } else {
                            origin.clone()
                        }
                    })
                    .collect(),
            )
        };

        let methods: Vec<Method> = config
            .allowed_methods
            .iter()
            .filter_map(|method| Method::from_bytes(method.as_bytes()).ok())
            .collect();
        let allow_methods = join(methods.iter().map(Method::as_str));

        let (request_headers, allow_headers) =
            if config.allowed_headers.iter().any(|name| name == "*") {
                (RequestHeaders::Any, None)
            } else {
                let names = header_names(&config.allowed_headers);
                let value = join(names.iter().map(HeaderName::as_str));
                (RequestHeaders::List(names), value)
            };

        let exposed = header_names(&config.exposed_headers);
        let expose_headers = join(exposed.iter().map(HeaderName::as_str));

        CorsPolicy {
            enabled: config.enabled,
            origins,
            allow_credentials: config.allow_credentials,
            methods,
            safelisted: vec![Method::GET, Method::HEAD, Method::POST],
            request_headers,
            allow_methods,
            allow_headers,
            exposed,
            expose_headers,
            max_age: HeaderValue::from(config.max_age.as_secs()),
        }
    }

    /// Keeps only the allowed methods for which `accepts` returns true, so that a preflight
    /// never allows a method that the route then rejects with 405.
    #[must_use]
    pub fn with_methods_limited_to(mut self, accepts: impl Fn(&Method) -> bool) -> Self {
        self.methods.retain(|method| accepts(method));
        self.safelisted.retain(|method| accepts(method));
        self.allow_methods = join(self.methods.iter().map(Method::as_str));
        self
    }

    /// Adds `names` to `Access-Control-Expose-Headers`, skipping names already exposed, so
    /// scripts can read the headers that a layer inside CORS adds to responses.
    #[must_use]
    pub fn with_exposed_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        for name in names {
            if !self.exposed.contains(&name) {
                self.exposed.push(name);
            }
        }
        self.expose_headers = join(self.exposed.iter().map(HeaderName::as_str));
        self
    }

    /// Returns false when the config had `enabled: false`. The layer then passes every request
    /// and response through untouched.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Returns the `Access-Control-Allow-Origin` value for a request from `origin`, or `None`
    /// when that origin is not allowed.
    ///
    /// Origins match exactly on `scheme://host[:port]` or `null`, so
    /// `https://app.example.com:443` does not match `https://app.example.com`. Only `http` and
    /// `https` origins match ignoring ASCII case: `HTTPS://App.Example.com` matches
    /// `https://app.example.com`, but `Capacitor://localhost` does not match
    /// `capacitor://localhost`. See [`origin_matches`] for why.
    pub fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any if !self.allow_credentials => Some(HeaderValue::from_static("*")),
            Origins::Any => Some(origin.clone()),
            Origins::List(allowed) => allowed
                .iter()
                .any(|candidate| origin_matches(candidate, origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }

    /// Returns true when the CORS headers of a response depend on the request's `Origin`, so
    /// caches must key on it: origins are listed rather than `*`, or credentials are allowed.
    pub fn varies_by_origin(&self) -> bool {
        matches!(self.origins, Origins::List(_)) || self.allow_credentials
    }

    /// Builds the response to a preflight with request headers `request`: always 204, with the
    /// `Access-Control-Allow-*` headers only when the request has one `Origin` and that
    /// origin, the requested method and every requested header are allowed.
    pub fn preflight<B: From<Bytes>>(&self, request: &HeaderMap) -> Response<B> {
        let mut response = Response::new(B::from(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        response.headers_mut().insert(header::VARY, PREFLIGHT_VARY);

        let OriginFields::One(origin) = OriginFields::of(request) else {
            return response;
        };
        let Some(allow_origin) = self.allow_origin(origin) else {
            return response;
        };
        if !self.allows_method(request) {
            return response;
        }
        let Some(allow_headers) = self.allow_headers_for(request) else {
            return response;
        };

        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if let Some(methods) = &self.allow_methods {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods.clone());
        }
        if let Some(allow_headers) = allow_headers {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
        }
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if self.allow_credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        response
    }

    /// Sets the CORS headers of the response to an actual (non-preflight) request with
    /// headers `request`, for responses the gateway builds outside the [`Cors`] layer. Does
    /// nothing when the policy is disabled.
    ///
    /// With one `Origin`, this is [`CorsPolicy::apply_to_response`]. With several, it is the
    /// same for an origin that is not allowed. Without one, only
    /// [`CorsPolicy::add_vary_origin`] applies and the response is otherwise untouched.
    pub fn apply(&self, request: &HeaderMap, response: &mut HeaderMap) {
        if !self.enabled {
            return;
        }
        match OriginFields::of(request) {
            OriginFields::One(origin) => {
                self.apply_to_response(self.allow_origin(origin), response);
            }
            OriginFields::Several => self.apply_to_response(None, response),
            OriginFields::Missing => self.add_vary_origin(response),
        }
    }

    /// Appends `Vary: Origin` when [`CorsPolicy::varies_by_origin`], unless a `Vary` field
    /// already names `Origin` or is `*`.
    ///
    /// The response to a request without `Origin` needs it too. The Fetch standard (section
    /// "CORS protocol and HTTP caches") recommends it, so that a cache does not reuse a
    /// response without CORS headers for a later request from an allowed origin.
    pub fn add_vary_origin(&self, headers: &mut HeaderMap) {
        if self.varies_by_origin() {
            append_vary_origin(headers);
        }
    }

    /// Sets the CORS headers of an actual (non-preflight) response to a request whose origin
    /// got `allow_origin` from [`CorsPolicy::allow_origin`].
    pub fn apply_to_response(&self, allow_origin: Option<HeaderValue>, headers: &mut HeaderMap) {
        self.add_vary_origin(headers);

        let Some(allow_origin) = allow_origin else {
            headers.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
            headers.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
            headers.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
            return;
        };

        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.allow_credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        } else {
            headers.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        }
        match &self.expose_headers {
            Some(exposed) => {
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed.clone());
            }
            None => {
                headers.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
            }
        }
    }

    /// Returns whether the preflight's one `Access-Control-Request-Method` names an allowed
    /// method. A browser sends exactly one (Fetch standard, "CORS-preflight request"), so a
    /// preflight with several is not allowed rather than judged by its first.
    fn allows_method(&self, request: &HeaderMap) -> bool {
        let mut fields = request
            .get_all(header::ACCESS_CONTROL_REQUEST_METHOD)
            .iter();
        let (Some(requested), None) = (fields.next(), fields.next()) else {
            return false;
        };
        // A CORS-safelisted method that the route accepts passes the browser's method check
        // without being listed (Fetch standard, "CORS-preflight fetch"), so its preflight is
        // judged on the origin and headers alone. A simple GET, HEAD or POST reaches the
        // route without a preflight anyway.
        match Method::from_bytes(requested.as_bytes()) {
            Ok(method) => self.safelisted.contains(&method) || self.methods.contains(&method),
            Err(_) => false,
        }
    }

    /// Returns the `Access-Control-Allow-Headers` value for a preflight (`Some(None)` when none
    /// is sent), or `None` when a requested header is not allowed.
    fn allow_headers_for(&self, request: &HeaderMap) -> Option<Option<HeaderValue>> {
        let requested = request.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS);

        match &self.request_headers {
            RequestHeaders::Any => {
                // Echo the request's list, because browsers read a literal `*` as a header
                // name on credentialed requests and never let it cover `Authorization`.
                let mut values = requested.iter();
                let Some(first) = values.next() else {
                    return Some(None);
                };
                if values.next().is_none() {
                    return Some(Some(first.clone()));
                }

                // Several fields: merge them into one list.
                let mut texts = Vec::new();
                for value in requested {
                    texts.push(value.to_str().ok()?);
                }
                Some(join(texts.into_iter()))
            }
            RequestHeaders::List(allowed) => {
                for value in requested {
                    let text = value.to_str().ok()?;
                    for name in text
                        .split(',')
                        .map(str::trim)
                        .filter(|name| !name.is_empty())
                    {
                        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                        if !allowed.contains(&name) {
                            return None;
                        }
                    }
                }
                Some(self.allow_headers.clone())
            }
        }
    }
}

/// Returns whether the request's `origin` equals the `allowed` entry of a policy.
///
/// Browsers lowercase the scheme and the host of an http or https origin, so those compare
/// ignoring ASCII case. The URL standard keeps the host of any other scheme as written (an
/// opaque host), so two such origins that differ only in the case of the host are different
/// origins, and they compare byte for byte, as `null` does. Browsers send every scheme in
/// lowercase, so an `Origin` like `Capacitor://localhost` comes from some other client and
/// matches nothing.
fn origin_matches(allowed: &str, origin: &[u8]) -> bool {
    if is_http_origin(origin) {
        allowed.as_bytes().eq_ignore_ascii_case(origin)
    } else {
        allowed.as_bytes() == origin
    }
}

/// Returns whether `origin` starts with `http://` or `https://`, in any ASCII case.
fn is_http_origin(origin: &[u8]) -> bool {
    let starts_with = |prefix: &[u8]| {
        origin
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    starts_with(b"http://") || starts_with(b"https://")
}

/// Appends `Vary: Origin` unless a `Vary` field already names `Origin` or is `*`.
fn append_vary_origin(headers: &mut HeaderMap) {
    let already = headers.get_all(header::VARY).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .map(str::trim)
                .any(|name| name == "*" || name.eq_ignore_ascii_case("origin"))
        })
    });
    if !already {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn header_names(names: &[String]) -> Vec<HeaderName> {
    names
        .iter()
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

/// Joins items into one `a, b, c` header value, or `None` for no items.
fn join<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let joined = items.collect::<Vec<_>>().join(", ");
    if joined.is_empty() {
        return None;
    }
    HeaderValue::try_from(joined).ok()
}
