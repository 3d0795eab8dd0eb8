//! The server's read and write timeouts, kept by one timer per connection.
//!
//! A connection waits for a request head for at most `server.read_timeout` (counted from the
//! accept or from the end of the previous response). While it sends a response, it may go
//! `server.write_timeout` without writing a byte, whether the client stopped reading or the
//! backend stopped sending. A response that keeps moving, such as a long download or an event
//! stream, is never cut, as NGINX's `send_timeout` bounds only the time between two writes.
//! A client that stops reading blocks the socket, and then nothing polls the response body,
//! so the deadline cannot live in the body. Each connection's task keeps one timer instead and
//! closes the connection when the deadline in progress has passed. The request path only
//! stores deadlines and marks progress here, in atomics, so a request costs no timer
//! registration and a write no clock read.

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The start of the millisecond clock that deadlines are stored in.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Returns the time to count `timeout` from, as [`gateway_proxy::clock::now_for`] does. Unit
/// tests read tokio's clock, which they pause and move, and which the coarse clock does not
/// follow.
pub(crate) fn now_for(timeout: Duration) -> Instant {
    if cfg!(test) {
        Instant::now()
    } else {
        gateway_proxy::clock::now_for(timeout)
    }
}

/// The phase of a connection that its deadline bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for a request head: the read timeout.
    Head,
    /// Sending a response: the write timeout.
    Response,
}

/// The deadline of the phase a connection is in, if any.
#[derive(Debug)]
pub(crate) struct ConnectionDeadline {
    // Milliseconds since EPOCH, plus one so that 0 means "no deadline".
    at_ms: AtomicU64,
    // True while the deadline bounds a response rather than a request head.
    responding: AtomicBool,
    // Set when a response deadline passed, so that the socket is reset rather than closed.
    expired: AtomicBool,
    // Set by each write to the client, and cleared when the response deadline moves.
    progress: AtomicBool,
    // Set once the connection started its first response, so that it is a kept-alive one.
    responded: AtomicBool,
    // Set when bytes arrive from the client, and when the connection starts to wait for its
    // next head with bytes of it read already, so that a connection with a head partly
    // received does not count as idle.
    received: AtomicBool,
    // When the part of a head that the connection waits on began to arrive, in milliseconds
    // since EPOCH plus one, and 0 while it waits for none.
    partial_head_ms: AtomicU64,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl ConnectionDeadline {
    /// Creates the deadline of a connection accepted now: its first request head is due
    /// within `read_timeout`, and each response may go `write_timeout` without a write.
    pub(crate) fn new(read_timeout: Duration, write_timeout: Duration) -> ConnectionDeadline {
        let deadline = ConnectionDeadline {
            at_ms: AtomicU64::new(0),
            responding: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            progress: AtomicBool::new(false),
            responded: AtomicBool::new(false),
            received: AtomicBool::new(false),
            partial_head_ms: AtomicU64::new(0),
            read_timeout,
            write_timeout,
        };
        deadline.await_head();
        deadline
    }

    /// Starts a response deadline, one write timeout from now.
    pub(crate) fn start_response(&self) {
        self.store(now_for(self.write_timeout) + self.write_timeout);
        self.progress.store(false, Ordering::Relaxed);
        self.responding.store(true, Ordering::Relaxed);
        self.responded.store(true, Ordering::Relaxed);
    }

    /// Records that bytes of the response were written to the client.
    ///
    /// The gateway writes again only once the socket can take more. The server caps a client
    /// socket's unsent bytes (`CLIENT_UNSENT_LIMIT` in `server.rs`), so that happens each time
    /// a steady reader has read some tens of KiB, however large the kernel grew the buffer.
    pub(crate) fn note_progress(&self) {
        self.progress.store(true, Ordering::Relaxed);
    }

    /// Moves a passed response deadline one write timeout past `now` when the response made
    /// progress since the deadline was set or last moved, and returns whether it did.
    fn extend_if_progressed(&self, now: Instant) -> bool {
        if !self.progress.swap(false, Ordering::Relaxed) {
            return false;
        }
        self.store(now + self.write_timeout);
        true
    }

    /// Starts waiting for the next request head, due within the read timeout.
    pub(crate) fn await_head(&self) {
        self.store(now_for(self.read_timeout) + self.read_timeout);
        self.responding.store(false, Ordering::Relaxed);
        self.partial_head_ms.store(0, Ordering::Relaxed);
    }

    /// Records that part of the awaited head has arrived and its rest is awaited.
    pub(crate) fn note_partial_head(&self) {
        let ms = Instant::now().saturating_duration_since(*EPOCH).as_millis() as u64;
        self.partial_head_ms.store(ms + 1, Ordering::Relaxed);
    }

    /// Returns when part of the awaited head began to arrive, if it has and its rest has not.
    pub(crate) fn partial_head_since(&self) -> Option<Instant> {
        match self.partial_head_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(*EPOCH + Duration::from_millis(ms - 1)),
        }
    }

