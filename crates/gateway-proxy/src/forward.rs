//! Forwarding one request to a backend of its route, with one retry for failed connects.

use crate::body::ProxyBody;
use crate::client::BackendClient;
use crate::error::{ErrorKind, ProxyError};
use crate::headers::{backend_uri, remove_hop_by_hop, set_forwarding_headers};
use crate::routes::Route;
use gateway_balancer::{Backend, Transition};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// What the forwarder did, attached to every response it returns as an extension.
#[derive(Debug, Clone)]
pub struct ForwardInfo {
    /// The route's path as configured.
    pub route: Arc<str>,
    /// URL of the backend that served the request, or `None` when none was tried.
    pub backend: Option<Arc<str>>,
    /// Whether the request was sent to a second backend after a failed connect.
    pub retried: bool,
}

/// The service that forwards requests of one route to its backend pool.
///
/// It never fails: every error becomes a response through [`ProxyError::into_response`]. The
/// peer address, when the request carries a `SocketAddr` extension, is appended to
/// `X-Forwarded-For`.
#[derive(Debug, Clone)]
pub struct Forward {
    route: Arc<Route>,
    client: BackendClient,
}

impl Forward {
    /// Creates the forwarder of `route`.
    pub fn new(route: Arc<Route>, client: BackendClient) -> Forward {
        Forward { route, client }
    }

    /// The route this forwarder serves.
    pub fn route(&self) -> &Arc<Route> {
        &self.route
    }
}

impl tower::Service<Request<Incoming>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let route = Arc::clone(&self.route);
        let client = self.client;
        Box::pin(async move { Ok(forward(&route, client, request).await) })
    }
}

async fn forward(
    route: &Route,
    client: BackendClient,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let mut info = ForwardInfo {
        route: Arc::clone(&route.pattern),
        backend: None,
        retried: false,
    };
    let Some(first) = route.pool.pick() else {
        return error_with_info(ProxyError::new(ErrorKind::NoHealthyBackend), info);
    };
    let mut backend = Arc::clone(first);

    let peer = request.extensions().get::<SocketAddr>().map(SocketAddr::ip);
    let (mut parts, body) = request.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    set_forwarding_headers(&mut parts.headers, peer, None);
    let idempotent = is_idempotent(&parts.method);

    // Connect first: while no connection exists nothing was sent, so an idempotent request
    // may still go to another backend.
    let (mut sender, pooled, in_flight) = loop {
        let in_flight = backend.start_request();
        match client.connect(&backend).await {
            Ok((sender, pooled)) => break (sender, pooled, in_flight),
            Err(error) => {
                note_failure(&backend, &error);
                drop(in_flight);
                let other = if idempotent && !info.retried && error.is_retry_safe() {
                    route.pool.pick_other(&backend)
                } else {
                    None
                };
                match other {
                    Some(other) => {
                        tracing::debug!(backend = %backend.url_text(), %error, "retrying on another backend");
                        backend = Arc::clone(other);
                        info.retried = true;
                    }
                    None => {
                        info.backend = Some(Arc::clone(backend.url_text()));
                        return error_with_info(error, info);
                    }
                }
            }
        }
    };
    info.backend = Some(Arc::clone(backend.url_text()));

    let target = route.target(&backend);
    if !route.preserve_host
        && let Some(target) = target
    {
        parts
            .headers
            .insert(http::header::HOST, target.host.clone());
    }
    parts.uri = backend_uri(target.and_then(|t| t.prefix.as_deref()), &parts.uri);
    let outgoing = Request::from_parts(parts, body);

    let timeout = client.response_timeout();
    let sent = tokio::time::timeout(timeout, sender.try_send_request(outgoing)).await;
    let result = match sent {
        Err(_) => Err(ProxyError::timeout(timeout)),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(mut error)) => match error.take_message() {
            // A pooled connection that the backend closed while it was idle: the request was
            // not written, so it goes on a new connection to the same backend.
            Some(unsent) if pooled => match client.open(&backend).await {
                Ok(fresh) => {
                    sender = fresh;
                    match tokio::time::timeout(timeout, sender.send_request(unsent)).await {
                        Err(_) => Err(ProxyError::timeout(timeout)),
                        Ok(result) => result.map_err(exchange_error),
                    }
                }
                Err(error) => Err(error),
            },
            _ => Err(exchange_error(error.into_error())),
        },
    };

    match result {
        Ok(response) => {
            backend.record_success();
            let (mut parts, body) = response.into_parts();
            remove_hop_by_hop(&mut parts.headers);
            parts.extensions.insert(info);
            let lease = client.lease(in_flight, sender);
            Response::from_parts(parts, ProxyBody::backend(body, lease))
        }
        Err(error) => {
            if error.side() == crate::Side::Backend {
                note_failure(&backend, &error);
            }
            error_with_info(error, info)
        }
    }
}

fn exchange_error(error: hyper::Error) -> ProxyError {
    if error.is_user() {
        ProxyError::with_source(ErrorKind::ClientBody, error)
    } else {
        ProxyError::with_source(ErrorKind::BackendError, error)
    }
}

/// Counts a failed exchange toward the backend's unhealthy threshold.
fn note_failure(backend: &Backend, error: &ProxyError) {
    let message = error_chain(error);
    if backend.record_failure(&message) == Transition::Down {
        tracing::warn!(
            backend = %backend.url_text(),
            error = %message,
            "backend is unhealthy after failed requests"
        );
    }
}

fn error_chain(error: &ProxyError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn error_with_info(error: ProxyError, info: ForwardInfo) -> Response<ProxyBody> {
    tracing::debug!(route = %info.route, error = %error_chain(&error), "request failed");
    let mut response = error.into_response();
    response.extensions_mut().insert(info);
    response
}

/// Methods that RFC 9110 defines as idempotent, safe to send twice.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}
