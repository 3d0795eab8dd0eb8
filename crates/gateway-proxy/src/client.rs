//! Backend connections: opened with a timeout, kept alive, pooled per backend, and driven by
//! the request task itself.
//!
//! Each worker keeps its own idle connections. Within a worker, each backend's idle
//! connections wait in a bounded lock-free queue, so checking one out or in takes no lock. A worker's runtime owns
//! the sockets opened on it (see [`crate::worker`]), so a connection is reused only by the
//! worker that opened it. A connection goes back only when its response was read to its end
//! and the backend allowed another request on it.
//!
//! A connection is a socket with a read buffer and a write queue. The request's task writes the
//! request and reads the response on it, with no task or channel of its own, so a proxied
//! request costs one task's work instead of two tasks handing messages to each other.

use crate::clock;
use crate::codec::{self, Parsed, RequestFraming, ResponseHead};
use crate::error::ProxyError;
use crate::request_body::RequestBody;
use crate::server::interim::{self, MAX_INTERIM_RESPONSES};
use crate::socket::BackendSocket;
use crate::worker;
use bytes::{Buf, Bytes, BytesMut};
use gateway_balancer::{Backend, InFlight};
use gateway_config::ProxyConfig;
use http::{HeaderMap, Method, StatusCode};
use http_body::Body;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

/// Size of a new connection's read buffer.
const READ_BUFFER: usize = 16 * 1024;
/// Largest the read buffer grows to while a body arrives faster than one buffer per read.
/// A slow client keeps its backend connection's buffer full, so this bounds what each slow
/// reader of a large response holds. At 64 KiB that is about 180 KiB per connection in all,
/// against about 800 KiB at 256 KiB, and downloads keep their speed.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Idle connections closed when a new connection fails for want of descriptors: one for the
/// request at hand and a few for the next, while most of the pools stay.
const SHORTAGE_RELEASE: usize = 8;

/// Time between two warnings about the gateway's own shortage of descriptors, memory or
/// local ports, in whole seconds of the coarse clock. Every request meanwhile fails the same
/// way.
const SHORTAGE_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Lets a warning through once per [`SHORTAGE_WARNING_EVERY`] at most, counted in whole
/// seconds of the coarse clock, and counts the ones it holds back.
#[derive(Debug, Default)]
struct WarningGate {
    /// The second of the last warning, plus one, so that 0 means no warning yet.
    last: AtomicU64,
    /// Warnings held back since the last one went out.
    held_back: AtomicU64,
}

