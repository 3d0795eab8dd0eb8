//! The timing hook of the gateway: one access line per request on stdout, and one row for the
//! request log.

use crate::access_line::{AccessLine, AccessLines};
use crate::admin;
use gateway_middleware::client_ip::ClientIp;
use gateway_middleware::request_id;
use gateway_middleware::request_id::X_REQUEST_ID;
use gateway_middleware::timing::{RequestEnd, RequestHook, report_unserved};
use gateway_proxy::server::Rejection;
use gateway_proxy::{ErrorKind, ForwardInfo, ReceivedBytes, RouteMatch, RouteTable};
use gateway_store::{RecordRef, RequestLog, unix_micros};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Status recorded for a request that ended before any response.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Reports finished requests to the access log.
#[derive(Debug, Clone)]
pub(crate) struct AccessHook {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    access_lines: Option<AccessLines>,
    request_log: Option<RequestLog>,
    /// The route table, which names the route of a request that ends without a response
    /// (a response carries its route).
    table: Arc<RouteTable>,
    /// Set when the stop cuts off the requests still in flight at the drain deadline.
    stopped: AtomicBool,
}

impl AccessHook {
    /// Creates the hook, which prints access lines through `access_lines` and queues rows on
    /// `request_log`, each when there is one. `table` is the gateway's route table.
    pub(crate) fn new(
        access_lines: Option<AccessLines>,
        request_log: Option<RequestLog>,
        table: Arc<RouteTable>,
    ) -> AccessHook {
        AccessHook {
            shared: Arc::new(Shared {
                access_lines,
                request_log,
                table,
                stopped: AtomicBool::new(false),
            }),
        }
    }

    /// Marks requests that end without a response from now on as cut off by the stop rather
    /// than by their client.
    pub(crate) fn mark_stopped(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
    }

    /// Reports a request head that the server rejected, through the path that timed requests
    /// take, so that the access line and the row are built by the same code. `client_ip` is the
    /// client's address as far as it is known.
    ///
    /// A request line that did not parse shows as method and path `-`. The User-Agent is read
    /// only when every line of the head parsed. A request id is always generated. A rejection
    /// of the kind `unsupported_transfer_coding` names the route its path matches, as the
    /// router's own rejection of that kind does, and other rejections name none.
    pub(crate) fn report_rejection(&self, rejection: &Rejection, client_ip: IpAddr) {
        if !self.is_active() {
            return;
        }
        let latency = rejection.latency();
        let now = SystemTime::now();
        let user_agent = rejection
            .headers
            .as_ref()
            .and_then(|headers| headers.get(header::USER_AGENT))
            .cloned();
        let pending = Pending {
            started_at: now.checked_sub(latency).unwrap_or(now),
            method: rejection.method.clone().unwrap_or_else(unknown_method),
            uri: rejection
                .uri
                .clone()
                .unwrap_or_else(|| Uri::from_static(UNKNOWN)),
            request_id: Some(request_id::generate()),
            client_ip: Some(client_ip),
            user_agent,
            bytes_received: None,
            status: rejection.status.as_u16(),
            route: None,
            backend: None,
            retried: false,
            error_kind: Some(rejection.kind.as_str()),
        };
        // NOTE: the server reports a rejection before it writes the response, so the access
        // line's `completed=true` does not confirm that the client received it.
        report_unserved(self, Some(pending), rejection.started, true);
    }
}

impl AccessHook {
    /// Reports a connection closed because its client sent part of a request head and not
    /// the rest within the read timeout, `waited` after the head's first bytes. Like
    /// NGINX, the gateway logs it with status 408 but sends no response, so the line has
    /// `completed=false`. The head is gone with the connection, so method and path show `-`.
    pub(crate) fn report_head_timeout(&self, client_ip: IpAddr, waited: Duration) {
        if !self.is_active() {
            return;
        }
        let now = SystemTime::now();
        let pending = Pending {
            started_at: now.checked_sub(waited).unwrap_or(now),
            method: unknown_method(),
            uri: Uri::from_static(UNKNOWN),
            request_id: Some(request_id::generate()),
            client_ip: Some(client_ip),
            user_agent: None,
            bytes_received: None,
            status: StatusCode::REQUEST_TIMEOUT.as_u16(),
            route: None,
            backend: None,
            retried: false,
            error_kind: Some(ErrorKind::ClientTimeout.as_str()),
        };
        let started = Instant::now()
            .checked_sub(waited)
            .unwrap_or_else(Instant::now);
        report_unserved(self, Some(pending), started, false);
    }
}

