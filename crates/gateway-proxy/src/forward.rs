//! Forwarding one request to a backend of its route, with one retry for failed connects.

use crate::body::{BackendBody, ProxyBody};
use crate::client::{BackendClient, Connection, ExchangeError};
use crate::codec::{RequestFraming, RequestHead, ResponseHead};
use crate::error::{ErrorKind, ProxyError};
use crate::header_pool;
use crate::request_body::{ReceivedBytes, RequestBody};
use crate::routes::Route;
use crate::server::{Inbound, InboundError};
use gateway_balancer::{Backend, Transition};
use http::{Method, Request, Response, header};
use http_body::Body;
use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A record of the forwarding, attached to every response the forwarder returns as an
/// extension.
#[derive(Debug, Clone)]
pub struct ForwardInfo {
    /// The route's path as configured.
    pub route: Arc<str>,
    /// URL of the backend that served the request, or `None` when none was tried.
    pub backend: Option<Arc<str>>,
    /// Whether the request was sent to a second backend after a failed connect.
    pub retried: bool,
}

thread_local! {
    /// The record of the last forwarder on this thread that was dropped while it waited on a
    /// backend, until [`take_abandoned`] takes it.
    static ABANDONED: RefCell<Option<ForwardInfo>> = const { RefCell::new(None) };
}

/// Takes the record that a forwarder left when its future was dropped in the middle of an
/// exchange with a backend: the client left, or the stop cut the request off. Such a request
/// gets no response to carry its [`ForwardInfo`], so a layer around the forwarder calls this
/// right after dropping the forwarder's future, on the same thread, to learn the route and the
/// backend. Only a forwarder that attaches its record leaves one.
pub fn take_abandoned() -> Option<ForwardInfo> {
    ABANDONED.with_borrow_mut(Option::take)
}

/// Leaves a copy of the forwarding record for [`take_abandoned`] when it is dropped armed,
/// which happens when the exchange it watches is dropped before it ends.
struct AbandonGuard<'a> {
    info: Option<&'a ForwardInfo>,
}

impl AbandonGuard<'_> {
    fn disarm(mut self) {
        self.info = None;
    }
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        // A panic in the exchange also drops it, but then the panic guard makes a response,
        // and nothing would take the record.
        if let Some(info) = self.info
            && !std::thread::panicking()
        {
            ABANDONED.with_borrow_mut(|slot| *slot = Some(info.clone()));
        }
    }
}

/// The service that forwards requests of one route to its backend pool.
///
/// It never fails: every error becomes a response through [`ProxyError::into_response`]. The
/// peer address, when the request's body has one ([`Inbound::set_peer`]), is appended to
/// `X-Forwarded-For`.
#[derive(Debug, Clone)]
pub struct Forward {
    route: Arc<Route>,
    client: BackendClient,
    attach_info: bool,
}

impl Forward {
    /// Creates the forwarder of `route`. Its responses carry a [`ForwardInfo`] extension.
    pub fn new(route: Arc<Route>, client: BackendClient) -> Forward {
        Forward {
            route,
            client,
            attach_info: true,
        }
    }

    /// Leaves the [`ForwardInfo`] extension off responses, for a gateway that reads it
    /// nowhere, which saves its allocation on every request.
    pub fn without_info(mut self) -> Forward {
        self.attach_info = false;
        self
    }

    /// Returns the route this forwarder serves.
    pub fn route(&self) -> &Arc<Route> {
        &self.route
    }
}

