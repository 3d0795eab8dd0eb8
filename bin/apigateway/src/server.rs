//! The listener: accepts connections, serves HTTP/1.1 on each, and drains on shutdown.

use crate::access::AccessHook;
use crate::access_line::AccessLines;
use crate::app::{Gateway, RequestLogState};
use crate::deadline::{ClientStream, ConnectionDeadline, DeadlineBody, Phase};
pub use crate::router::Router;
use crate::shed::{Ended, IdleShed, deadline_or_shed};
use gateway_middleware::catch_panic::{CatchPanic, CatchPanicLayer};
use gateway_middleware::client_ip::ClientIp;
use gateway_middleware::request_id::{RequestId, RequestIdLayer};
use gateway_middleware::timing::{RequestHook, TimedBody, Timing, TimingLayer};
use gateway_proxy::ProxyBody;
use gateway_proxy::server::{Inbound, Rejection, ServerSettings, serve_connection};
use gateway_store::{LogReader, RequestLog, WriterHandle};
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::layer::util::Identity;
use tower::{Layer, Service};

/// Largest request head accepted. A larger one gets 431 Request Header Fields Too Large, or
/// 414 URI Too Long when its request line alone is larger.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How often idle rate-limit buckets are evicted. Buckets of clients that sent a request
/// since the last eviction stay until the next, so this bounds the memory a flood of new
/// client addresses can take (about 260 bytes each). A bucket can go once it is full again,
/// `(burst + 1) / requests_per_second` seconds after its client's last request (half a
/// second with the defaults), so a short interval evicts most of a flood's.
const EVICTION_INTERVAL: Duration = Duration::from_secs(10);

type Stack<S> = RequestId<Timing<CatchPanic<S>, AccessHook>>;
type StackBody = TimedBody<ProxyBody, AccessHook>;

/// The service that the layer given to [`serve_with`] must produce around the router.
pub trait InnerService:
    Service<
        Request<Inbound>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> InnerService for S where
    S: Service<
            Request<Inbound>,
            Response = Response<ProxyBody>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Maximum time a stop waits for buffered access lines to reach stdout, so that an unread
/// stdout cannot keep the gateway from exiting.
pub const ACCESS_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The outcome of a server run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOutcome {
    /// Requests in flight when the shutdown deadline passed, cut off. 0 after a clean drain,
    /// also when the connections left open had only part of a request head.
    pub cut_off: usize,
    /// Request log rows lost at the stop: still queued when the stop's time for committing
    /// them ran out, or in a batch that failed once the stop had begun.
    pub lost_rows: u64,
}

impl ServeOutcome {
    /// Returns whether every in-flight request finished before the deadline and the request
    /// log committed every row queued at the stop.
    pub fn is_clean(&self) -> bool {
        self.cut_off == 0 && self.lost_rows == 0
    }
}