impl WarningGate {
    /// Returns `Some(held back since the last one)` when a warning at `second` may go out.
    fn admit(&self, second: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || second + 1 >= last + SHORTAGE_WARNING_EVERY.as_secs();
        if !due
            || self
                .last
                .compare_exchange(last, second + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

/// Warns that a backend connection failed for want of the gateway's own resources, through
/// a [`WarningGate`]. The requests themselves show in the access lines.
fn warn_shortage(error: &io::Error) {
    static GATE: WarningGate = WarningGate {
        last: AtomicU64::new(0),
        held_back: AtomicU64::new(0),
    };
    // The gate compares only differences, so the seconds can count from the first shortage.
    static START: LazyLock<Instant> = LazyLock::new(clock::coarse_now);
    let second = clock::coarse_now()
        .saturating_duration_since(*START)
        .as_secs();
    if let Some(held_back) = GATE.admit(second) {
        tracing::warn!(
            %error,
            held_back,
            "no file descriptor, memory or local port left for a backend connection: requests \
             get 503 until one frees up"
        );
    }
}

#[derive(Debug)]
struct Idle {
    connection: Box<Connection>,
    /// The time the connection went idle, read as [`clock::now_for`] reads it for the idle
    /// timeout.
    since: tokio::time::Instant,
}

impl Idle {
    /// Returns whether the connection can carry a request: idle for less than `timeout`, with
    /// nothing arrived meanwhile.
    fn is_reusable(&mut self, timeout: Duration) -> bool {
        clock::now_for(timeout).saturating_duration_since(self.since) < timeout
            && self.connection.is_idle_and_open()
    }
}

/// Connection settings and idle connections, shared by every forwarder.
///
/// It is one pointer, cheap to clone and to move, because every response body keeps a clone.
#[derive(Clone)]
pub struct BackendClient {
    shared: Arc<Shared>,
}

struct Shared {
    connect_timeout: Duration,
    response_timeout: Duration,
    idle_timeout: Duration,
    /// Whether workers keep idle connections at all: false while pooling is off.
    pooling: bool,
    /// Idle connections of each worker, by worker index.
    workers: Box<[WorkerPools]>,
}

/// One worker's idle connections per backend id. A handful of backends is the norm, so a
/// vector scan beats hashing.
type WorkerPools = Vec<(u64, IdlePool)>;

/// One worker's idle connections to one backend, oldest first. Requests take the newest: after
/// a burst, the connections that stay busy are the few that were used last, whose memory is
/// still in the caches, and the rest reach the idle timeout and close. Taken first in, first out, every idle connection would be used in turn
/// and none would go.
///
/// Only the worker's own thread and the eviction task lock it, so the lock is not contended
/// on the request path.
#[derive(Debug)]
struct IdlePool {
    idle: Mutex<VecDeque<Idle>>,
    capacity: usize,
}

impl IdlePool {
    fn new(capacity: usize) -> IdlePool {
        IdlePool {
            idle: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        // A panic while the lock was held leaves a valid pool, at worst with fewer connections.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for BackendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendClient")
            .field("connect_timeout", &self.shared.connect_timeout)
            .field("response_timeout", &self.shared.response_timeout)
            .field("idle_timeout", &self.shared.idle_timeout)
            .field("workers", &self.shared.workers.len())
            .finish()
    }
}

/// A backend connection in use by one request, with the backend's in-flight count.
#[derive(Debug)]
pub struct Lease {
    in_flight: InFlight,
    client: BackendClient,
}

impl Lease {
    /// Records that the backend broke off or garbled the response body after its head, and
    /// logs it at most once a second for the backend.
    pub(crate) fn note_body_failure(&self, error: &dyn std::fmt::Display) {
        let backend = self.in_flight.backend();
        backend.record_body_failure(&format!("response body failed: {error}"));
        if let Some(unlogged) = backend.take_failure_report() {
            tracing::warn!(
                backend = %backend.url_text(),
                %error,
                unlogged,
                "response body from backend failed"
            );
        }
    }

    /// Ends the lease: `connection` returns to its backend's pool when given.
    pub(crate) fn finish(self, connection: Option<Box<Connection>>) {
        if let Some(connection) = connection {
            self.client
                .check_in(self.in_flight.backend().id(), connection);
        }
    }
}

impl BackendClient {
    /// Creates a client from the `proxy` section of the configuration, with a pool for each
    /// backend in `backend_ids` in each of `workers` workers (at least one). Connections to
    /// other backends are not kept.
    ///
    /// `pool_max_idle_per_backend` is shared out among the workers, rounded up so that each
    /// keeps at least one when it is above 0. The process then keeps up to the setting plus
    /// one less than the worker count: 4 with a setting of 1 or 3 and 4 workers.
    pub fn new(
        config: &ProxyConfig,
        backend_ids: impl IntoIterator<Item = u64>,
        workers: usize,
    ) -> BackendClient {
        let workers = workers.max(1);
        let capacity = config.pool_max_idle_per_backend.div_ceil(workers);
        let backend_ids: Vec<u64> = backend_ids.into_iter().collect();
        let pools = (0..workers)
            .map(|_| {
                backend_ids
                    .iter()
                    .filter(|_| capacity > 0)
                    .map(|&id| (id, IdlePool::new(capacity)))
                    .collect()
            })
            .collect();
        BackendClient {
            shared: Arc::new(Shared {
                connect_timeout: config.connect_timeout,
                response_timeout: config.response_timeout,
                idle_timeout: config.pool_idle_timeout,
                pooling: capacity > 0,
                workers: pools,
            }),
        }
    }

    /// Returns the calling worker's pool for `backend_id`. A thread marked with a worker index
    /// the client has no pools for gets none, so its connections are not kept.
    fn pool(&self, backend_id: u64) -> Option<&IdlePool> {
        self.shared
            .workers
            .get(worker::current())?
            .iter()
            .find(|(id, _)| *id == backend_id)
            .map(|(_, pool)| pool)
    }

    /// Returns whether workers keep idle connections, so that one can carry another request
    /// after its response. They do not while pooling is off. Decided once, when the client is
    /// made, so a request pays no pool lookup for it.
    pub(crate) fn keeps_idle(&self) -> bool {
        self.shared.pooling
    }

    /// Maximum wait for a backend's response head.
    pub fn response_timeout(&self) -> Duration {
        self.shared.response_timeout
    }

    /// Returns a connection to `backend`: an idle pooled one when the pool has a usable one,
    /// else a new one. The flag is true for a pooled connection.
    ///
    /// # Errors
    ///
    /// Returns a retry-safe [`ProxyError`] when connecting fails or times out.
    pub(crate) async fn connect(
        &self,
        backend: &Backend,
    ) -> Result<(Box<Connection>, bool), ProxyError> {
        if let Some(connection) = self.check_out(backend.id()) {
            return Ok((connection, true));
        }
        // Opening is the rare path and its future is large (the connect and its timer), so it
        // is boxed: the future of every exchange, pooled or not, stays small.
        Ok((Box::pin(self.open(backend)).await?, false))
    }

    /// Opens a new connection to `backend`.
    pub(crate) async fn open(&self, backend: &Backend) -> Result<Box<Connection>, ProxyError> {
        let timeout = self.shared.connect_timeout;
        let mut released = false;
        loop {
            match tokio::time::timeout(timeout, open_stream(backend)).await {
                // Boxed once, so that handing a connection around moves a pointer.
                Ok(Ok(stream)) => return Ok(Box::new(Connection::new(stream))),
                // Closing idle connections would not free a port: the side that closes first
                // keeps its port in TIME_WAIT for a minute.
                Ok(Err(error)) if is_local_port_shortage(&error) => {
                    warn_shortage(&error);
                    return Err(ProxyError::out_of_resources(error));
                }
                // Idle connections to other backends hold descriptors that a request needs
                // more. Closing some and trying once more keeps a busy pool from starving the
                // other routes. Nothing is awaited between the close and the new socket, so no
                // accept on this thread takes the descriptors first.
                Ok(Err(error)) if is_resource_shortage(&error) => {
                    if !released && self.close_idle(SHORTAGE_RELEASE) > 0 {
                        released = true;
                        continue;
                    }
                    // A shortage in the gateway itself is no fault of the backend, so it must
                    // not count toward the backend's unhealthy threshold.
                    warn_shortage(&error);
                    return Err(ProxyError::out_of_resources(error));
                }
                Ok(Err(error)) => return Err(ProxyError::connect(error)),
                Err(_) => return Err(ProxyError::connect_timeout(timeout)),
            }
        }
    }

    /// Wraps an exchange's in-flight count for the response body to hold.
    pub(crate) fn lease(&self, in_flight: InFlight) -> Lease {
        Lease {
            in_flight,
            client: self.clone(),
        }
    }

    /// Closes idle connections of every worker that outlived the idle timeout or that their
    /// backend closed, and returns how many were closed. The rest keep their order in the
    /// pool.
    pub fn evict_idle(&self) -> usize {
        let mut closed = 0;
        for (_, pool) in self.shared.workers.iter().flatten() {
            let mut idle = pool.lock();
            let before = idle.len();
            // Dropping a connection closes it.
            idle.retain_mut(|entry| entry.is_reusable(self.shared.idle_timeout));
            closed += before - idle.len();
        }
        closed
    }

    /// Closes up to `count` idle connections of any worker and backend, the longest idle of
    /// each pool first, and returns how many it closed.
    fn close_idle(&self, count: usize) -> usize {
        let mut closed = 0;
        for (_, pool) in self.shared.workers.iter().flatten() {
            while closed < count {
                let Some(entry) = pool.lock().pop_front() else {
                    break;
                };
                drop(entry);
                closed += 1;
            }
        }
        closed
    }

    /// Spawns a task that calls [`BackendClient::evict_idle`] every half idle timeout (between
    /// 1 and 10 seconds) until `shutdown` turns true.
    pub fn spawn_eviction(&self, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let client = self.clone();
        let every =
            (self.shared.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(10));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                if *shutdown.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    _ = ticker.tick() => {
                        let closed = client.evict_idle();
                        if closed > 0 {
                            tracing::debug!(closed, "closed idle backend connections");
                        }
                    }
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
        })
    }

    /// Takes the newest usable idle connection to `backend_id`. Connections found closed or
    /// too long idle on the way are closed.
    fn check_out(&self, backend_id: u64) -> Option<Box<Connection>> {
        let pool = self.pool(backend_id)?;
        loop {
            let mut entry = pool.lock().pop_back()?;
            if entry.is_reusable(self.shared.idle_timeout) {
                return Some(entry.connection);
            }
        }
    }

    fn check_in(&self, backend_id: u64, mut connection: Box<Connection>) {
        if let Some(pool) = self.pool(backend_id) {
            connection.release_memory();
            let entry = Idle {
                connection,
                since: clock::now_for(self.shared.idle_timeout),
            };
            let mut idle = pool.lock();
            // A full pool closes its oldest connection to keep the newest.
            let oldest = if idle.len() >= pool.capacity {
                idle.pop_front()
            } else {
                None
            };
            idle.push_back(entry);
            drop(idle);
            drop(oldest);
        }
    }
}

/// Returns whether `error` is this process's or the system's shortage of file descriptors
/// or memory, rather than a failure of the peer.
pub fn is_resource_shortage(error: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(error),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// Returns whether `error` is a connect's failure to find a free local port, as
/// [`connect_to`] marks it. The machine's ephemeral ports are then all in use, which is no
/// fault of the backend.
fn is_local_port_shortage(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<LocalPortShortage>())
}

/// The cause of a connect that found no free local port.
#[derive(Debug, thiserror::Error)]
#[error("no free local port: {0}")]
struct LocalPortShortage(io::Error);

/// Connects to `address`, and marks a failure for want of a local port with
/// [`LocalPortShortage`].
///
/// TCP's connect fails with `EADDRNOTAVAIL` both when every ephemeral port is taken and when
/// the machine has no source address for `address`, such as an IPv6 backend where IPv6 is
/// off. The second is the backend's fault, so the failure counts as a shortage only while a
/// route to `address` exists.
async fn connect_to(address: SocketAddr) -> io::Result<TcpStream> {
    match TcpStream::connect(address).await {
        Err(error) if error.kind() == io::ErrorKind::AddrNotAvailable && has_route(address) => Err(
            io::Error::new(io::ErrorKind::AddrNotAvailable, LocalPortShortage(error)),
        ),
        connected => connected,
    }
}

/// Returns whether the machine has a route and a source address for `address`. A UDP socket
/// connected to it sends nothing, and UDP's ports are counted apart from TCP's, so this is true
/// even while TCP's ephemeral ports are all taken.
fn has_route(address: SocketAddr) -> bool {
    let local = match address {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    std::net::UdpSocket::bind(local).is_ok_and(|socket| socket.connect(address).is_ok())
}

async fn open_stream(backend: &Backend) -> io::Result<BackendSocket> {
    let url = backend.url();
    let host = url.host().unwrap_or("localhost");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(80);

    let stream = match host.parse() {
        Ok(ip) => connect_to(SocketAddr::new(ip, port)).await,
        Err(_) => connect_by_name(host, port).await,
    }?;
    // Requests and responses are small writes that must leave at once.
    stream.set_nodelay(true)?;
    BackendSocket::new(stream)
}

// NOTE: a lookup that fails for want of memory (`EAI_MEMORY`) has no errno to tell it apart,
// so it counts against the backend like a name that does not resolve.
async fn connect_by_name(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last_error = None;
    for address in tokio::net::lookup_host((host, port)).await? {
        match connect_to(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no address found for {host}"),
        )
    }))
}

/// One HTTP/1.1 connection to a backend.
pub(crate) struct Connection {
    stream: BackendSocket,
    read: ReadBuffer,
    /// Buffer that response heads and small body chunks are copied into, reused from one
    /// response to the next (see [`codec::copy_to_store`]).
    copies: BytesMut,
    send: SendState,
    // The response timer, kept across requests. It is armed for the first request's deadline
    // and moved to the current one only when it fires early, so most requests touch the
    // runtime's timer wheel not at all.
    timer: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("buffered", &self.read.filled().len())
            .finish_non_exhaustive()
    }
}