impl tower::Service<Request<Inbound>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Inbound>) -> Self::Future {
        // The request is taken apart here, before the future exists, so that the future keeps
        // its parts once rather than also keeping the whole request it was given.
        let peer = request.body().peer();
        let (parts, body) = request.into_parts();
        // The server has checked the client's Content-Length, and its body reports that length
        // as an exact size. A declared length of 0 is passed on as such.
        // A scan of the few names of a head costs less than a hashed lookup.
        let declared = || {
            parts
                .headers
                .keys()
                .any(|name| name == header::CONTENT_LENGTH)
        };
        let framing = match body.size_hint().exact() {
            Some(length) if declared() => RequestFraming::Length(length),
            _ if body.is_end_stream() => RequestFraming::Empty,
            _ => RequestFraming::Chunked,
        };
        let received = parts.extensions.get::<ReceivedBytes>().cloned();
        let body = RequestBody::new(body, received);
        Box::pin(forward(
            Arc::clone(&self.route),
            self.client.clone(),
            parts,
            body,
            peer,
            framing,
            self.attach_info,
        ))
    }
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async block keeps each argument once, where an async fn's future also holds \
              a copy of every argument it moves into a local"
)]
fn forward(
    route: Arc<Route>,
    client: BackendClient,
    parts: http::request::Parts,
    mut body: RequestBody,
    peer: Option<IpAddr>,
    framing: RequestFraming,
    attach_info: bool,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send {
    async move {
        let mut info = ForwardInfo {
            route: Arc::clone(&route.pattern),
            backend: None,
            retried: false,
        };
        let Some(mut picked) = route.pool.pick() else {
            return Ok(error_with_info(
                ProxyError::new(ErrorKind::NoHealthyBackend),
                info,
                attach_info,
            ));
        };
        let request = Outgoing {
            parts: &parts,
            peer,
            framing,
        };

        loop {
            let backend = picked.backend();
            let in_flight = picked.start_request();
            info.backend = Some(Arc::clone(backend.url_text()));

            let guard = AbandonGuard {
                info: attach_info.then_some(&info),
            };
            let result = exchange(&client, &route, backend, &request, &mut body).await;
            guard.disarm();
            let error = match result {
                Ok((head, connection, sent_all)) => {
                    backend.record_request_success();
                    let ResponseHead {
                        status,
                        headers,
                        framing,
                        keep_alive,
                    } = head;
                    let unsent = (!sent_all).then_some(body);
                    let lease = client.lease(in_flight);
                    let body = BackendBody::new(connection, framing, keep_alive, unsent, lease);
                    let mut response = Response::new(ProxyBody::backend(body));
                    *response.status_mut() = status;
                    *response.headers_mut() = headers;
                    // The request head is sent, so its header map goes back to the pool. Its
                    // extension map, emptied, carries the response's extensions, which saves
                    // allocating a new map. The server returns it to the pool in turn.
                    header_pool::give(parts.headers);
                    let mut extensions = parts.extensions;
                    extensions.clear();
                    if attach_info {
                        extensions.insert(info);
                    }
                    *response.extensions_mut() = extensions;
                    return Ok(response);
                }
                Err(error) => error,
            };
            drop(in_flight);
            if error.counts_against_backend() {
                note_failure(backend, &error);
            }

            // Only a request that never reached a backend may go to another, and only once.
            // No byte of it was sent, so nothing can run twice, and a POST goes too (NGINX
            // also passes a POST on after a failed connect).
            let retry = error.is_retry_safe() && body.is_replayable() && !info.retried;
            let other = if retry {
                route.pool.pick_other(backend)
            } else {
                None
            };
            let Some(other) = other else {
                return Ok(error_with_info(error, info, attach_info));
            };
            tracing::debug!(
                backend = %backend.url_text(),
                error = %error,
                "retrying on another backend"
            );
            picked = other;
            info.retried = true;
        }
    }
}

/// The parts of a request that every attempt sends.
struct Outgoing<'a> {
    parts: &'a http::request::Parts,
    peer: Option<IpAddr>,
    framing: RequestFraming,
}

/// Sends the request to `backend` on a pooled or new connection and waits for the response
/// head. Returns the head, the connection and whether the whole request was sent. A pooled
/// connection that turns out closed is replaced once, when the request can be sent again.
async fn exchange(
    client: &BackendClient,
    route: &Route,
    backend: &Backend,
    request: &Outgoing<'_>,
    body: &mut RequestBody,
) -> Result<(ResponseHead, Box<Connection>, bool), ProxyError> {
    let (mut connection, pooled) = client.connect(backend).await?;
    let timeout = client.response_timeout();
    match attempt(client, route, backend, request, &mut connection, body).await {
        Ok((head, sent_all)) => return Ok((head, connection, sent_all)),
        // The backend closed a pooled connection before sending any byte, most likely because
        // its idle timeout ended. An idempotent request then goes once on a new connection.
        Err(ExchangeError::Io { silent: true, .. })
            if pooled && body.is_replayable() && is_idempotent(&request.parts.method) => {}
        // A new connection that closed before a response byte: the backend accepted it and
        // went away, or closes every connection. A safe method may go to another backend, as
        // NGINX passes an idempotent request on after such an error.
        Err(error @ ExchangeError::Io { silent: true, .. }) if is_safe(&request.parts.method) => {
            return Err(exchange_error(error, timeout).retry_elsewhere());
        }
        Err(error) => return Err(exchange_error(error, timeout)),
    }
    drop(connection);
    // The backend may have received the request on the closed connection and acted on it
    // before it went away. A safe method requests no change, so when the new connection
    // cannot be opened it may still go to another backend. A PUT or DELETE may not: the
    // client gets 502 rather than the same change made twice, on two backends.
    let mut fresh = Box::pin(client.open(backend)).await.map_err(|error| {
        if is_safe(&request.parts.method) {
            error
        } else {
            error.after_earlier_send()
        }
    })?;
    match attempt(client, route, backend, request, &mut fresh, body).await {
        Ok((head, sent_all)) => Ok((head, fresh, sent_all)),
        // The new connection closed before a response byte too: the backend is going away
        // (it may still have accepted the connection while it exited). A safe method may
        // then go to another backend, as after a failed connect.
        Err(error @ ExchangeError::Io { silent: true, .. }) if is_safe(&request.parts.method) => {
            Err(exchange_error(error, timeout).retry_elsewhere())
        }
        Err(error) => Err(exchange_error(error, timeout)),
    }
}