/// A failure of the server itself.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reading the listener's own address failed.
    #[error("failed to read the listener address")]
    LocalAddr(#[source] std::io::Error),

    /// The request log database could not be opened.
    #[error("failed to open the request log")]
    RequestLog(#[from] gateway_store::StoreError),

    /// A listener could not be registered with its worker's runtime.
    #[error("failed to set up a listener")]
    Listener(#[source] std::io::Error),

    /// A worker's runtime could not be built.
    #[error("failed to start a worker's runtime")]
    Runtime(#[source] std::io::Error),

    /// A worker thread could not be started.
    #[error("failed to start a worker thread")]
    Thread(#[source] std::io::Error),
}

/// Serves `gateway` on `listener` until `shutdown` resolves, then drains, as one worker on the
/// calling runtime.
///
/// Draining stops accepting (new connections are refused), reports `/health` as 503, closes
/// idle keep-alive connections, sends `Connection: close` on the responses of in-flight
/// requests and waits for them up to `server.shutdown_timeout`.
///
/// # Errors
///
/// Returns [`ServeError`] when the listener is unusable.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> Result<ServeOutcome, ServeError> {
    serve_with(listener, gateway, Identity::new(), shutdown).await
}

/// Serves like [`serve`] with one worker per listener in `listeners` (at least one): the
/// first on the calling runtime, each other on a thread of its own with a single-threaded
/// runtime. A worker serves the connections its listener accepts from start to end, with its
/// own backend pools, so no request moves between threads.
///
/// The listeners share one port (see `listen::bind`), and the kernel spreads new connections
/// over them.
///
/// # Errors
///
/// Returns [`ServeError`] when a listener is unusable or a worker cannot start.
pub async fn serve_workers(
    listeners: Vec<std::net::TcpListener>,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> Result<ServeOutcome, ServeError> {
    let mut listeners = listeners.into_iter();
    let first = listeners
        .next()
        .ok_or_else(|| ServeError::Listener(std::io::Error::other("no listener to serve")))?;
    let first = TcpListener::from_std(first).map_err(ServeError::Listener)?;
    serve_on(
        first,
        listeners.collect(),
        gateway,
        Identity::new(),
        shutdown,
    )
    .await
}

/// Serves like [`serve`] with `layer` wrapped around the router, inside panic catching and
/// timing, so that tests can add behaviour (such as a handler that panics) to a real server.
///
/// # Errors
///
/// Returns [`ServeError`] when the listener is unusable.
pub async fn serve_with<L>(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    layer: L,
    shutdown: impl Future<Output = ()>,
) -> Result<ServeOutcome, ServeError>
where
    L: Layer<Router>,
    L::Service: InnerService,
{
    serve_on(listener, Vec::new(), gateway, layer, shutdown).await
}

/// Serves `first` on the calling runtime and each of `others` on a worker thread, and runs
/// the start and the stop that the workers share: the request log, the background tasks,
/// the drain and its deadline.
async fn serve_on<L>(
    first: TcpListener,
    others: Vec<std::net::TcpListener>,
    gateway: Arc<Gateway>,
    layer: L,
    shutdown: impl Future<Output = ()>,
) -> Result<ServeOutcome, ServeError>
where
    L: Layer<Router>,
    L::Service: InnerService,
{
    let address = first.local_addr().map_err(ServeError::LocalAddr)?;
    let shutdown_timeout = gateway.config.server.shutdown_timeout;

    // Each worker's runtime is built and its listener registered with it before anything
    // starts, so that a failure stops the start instead of leaving a worker missing.
    let mut runtimes = Vec::with_capacity(others.len());
    for listener in others {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ServeError::Runtime)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)
        };
        let runtime = WorkerRuntime(Some(runtime));
        runtimes.push((runtime, listener.map_err(ServeError::Listener)?));
    }

    // The request log opens before the first connection, so that a bad database path stops
    // the start instead of losing rows.
    let writer = if gateway.config.request_log.enabled {
        let (state, writer) =
            open_request_log(&gateway.config.request_log, shutdown_timeout).await?;
        let _ = gateway.request_log.set(state);
        Some(writer)
    } else {
        None
    };
    let request_log = gateway.request_log.get().map(|state| state.log.clone());
    let workers = runtimes.len() + 1;
    let hook = AccessHook::new(
        gateway.access_lines.clone(),
        request_log,
        Arc::clone(&gateway.table),
    );
    let router = layer.layer(Router::new(Arc::clone(&gateway)));
    // The gateway's server polls each response body once more after its last byte, so the
    // access line and the request log call a response complete only once it is written.
    let timing = TimingLayer::new(hook.clone()).with_confirmed_writes();
    let stack: Stack<L::Service> =
        RequestIdLayer.layer(timing.layer(CatchPanicLayer.layer(router)));

    // Background tasks stop when this flips to true, after the connections drained.
    let (stop_tasks, tasks_stopped) = tokio::sync::watch::channel(false);
    let health = gateway_health::spawn(gateway.table.backends().to_vec(), tasks_stopped.clone());
    for limiter in &gateway.limiters {
        limiter.spawn_eviction(EVICTION_INTERVAL, tasks_stopped.clone());
    }
    gateway.client.spawn_eviction(tasks_stopped.clone());

    // `drain` turns true at the drain: workers stop accepting, idle connections close, and
    // responses in progress close theirs when they end. `cut_off` turns true at the drain's
    // deadline: workers end the connections still open.
    let (start_drain, drain) = tokio::sync::watch::channel(false);
    let (start_cut_off, cut_off) = tokio::sync::watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let sheds: Arc<[Arc<IdleShed>]> = (0..workers).map(|_| Arc::default()).collect();
    let registries: Vec<Arc<OpenDeadlines>> = (0..workers).map(|_| Arc::default()).collect();
    let worker = Worker {
        stack,
        gateway: Arc::clone(&gateway),
        settings: ServerSettings {
            max_head_bytes: MAX_HEADER_BYTES,
            // Only the timing layer's report waits for the confirmation.
            confirm_writes: hook.is_active(),
        },
        drain,
        cut_off,
        open: Arc::clone(&open),
        shed: Arc::clone(&sheds[0]),
        sheds: Arc::clone(&sheds),
        deadlines: Arc::clone(&registries[0]),
        rejections: Arc::new(Rejections {
            hook: hook.clone(),
            gateway: Arc::clone(&gateway),
        }),
    };

    // A worker that ends sends on its channel. One that panicked drops it.
    let mut finished = Vec::with_capacity(runtimes.len());
    for (index, (runtime, listener)) in (1..).zip(runtimes) {
        let mut worker = worker.clone();
        worker.shed = Arc::clone(&sheds[index]);
        worker.deadlines = Arc::clone(&registries[index]);
        let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                gateway_proxy::worker::enter(index);
                let mut runtime = runtime;
                if let Some(runtime) = runtime.0.take() {
                    runtime.block_on(worker.run(listener));
                    // A blocking task still running (an admin query) gets the flush's bound.
                    runtime.shutdown_timeout(ACCESS_FLUSH_TIMEOUT);
                }
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => finished.push((index, finished_rx)),
            Err(error) => {
                // The workers started so far see the drain when `start_drain` is dropped.
                return Err(ServeError::Thread(error));
            }
        }
    }
    // Said once every worker has its thread, and read by scripts as the sign of readiness.
    tracing::info!(
        %address,
        routes = gateway.table.routes().len(),
        workers,
        "listening"
    );
    let workers = async move {
        worker.run(first).await;
        for (index, finished) in finished {
            if finished.await.is_err() {
                tracing::error!(worker = index, "worker thread failed: it ended by a panic");
            }
        }
    };
    tokio::pin!(workers);
    tokio::pin!(shutdown);

    // The workers serve until the stop signal; they end only after a drain.
    tokio::select! {
        () = &mut shutdown => {}
        () = &mut workers => {}
    }

    gateway.start_draining();
    let _ = start_drain.send(true);
    // Batches that fail from here on lose rows at the stop, as rows still queued at its end do.
    let failed_before_stop = gateway.request_log_losses().map_or(0, |(_, failed)| failed);
    tracing::info!(
        connections = open.load(Ordering::Relaxed),
        timeout = ?shutdown_timeout,
        "draining"
    );

    // The drain ends when every connection closed, at the deadline, or at a second stop
    // signal.
    let mut stop_now = gateway.stop_now.requested.subscribe();
    let drained = tokio::select! {
        drained = tokio::time::timeout(shutdown_timeout, &mut workers) => {
            if drained.is_err() {
                tracing::warn!(
                    connections = open.load(Ordering::Relaxed),
                    timeout = ?shutdown_timeout,
                    "shutdown timeout passed, cutting off in-flight requests"
                );
            }
            drained.is_ok()
        }
        _ = stop_now.wait_for(|requested| *requested) => {
            tracing::warn!(
                connections = open.load(Ordering::Relaxed),
                "cutting off in-flight requests at the second stop signal"
            );
            false
        }
    };
    let mut outcome = if drained {
        tracing::info!("drained");
        ServeOutcome {
            cut_off: 0,
            lost_rows: 0,
        }
    } else {
        // Connections whose client sent part of a head and stopped are closed too, but they
        // had no request to cut off.
        let cut_off = registries
            .iter()
            .map(|registry| registry.requests_in_flight())
            .sum();
        // Ending the tasks drops their requests, which then report to the access line and
        // the request log as cut off by the stop.
        hook.mark_stopped();
        let _ = start_cut_off.send(true);
        workers.await;
        ServeOutcome {
            cut_off,
            lost_rows: 0,
        }
    };
    gateway.stop_now.done.notify_one();

    let _ = stop_tasks.send(true);
    health.join().await;

    // The admin readers close before the writer. SQLite folds the write-ahead log into the
    // database and deletes it when the last connection closes, which a read-only connection
    // cannot do, so a reader left open would leave the `-wal` and `-shm` files behind.
    if let Some(state) = gateway.request_log.get() {
        state.reader.close().await;
    }

    // Every request that finished has queued its row by now. The writer commits them, for at
    // most `server.shutdown_timeout`.
    if let Some(writer) = writer {
        let queued = gateway.queued_request_log_rows();
        if queued > 0 {
            tracing::info!(
                rows = queued,
                timeout = ?shutdown_timeout,
                "waiting for the request log to commit queued rows"
            );
        }
        let summary = writer.shutdown().await;
        if let Ok(summary) = &summary {
            let failed_in_stop = summary.failed.saturating_sub(failed_before_stop);
            outcome.lost_rows = summary.unwritten.saturating_add(failed_in_stop);
        }
        match summary {
            Ok(summary) if summary.unwritten > 0 => tracing::warn!(
                written = summary.written,
                dropped = summary.dropped,
                failed = summary.failed,
                unwritten = summary.unwritten,
                timeout = ?shutdown_timeout,
                "request log closed with rows lost: `unwritten` rows were still queued when \
                 the shutdown timeout passed, `failed` rows were in batches that did not \
                 commit, `dropped` rows found the queue full"
            ),
            Ok(summary) if summary.file_replaced => tracing::warn!(
                written = summary.written,
                dropped = summary.dropped,
                failed = summary.failed,
                "request log closed, but its database file was removed or replaced while the \
                 gateway ran: the rows written since then went to the file it had opened"
            ),
            Ok(summary) if summary.failed > 0 || summary.dropped > 0 => tracing::warn!(
                written = summary.written,
                dropped = summary.dropped,
                failed = summary.failed,
                "request log closed with rows lost: `failed` rows were in batches that did not \
                 commit, `dropped` rows found the queue full"
            ),
            Ok(summary) => tracing::info!(
                written = summary.written,
                dropped = summary.dropped,
                failed = summary.failed,
                "request log closed"
            ),
            Err(error) => tracing::error!(%error, "request log writer failed"),
        }
    }

    // The lines of the requests served so far go out before the caller reports the stop.
    if let Some(lines) = gateway.access_lines.clone() {
        flush_access_lines(lines).await;
    }
    Ok(outcome)
}