/// A failed exchange on a connection.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// Reading or writing the socket failed, or the backend closed it. `silent` is true when
    /// the backend sent nothing at all before that.
    Io { error: io::Error, silent: bool },
    /// The backend's response head was malformed.
    Head(codec::HeadError),
    /// The client's request body failed.
    ClientBody(Box<dyn std::error::Error + Send + Sync>),
    /// The backend took no body bytes and sent no response head for a whole response
    /// timeout.
    Timeout,
    /// The client sent no body bytes for a whole response timeout.
    ClientTimeout,
}

impl Connection {
    fn new(stream: BackendSocket) -> Connection {
        Connection {
            stream,
            read: ReadBuffer::new(),
            copies: BytesMut::new(),
            send: SendState::new(),
            timer: None,
        }
    }

    /// Returns whether a pooled connection can carry a request: nothing arrived while it was
    /// idle. An end of stream, a reset or stray bytes all mark the socket readable.
    ///
    /// NOTE: a backend that breaks framing (for instance with a body after a HEAD response)
    /// can still send its stray bytes after this check. The next response on the connection
    /// is then misread. Pooling HTTP/1.1 clients share this limit.
    fn is_idle_and_open(&mut self) -> bool {
        // Readiness is cleared when a read drains the socket, so without a system call this shows
        // whether anything happened since the last response was read.
        self.read.filled().is_empty() && self.stream.is_quiet()
    }