    /// Records that bytes arrived from the client.
    pub(crate) fn note_received(&self) {
        self.received.store(true, Ordering::Relaxed);
    }

    /// Records whether bytes of the next head were already read when the connection starts
    /// to wait for it.
    pub(crate) fn set_received(&self, received: bool) {
        self.received.store(received, Ordering::Relaxed);
    }

    /// Clears the deadline: a request is being handled and the backend's timeouts bound it.
    pub(crate) fn clear(&self) {
        self.at_ms.store(0, Ordering::Relaxed);
    }

    fn store(&self, at: Instant) {
        let ms = at.saturating_duration_since(*EPOCH).as_millis() as u64;
        self.at_ms.store(ms + 1, Ordering::Relaxed);
    }

    /// Returns whether the connection is idle at `now`: it waits for a request head with no
    /// byte of it received, after a response, or since it was accepted at least `new_grace`
    /// before `now`. A head that arrived clears the deadline until its response starts.
    pub(crate) fn is_idle(&self, now: Instant, new_grace: Duration) -> bool {
        if self.responding.load(Ordering::Relaxed) || self.received.load(Ordering::Relaxed) {
            return false;
        }
        let Some(due) = self.get() else {
            return false;
        };
        if self.responded.load(Ordering::Relaxed) {
            return true;
        }
        // A new connection's head is due one read timeout after the accept.
        let accepted = due.checked_sub(self.read_timeout).unwrap_or(*EPOCH);
        now.saturating_duration_since(accepted) >= new_grace
    }

    /// Returns whether the connection has a request in flight: its head arrived, which clears
    /// the deadline, or its response is being sent.
    pub(crate) fn has_request(&self) -> bool {
        self.responding.load(Ordering::Relaxed) || self.at_ms.load(Ordering::Relaxed) == 0
    }

    /// Returns what the deadline in progress bounds.
    pub(crate) fn phase(&self) -> Phase {
        if self.responding.load(Ordering::Relaxed) {
            Phase::Response
        } else {
            Phase::Head
        }
    }

    /// Marks a response deadline as passed: the connection's socket is then reset when it
    /// closes.
    pub(crate) fn expire(&self) {
        self.expired.store(true, Ordering::Relaxed);
    }

    /// Returns the deadline in progress.
    pub(crate) fn get(&self) -> Option<Instant> {
        match self.at_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(*EPOCH + Duration::from_millis(ms - 1)),
        }
    }
}

pin_project! {
    /// A response body that starts the wait for the next request head when it is dropped.
    pub(crate) struct DeadlineBody<B> {
        #[pin]
        inner: B,
        deadline: Arc<ConnectionDeadline>,
    }

    impl<B> PinnedDrop for DeadlineBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // The server drops the body once its last frame is written, so from here the
            // read timeout bounds the wait for the next request head.
            this.project().deadline.await_head();
        }
    }
}

impl<B> DeadlineBody<B> {
    pub(crate) fn new(inner: B, deadline: Arc<ConnectionDeadline>) -> DeadlineBody<B> {
        DeadlineBody { inner, deadline }
    }
}

impl<B: Body> Body for DeadlineBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A client socket that is reset instead of closed once its response deadline expired.
    ///
    /// A plain close leaves the unsent part of the response in the kernel's send buffer (up to
    /// several MiB), so a slow reader would keep receiving it long after the deadline. A reset
    /// (`SO_LINGER` of zero) discards it.
    pub(crate) struct ClientStream {
        #[pin]
        stream: TcpStream,
        deadline: Arc<ConnectionDeadline>,
    }

    impl PinnedDrop for ClientStream {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.deadline.expired.load(Ordering::Relaxed) {
                let _ = this.stream.set_zero_linger();
            }
        }
    }
}

impl ClientStream {
    pub(crate) fn new(stream: TcpStream, deadline: Arc<ConnectionDeadline>) -> ClientStream {
        ClientStream { stream, deadline }
    }
}

impl gateway_proxy::server::Io for ClientStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream.poll_read_ready(cx)
    }

    fn awaiting_head(&self, buffered: bool) {
        self.deadline.set_received(buffered);
    }

    fn head_partial(&self) {
        self.deadline.note_partial_head();
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let filled = buf.filled().len();
        let read = this.stream.poll_read(cx, buf);
        if buf.filled().len() > filled {
            this.deadline.note_received();
        }
        read
    }
}

