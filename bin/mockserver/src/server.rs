//! Binding a listener and serving its connections with hyper's HTTP/1.1 server.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::handler::{self, Backend};

/// Header fields a request to the mock may carry: the gateway's limit of 100, with room for the
/// fields it adds.
const MAX_HEADERS: usize = 128;

/// Pause after a failed `accept`, so that running out of file descriptors does not turn
/// into a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Failure to bind a listener, with the address that was requested.
#[derive(Debug)]
pub(crate) struct BindError {
    pub(crate) addr: SocketAddr,
    pub(crate) source: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "failed to bind {}", self.addr)?;
        if self.source.kind() == io::ErrorKind::AddrInUse {
            write!(
                f,
                " because the address is already in use. Stop the process listening there or pick another port"
            )
        } else {
            write!(f, ": {}", self.source)
        }
    }
}

// `source()` stays `None` because `Display` already prints or explains the source.
impl std::error::Error for BindError {}

/// Binds `addr` and returns the listener with the address it actually got, which differs
/// from `addr` when the port is 0.
///
/// # Errors
///
/// Returns [`BindError`] naming `addr` when the bind fails.
pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    Ok((listener, local_addr))
}

/// Accepts connections on `listener` and serves each on its own task until the task running
/// this function is aborted.
pub(crate) async fn serve(listener: TcpListener, backend: Arc<Backend>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("mockserver: {}: accept failed: {error}", backend.name());
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };

        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            let service = service_fn(|request| {
                let backend = Arc::clone(&backend);
                async move { Ok::<_, Infallible>(handler::handle(request, &backend).await) }
            });

            // Keep-alive is hyper's default, and it is spelled out because tests rely on it.
            // The gateway accepts 100 header fields and adds its own forwarding fields, so the
            // mock takes more than hyper's default of 100: a request the gateway passes on must
            // not be rejected here.
            let result = http1::Builder::new()
                .keep_alive(true)
                .max_headers(MAX_HEADERS)
                .serve_connection(TokioIo::new(stream), service)
                .await;

            // A client that hangs up mid-request is normal for a test backend.
            if let Err(error) = result
                && !error.is_incomplete_message()
            {
                eprintln!(
                    "mockserver: {}: connection from {peer} failed: {error}",
                    backend.name()
                );
            }
        });
    }
}