    /// Writes a request head into the send queue; [`Connection::exchange`] sends it.
    pub(crate) fn head_buffer(&mut self) -> &mut Vec<u8> {
        self.send.reset();
        &mut self.send.head
    }

    /// Sends the queued head and `body`, framed as `framing`, and waits for the final
    /// response head. Returns the head and whether the whole request was sent.
    ///
    /// The first [`MAX_INTERIM_RESPONSES`] interim responses are offered to the client as
    /// they arrive (see [`interim::offer`]), except `100 Continue`. That one responds to the
    /// client's `Expect` only on the backend's hop, and the server sends the client its own
    /// when the body is first read. Later interim responses are read and dropped.
    ///
    /// The wait ends after `timeout` without progress: no body bytes from the client, none
    /// written to the backend, no interim response and no final response head. Whose fault that is depends on what the
    /// exchange was waiting for: the client's next body bytes give
    /// [`ExchangeError::ClientTimeout`], anything else (a backend that does not read the body
    /// or does not respond) gives [`ExchangeError::Timeout`].
    pub(crate) async fn exchange(
        &mut self,
        body: &mut RequestBody,
        framing: RequestFraming,
        method: &Method,
        timeout: Duration,
    ) -> Result<(ResponseHead, bool), ExchangeError> {
        self.send.chunked = framing == RequestFraming::Chunked;
        self.send.body_done = matches!(framing, RequestFraming::Empty | RequestFraming::Length(0));
        // Set after the head is written, then moved by every body byte either way.
        let mut last_progress = None;
        let mut write_error: Option<io::Error> = None;
        let mut received = false;
        let mut interim = Interim::default();
        std::future::poll_fn(|cx| {
            if write_error.is_none() && !self.send.finished() {
                match self.poll_send(cx, body) {
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                    Poll::Ready(Err(SendError::Body(error))) => {
                        return Poll::Ready(Err(ExchangeError::ClientBody(error)));
                    }
                    // The backend may still have sent a response, for instance to reject the body.
                    Poll::Ready(Err(SendError::Io(error))) => write_error = Some(error),
                }
                if std::mem::take(&mut self.send.progressed) || last_progress.is_none() {
                    last_progress = Some(clock::now_for(timeout));
                }
            }
            let head = self.poll_head(cx, method, &mut received, &mut interim);
            // An interim response (`102 Processing`, say) shows that the backend is working
            // on the request, so it starts the wait again, as a read restarts NGINX's
            // `proxy_read_timeout`. Not while the body waits on a client that stopped sending
            // it, which the backend's progress does not excuse.
            if std::mem::take(&mut interim.restart) && !self.waits_on_client(write_error.is_some())
            {
                last_progress = Some(clock::now_for(timeout));
            }
            match head {
                Poll::Ready(Ok(head)) => return Poll::Ready(Ok((head, self.send.finished()))),
                Poll::Ready(Err(ExchangeError::Io { error, silent })) => {
                    return Poll::Ready(Err(ExchangeError::Io {
                        error: write_error.take().unwrap_or(error),
                        silent,
                    }));
                }
                Poll::Ready(Err(other)) => return Poll::Ready(Err(other)),
                Poll::Pending => {}
            }
            let since = *last_progress.get_or_insert_with(|| clock::now_for(timeout));
            ready!(self.poll_timer(cx, since + timeout));
            Poll::Ready(Err(if self.waits_on_client(write_error.is_some()) {
                ExchangeError::ClientTimeout
            } else {
                ExchangeError::Timeout
            }))
        })
        .await
    }

