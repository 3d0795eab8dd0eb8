//! Mock backends on 127.0.0.1 for the probe tests: an HTTP server with a settable status, and
//! a listener that accepts connections but never responds.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep};

/// One request the mock backend received.
#[derive(Debug, Clone)]
pub(crate) struct SeenRequest {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) user_agent: Option<String>,
}

/// Picks the status of the `n`th request (from 0).
type Responder = Arc<dyn Fn(usize) -> u16 + Send + Sync>;

/// An HTTP/1 server that answers `health_path` with a chosen status and anything else with 404.
pub(crate) struct MockBackend {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
    connections: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl MockBackend {
    /// Starts a backend whose health path returns the status stored in `status` at the time.
    pub(crate) async fn start(health_path: &'static str, status: Arc<AtomicU16>) -> MockBackend {
        let responder: Responder = Arc::new(move |_| status.load(Ordering::Relaxed));
        MockBackend::start_with(health_path, responder).await
    }

    /// Starts a backend whose health path returns the status `responder` picks.
    pub(crate) async fn start_with(health_path: &'static str, responder: Responder) -> MockBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));

        let seen = Arc::clone(&requests);
        let accepted = Arc::clone(&connections);
        let server = tokio::spawn(async move {
            // The connections live in this task, so aborting it closes them too.
            let mut open = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let seen = Arc::clone(&seen);
                let responder = Arc::clone(&responder);
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = respond(&seen, &responder, health_path, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                open.spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
                while open.try_join_next().is_some() {}
            }
        });

        MockBackend {
            addr,
            requests,
            connections,
            server,
        }
    }

    /// Base URL of the backend, like `http://127.0.0.1:40123`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn requests(&self) -> Vec<SeenRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub(crate) fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Number of TCP connections accepted so far.
    pub(crate) fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Closes the listener and every open connection.
    pub(crate) fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn respond(
    seen: &Mutex<Vec<SeenRequest>>,
    responder: &Responder,
    health_path: &str,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let user_agent = request
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut seen = seen.lock().unwrap();
    let index = seen.len();
    seen.push(SeenRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        user_agent,
    });

    let status = if request.uri().path() == health_path {
        StatusCode::from_u16(responder(index)).unwrap()
    } else {
        StatusCode::NOT_FOUND
    };
    let mut response = Response::new(Full::new(Bytes::from_static(b"{\"status\":\"checked\"}")));
    *response.status_mut() = status;
    // A redirect points to the path with a slash added, to which the backend responds with 404.
    if status.is_redirection() {
        let location = format!("{health_path}/");
        response
            .headers_mut()
            .insert(http::header::LOCATION, location.parse().unwrap());
    }
    response
}

/// A listener that accepts connections and never reads or writes on them.
pub(crate) struct SilentBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl SilentBackend {
    pub(crate) async fn start() -> SilentBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                held.push(stream);
            }
        });
        SilentBackend {
            addr,
            connections,
            server,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for SilentBackend {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Returns the URL of a local port that nothing listens on: it binds a port and closes it.
pub(crate) async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Polls `condition` every 10 ms and panics when it is still false after 10 seconds.
pub(crate) async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        sleep(Duration::from_millis(10)).await;
    }
}