/// The method and path that a rejected request shows when its request line did not parse.
/// As a target, `-` is an authority, which [`logged_path`] shows as the path.
const UNKNOWN: &str = "-";

fn unknown_method() -> Method {
    Method::from_bytes(UNKNOWN.as_bytes()).unwrap_or_default()
}

/// The record of a request before it ends. Every field is a cheap clone of the request's
/// own parts; text is only built when the request ends.
#[derive(Debug)]
pub(crate) struct Pending {
    started_at: SystemTime,
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
    client_ip: Option<IpAddr>,
    user_agent: Option<HeaderValue>,
    /// `None` when the request log is off or the request has no body.
    bytes_received: Option<ReceivedBytes>,
    status: u16,
    route: Option<Arc<str>>,
    backend: Option<Arc<str>>,
    retried: bool,
    error_kind: Option<&'static str>,
}

impl RequestHook for AccessHook {
    // None when neither the access line nor the request log is on, so the request pays
    // nothing for them.
    type State = Option<Pending>;

    fn is_active(&self) -> bool {
        self.shared.access_lines.is_some() || self.shared.request_log.is_some()
    }

    fn on_request<B>(&self, request: &mut Request<B>) -> Option<Pending> {
        if self.shared.access_lines.is_none() && self.shared.request_log.is_none() {
            return None;
        }
        let fields = Fields::of(request.headers());
        // The forwarder counts the body bytes it reads from the client into this. Only the
        // request log records them, and a request without a body has nothing to count.
        let bytes_received = (self.shared.request_log.is_some() && fields.has_body).then(|| {
            let counter = ReceivedBytes::default();
            request.extensions_mut().insert(counter.clone());
            counter
        });
        Some(Pending {
            started_at: SystemTime::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            request_id: fields.request_id,
            client_ip: ClientIp::of(request.extensions()),
            user_agent: fields.user_agent,
            bytes_received,
            status: 0,
            route: None,
            backend: None,
            retried: false,
            error_kind: None,
        })
    }

    fn on_response<B>(&self, state: &mut Option<Pending>, response: &Response<B>) {
        let Some(state) = state else {
            return;
        };
        state.status = response.status().as_u16();
        let extensions = response.extensions();
        if let Some(info) = extensions.get::<ForwardInfo>() {
            state.route = Some(Arc::clone(&info.route));
            state.backend = info.backend.clone();
            state.retried = info.retried;
        }
        state.error_kind = match extensions.get::<ErrorKind>() {
            Some(kind) => Some(kind.as_str()),
            None if state.backend.is_some() => None,
            None => match state.status {
                429 => Some("rate_limited"),
                500 => Some("internal"),
                _ => None,
            },
        };
    }

    fn on_end(&self, state: Option<Pending>, end: &RequestEnd) {
        let Some(mut state) = state else {
            return;
        };
        if state.status != 0 && !end.completed && state.error_kind.is_none() {
            // The response started but its body did not reach its end: the client left, a
            // timeout or the stop cut it, or the backend failed. The status alone would read
            // as a success.
            state.error_kind = Some("response_incomplete");
        }
        if state.status == 0 {
            // No response was made: the client closed the connection first, or the drain
            // deadline cut it off. 499 is the status NGINX logs for this case. A forwarder
            // dropped while it waited on a backend has just left its route and backend.
            if let Some(info) = gateway_proxy::take_abandoned() {
                state.route = Some(info.route);
                state.backend = info.backend;
                state.retried = info.retried;
            }
            state.status = CLIENT_CLOSED_REQUEST;
            state.error_kind = if self.shared.stopped.load(Ordering::Relaxed) {
                Some("shutdown")
            } else {
                Some("client_closed")
            };
        }
        if state.route.is_none() && state.error_kind != Some("invalid_request") {
            // The forwarder's responses carry their route. A request that ended without a
            // response, or got one from a layer before the forwarder (a 429 of the rate
            // limit, a CORS preflight), looks it up here: only these pay for a second match.
            // A request that the router rejected as invalid (a dot segment, a bad `Host`)
            // was never routed, so it names no route, whatever its path resembles.
            state.route = route_of(
                &self.shared.table,
                &state.method,
                state.uri.path(),
                state.status,
            );
        }
        if let Some(lines) = &self.shared.access_lines {
            lines.push(&AccessLine {
                time: state.started_at + end.latency,
                method: state.method.as_str(),
                path: logged_path(&state.uri),
                status: state.status,
                latency: end.latency,
                backend: state.backend.as_deref(),
                client_ip: state.client_ip,
                request_id: state.request_id.as_ref().and_then(|v| v.to_str().ok()),
                retried: state.retried,
                error: state.error_kind,
                completed: end.completed,
            });
        }
        if let Some(log) = &self.shared.request_log {
            state.with_record(end, |record| log.record_ref(record));
        }
    }
}

