//! The server's write timeout: a response still being sent when its deadline passes makes the
//! connection close.
//!
//! A client that stops reading blocks the socket, and then nothing polls the response body, so
//! the deadline cannot live in the body. Each connection's task keeps one timer instead and
//! closes the connection when the deadline of the response in progress has passed. Requests
//! store that deadline here; the response body clears it when it ends.

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

/// The deadline of the response a connection is sending, if any.
#[derive(Debug, Default)]
pub(crate) struct ResponseDeadline {
    // Milliseconds since EPOCH, plus one so that 0 means "no response in progress".
    at_ms: AtomicU64,
    // Set when the deadline passed, so that the socket is reset rather than closed.
    expired: AtomicBool,
}

impl ResponseDeadline {
    /// Starts a deadline at `at`.
    pub(crate) fn set(&self, at: Instant) {
        let ms = at.saturating_duration_since(*EPOCH).as_millis() as u64;
        self.at_ms.store(ms + 1, Ordering::Relaxed);
    }

    /// Clears the deadline: no response is being sent.
    pub(crate) fn clear(&self) {
        self.at_ms.store(0, Ordering::Relaxed);
    }

    /// Marks the deadline as passed: the connection's socket is then reset when it closes.
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
    /// A response body that clears its connection's deadline when it is dropped.
    pub(crate) struct DeadlineBody<B> {
        #[pin]
        inner: B,
        deadline: Arc<ResponseDeadline>,
    }

    impl<B> PinnedDrop for DeadlineBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // NOTE: hyper may still hold the body's last bytes in its write buffer (at most
            // its buffer size, about 400 KiB) after this. A client that never reads them
            // keeps the connection until the operating system's TCP timeouts end it.
            this.project().deadline.clear();
        }
    }
}

impl<B> DeadlineBody<B> {
    pub(crate) fn new(inner: B, deadline: Arc<ResponseDeadline>) -> DeadlineBody<B> {
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
        deadline: Arc<ResponseDeadline>,
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
    pub(crate) fn new(stream: TcpStream, deadline: Arc<ResponseDeadline>) -> ClientStream {
        ClientStream { stream, deadline }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

/// Waits until the connection's response deadline has passed, checking again whenever the
/// deadline moves. While no response is in progress it checks every `idle_check`.
pub(crate) async fn deadline_passed(deadline: &ResponseDeadline, idle_check: Duration) {
    loop {
        let now = Instant::now();
        match deadline.get() {
            Some(at) if at <= now => return,
            Some(at) => tokio::time::sleep_until(at).await,
            None => tokio::time::sleep(idle_check).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn passes_after_deadline() {
        let deadline = Arc::new(ResponseDeadline::default());
        deadline.set(Instant::now() + Duration::from_secs(5));
        let started = Instant::now();
        deadline_passed(&deadline, Duration::from_secs(1)).await;
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn cleared_deadline_never_passes() {
        let deadline = Arc::new(ResponseDeadline::default());
        deadline.set(Instant::now() + Duration::from_secs(1));
        deadline.clear();
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            deadline_passed(&deadline, Duration::from_secs(1)),
        )
        .await;
        assert!(waited.is_err(), "a cleared deadline must not end the wait");
    }
}