/// A worker's runtime before its thread takes it. Dropped unused, when the start fails, it
/// shuts down without waiting, since a runtime cannot wait inside another.
struct WorkerRuntime(Option<tokio::runtime::Runtime>);

impl Drop for WorkerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The layer stack, settings and stop signals with which each worker serves its listener.
struct Worker<S: InnerService> {
    stack: Stack<S>,
    gateway: Arc<Gateway>,
    settings: ServerSettings,
    drain: tokio::sync::watch::Receiver<bool>,
    cut_off: tokio::sync::watch::Receiver<bool>,
    /// Connections open in every worker.
    open: Arc<AtomicUsize>,
    /// The signal that this worker's idle connections watch.
    shed: Arc<IdleShed>,
    /// Every worker's signal: the file descriptors that an accept lacks are the process's.
    sheds: Arc<[Arc<IdleShed>]>,
    /// The deadlines of this worker's connections, which tell at the stop's deadline whether
    /// each has a request in flight.
    deadlines: Arc<OpenDeadlines>,
    rejections: Arc<Rejections>,
}

/// The deadlines of one worker's open connections. Each connection adds its own when it is
/// accepted. An entry of a closed connection stays until the list is next full, when the
/// entries of closed connections are dropped, so the list grows to at most about twice the
/// most connections open at once.
#[derive(Debug, Default)]
struct OpenDeadlines(std::sync::Mutex<Vec<std::sync::Weak<ConnectionDeadline>>>);