/// The header fields that the access line and the request log read from a request.
struct Fields {
    request_id: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    /// Whether the request has a body. An HTTP/1.1 request has one only when it declares
    /// `Transfer-Encoding` or a `Content-Length` other than 0.
    has_body: bool,
}

impl Fields {
    /// Finds the fields in one pass: a head has a few, and comparing each name costs less
    /// than a hashed lookup for each of the four. The first of a repeated field counts.
    fn of(headers: &HeaderMap) -> Fields {
        let mut fields = Fields {
            request_id: None,
            user_agent: None,
            has_body: false,
        };
        let mut length_seen = false;
        for (name, value) in headers {
            if *name == X_REQUEST_ID {
                fields.request_id = fields.request_id.or_else(|| Some(value.clone()));
            } else if *name == header::USER_AGENT {
                fields.user_agent = fields.user_agent.or_else(|| Some(value.clone()));
            } else if *name == header::TRANSFER_ENCODING {
                fields.has_body = true;
            } else if *name == header::CONTENT_LENGTH && !length_seen {
                length_seen = true;
                fields.has_body |= value.as_bytes() != b"0";
            }
        }
        fields
    }
}

/// Returns the pattern of the route that served `method` and `path`, whose response had
/// `status`. `/health` and `/admin/*` are served before routing, so they have none even when
/// a catch-all route matches them.
///
/// A route whose methods leave out OPTIONS still responds to CORS preflights for its path, so
/// an OPTIONS request that got any status but 405 belongs to that route.
fn route_of(table: &RouteTable, method: &Method, path: &str, status: u16) -> Option<Arc<str>> {
    let path = gateway_config::match_form(path);
    if admin::is_admin_path(&path) {
        return None;
    }
    match table.find_match_form(method, &path) {
        RouteMatch::Found(route) => Some(Arc::clone(&route.pattern)),
        RouteMatch::MethodNotAllowed(route) if *method == Method::OPTIONS && status != 405 => {
            Some(Arc::clone(&route.pattern))
        }
        RouteMatch::NotFound | RouteMatch::MethodNotAllowed(_) => None,
    }
}

/// Returns the path that the access line and the row show for a request to `uri`: its path,
/// or for an authority-form target (`CONNECT host:443`), which has none, the authority.
fn logged_path(uri: &Uri) -> &str {
    match uri.path() {
        "" => uri.authority().map_or("", |authority| authority.as_str()),
        path => path,
    }
}

