//! Backend connections: opened with a timeout, kept alive, and pooled per backend.
//!
//! Each backend's idle connections wait in a bounded lock-free queue, so checking one out or in
//! takes no lock, and any worker thread can reuse a connection another thread returned. A
//! connection goes back only when its response body was read to its end.

use crate::error::ProxyError;
use crate::request_body::RequestBody;
use crossbeam_queue::ArrayQueue;
use gateway_balancer::{Backend, InFlight};
use gateway_config::ProxyConfig;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The sending half of a backend connection.
pub(crate) type Sender = SendRequest<RequestBody>;

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Connection settings and idle connections, shared by every forwarder.
#[derive(Clone)]
pub struct BackendClient {
    connect_timeout: Duration,
    response_timeout: Duration,
    idle_timeout: Duration,
    // Idle connections per backend id. A handful of backends is the norm, so a vector scan
    // beats hashing.
    pools: Arc<Vec<(u64, ArrayQueue<Idle>)>>,
}

impl std::fmt::Debug for BackendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendClient")
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("backends", &self.pools.len())
            .finish()
    }
}

/// A backend connection in use by one request, with the backend's in-flight count.
#[derive(Debug)]
pub struct Lease {
    in_flight: InFlight,
    sender: Option<Sender>,
    client: BackendClient,
}

impl Lease {
    /// Ends the lease: the connection returns to its backend's pool when `reusable`.
    pub(crate) fn finish(mut self, reusable: bool) {
        if let Some(sender) = self.sender.take()
            && reusable
            && !sender.is_closed()
        {
            self.client.check_in(self.in_flight.backend().id(), sender);
        }
    }
}

impl BackendClient {
    /// Creates a client from the `proxy` section of the configuration, with a pool for each
    /// backend in `backend_ids`. Connections to other backends are not kept.
    pub fn new(config: &ProxyConfig, backend_ids: impl IntoIterator<Item = u64>) -> BackendClient {
        let capacity = config.pool_max_idle_per_backend;
        let pools = backend_ids
            .into_iter()
            .filter(|_| capacity > 0)
            .map(|id| (id, ArrayQueue::new(capacity)))
            .collect();
        BackendClient {
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            idle_timeout: config.pool_idle_timeout,
            pools: Arc::new(pools),
        }
    }

    fn pool(&self, backend_id: u64) -> Option<&ArrayQueue<Idle>> {
        self.pools
            .iter()
            .find(|(id, _)| *id == backend_id)
            .map(|(_, pool)| pool)
    }

    /// Maximum wait for a backend's response head.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Returns a ready connection to `backend`: an idle pooled one when the pool has one,
    /// else a new one. The flag is true for a pooled connection.
    ///
    /// # Errors
    ///
    /// Returns a retry-safe [`ProxyError`] when connecting fails or times out.
    pub(crate) async fn connect(&self, backend: &Backend) -> Result<(Sender, bool), ProxyError> {
        while let Some(mut sender) = self.check_out(backend.id()) {
            // A pooled connection may still be finishing its previous response, or the
            // backend may have closed it; waiting for readiness settles both.
            if sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
        Ok((self.open(backend).await?, false))
    }

    /// Opens a new connection to `backend`.
    pub(crate) async fn open(&self, backend: &Backend) -> Result<Sender, ProxyError> {
        let timeout = self.connect_timeout;
        match tokio::time::timeout(timeout, open_connection(backend)).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::connect_timeout(timeout)),
        }
    }

    /// Wraps an exchange's connection and in-flight count for the response body to hold.
    pub(crate) fn lease(&self, in_flight: InFlight, sender: Sender) -> Lease {
        Lease {
            in_flight,
            sender: Some(sender),
            client: self.clone(),
        }
    }

    fn check_out(&self, backend_id: u64) -> Option<Sender> {
        let pool = self.pool(backend_id)?;
        while let Some(entry) = pool.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    fn check_in(&self, backend_id: u64, sender: Sender) {
        if let Some(pool) = self.pool(backend_id) {
            // A full pool drops the connection, which closes it.
            let _ = pool.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

async fn open_connection(backend: &Backend) -> Result<Sender, ProxyError> {
    let url = backend.url();
    let host = url.host().unwrap_or("localhost");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(80);

    let stream = match host.parse() {
        Ok(ip) => TcpStream::connect(SocketAddr::new(ip, port)).await,
        Err(_) => connect_by_name(host, port).await,
    }
    .map_err(ProxyError::connect)?;
    // Requests and responses are small writes that must leave at once.
    let _ = stream.set_nodelay(true);

    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ProxyError::connect)?;
    let url_text = Arc::clone(backend.url_text());
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(backend = %url_text, %error, "backend connection closed");
        }
    });
    Ok(sender)
}

async fn connect_by_name(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut last_error = None;
    for address in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no address found for {host}"),
        )
    }))
}