impl OpenDeadlines {
    fn add(&self, deadline: &Arc<ConnectionDeadline>) {
        let mut list = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if list.len() == list.capacity() {
            list.retain(|entry| entry.strong_count() > 0);
        }
        list.push(Arc::downgrade(deadline));
    }

    /// Returns how many of the connections have a request in flight: a head that arrived, or
    /// a response being sent.
    fn requests_in_flight(&self) -> usize {
        let list = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|deadline| deadline.has_request())
            .count()
    }
}

impl<S: InnerService> Clone for Worker<S> {
    fn clone(&self) -> Self {
        Worker {
            stack: self.stack.clone(),
            gateway: Arc::clone(&self.gateway),
            settings: self.settings,
            drain: self.drain.clone(),
            cut_off: self.cut_off.clone(),
            open: Arc::clone(&self.open),
            shed: Arc::clone(&self.shed),
            sheds: Arc::clone(&self.sheds),
            deadlines: Arc::clone(&self.deadlines),
            rejections: Arc::clone(&self.rejections),
        }
    }
}

impl<S: InnerService> Worker<S> {
    /// Accepts and serves connections on `listener` until the drain, then waits for its
    /// connections to end, or ends them at the cut-off.
    async fn run(mut self, listener: TcpListener) {
        let server = &self.gateway.config.server;
        // The read timeout is kept by each connection's own timer (see `deadline`), so that
        // a request registers no timer of its own.
        let read_timeout = server.read_timeout;
        let write_timeout = server.write_timeout;
        // Every deadline is at least this far ahead when it is set.
        let check_interval = read_timeout.min(write_timeout);

        // Connection tasks live in a set, so that the ones still running at the cut-off can
        // be ended while the request log still takes their rows.
        let mut connections = tokio::task::JoinSet::new();
        let mut accept_failures = AcceptFailures::default();
        // A drain sender dropped (the start failed) drains too.
        while !*self.drain.borrow_and_update() {
            // Finished tasks are taken out as new connections arrive, so the set stays small.
            while connections.try_join_next().is_some() {}
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Running out of file descriptors is the usual cause. Idle
                        // connections are asked to close, and pausing lets them, instead of
                        // spinning on the error.
                        accept_failures.warn(&error);
                        if gateway_proxy::client::is_resource_shortage(&error)
                            && accept_failures.may_shed()
                        {
                            tracing::warn!(
                                %error,
                                "closing idle client connections to free file descriptors"
                            );
                            for shed in self.sheds.iter() {
                                shed.signal();
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                changed = self.drain.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
            };
            let _ = stream.set_nodelay(true);
            limit_unsent(&stream);

            let deadline = Arc::new(ConnectionDeadline::new(read_timeout, write_timeout));
            self.deadlines.add(&deadline);
            let service = ConnectionService {
                stack: self.stack.clone(),
                gateway: Arc::clone(&self.gateway),
                peer,
                deadline: Arc::clone(&deadline),
            };
            let io = ClientStream::new(stream, Arc::clone(&deadline));
            let drain = self.drain.clone();
            let open = Arc::clone(&self.open);
            let shed = Arc::clone(&self.shed);
            let settings = self.settings;
            open.fetch_add(1, Ordering::Relaxed);
            let rejections = Arc::clone(&self.rejections);
            let timeouts = Arc::clone(&self.rejections);
            connections.spawn(async move {
                // The connection's future is made in place inside `select!`: made outside and
                // pinned here, it would take twice its size in the task, for as long as the
                // connection lives. Polled in order, the connection first, with no random
                // pick of which branch goes first on each wake-up.
                tokio::select! {
                    biased;
                    result = serve_connection(
                        io,
                        move |request| service.call(request),
                        move |rejection| rejections.report(peer, &rejection),
                        settings,
                        drain,
                    ) => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, %error, "client connection ended with an error");
                        }
                    }
                    ended = deadline_or_shed(&deadline, check_interval, &shed) => match ended {
                        Ended::Deadline(Phase::Response) => {
                            // The deadline is marked expired, so the socket was reset.
                            tracing::debug!(
                                %peer,
                                timeout = ?write_timeout,
                                "response made no progress within the write timeout, closing the connection"
                            );
                        }
                        Ended::Deadline(Phase::Head) => {
                            tracing::debug!(
                                %peer,
                                timeout = ?read_timeout,
                                "no request head within the read timeout, closing the connection"
                            );
                            // A head that started and stalled, as a slowloris client leaves
                            // it, gets a 408 line and row; an idle keep-alive connection none.
                            if let Some(since) = deadline.partial_head_since() {
                                timeouts.report_head_timeout(peer, since.elapsed());
                            }
                        }
                        Ended::Shed => tracing::debug!(
                            %peer,
                            "idle connection closed to free its file descriptor"
                        ),
                    },
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }

        // Closing the listener makes the kernel refuse new connections from here on.
        drop(listener);
        let cut_off = tokio::select! {
            () = async { while connections.join_next().await.is_some() {} } => false,
            // A cut-off sender dropped means the server is gone: end the connections too.
            _ = self.cut_off.wait_for(|cut_off| *cut_off) => true,
        };
        if cut_off {
            connections.abort_all();
            while connections.join_next().await.is_some() {}
        }
    }
}

/// Maximum bytes of a response that a client socket may keep unsent (`TCP_NOTSENT_LOWAT`).
///
/// Linux grows a send buffer to megabytes and reports the socket writable only when half of
/// its contents has gone. A client that reads slowly but steadily could then go longer than
/// `server.write_timeout` without a write and be reset. With the limit, the gateway writes
/// again after every 100 KiB or so that the client reads. A 2 GB download on loopback cost
/// the gateway about a fifth more CPU with it. Responses smaller than the limit never reach it.
const CLIENT_UNSENT_LIMIT: u32 = 128 * 1024;

/// Applies [`CLIENT_UNSENT_LIMIT`] to a new client connection. A kernel without the option
/// leaves the connection as it was.
fn limit_unsent(stream: &tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(CLIENT_UNSENT_LIMIT);
}

/// Rate-limits the warning about failed accepts to one a second. Out of file descriptors,
/// every accept fails, 20 times a second with the pause after each.
#[derive(Default)]
struct AcceptFailures {
    last_warning: Option<std::time::Instant>,
    since_warning: u64,
    last_shed: Option<std::time::Instant>,
}

impl AcceptFailures {
    /// Returns whether idle connections may be asked to close now: at most once a second, so
    /// that the connections accepted after a signal get to send their requests.
    fn may_shed(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self
            .last_shed
            .is_some_and(|at| now.duration_since(at) < crate::shed::SHED_INTERVAL)
        {
            return false;
        }
        self.last_shed = Some(now);
        true
    }