    /// Returns whether sending the request waits on the client's next body bytes, with
    /// `write_failed` set when a write to the backend has failed.
    fn waits_on_client(&self, write_failed: bool) -> bool {
        !write_failed && !self.send.finished() && self.send.waiting_for_client
    }

    /// Polls the response timer for `deadline`; ready once the deadline has passed.
    fn poll_timer(&mut self, cx: &mut Context<'_>, deadline: tokio::time::Instant) -> Poll<()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            // Armed for an earlier request: move it to this one's deadline.
            timer.as_mut().reset(deadline);
        }
    }

    /// Sends what is queued, then the body's frames as they come. Ready once the whole request
    /// was written.
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut RequestBody,
    ) -> Poll<Result<(), SendError>> {
        loop {
            self.send.waiting_for_client = false;
            ready!(self.send.poll_flush(&self.stream, cx)).map_err(SendError::Io)?;
            if self.send.body_done {
                return Poll::Ready(Ok(()));
            }
            self.send.waiting_for_client = true;
            let frame = match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                None => {
                    self.send.end_body(None);
                    continue;
                }
                Some(Err(error)) => return Poll::Ready(Err(SendError::Body(error.into()))),
                Some(Ok(frame)) => frame,
            };
            self.send.progressed = true;
            match frame.into_data() {
                Ok(data) => self.send.queue_data(data),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.send.end_body(Some(&trailers));
                    }
                }
            }
        }
    }

    /// Reads until a final response head is complete. Interim responses on the way are
    /// counted in `interim`, and offered to the client while they are within the count that
    /// [`MAX_INTERIM_RESPONSES`] allows.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
        received: &mut bool,
        interim: &mut Interim,
    ) -> Poll<Result<ResponseHead, ExchangeError>> {
        loop {
            if !self.read.filled().is_empty() {
                match codec::parse_response_head(self.read.filled(), method, &mut self.copies) {
                    Ok(Parsed::Partial) => {}
                    Ok(Parsed::Interim(len, status)) => {
                        interim.restart = true;
                        if interim.count < MAX_INTERIM_RESPONSES {
                            interim.count += 1;
                            if status != StatusCode::CONTINUE && interim::is_open() {
                                offer_interim(&self.read.filled()[..len]);
                            }
                        }
                        self.read.consume(len);
                        continue;
                    }
                    Ok(Parsed::Head(len, head)) => {
                        self.read.consume(len);
                        return Poll::Ready(Ok(head));
                    }
                    Err(error) => return Poll::Ready(Err(ExchangeError::Head(error))),
                }
            }
            let silent = !*received;
            match ready!(self.read.poll_fill(&self.stream, cx)) {
                Ok(0) => {
                    return Poll::Ready(Err(ExchangeError::Io {
                        error: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "backend closed the connection before a complete response head",
                        ),
                        silent,
                    }));
                }
                Ok(_) => *received = true,
                Err(error) => return Poll::Ready(Err(ExchangeError::Io { error, silent })),
            }
        }
    }

    /// Shrinks buffers that a large head or a fast body grew, before the connection idles.
    fn release_memory(&mut self) {
        if self.read.buf.len() > READ_BUFFER {
            self.read.buf.truncate(READ_BUFFER);
            self.read.buf.shrink_to_fit();
        }
        if self.send.head.capacity() > READ_BUFFER {
            self.send.head = Vec::with_capacity(512);
        }
        self.send.data = Bytes::new();
    }

    /// Returns the bytes read but not yet consumed.
    pub(crate) fn buffered(&self) -> &[u8] {
        self.read.filled()
    }

    /// Marks `len` buffered bytes as consumed.
    pub(crate) fn consume(&mut self, len: usize) {
        self.read.consume(len);
    }

    /// Takes `len` buffered bytes as body data.
    pub(crate) fn take(&mut self, len: usize) -> Bytes {
        let data = self.copy(0..len);
        self.read.consume(len);
        data
    }

    /// Copies `range` of the buffered bytes out as body data, through the connection's copy
    /// store (see [`codec::copy_to_store`]).
    pub(crate) fn copy(&mut self, range: Range<usize>) -> Bytes {
        codec::copy_to_store(&mut self.copies, &self.read.filled()[range])
    }

    /// Reads more bytes into the buffer; `Ok(0)` means the backend closed the connection.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.poll_fill(&self.stream, cx)
    }
}

