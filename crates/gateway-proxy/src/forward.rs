//! Forwarding one request to a backend of its route, with one retry for failed connects.

use crate::body::ProxyBody;
use crate::client::{BackendClient, Sender};
use crate::error::{ErrorKind, ProxyError};
use crate::headers::{backend_uri, remove_hop_by_hop, set_forwarding_headers};
use crate::request_body::{Progress, RequestBody};
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

    /// Returns the route this forwarder serves.
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
        let client = self.client.clone();
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
    // The client's URI; each attempt derives the backend's URI from it.
    let original_uri = parts.uri.clone();
    let (body, progress) = RequestBody::new(body);
    let mut request = Request::from_parts(parts, body);

    loop {
        let in_flight = backend.start_request();
        if let Some(target) = route.target(&backend) {
            if !route.preserve_host {
                request
                    .headers_mut()
                    .insert(http::header::HOST, target.host.clone());
            }
            *request.uri_mut() = backend_uri(target.prefix.as_deref(), &original_uri);
        }
        info.backend = Some(Arc::clone(backend.url_text()));

        let failure = match exchange(&client, &backend, request, progress.as_deref()).await {
            Ok((response, sender)) => {
                backend.record_success();
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                parts.extensions.insert(info);
                let lease = client.lease(in_flight, sender);
                return Response::from_parts(parts, ProxyBody::backend(body, lease));
            }
            Err(failure) => failure,
        };
        drop(in_flight);
        if failure.error.counts_against_backend() {
            note_failure(&backend, &failure.error);
        }

        // Only a request that never reached a backend may go to another, and only once.
        let retry = match failure.unsent {
            Some(unsent) if idempotent && !info.retried => {
                route.pool.pick_other(&backend).map(|other| (other, unsent))
            }
            _ => None,
        };
        let Some((other, unsent)) = retry else {
            return error_with_info(failure.error, info);
        };
        tracing::debug!(
            backend = %backend.url_text(),
            error = %failure.error,
            "retrying on another backend"
        );
        backend = Arc::clone(other);
        info.retried = true;
        request = unsent;
    }
}

/// A failed exchange, with the request when none of it was sent.
struct Failure {
    error: ProxyError,
    unsent: Option<Request<RequestBody>>,
}

/// Sends `request` to `backend` on a pooled or new connection and waits for the response
/// head. A pooled connection that the backend closed while idle is replaced once.
async fn exchange(
    client: &BackendClient,
    backend: &Backend,
    request: Request<RequestBody>,
    progress: Option<&Progress>,
) -> Result<(Response<Incoming>, Sender), Failure> {
    let (mut sender, pooled) = match client.connect(backend).await {
        Ok(connection) => connection,
        Err(error) => {
            return Err(Failure {
                error,
                unsent: Some(request),
            });
        }
    };

    let timeout = client.response_timeout();
    let error = match wait_for_head(sender.try_send_request(request), timeout, progress).await {
        Err(error) => error,
        Ok(Ok(response)) => return Ok((response, sender)),
        Ok(Err(mut error)) => match error.take_message() {
            // The request was not written, so it goes on a new connection to the same
            // backend.
            Some(unsent) if pooled => {
                let mut fresh = match client.open(backend).await {
                    Ok(fresh) => fresh,
                    Err(error) => {
                        return Err(Failure {
                            error,
                            unsent: Some(unsent),
                        });
                    }
                };
                match wait_for_head(fresh.send_request(unsent), timeout, progress).await {
                    Err(error) => error,
                    Ok(Ok(response)) => return Ok((response, fresh)),
                    Ok(Err(error)) => exchange_error(error),
                }
            }
            Some(unsent) => {
                return Err(Failure {
                    error: exchange_error(error.into_error()),
                    unsent: Some(unsent),
                });
            }
            None => exchange_error(error.into_error()),
        },
    };
    Err(Failure {
        error,
        unsent: None,
    })
}

/// Waits for a response head. Once the request body has been sent, the wait ends with a
/// backend timeout after `timeout` without a head. While the body is still arriving, each
/// `timeout` with progress extends the wait, and one without ends it with a client timeout.
async fn wait_for_head<F: Future>(
    future: F,
    timeout: Duration,
    progress: Option<&Progress>,
) -> Result<F::Output, ProxyError> {
    tokio::pin!(future);
    let mut last = progress.and_then(Progress::sent);
    loop {
        if let Ok(output) = tokio::time::timeout(timeout, &mut future).await {
            return Ok(output);
        }
        match progress.and_then(Progress::sent) {
            None => return Err(ProxyError::timeout(timeout)),
            Some(sent) if Some(sent) != last => last = Some(sent),
            Some(_) => return Err(ProxyError::client_timeout(timeout)),
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
        backend.request_health_check();
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