    fn warn(&mut self, error: &std::io::Error) {
        self.since_warning += 1;
        let now = std::time::Instant::now();
        if self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < crate::shed::SHED_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            %error,
            failures = self.since_warning,
            "failed to accept connections"
        );
        self.last_warning = Some(now);
        self.since_warning = 0;
    }
}

/// Waits up to [`ACCESS_FLUSH_TIMEOUT`] for buffered access lines to reach stdout, on a blocking
/// thread, so that the runtime still handles a second stop signal meanwhile.
async fn flush_access_lines(lines: AccessLines) {
    let flushed = tokio::task::spawn_blocking(move || lines.flush(ACCESS_FLUSH_TIMEOUT)).await;
    if !matches!(flushed, Ok(true)) {
        tracing::warn!(
            timeout = ?ACCESS_FLUSH_TIMEOUT,
            "access lines not all written before the stop, stdout is blocked"
        );
    }
}

/// Opens the request log's queue, writer and reader. At the stop, the writer commits queued
/// rows for at most `stop_timeout`.
async fn open_request_log(
    config: &gateway_config::RequestLogConfig,
    stop_timeout: Duration,
) -> Result<(RequestLogState, WriterHandle), ServeError> {
    let (log, writer) = RequestLog::open(config).await?;
    let writer = writer.with_stop_timeout(stop_timeout);
    let reader = LogReader::open(&config.database).await?;
    tracing::info!(database = %config.database.display(), "request log open");
    let state = RequestLogState {
        log,
        reader,
        query_slot: Arc::new(tokio::sync::Semaphore::new(1)),
    };
    Ok((state, writer.spawn()))
}