/// The interim responses of one exchange.
#[derive(Debug, Default)]
struct Interim {
    /// Interim responses counted toward [`MAX_INTERIM_RESPONSES`].
    count: usize,
    /// Set when one of them arrived since the flag was last taken, to restart the wait.
    restart: bool,
}

/// Offers the interim response at the start of `head` to the client. One whose fields a
/// header map does not take is dropped, as every interim response was before the gateway
/// forwarded them, rather than failing the exchange.
#[cold]
fn offer_interim(head: &[u8]) {
    match codec::parse_interim_head(head) {
        Ok((status, headers)) => {
            interim::offer(status, &headers);
        }
        Err(error) => tracing::debug!(%error, "dropped an interim response from a backend"),
    }
}

/// A failure while sending a request.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Writing to the backend failed.
    Io(io::Error),
    /// The client's body failed.
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// The unsent part of a request: head or framing bytes, then body data, then a fixed suffix
/// (the CRLF after a chunk).
struct SendState {
    head: Vec<u8>,
    head_sent: usize,
    data: Bytes,
    suffix: &'static [u8],
    chunked: bool,
    body_done: bool,
    // Set when body bytes arrived or were written since the flag was last taken.
    progressed: bool,
    // Whether sending last stopped for the client's next body bytes rather than for the
    // backend to take more.
    waiting_for_client: bool,
}

impl SendState {
    fn new() -> SendState {
        SendState {
            head: Vec::with_capacity(512),
            head_sent: 0,
            data: Bytes::new(),
            suffix: b"",
            chunked: false,
            body_done: true,
            progressed: false,
            waiting_for_client: false,
        }
    }

    fn reset(&mut self) {
        self.head.clear();
        self.head_sent = 0;
        self.data = Bytes::new();
        self.suffix = b"";
    }

    fn is_flushed(&self) -> bool {
        self.head_sent == self.head.len() && self.data.is_empty() && self.suffix.is_empty()
    }

    fn finished(&self) -> bool {
        self.body_done && self.is_flushed()
    }

    fn queue_data(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.head.clear();
        self.head_sent = 0;
        if self.chunked {
            // `io::Write` for a Vec only appends, so it returns no error.
            let _ = io::Write::write_fmt(&mut self.head, format_args!("{:x}\r\n", data.len()));
            self.suffix = b"\r\n";
        }
        self.data = data;
    }

    fn end_body(&mut self, trailers: Option<&HeaderMap>) {
        self.body_done = true;
        if !self.chunked {
            return;
        }
        self.head.clear();
        self.head_sent = 0;
        self.head.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.into_iter().flatten() {
            self.head.extend_from_slice(name.as_str().as_bytes());
            self.head.extend_from_slice(b": ");
            self.head.extend_from_slice(value.as_bytes());
            self.head.extend_from_slice(b"\r\n");
        }
        self.head.extend_from_slice(b"\r\n");
    }

    fn poll_flush(&mut self, stream: &BackendSocket, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.is_flushed() {
            let slices = [
                IoSlice::new(&self.head[self.head_sent..]),
                IoSlice::new(&self.data),
                IoSlice::new(self.suffix),
            ];
            let mut written = ready!(stream.poll_write_vectored(cx, &slices))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.progressed = true;
            let from_head = written.min(self.head.len() - self.head_sent);
            self.head_sent += from_head;
            written -= from_head;
            let from_data = written.min(self.data.len());
            self.data.advance(from_data);
            written -= from_data;
            self.suffix = &self.suffix[written..];
        }
        Poll::Ready(Ok(()))
    }
}

