//! One health check probe: a `GET` on the backend over a shared keep-alive client.

use bytes::Bytes;
use http::header::{HeaderValue, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{HttpConnector, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::error::Error as _;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `User-Agent` of every probe, so backends can tell probes from client traffic.
const PROBE_USER_AGENT: &str = "apigateway-health-check";

/// Time an idle probe connection stays in the pool. It is longer than the default 10s interval,
/// so probes reuse one connection. With a much longer interval the connection is closed between
/// probes instead of going stale.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Client shared by all probe tasks.
pub(crate) type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// Builds the probe client: HTTP/1 only, at most one idle connection per backend.
pub(crate) fn client() -> ProbeClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// A failed probe.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// The probe URL is invalid.
    #[error(transparent)]
    InvalidUrl(#[from] InvalidProbeUrl),
    /// The backend rejected the TCP connection.
    #[error("connection refused")]
    ConnectionRefused,
    /// The gateway had no file descriptor, memory or local port left for the connection,
    /// which is no sign of the backend's health.
    #[error("gateway out of file descriptors, memory or local ports")]
    OutOfResources(#[source] io::Error),
    /// The TCP connection failed for another reason.
    #[error("connect failed")]
    Connect(#[source] hyper_util::client::legacy::Error),
    /// The connection broke before the response head arrived.
    #[error("request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The connection broke while the response body was read.
    #[error("reading response body failed")]
    Body(#[source] hyper::Error),
    /// The TCP connection, with the look-up of a host name before it, did not complete within
    /// the health check timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimedOut(Duration),
    /// The connection was open, but the response head did not arrive within the health check
    /// timeout.
    #[error("no response within {0:?}")]
    NoResponse(Duration),
    /// The response head arrived, but the body did not end within the health check timeout.
    #[error("response body not complete within {0:?}")]
    BodyTimedOut(Duration),
    /// The backend responded with a status outside 2xx and 3xx.
    #[error("status {}", .0.as_u16())]
    Status(StatusCode),
}

impl ProbeError {
    /// Formats the short text stored as the backend's last error. It is this error followed by
    /// its root cause, if it has one, like `connect failed: Network is unreachable (os error
    /// 101)`.
    pub(crate) fn message(&self) -> String {
        let mut root = self.source();
        while let Some(cause) = root.and_then(|error| error.source()) {
            root = Some(cause);
        }
        match root {
            Some(cause) => format!("{self}: {cause}"),
            None => self.to_string(),
        }
    }

    /// Classifies a failed request. `routable` is whether the backend's address has a route
    /// from this machine, which separates a shortage of local ports from an address that
    /// cannot be reached: TCP's connect fails with `EADDRNOTAVAIL` for both.
    fn from_client(error: hyper_util::client::legacy::Error, routable: bool) -> ProbeError {
        if !error.is_connect() {
            return ProbeError::Request(error);
        }
        match io_error_kind(&error) {
            Some(io::ErrorKind::ConnectionRefused) => return ProbeError::ConnectionRefused,
            Some(io::ErrorKind::AddrNotAvailable) if !routable => {
                return ProbeError::Connect(error);
            }
            _ => {}
        }
        if let Some(code) = resource_shortage(&error) {
            return ProbeError::OutOfResources(io::Error::from_raw_os_error(code));
        }
        ProbeError::Connect(error)
    }
}

/// A backend URL joined with a health check path that is not a valid absolute URI.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid health check url {url:?}")]
pub(crate) struct InvalidProbeUrl {
    url: String,
    #[source]
    source: Arc<http::uri::InvalidUri>,
}

/// Returns whether this machine has a route and a source address for an address of `url`'s
/// host. A UDP socket connected to it sends nothing, and UDP's ports are counted apart from
/// TCP's, so this is true even while TCP's ephemeral ports are all taken.
async fn has_route_to(url: &Uri) -> bool {
    let Some(host) = url.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(80);
    let Ok(addresses) = tokio::net::lookup_host((host, port)).await else {
        return false;
    };
    addresses.into_iter().any(|address| {
        let local = match address {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        std::net::UdpSocket::bind(local).is_ok_and(|socket| socket.connect(address).is_ok())
    })
}

/// Finds the first I/O error in the source chain of `error` and returns its kind.
fn io_error_kind(error: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(io_error) = current.downcast_ref::<io::Error>() {
            return Some(io_error.kind());
        }
        next = current.source();
    }
    None
}

/// Finds the first I/O error in the source chain of `error` and returns its code when it is
/// a shortage of file descriptors or memory in this process or the system, or of the
/// machine's local ports.
fn resource_shortage(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    use rustix::io::Errno;
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(io_error) = current.downcast_ref::<io::Error>() {
            return match Errno::from_io_error(io_error) {
                Some(
                    errno @ (Errno::MFILE
                    | Errno::NFILE
                    | Errno::NOBUFS
                    | Errno::NOMEM
                    | Errno::ADDRNOTAVAIL),
                ) => Some(errno.raw_os_error()),
                _ => None,
            };
        }
        next = current.source();
    }
    None
}

/// Joins the backend's base URL and the health check path, so `http://h:1/v1` with `/health`
/// becomes `http://h:1/v1/health`. A path without a leading `/` gets one.
pub(crate) fn probe_url(base: &Uri, path: &str) -> Result<Uri, InvalidProbeUrl> {
    let prefix = base.path().trim_end_matches('/');
    let path = path.trim_start_matches('/');
    let scheme = base.scheme_str().unwrap_or_default();
    let authority = base.authority().map_or("", |authority| authority.as_str());
    let url = format!("{scheme}://{authority}{prefix}/{path}");

    // Parsing the whole text, rather than setting the parts one by one, also rejects a
    // base URL without a scheme or host.
    match url.parse() {
        Ok(parsed) => Ok(parsed),
        Err(source) => Err(InvalidProbeUrl {
            url,
            source: Arc::new(source),
        }),
    }
}

/// Sends one `GET` to `url`, reads and discards the response body, and succeeds on a status
/// that [`status_passes`] accepts. The whole exchange must finish within `timeout`. A probe
/// that runs out of time reports the step it was in: the connect, the wait for the response
/// head, or the body.
pub(crate) async fn probe(
    client: &ProbeClient,
    url: &Uri,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = url.clone();
    request
        .headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static(PROBE_USER_AGENT));

    // The client sets the captured connection once the request has one, pooled or new, so
    // after a timeout it distinguishes a connect that never completed from a backend that
    // did not respond.
    // NOTE: when a pooled connection closes before the request goes out, the client sends
    // it again on a new connection, and the capture shows the pooled one until the new one
    // is open. A connect that then times out is reported as no response.
    let connection = capture_connection(&mut request);
    let head_received = AtomicBool::new(false);
    let exchange = exchange(client, request, url, &head_received);
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_elapsed) if connection.connection_metadata().is_none() => {
            Err(ProbeError::ConnectTimedOut(timeout))
        }
        Err(_elapsed) if !head_received.load(Ordering::Relaxed) => {
            Err(ProbeError::NoResponse(timeout))
        }
        Err(_elapsed) => Err(ProbeError::BodyTimedOut(timeout)),
    }
}

/// Sends `request` to `url` and reads the response, setting `head_received` once the
/// response head has arrived.
async fn exchange(
    client: &ProbeClient,
    request: Request<Empty<Bytes>>,
    url: &Uri,
    head_received: &AtomicBool,
) -> Result<(), ProbeError> {
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(error) => {
            let routable = io_error_kind(&error) == Some(io::ErrorKind::AddrNotAvailable)
                && has_route_to(url).await;
            return Err(ProbeError::from_client(error, routable));
        }
    };
    head_received.store(true, Ordering::Relaxed);
    let status = response.status();

    // Reading the body to its end, frame by frame without keeping it, lets the connection
    // return to the pool. A broken body only matters when the status alone would pass.
    let mut body = response.into_body();
    let mut body_result = Ok(());
    while let Some(frame) = body.frame().await {
        if let Err(error) = frame {
            body_result = Err(ProbeError::Body(error));
            break;
        }
    }

    if !status_passes(status) {
        return Err(ProbeError::Status(status));
    }
    body_result
}

/// Returns whether a probe's response status counts as passing: 2xx and 3xx, as HAProxy's
/// `option httpchk` and NGINX Plus's `health_check` count them by default (nginx.org's
/// `ngx_http_upstream_hc_module` page). A redirect is not followed, so a `/health` that
/// redirects to `/health/` passes.
fn status_passes(status: StatusCode) -> bool {
    status.is_success() || status.is_redirection()
}

#[cfg(test)]
mod tests;