/// The per-connection service: records the peer's address on each request's body, adds the
/// client's address where a layer reads it, runs the layer stack and bounds the response by
/// the write timeout.
#[derive(Clone)]
struct ConnectionService<S> {
    stack: Stack<S>,
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    deadline: Arc<ConnectionDeadline>,
}

impl<S: InnerService> ConnectionService<S> {
    fn call(&self, mut request: Request<Inbound>) -> ConnectionFuture<S> {
        // The head arrived: the read timeout no longer applies.
        self.deadline.clear();
        // A listener on an IPv6 address accepts IPv4 clients as IPv4-mapped addresses
        // (`::ffff:192.0.2.1`). Backends get the plain IPv4 form, as the access line shows it.
        request.body_mut().set_peer(self.peer.ip().to_canonical());
        if self.gateway.reads_client_ip() {
            let client = self
                .gateway
                .trusted
                .client_ip(self.peer.ip(), request.headers());
            request.extensions_mut().insert(ClientIp(client));
        }
        ConnectionFuture {
            inner: self.stack.clone().call(request),
            deadline: Arc::clone(&self.deadline),
        }
    }
}

/// The reporter of request heads that the server rejects, shared by a worker's connections.
struct Rejections {
    hook: AccessHook,
    gateway: Arc<Gateway>,
}