// Writes are direct system calls (see `gateway_proxy::socket`). Reads stay tokio's, because
// tokio reads into the buffer's uninitialized room, and a direct call would first zero it.
impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = gateway_proxy::socket::poll_write_vectored(&self.stream, cx, bufs);
        if let Poll::Ready(Ok(1..)) = written {
            self.deadline.note_progress();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

/// Waits until the connection's deadline has passed, and returns the phase it bounded. A
/// passed response deadline is marked expired before this returns (see
/// [`ConnectionDeadline::expire`]), so that the socket is reset however soon the connection
/// is dropped.
///
/// A response deadline that passes after a write to the client moves one write timeout on
/// instead. So a response is cut after at least one and at most two write timeouts without a
/// write, and never while bytes keep going out at least once a write timeout.
///
/// The request path moves the deadline without waking this wait, so it checks again at least
/// every `check_interval`. A deadline set to at least `check_interval` ahead, as every
/// deadline is when `check_interval` is the shorter of the read and write timeouts, is
/// therefore enforced at most one interval late.
pub(crate) async fn deadline_passed(
    deadline: &ConnectionDeadline,
    check_interval: Duration,
) -> Phase {
    loop {
        let now = Instant::now();
        let next_check = now + check_interval;
        match deadline.get() {
            Some(at) if at <= now => {
                let phase = deadline.phase();
                if phase == Phase::Response {
                    if deadline.extend_if_progressed(now) {
                        continue;
                    }
                    deadline.expire();
                }
                return phase;
            }
            Some(at) => tokio::time::sleep_until(at.min(next_check)).await,
            None => tokio::time::sleep_until(next_check).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn passes_after_deadline() {
        let deadline = Arc::new(ConnectionDeadline::new(MINUTE, Duration::from_secs(5)));
        deadline.start_response();
        let started = Instant::now();
        let phase = deadline_passed(&deadline, Duration::from_secs(1)).await;
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert_eq!(phase, Phase::Response);
        assert!(deadline.expired.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn new_connection_waits_read_timeout_for_head() {
        let started = Instant::now();
        let deadline = Arc::new(ConnectionDeadline::new(Duration::from_secs(3), MINUTE));
        let phase = deadline_passed(&deadline, Duration::from_secs(1)).await;
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert_eq!(phase, Phase::Head);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_moved_later_is_waited_for() {
        let deadline = Arc::new(ConnectionDeadline::new(
            Duration::from_secs(2),
            Duration::from_secs(5),
        ));
        let started = Instant::now();
        let waiting = tokio::spawn({
            let deadline = Arc::clone(&deadline);
            async move { deadline_passed(&deadline, Duration::from_secs(1)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        deadline.start_response();
        let phase = waiting.await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(6));
        assert_eq!(phase, Phase::Response);
    }

    #[tokio::test(start_paused = true)]
    async fn response_deadline_during_head_wait() {
        // A 30 s read timeout must not delay a 1 s write timeout set meanwhile.
        let deadline = Arc::new(ConnectionDeadline::new(
            Duration::from_secs(30),
            Duration::from_secs(1),
        ));
        let started = Instant::now();
        let waiting = tokio::spawn({
            let deadline = Arc::clone(&deadline);
            async move { deadline_passed(&deadline, Duration::from_secs(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        deadline.start_response();
        let phase = waiting.await.unwrap();
        assert_eq!(phase, Phase::Response);
        assert!(
            started.elapsed() <= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cleared_deadline_never_passes() {
        let deadline = Arc::new(ConnectionDeadline::new(MINUTE, Duration::from_secs(1)));
        deadline.start_response();
        deadline.clear();
        let waited =
            tokio::time::timeout(MINUTE, deadline_passed(&deadline, Duration::from_secs(1))).await;
        assert!(waited.is_err(), "a cleared deadline must not end the wait");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_keep_response_alive() {
        let write_timeout = Duration::from_secs(2);
        let deadline = Arc::new(ConnectionDeadline::new(MINUTE, write_timeout));
        deadline.start_response();
        let started = Instant::now();
        let waiting = tokio::spawn({
            let deadline = Arc::clone(&deadline);
            async move { deadline_passed(&deadline, write_timeout).await }
        });

        // A write every 1.5 s for 12 s: far past the write timeout, never 2 s without a write.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert!(!waiting.is_finished(), "cut at {:?}", started.elapsed());
            deadline.note_progress();
        }

        // Then the writes stop: cut within one to two write timeouts of the last write.
        let phase = waiting.await.unwrap();
        let stalled = started.elapsed() - Duration::from_secs(12);
        assert_eq!(phase, Phase::Response);
        assert!(
            stalled >= write_timeout,
            "cut after {stalled:?} without a write"
        );
        assert!(
            stalled <= 2 * write_timeout,
            "cut after {stalled:?} without a write"
        );
        assert!(deadline.expired.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_of_earlier_response_is_forgotten() {
        let write_timeout = Duration::from_secs(2);
        let deadline = Arc::new(ConnectionDeadline::new(MINUTE, write_timeout));
        deadline.start_response();
        deadline.note_progress();
        deadline.await_head();
        deadline.start_response();
        let started = Instant::now();
        let phase = deadline_passed(&deadline, write_timeout).await;
        assert_eq!(phase, Phase::Response);
        assert!(started.elapsed() <= write_timeout + Duration::from_millis(10));
    }
}
