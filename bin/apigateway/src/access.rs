//! The timing hook of the gateway: one access line per request on stdout, and one row for the
//! request log.

use gateway_middleware::client_ip::ClientIp;
use gateway_middleware::request_id::X_REQUEST_ID;
use gateway_middleware::timing::{RequestEnd, RequestHook};
use gateway_proxy::{ErrorKind, ForwardInfo};
use http::{HeaderValue, Method, Request, Response, Uri, header};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// Reports finished requests to the access log.
#[derive(Debug, Clone)]
pub(crate) struct AccessHook {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    access_log: bool,
}

impl AccessHook {
    pub(crate) fn new(access_log: bool) -> AccessHook {
        AccessHook {
            shared: Arc::new(Shared { access_log }),
        }
    }
}

/// What is known of a request before it ends. Every field is a cheap clone of the request's
/// own parts; text is only built when the request ends.
#[derive(Debug)]
pub(crate) struct Pending {
    started_at: SystemTime,
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
    client_ip: Option<IpAddr>,
    user_agent: Option<HeaderValue>,
    bytes_received: u64,
    status: u16,
    route: Option<Arc<str>>,
    backend: Option<Arc<str>>,
    retried: bool,
    error_kind: Option<&'static str>,
}

impl RequestHook for AccessHook {
    type State = Pending;

    fn on_request<B>(&self, request: &Request<B>) -> Pending {
        let headers = request.headers();
        // NOTE: bytes received is the declared Content-Length; a chunked upload counts as 0.
        let bytes_received = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Pending {
            started_at: SystemTime::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            request_id: headers.get(&X_REQUEST_ID).cloned(),
            client_ip: request.extensions().get::<ClientIp>().map(|c| c.0),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            bytes_received,
            status: 0,
            route: None,
            backend: None,
            retried: false,
            error_kind: None,
        }
    }

    fn on_response<B>(&self, state: &mut Pending, response: &Response<B>) {
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

    fn on_end(&self, state: Pending, end: &RequestEnd) {
        if self.shared.access_log {
            let latency_ms = end.latency.as_secs_f64() * 1000.0;
            tracing::info!(
                target: "access",
                method = %state.method,
                path = state.uri.path(),
                status = state.status,
                latency_ms = format_args!("{latency_ms:.3}"),
                backend = state.backend.as_deref().unwrap_or("-"),
                client_ip = %DisplayIp(state.client_ip),
                request_id = state.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
                retried = state.retried,
                error = state.error_kind.unwrap_or("-"),
                completed = end.completed,
            );
        }
        let _ = (
            state.started_at,
            state.user_agent,
            state.bytes_received,
            state.route,
        );
    }
}

struct DisplayIp(Option<IpAddr>);

impl std::fmt::Display for DisplayIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("-"),
        }
    }
}