impl Pending {
    /// Calls `f` with the request's row. Its text is borrowed from the request's own parts,
    /// and the request log copies it into its queue's buffer.
    fn with_record<R>(&self, end: &RequestEnd, f: impl FnOnce(&RecordRef<'_>) -> R) -> R {
        let request_id = self.request_id.as_ref().map(header_text);
        let user_agent = self.user_agent.as_ref().map(header_text);
        f(&RecordRef {
            timestamp_us: unix_micros(self.started_at),
            request_id: request_id.as_deref().unwrap_or_default(),
            method: self.method.as_str(),
            path: logged_path(&self.uri),
            query: self.uri.query(),
            route: self.route.as_deref(),
            status: self.status,
            latency_us: u64::try_from(end.latency.as_micros()).unwrap_or(u64::MAX),
            client_ip: self.client_ip,
            user_agent: user_agent.as_deref(),
            backend: self.backend.as_deref(),
            bytes_received: self.bytes_received.as_ref().map_or(0, ReceivedBytes::get),
            bytes_sent: end.bytes_sent,
            error_kind: self.error_kind,
            retried: self.retried,
        })
    }
}

/// Returns a header value as text, with bytes that are not UTF-8 replaced.
fn header_text(value: &HeaderValue) -> Cow<'_, str> {
    // `str::from_utf8` checks ASCII a word at a time, where the lossy conversion reads byte
    // by byte, so the lossy one runs only for values that are not UTF-8.
    match std::str::from_utf8(value.as_bytes()) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(value.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Duration;

    fn pending(user_agent: &'static [u8]) -> Pending {
        Pending {
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            method: Method::GET,
            uri: Uri::from_static("/users/7?expand=orders"),
            request_id: Some(HeaderValue::from_static("req-1")),
            client_ip: None,
            user_agent: Some(HeaderValue::from_bytes(user_agent).unwrap()),
            bytes_received: None,
            status: 200,
            route: None,
            backend: None,
            retried: false,
            error_kind: None,
        }
    }

    const END: RequestEnd = RequestEnd {
        latency: Duration::from_micros(250),
        bytes_sent: 10,
        completed: true,
    };

    #[test]
    fn authority_form_logs_its_authority() {
        let connect: Uri = "a.example:443".parse().unwrap();
        assert_eq!(logged_path(&connect), "a.example:443");
        let origin: Uri = "/api/users/7?page=2".parse().unwrap();
        assert_eq!(logged_path(&origin), "/api/users/7");
        let asterisk: Uri = "*".parse().unwrap();
        assert_eq!(logged_path(&asterisk), "*");
    }

    #[test]
    fn unanswered_route_skips_admin_paths() {
        let yaml = r#"
routes:
  - path: "/api/*rest"
    methods: [GET]
    backends: [{url: "http://127.0.0.1:9001"}]
  - path: "/*rest"
    methods: [GET]
    backends: [{url: "http://127.0.0.1:9002"}]
"#;
        let config = gateway_config::Config::from_yaml(yaml, "test.yaml").unwrap();
        let table = RouteTable::new(&config).unwrap();

        let api = route_of(&table, &Method::GET, "/api/users/7", 200);
        assert_eq!(api.as_deref(), Some("/api/*rest"));
        let other = route_of(&table, &Method::GET, "/page", 200);
        assert_eq!(other.as_deref(), Some("/*rest"));
        assert_eq!(route_of(&table, &Method::POST, "/page", 405), None);
        let preflight = route_of(&table, &Method::OPTIONS, "/page", 204);
        assert_eq!(preflight.as_deref(), Some("/*rest"));
        assert_eq!(route_of(&table, &Method::OPTIONS, "/page", 405), None);
        for path in ["/health", "/admin/logs", "/admin"] {
            assert_eq!(route_of(&table, &Method::GET, path, 200), None, "{path}");
        }
    }

    #[test]
    fn unknown_request_line_logs_dashes() {
        assert_eq!(unknown_method().as_str(), "-");
        assert_eq!(logged_path(&Uri::from_static(UNKNOWN)), "-");
        assert_eq!(Uri::from_static(UNKNOWN).query(), None);
    }

    #[test]
    fn record_borrows_request_text() {
        pending(b"curl/8.5.0").with_record(&END, |record| {
            assert_eq!(record.timestamp_us, 1_000_000);
            assert_eq!(record.request_id, "req-1");
            assert_eq!(record.method, "GET");
            assert_eq!(record.path, "/users/7");
            assert_eq!(record.query, Some("expand=orders"));
            assert_eq!(record.user_agent, Some("curl/8.5.0"));
            assert_eq!(record.latency_us, 250);
            assert_eq!(record.bytes_sent, 10);
        });
    }

    #[test]
    fn fields_are_found_in_one_pass() {
        let fields = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for &(name, value) in pairs {
                map.append(name, HeaderValue::from_static(value));
            }
            Fields::of(&map)
        };

        assert!(!fields(&[]).has_body);
        assert!(!fields(&[("content-length", "0")]).has_body);
        assert!(fields(&[("content-length", "12")]).has_body);
        assert!(fields(&[("transfer-encoding", "chunked")]).has_body);
        assert!(fields(&[("content-length", "0"), ("transfer-encoding", "chunked")]).has_body);

        let found = fields(&[
            ("accept", "*/*"),
            ("user-agent", "first/1"),
            ("x-request-id", "id-1"),
            ("user-agent", "second/2"),
            ("x-request-id", "id-2"),
        ]);
        assert_eq!(found.user_agent.unwrap(), "first/1");
        assert_eq!(found.request_id.unwrap(), "id-1");
        assert!(!found.has_body);
        let none = fields(&[("accept", "*/*")]);
        assert!(none.user_agent.is_none());
        assert!(none.request_id.is_none());
    }

    #[test]
    fn record_replaces_bytes_not_utf8() {
        pending(b"agent \xff/1").with_record(&END, |record| {
            assert_eq!(record.user_agent, Some("agent \u{fffd}/1"));
        });
    }
}