impl Rejections {
    /// Reports a head rejected on a connection from `peer` to the access line and the request
    /// log. The client's address is the peer's, or the one that trusted proxies give in
    /// `X-Forwarded-For` when every line of the head parsed.
    fn report(&self, peer: SocketAddr, rejection: &Rejection) {
        let client_ip = match &rejection.headers {
            Some(headers) => self.gateway.trusted.client_ip(peer.ip(), headers),
            None => peer.ip().to_canonical(),
        };
        self.hook.report_rejection(rejection, client_ip);
    }

    /// Reports a connection from `peer` closed at the read timeout, `waited`, with part of a
    /// request head received. The head's fields are gone with it, so the client is the peer.
    fn report_head_timeout(&self, peer: SocketAddr, waited: Duration) {
        self.hook
            .report_head_timeout(peer.ip().to_canonical(), waited);
    }
}

pin_project_lite::pin_project! {
    struct ConnectionFuture<S: InnerService> {
        #[pin]
        inner: <Stack<S> as Service<Request<Inbound>>>::Future,
        deadline: Arc<ConnectionDeadline>,
    }
}

impl<S: InnerService> Future for ConnectionFuture<S> {
    type Output = Response<DeadlineBody<StackBody>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        // The head is ready; from here the write timeout bounds the time between writes of the
        // response. Until now the backend's response timeout bounded the wait, and the
        // client's upload was bounded only between reads, as NGINX bounds it.
        this.deadline.start_response();
        let deadline = Arc::clone(this.deadline);
        Poll::Ready(response.map(|body| DeadlineBody::new(body, deadline)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only while the server future can be handed to `tokio::spawn`.
    #[allow(dead_code)]
    fn serve_future_is_send(listener: TcpListener, gateway: Arc<Gateway>) {
        fn spawnable<F: Future + Send + 'static>(_: F) {}
        spawnable(serve(listener, gateway, std::future::pending()));
    }
}