/// A connection's read buffer: bytes at `start..end` were read and not yet consumed.
struct ReadBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    fn new() -> ReadBuffer {
        ReadBuffer {
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, len: usize) {
        self.start += len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn poll_fill(
        &mut self,
        stream: &BackendSocket,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // A head or a chunk line longer than the buffer: grow, up to the head limit
                // (a longer head fails to parse before this).
                let grown = (self.buf.len() * 2).min(codec::MAX_HEAD_BYTES.max(MAX_READ_BUFFER));
                if grown == self.buf.len() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "read buffer full",
                    )));
                }
                self.buf.resize(grown, 0);
            }
        }
        let len = ready!(stream.poll_recv(cx, &mut self.buf[self.end..]))?;
        // A read that fills the buffer suggests a fast body; a larger buffer takes it in
        // fewer reads.
        if len > 0 && self.end + len == self.buf.len() && self.buf.len() < MAX_READ_BUFFER {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        self.end += len;
        Poll::Ready(Ok(len))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::net::TcpListener;

    /// Opens a connection to `listener` and returns it with the accepted end.
    async fn connection(listener: &TcpListener) -> (Box<Connection>, TcpStream) {
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (connected, accepted) = tokio::join!(connect, listener.accept());
        let socket = BackendSocket::new(connected.unwrap()).unwrap();
        (Box::new(Connection::new(socket)), accepted.unwrap().0)
    }

    fn client(max_idle: usize, workers: usize) -> BackendClient {
        let config = ProxyConfig {
            pool_max_idle_per_backend: max_idle,
            ..ProxyConfig::default()
        };
        BackendClient::new(&config, [7], workers)
    }

    #[tokio::test]
    async fn reuse_stays_within_worker() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = client(4, 2);
        let (returned, _peer) = connection(&listener).await;

        worker::enter(1);
        client.check_in(7, returned);
        worker::enter(0);
        assert!(
            client.check_out(7).is_none(),
            "worker 0 took worker 1's connection"
        );
        worker::enter(1);
        assert!(
            client.check_out(7).is_some(),
            "worker 1 lost its connection"
        );
        worker::enter(0);
    }

    /// Returns `count` connections to `listener` into `client`'s pool for backend 7, with
    /// the accepted ends and the pooled connections' local addresses, in the order returned.
    async fn fill_pool(
        client: &BackendClient,
        listener: &TcpListener,
        count: usize,
    ) -> (Vec<TcpStream>, Vec<SocketAddr>) {
        let mut peers = Vec::new();
        let mut returned = Vec::new();
        for _ in 0..count {
            let (connection, peer) = connection(listener).await;
            peers.push(peer);
            returned.push(connection.stream.local_addr().unwrap());
            client.check_in(7, connection);
        }
        (peers, returned)
    }

    /// Returns the local address of the connection that `client` hands out next.
    fn next_out(client: &BackendClient) -> Option<SocketAddr> {
        client
            .check_out(7)
            .map(|connection| connection.stream.local_addr().unwrap())
    }

    /// The newest idle connection is taken first, so after a burst the ones that stay busy
    /// are the few used last, and the rest are left to the idle timeout.
    #[tokio::test]
    async fn newest_idle_connection_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = client(4, 1);
        let (_peers, returned) = fill_pool(&client, &listener, 3).await;

        assert_eq!(next_out(&client), Some(returned[2]));
        assert_eq!(next_out(&client), Some(returned[1]));
        assert_eq!(next_out(&client), Some(returned[0]));
        assert_eq!(next_out(&client), None);
    }

    /// A full pool keeps the connection just returned and closes its oldest.
    #[tokio::test]
    async fn full_pool_closes_oldest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = client(2, 1);
        let (_peers, returned) = fill_pool(&client, &listener, 3).await;

        assert_eq!(next_out(&client), Some(returned[2]));
        assert_eq!(next_out(&client), Some(returned[1]));
        assert_eq!(next_out(&client), None);
    }

    #[tokio::test]
    async fn unknown_worker_keeps_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = client(4, 2);
        let (returned, _peer) = connection(&listener).await;

        worker::enter(2);
        client.check_in(7, returned);
        assert!(client.check_out(7).is_none());
        worker::enter(0);
    }

    #[tokio::test]
    async fn idle_limit_split_among_workers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Three idle connections per backend over two workers: two for each.
        let client = client(3, 2);
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (returned, peer) = connection(&listener).await;
            peers.push(peer);
            client.check_in(7, returned);
        }
        assert!(client.check_out(7).is_some());
        assert!(client.check_out(7).is_some());
        assert!(
            client.check_out(7).is_none(),
            "worker 0 kept more than its share"
        );
    }

    #[test]
    fn local_port_shortage_classified() {
        use rustix::io::Errno;
        let raw = || io::Error::from_raw_os_error(Errno::ADDRNOTAVAIL.raw_os_error());
        let ports = io::Error::new(io::ErrorKind::AddrNotAvailable, LocalPortShortage(raw()));
        assert!(is_local_port_shortage(&ports));
        // Without the route check's mark, the same errno is the backend's address.
        assert!(!is_local_port_shortage(&raw()));
        // A listener's bind fails the same way for an address the machine does not have, so
        // the bind's descriptor message must not claim it.
        assert!(!is_resource_shortage(&raw()));
        let descriptors = io::Error::from_raw_os_error(Errno::MFILE.raw_os_error());
        assert!(is_resource_shortage(&descriptors));
        assert!(!is_local_port_shortage(&descriptors));
    }

    #[test]
    fn shortage_warnings_spaced_out() {
        let gate = WarningGate::default();
        assert_eq!(gate.admit(5), Some(0));
        assert_eq!(gate.admit(5), None);
        assert_eq!(gate.admit(14), None);
        assert_eq!(gate.admit(15), Some(2));
        assert_eq!(gate.admit(16), None);
        assert_eq!(gate.admit(25), Some(1));
    }

    #[test]
    fn route_found_for_loopback_only() {
        assert!(has_route("127.0.0.1:9".parse().unwrap()));
        // A broadcast address has no route for a socket that did not ask for broadcasts.
        assert!(!has_route("255.255.255.255:9".parse().unwrap()));
    }

    #[tokio::test]
    async fn shortage_closes_idle_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = ProxyConfig::default();
        let client = BackendClient::new(&config, [7, 8], 2);
        let mut peers = Vec::new();
        for (worker, backend) in [(0, 7), (0, 8), (1, 8)] {
            let (returned, peer) = connection(&listener).await;
            peers.push(peer);
            worker::enter(worker);
            client.check_in(backend, returned);
        }
        worker::enter(0);

        assert_eq!(client.close_idle(2), 2);
        assert_eq!(client.close_idle(8), 1);
        assert_eq!(client.close_idle(8), 0);
    }

    const OK_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

    /// Sends a GET on `connection` and polls the exchange as the server polls a request,
    /// with interim responses taken. Returns the result and what was offered to the client.
    async fn exchange_collecting(
        connection: &mut Connection,
        timeout: Duration,
    ) -> (Result<(ResponseHead, bool), ExchangeError>, String) {
        connection
            .head_buffer()
            .extend_from_slice(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        let mut body = RequestBody::new(crate::server::Inbound::empty(), None);
        let exchange = connection.exchange(&mut body, RequestFraming::Empty, &Method::GET, timeout);
        let mut exchange = std::pin::pin!(exchange);
        let mut offered = Vec::new();
        let result = std::future::poll_fn(|cx| {
            let (polled, taken) = interim::collect(|| exchange.as_mut().poll(cx));
            offered.extend(taken.unwrap_or_default());
            polled
        })
        .await;
        (result, String::from_utf8(offered).unwrap())
    }

    #[tokio::test]
    async fn interim_responses_offered_up_to_cap() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut connection, mut backend) = connection(&listener).await;
        let mut sent = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        for i in 0..MAX_INTERIM_RESPONSES + 2 {
            sent.extend_from_slice(
                format!("HTTP/1.1 103 Early Hints\r\nlink: </{i}>\r\n\r\n").as_bytes(),
            );
        }
        sent.extend_from_slice(OK_HEAD);
        backend.write_all(&sent).await.unwrap();

        let (result, offered) = exchange_collecting(&mut connection, Duration::from_secs(5)).await;
        assert_eq!(result.unwrap().0.status, StatusCode::OK);
        // The 100 counts toward the cap but is never offered.
        assert!(!offered.contains("100 Continue"), "{offered}");
        assert_eq!(
            offered.matches("HTTP/1.1 103 Early Hints\r\n").count(),
            MAX_INTERIM_RESPONSES - 1,
            "{offered}"
        );
        assert!(offered.starts_with("HTTP/1.1 103 Early Hints\r\nlink: </0>\r\n\r\n"));
        assert!(!offered.contains(&format!("</{}>", MAX_INTERIM_RESPONSES - 1)));
    }

    /// Interim responses past the cap are not offered but still restart the response
    /// timeout, so a backend that keeps reporting progress is not cut off.
    #[tokio::test]
    async fn interim_responses_past_cap_restart_timeout() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut connection, mut backend) = connection(&listener).await;
        // Under 100 ms, so that the wait reads the precise clock.
        let timeout = Duration::from_millis(95);
        let backend = tokio::spawn(async move {
            // One every 10 ms, 400 ms in all: four response timeouts, and 40 interim
            // responses, four times the cap.
            for _ in 0..40 {
                backend
                    .write_all(b"HTTP/1.1 102 Processing\r\n\r\n")
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            backend.write_all(OK_HEAD).await.unwrap();
            backend
        });

        let (result, offered) = exchange_collecting(&mut connection, timeout).await;
        assert_eq!(result.unwrap().0.status, StatusCode::OK);
        assert_eq!(
            offered.matches("HTTP/1.1 102 Processing\r\n\r\n").count(),
            MAX_INTERIM_RESPONSES
        );
        drop(backend.await.unwrap());
    }

    #[tokio::test]
    async fn eviction_covers_every_worker() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = client(4, 2);
        let (closed, closed_peer) = connection(&listener).await;
        let (open, _open_peer) = connection(&listener).await;
        worker::enter(1);
        client.check_in(7, closed);
        client.check_in(7, open);
        worker::enter(0);

        // The runtime's driver has to see the end of stream before the pool can.
        drop(closed_peer);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(client.evict_idle(), 1);

        worker::enter(1);
        assert!(
            client.check_out(7).is_some(),
            "the open connection was evicted"
        );
        assert!(client.check_out(7).is_none());
        worker::enter(0);
    }
}