/// Writes the request head for `backend` and runs one exchange on `connection`, within the
/// response timeout.
async fn attempt(
    client: &BackendClient,
    route: &Route,
    backend: &Backend,
    request: &Outgoing<'_>,
    connection: &mut Connection,
    body: &mut RequestBody,
) -> Result<(ResponseHead, bool), ExchangeError> {
    let parts = request.parts;
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |target| target.as_str());
    let (prefix, host) = match route.target(backend) {
        Some(target) => {
            // An HTTP/1.0 client may send no `Host`. The backend's authority is then written
            // even on a `preserve_host` route, since an HTTP/1.1 request must carry one.
            let keeps_client_host = route.preserve_host && parts.headers.contains_key(header::HOST);
            (
                target.prefix.as_deref(),
                (!keeps_client_host).then_some(&target.host),
            )
        }
        None => (None, None),
    };
    // Encoded in place, so the head is not kept in the future across the wait below.
    RequestHead {
        method: &parts.method,
        prefix,
        target,
        headers: &parts.headers,
        peer: request.peer,
        host,
        framing: request.framing,
        close: !client.keeps_idle(),
    }
    .encode(connection.head_buffer());
    connection
        .exchange(
            body,
            request.framing,
            &parts.method,
            client.response_timeout(),
        )
        .await
}

fn exchange_error(error: ExchangeError, timeout: Duration) -> ProxyError {
    match error {
        ExchangeError::ClientBody(source) => {
            let malformed = matches!(
                source.downcast_ref::<InboundError>(),
                Some(InboundError::Chunked(_))
            );
            if malformed {
                ProxyError::invalid_chunked_body(source)
            } else {
                ProxyError::with_source(ErrorKind::ClientBody, source)
            }
        }
        ExchangeError::Io { error, .. } => ProxyError::with_source(ErrorKind::BackendError, error),
        ExchangeError::Head(error) => ProxyError::with_source(ErrorKind::BackendError, error),
        ExchangeError::Timeout => ProxyError::timeout(timeout),
        ExchangeError::ClientTimeout => ProxyError::client_timeout(timeout),
    }
}

/// Counts a failed exchange toward the backend's unhealthy threshold, and logs it: every one
/// that takes the backend out, and at most one a second of the others.
fn note_failure(backend: &Backend, error: &ProxyError) {
    let message = error_chain(error);
    // `last_error` also contains failed probes' messages, so the source is named.
    if backend.record_request_failure(&format!("request failed: {message}")) == Transition::Down {
        backend.request_health_check();
        tracing::warn!(
            backend = %backend.url_text(),
            error = %message,
            "backend is unhealthy after failed requests"
        );
    } else if let Some(unlogged) = backend.take_failure_report() {
        tracing::warn!(
            backend = %backend.url_text(),
            error = %message,
            unlogged,
            "request to backend failed"
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

fn error_with_info(error: ProxyError, info: ForwardInfo, attach_info: bool) -> Response<ProxyBody> {
    tracing::debug!(route = %info.route, error = %error_chain(&error), "request failed");
    let mut response = error.into_response();
    if attach_info {
        response.extensions_mut().insert(info);
    }
    response
}

/// Methods that RFC 9110 (section 9.2.1) defines as safe: they request no change on the
/// server, so sending one to a second server is expected to have no effect beyond the response.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Methods that RFC 9110 defines as idempotent, safe to send twice.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_body_error(error: InboundError) -> ProxyError {
        exchange_error(
            ExchangeError::ClientBody(Box::new(error)),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn malformed_chunked_body_is_an_invalid_request() {
        let error = client_body_error(InboundError::Chunked("invalid chunk size".into()));
        assert_eq!(error.kind(), ErrorKind::InvalidRequest);
        assert_eq!(error.to_string(), "invalid chunked request body");
        assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn cut_off_body_stays_client_body() {
        let error = client_body_error(InboundError::Closed);
        assert_eq!(error.kind(), ErrorKind::ClientBody);
        assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
    }
}
