//! The client side of HTTP/1.1: one connection's loop of reading a request head, handing the
//! request to a service, and writing its response.
//!
//! The gateway serves clients itself, as it speaks to backends itself (see [`crate::client`]).
//! A request's header values and target share the bytes read from the socket, the request
//! body reads the socket when polled, and a response is written straight from its frames,
//! its head and first data in one write. Between requests a connection keeps a small buffer
//! for response heads and no read buffer: it takes one from its thread's spares when bytes
//! arrive. Interim (1xx) responses that the service offers while it runs reach an HTTP/1.1
//! client ahead of the final response (see the `interim` module).
//!
//! What a client gets for a request the gateway cannot read: 400 for a malformed head or
//! ambiguous body framing, 414 for a request line over the size limit, 431 for a head over
//! the size limit or with more than 100 fields. Each closes the connection, and the server
//! reports it to the connection's rejection callback as a [`Rejection`] first.

mod head;
pub(crate) mod interim;
mod rejection;
mod response;
#[cfg(test)]
mod tests;
mod wire;

pub use rejection::Rejection;
pub use wire::{Inbound, InboundError, Io};

use crate::error::ErrorKind;
use crate::header_pool;
use crate::server::head::{HeadError, parse_head};
use crate::server::response::{Exchange, Framing, encode_head, encode_rejection};
use crate::server::wire::{BodyState, HEAD_CHUNK, SharedWire, Wire, lock};
use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tokio::sync::watch;

/// Maximum request body bytes read and dropped after a response, so that the connection can
/// serve another request. A larger rest closes the connection instead.
const MAX_DISCARD: u64 = 64 * 1024;

/// Maximum time a connection whose response announced keep-alive waits for the rest of a
/// request body that it discards, the time NGINX's `lingering_timeout` gives by default. A
/// client slower than that finds the connection closed.
const DISCARD_WAIT: Duration = Duration::from_secs(5);

/// Time a closing connection keeps reading what the client still sends, so that closing
/// with unread bytes does not reset the connection before the client has read the response.
const LINGER: Duration = Duration::from_secs(2);

/// Maximum time an idle connection waits for one more request once the drain begins, and
/// serves it with `Connection: close`. A keep-alive client may send its next request at any
/// moment, and one sent just before the connection closes would be reset unread. Clients
/// that stay idle longer see the connection close before they send, and open a new one.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Maximum bytes read while lingering.
const MAX_LINGER_BYTES: usize = 1024 * 1024;

/// Settings of the client side.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// Largest request head accepted; a larger one gets 431.
    pub max_head_bytes: usize,
    /// Whether each response body is polled once more after the response's last byte is
    /// written, for a body that reports its delivery (see `write_response`).
    pub confirm_writes: bool,
}

/// The fault a connection ended with.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The request head could not be read, and the client got a 4xx.
    #[error("rejected a request head ({status}): {reason}")]
    Rejected {
        /// The status sent.
        status: StatusCode,
        /// The fault in the head.
        reason: &'static str,
    },
    /// The connection closed in the middle of a request head.
    #[error("connection closed in the middle of a request head")]
    IncompleteHead,
    /// Reading or writing the socket failed.
    #[error("connection failed")]
    Io(#[from] io::Error),
    /// The response body failed after its head was sent; the connection was closed to
    /// tell the client the response is incomplete.
    #[error("response body failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The response body ended before its declared length.
    #[error("response body ended {missing} bytes before its declared length")]
    ShortBody {
        /// Bytes that were never sent.
        missing: u64,
    },
    /// The client closed the connection while the response body was on its way.
    #[error("client closed the connection before the end of the response")]
    ClientClosed,
}

/// Serves HTTP/1.1 requests on `io` with `service` until the client closes the connection,
/// a request or response closes it, or `drain` turns true while no request is in progress.
///
/// While a request is in progress and its body has been read, the socket is watched for the
/// client closing it: the service's future is then dropped, which cancels the request.
/// Bytes of a pipelined request that arrive meanwhile are kept for the next turn.
///
/// # Errors
///
/// Returns a [`ConnectionError`] for a connection that ended with a fault, after doing what
/// it can for the client (a 4xx for an unreadable head). A head rejected with a 4xx is passed
/// to `on_reject` before the response is written. A rejection ends the connection, so
/// `on_reject` runs at most once.
pub async fn serve_connection<I, S, F, B, R>(
    io: I,
    mut service: S,
    on_reject: R,
    settings: ServerSettings,
    mut drain: watch::Receiver<bool>,
) -> Result<(), ConnectionError>
where
    I: Io + 'static,
    S: FnMut(Request<Inbound>) -> F,
    R: FnOnce(Rejection),
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let wire: SharedWire = Arc::new(Mutex::new(Wire::new(Box::new(io))));
    let mut head_out = Vec::with_capacity(256);
    // One wait for the drain serves every request of the connection: a wait made anew for
    // each request would join and leave the channel's waiter list every time.
    let mut drain_wait = drain.clone();
    let mut drained = pin!(async move {
        let _ = drain_wait.wait_for(|draining| *draining).await;
    });
    let mut drain_seen = *drain.borrow_and_update();
    let mut drain_registered = DrainRegistration::default();
    loop {
        // An idle connection closes at the drain once `DRAIN_GRACE` passes without a request.
        // A connection whose next head has started gets to finish it, and its response closes
        // the connection.
        // NOTE: a client that stops partway through a head keeps the drain waiting until the
        // read timeout or the shutdown timeout, whichever ends first.
        let draining = drain_begun(&mut drain, &mut drain_seen);
        if draining && lock(&wire).buffer.is_empty() && !request_arrives(&wire).await {
            close(&wire, false).await;
            return Ok(());
        }
        // When the head's first bytes came, kept apart from the read so that the second read
        // after a stop signal keeps the time that the first one saw.
        let mut head_started = None;
        let head = {
            let mut reading = pin!(read_head(&wire, settings.max_head_bytes, &mut head_started));
            poll_fn(|cx| {
                if let Poll::Ready(head) = reading.as_mut().poll(cx) {
                    return Poll::Ready(Some(head));
                }
                if !draining
                    && drain_registered.needs_poll(cx, &drain)
                    && drained.as_mut().poll(cx).is_ready()
                {
                    drain_seen = true;
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        };
        let head = match head {
            Some(head) => head,
            None if lock(&wire).buffer.is_empty() && !request_arrives(&wire).await => {
                close(&wire, false).await;
                return Ok(());
            }
            None => read_head(&wire, settings.max_head_bytes, &mut head_started).await,
        };
        let (request, facts) = match head {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(ReadHeadError::Io(error)) => return Err(ConnectionError::Io(error)),
            Err(ReadHeadError::Incomplete) => return Err(ConnectionError::IncompleteHead),
            Err(
                ReadHeadError::TooLarge(started)
                | ReadHeadError::Head(HeadError::TooLarge, started),
            ) => {
                let line_too_long =
                    request_line_exceeds(&lock(&wire).buffer, settings.max_head_bytes);
                let fault = if line_too_long {
                    Fault {
                        status: StatusCode::URI_TOO_LONG,
                        kind: ErrorKind::InvalidRequest,
                        reason: "request line too long",
                        fields_parsed: false,
                    }
                } else {
                    Fault {
                        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        kind: ErrorKind::InvalidRequest,
                        reason: "too large",
                        fields_parsed: false,
                    }
                };
                return reject(&wire, fault, started, on_reject).await;
            }
            Err(ReadHeadError::Head(error, started)) => {
                let status = match error {
                    HeadError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    HeadError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    HeadError::TargetTooLong => StatusCode::URI_TOO_LONG,
                    HeadError::MethodTooLong => StatusCode::NOT_IMPLEMENTED,
                    _ => StatusCode::BAD_REQUEST,
                };
                let kind = match error {
                    HeadError::UnsupportedTransferCoding => ErrorKind::UnsupportedTransferCoding,
                    _ => ErrorKind::InvalidRequest,
                };
                // These faults are found only after every line of the head parsed.
                let fields_parsed = matches!(
                    error,
                    HeadError::ContentLength
                        | HeadError::TransferEncoding
                        | HeadError::UnsupportedTransferCoding
                );
                let fault = Fault {
                    status,
                    kind,
                    reason: head_error_reason(error),
                    fields_parsed,
                };
                return reject(&wire, fault, started, on_reject).await;
            }
        };
        lock(&wire).start_body(facts.framing, facts.expects_continue);
        let method = request.method().clone();
        let version = request.version();
        let body = Inbound::new(&wire, facts.framing);
        let request = request.map(|()| body);

        // The service's future is boxed, so that the connection's own future, which lives as
        // long as the connection, stays small while the connection idles. An HTTP/1.0 client
        // gets no interim response (RFC 9110 section 15.2).
        let future = Box::pin(service(request));
        let forwards_interim = version >= Version::HTTP_11;
        let mut interim_error = None;
        let Some(response) = respond(
            &wire,
            future,
            settings.max_head_bytes,
            forwards_interim.then_some(&mut interim_error),
        )
        .await
        else {
            // The request was dropped: the client closed the connection, or writing an
            // interim response failed.
            return interim_error.map_or(Ok(()), |error| Err(ConnectionError::Io(error)));
        };

        let (parts, body) = response.into_parts();
        let length = body.size_hint().exact();
        // A request body left unread past what is cheap to discard closes the connection, and
        // the response head announces it. The part that has arrived is discarded now, when
        // nothing else reads the body, because a chunked body's rest has no known size. A
        // rest of known size up to `MAX_DISCARD` is read and dropped after the response. A
        // body whose client still waits for `100 Continue` closes the connection too, because
        // the client may send it anyway and it must not be read as the next request. So does
        // a 408, because its status means that the body came too slowly to wait for.
        let unread_elsewhere = Arc::strong_count(&wire) > 1;
        head_out.clear();
        let body_clear = {
            let mut wire = lock(&wire);
            // Interim responses that the client has not taken yet go out first, in the
            // same write as the final head.
            if wire.has_unsent_interim() {
                wire.take_unsent_interim(&mut head_out);
            }
            if !unread_elsewhere && !wire.continue_unsent() {
                let _ = discard_arrived(&mut wire);
            }
            match wire.body {
                // The client sent the body without waiting, and all of it was read.
                BodyState::Done => true,
                _ if wire.continue_unsent() => false,
                BodyState::Length(left) => left <= MAX_DISCARD,
                BodyState::Chunked(_) | BodyState::Failed => false,
            }
        };
        let exchange = Exchange {
            method: &method,
            version,
            keep_alive: facts.keep_alive
                && body_clear
                && parts.status != StatusCode::REQUEST_TIMEOUT
                && !drain_begun(&mut drain, &mut drain_seen),
            trailers: facts.trailers,
        };
        let (framing, keep_alive) = encode_head(
            &mut head_out,
            parts.status,
            &parts.headers,
            length,
            exchange,
        );
        // The response head is encoded, so its header map and extension map go back to the
        // pools.
        header_pool::give(parts.headers);
        header_pool::give_extensions(parts.extensions);
        // Pinned here rather than inside `write_response`, so that the connection's future
        // contains one copy of the body, not two. The body is dropped as the write ends.
        {
            let body = pin!(body);
            let sending = Sending {
                framing,
                trailers: facts.trailers,
                confirm: settings.confirm_writes,
                max_head_bytes: settings.max_head_bytes,
            };
            write_response(&wire, &head_out, body, sending).await?;
        }
        if !keep_alive {
            let unread = {
                let wire = lock(&wire);
                !wire.buffer.is_empty() || !matches!(wire.body, BodyState::Done)
            };
            close(&wire, unread).await;
            return Ok(());
        }
        // What the response's own reader left of the request body is discarded as well, and
        // the part still on its way is waited for, since the head promised keep-alive.
        if !discard_arrived(&mut lock(&wire)) && !discard_rest(&wire, &drain).await {
            close(&wire, true).await;
            return Ok(());
        }
        // Keeps the head buffer from holding on to an unusually large head.
        if head_out.capacity() > 16 * 1024 {
            head_out = Vec::with_capacity(256);
        }
    }
}

/// The waker that the connection's wait for the drain last registered.
///
/// The wait stays registered between requests, so it needs polling again only when the drain
/// begins or the task's waker changes. Polling it for every request cost about 130
/// instructions and locked the channel's waiter list, which all connections share.
#[derive(Default)]
struct DrainRegistration {
    waker: Option<std::task::Waker>,
}

impl DrainRegistration {
    /// Returns whether the wait for the drain must be polled with `cx`: on its first poll,
    /// after the task's waker changed, or once `drain` has changed.
    fn needs_poll(&mut self, cx: &Context<'_>, drain: &watch::Receiver<bool>) -> bool {
        let registered = self
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if registered && !drain.has_changed().unwrap_or(true) {
            return false;
        }
        self.waker = Some(cx.waker().clone());
        true
    }
}

/// The failure to read a request head. A rejected head carries the time its first bytes were
/// read, when they came in a read before the one that completed or overfilled the head.
enum ReadHeadError {
    Head(HeadError, Option<Instant>),
    TooLarge(Option<Instant>),
    Incomplete,
    Io(io::Error),
}

fn head_error_reason(error: HeadError) -> &'static str {
    match error {
        HeadError::Malformed => "malformed head",
        HeadError::TooManyHeaders => "too many header fields",
        HeadError::TooLarge => "too large",
        HeadError::TargetTooLong => "request target too long",
        HeadError::MethodTooLong => "method too long",
        HeadError::ContentLength => "invalid Content-Length",
        HeadError::TransferEncoding => "invalid Transfer-Encoding",
        HeadError::UnsupportedTransferCoding => "Transfer-Encoding does not end in chunked",
        HeadError::Version => "HTTP version not supported: send HTTP/1.1",
    }
}

/// Returns whether the request line at the start of `buffer`, after any empty lines, runs past
/// `max_head_bytes` without its line end. Such a head gets 414 URI Too Long rather than 431:
/// RFC 9110 (section 15.5.15) defines 414 for a target longer than the server will read.
// NOTE: empty lines before the request line fill the same buffer, so with many of them a
// request line a little under the limit can still get 414.
fn request_line_exceeds(buffer: &[u8], max_head_bytes: usize) -> bool {
    let start = buffer
        .iter()
        .position(|&byte| byte != b'\r' && byte != b'\n')
        .unwrap_or(buffer.len());
    let end = buffer.len().min(start.saturating_add(max_head_bytes));
    !buffer[start..end].contains(&b'\n')
}

/// Returns whether `buffer` contains only line ends: empty lines, and perhaps the `\r` of the
/// next one.
fn is_empty_lines(buffer: &[u8]) -> bool {
    buffer.iter().all(|&byte| byte == b'\r' || byte == b'\n')
}

/// Returns whether the drain has begun, and records it in `seen`. The drain only turns on, so
/// while the channel is unchanged this costs one atomic load rather than the channel's lock.
fn drain_begun(drain: &mut watch::Receiver<bool>, seen: &mut bool) -> bool {
    if !*seen && drain.has_changed().unwrap_or(false) {
        *seen = *drain.borrow_and_update();
    }
    *seen
}

/// Reads until the buffer contains a complete head. Returns `Ok(None)` when the client
/// closed the connection between requests.
async fn read_head(
    wire: &SharedWire,
    max_head_bytes: usize,
    started: &mut Option<Instant>,
) -> Result<Option<(Request<()>, head::HeadFacts)>, ReadHeadError> {
    // Bytes already looked at for the end of the head, so that a head arriving in many small
    // pieces is parsed once per line rather than once per piece.
    let mut scanned = 0;
    let mut first_poll = true;
    // `started` is the time of the head's first bytes, which a rejection reports. The clock
    // is read only for a head that arrives in more than one read, so a head that comes whole
    // costs none.
    poll_fn(|cx| {
        let mut wire = lock(wire);
        if first_poll {
            first_poll = false;
            let buffered = !wire.buffer.is_empty();
            wire.io.awaiting_head(buffered);
        }
        loop {
            let fresh = &wire.buffer[scanned.min(wire.buffer.len())..];
            if !wire.buffer.is_empty() && (scanned == 0 || fresh.contains(&b'\n')) {
                match parse_head(&mut wire.buffer, max_head_bytes) {
                    Ok(Some(head)) => return Poll::Ready(Ok(Some(head))),
                    Ok(None) if is_empty_lines(&wire.buffer) => {
                        // Empty lines before a request line are ignored (RFC 9112 section
                        // 2.2), so the connection is as idle as it was before they came.
                        wire.buffer.clear();
                        wire.io.awaiting_head(false);
                    }
                    Ok(None) => {
                        if started.is_none() {
                            *started = Some(Instant::now());
                            wire.io.head_partial();
                        }
                    }
                    Err(error) => {
                        return Poll::Ready(Err(ReadHeadError::Head(error, *started)));
                    }
                }
            }
            scanned = wire.buffer.len();
            if wire.buffer.len() >= max_head_bytes {
                return Poll::Ready(Err(ReadHeadError::TooLarge(*started)));
            }
            if wire.buffer.is_empty() {
                // Between requests the connection waits without a buffer, and takes one when
                // bytes arrive, so that idle connections cost little memory.
                wire.release_buffer();
                if let Err(error) = ready!(wire.poll_read_ready(cx)) {
                    return Poll::Ready(Err(ReadHeadError::Io(error)));
                }
            }
            let read = wire.poll_read_more(cx, HEAD_CHUNK);
            if read.is_pending() && wire.buffer.is_empty() {
                wire.release_buffer();
            }
            match ready!(read) {
                Ok(0) if wire.buffer.is_empty() => return Poll::Ready(Ok(None)),
                Ok(0) => return Poll::Ready(Err(ReadHeadError::Incomplete)),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Err(ReadHeadError::Io(error))),
            }
        }
    })
    .await
}

/// Waits for the service's response, watching the socket meanwhile: returns `None` when the
/// client closes it or it fails. The socket is watched before the service first polls the
/// request body (while it connects to a backend, say) and after the body has ended. While the
/// body is read, the body itself reports a client that leaves, as an error.
///
/// With `interim_error`, the interim responses that the service offers (see [`interim`]) are
/// written to the client as they come. Those still unwritten when the response is ready stay
/// queued on the wire, for the final head to follow. A failed write of one returns `None`
/// with its error in `interim_error`. The error is kept apart from the output so that the
/// response, which is large, is not moved once more through a `Result`.
async fn respond<F, B>(
    wire: &SharedWire,
    future: F,
    max_head_bytes: usize,
    mut interim_error: Option<&mut Option<io::Error>>,
) -> Option<Response<B>>
where
    F: Future<Output = Response<B>>,
{
    let mut future = pin!(future);
    let mut watching = true;
    // NOTE: `server.write_timeout` starts with the final response, so a client that reads
    // none of its queued interim responses is held as long as the backend keeps sending them.
    // Whether interim responses were queued and may still be unwritten.
    let mut interim_queued = false;
    poll_fn(|cx| {
        // While earlier interim responses wait for a client that does not read, later ones are
        // not taken, so the hand-over drops them and what waits stays bounded.
        let collecting = (interim_error.is_some() && !interim_queued).then(interim::open);
        if let Poll::Ready(response) = future.as_mut().poll(cx) {
            if let Some(offered) = collecting.and_then(interim::Collecting::finish) {
                lock(wire).queue_interim(offered);
            }
            return Poll::Ready(Some(response));
        }
        if let Some(offered) = collecting.and_then(interim::Collecting::finish) {
            lock(wire).queue_interim(offered);
            interim_queued = true;
        }
        if interim_queued {
            match lock(wire).poll_flush_interim(cx) {
                Poll::Ready(Ok(())) => interim_queued = false,
                Poll::Ready(Err(error)) => {
                    if let Some(slot) = interim_error.as_deref_mut() {
                        *slot = Some(error);
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
        }
        if client_closed(&mut watching, wire, cx, max_head_bytes) {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Polls [`poll_client_closed`] while `watching` is set, and clears it once the watch stops.
/// Returns whether the client closed the connection.
fn client_closed(
    watching: &mut bool,
    wire: &SharedWire,
    cx: &mut Context<'_>,
    max_head_bytes: usize,
) -> bool {
    if !*watching {
        return false;
    }
    match poll_client_closed(&mut lock(wire), cx, max_head_bytes) {
        Watch::Closed => true,
        Watch::Open => false,
        Watch::Stopped => {
            *watching = false;
            false
        }
    }
}

/// The outcome of a poll of [`poll_client_closed`].
enum Watch {
    /// The client closed the connection, or it failed.
    Closed,
    /// The connection is open, and the task is woken when the client sends more.
    Open,
    /// A head's worth of bytes after a whole request body waits in the buffer, so the socket
    /// is no longer read, and a close is noticed only at the next read or write.
    Stopped,
}

/// Reads what the client sends while its request is served, to notice the client closing the
/// connection (NGINX does the same), so that the request stops holding a backend and its
/// connection. Body bytes that the service has not polled yet, or pipelined bytes, wait in the
/// buffer, up to one head's worth. While the request body's own reader reads the socket, this
/// reads nothing.
fn poll_client_closed(wire: &mut Wire, cx: &mut Context<'_>, max_head_bytes: usize) -> Watch {
    let body_done = matches!(wire.body, BodyState::Done);
    if !body_done && wire.body_polled {
        return Watch::Open;
    }
    while wire.buffer.len() < max_head_bytes {
        match wire.poll_read_more(cx, HEAD_CHUNK) {
            Poll::Ready(Ok(0) | Err(_)) => return Watch::Closed,
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return Watch::Open,
        }
    }
    // A full buffer of body bytes empties once the service reads the body, and the socket is
    // watched again after that.
    if body_done {
        Watch::Stopped
    } else {
        Watch::Open
    }
}

/// The way a response body goes out: its framing, its trailers and the confirming poll.
#[derive(Debug, Clone, Copy)]
struct Sending {
    framing: Framing,
    /// Whether the client accepts trailer fields, which go out only on a chunked body.
    trailers: bool,
    /// Whether to poll the body once more after the response's last byte is written.
    confirm: bool,
    /// Bytes of what the client sends next that are read ahead while waiting for the body
    /// (see [`poll_client_closed`]).
    max_head_bytes: usize,
}

/// Writes `head` and the body's frames with the framing and options of `sending`.
///
/// The body is polled for a frame only after the frame before it is written. With
/// `sending.confirm` it is polled once more after the last byte of the response, the head
/// alone included. So a body can tell a response written whole from one whose last write
/// failed or timed out: it is dropped without that last poll.
async fn write_response<B>(
    wire: &SharedWire,
    head: &[u8],
    mut body: Pin<&mut B>,
    sending: Sending,
) -> Result<(), ConnectionError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Sending {
        framing,
        trailers: send_trailers,
        ..
    } = sending;
    let mut out = Outgoing::new(head);
    let mut watching = true;
    let mut sent: u64 = 0;
    let mut ended = framing == Framing::None;
    // The body is polled once before the head is written, so that a body that is ready goes
    // out with its head in one write.
    let mut polled = ended;
    poll_fn(|cx| {
        loop {
            if polled || ended {
                ready!(out.poll_write(wire, cx))?;
                if ended {
                    // Every byte is written. One more poll confirms it to a body that reports
                    // its delivery, and whatever the poll returns is not sent.
                    if sending.confirm {
                        let _ = body.as_mut().poll_frame(cx);
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            let frame = match body.as_mut().poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending if !polled => {
                    polled = true;
                    continue;
                }
                // Everything so far is written, and the body waits for its backend.
                Poll::Pending if client_closed(&mut watching, wire, cx, sending.max_head_bytes) => {
                    return Poll::Ready(Err(ConnectionError::ClientClosed));
                }
                Poll::Pending => return Poll::Pending,
            };
            polled = true;
            match frame {
                None => {
                    ended = true;
                    match framing {
                        Framing::Chunked => out.suffix = b"0\r\n\r\n",
                        Framing::Length(length) if sent < length => {
                            return Poll::Ready(Err(ConnectionError::ShortBody {
                                missing: length - sent,
                            }));
                        }
                        _ => {}
                    }
                }
                Some(Err(error)) => return Poll::Ready(Err(ConnectionError::Body(error.into()))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(mut data) => {
                        if let Framing::Length(length) = framing {
                            // Bytes past the declared length would be read as the next
                            // response, so they are dropped with the rest of the body.
                            let room = length - sent;
                            if data.len() as u64 > room {
                                data.truncate(room as usize);
                                ended = true;
                            }
                        }
                        sent += data.len() as u64;
                        if framing == Framing::Chunked {
                            out.set_chunk_size(data.len());
                            out.suffix = b"\r\n";
                        }
                        out.data = data;
                    }
                    Err(frame) => {
                        if framing == Framing::Chunked {
                            ended = true;
                            let mut section = b"0\r\n".to_vec();
                            if let Some(fields) = frame.trailers_ref().filter(|_| send_trailers) {
                                for (name, value) in fields {
                                    section.extend_from_slice(name.as_str().as_bytes());
                                    section.extend_from_slice(b": ");
                                    section.extend_from_slice(value.as_bytes());
                                    section.extend_from_slice(b"\r\n");
                                }
                            }
                            section.extend_from_slice(b"\r\n");
                            out.data = Bytes::from(section);
                        }
                    }
                },
            }
        }
    })
    .await
}

/// Bytes waiting to be written: the rest of the head, a chunk size line, data and a suffix.
struct Outgoing<'a> {
    head: &'a [u8],
    prefix: [u8; 20],
    prefix_len: usize,
    prefix_sent: usize,
    data: Bytes,
    suffix: &'static [u8],
}

impl<'a> Outgoing<'a> {
    fn new(head: &'a [u8]) -> Outgoing<'a> {
        Outgoing {
            head,
            prefix: [0; 20],
            prefix_len: 0,
            prefix_sent: 0,
            data: Bytes::new(),
            suffix: b"",
        }
    }

    fn set_chunk_size(&mut self, size: usize) {
        let mut text = [0u8; 16];
        let mut start = text.len();
        let mut rest = size;
        loop {
            start -= 1;
            text[start] = b"0123456789abcdef"[rest % 16];
            rest /= 16;
            if rest == 0 {
                break;
            }
        }
        let digits = text.len() - start;
        self.prefix[..digits].copy_from_slice(&text[start..]);
        self.prefix[digits..digits + 2].copy_from_slice(b"\r\n");
        self.prefix_len = digits + 2;
        self.prefix_sent = 0;
    }

    fn is_empty(&self) -> bool {
        self.head.is_empty()
            && self.prefix_sent == self.prefix_len
            && self.data.is_empty()
            && self.suffix.is_empty()
    }

    fn poll_write(
        &mut self,
        wire: &SharedWire,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ConnectionError>> {
        if self.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut wire = lock(wire);
        while !self.is_empty() {
            let slices = [
                IoSlice::new(self.head),
                IoSlice::new(&self.prefix[self.prefix_sent..self.prefix_len]),
                IoSlice::new(&self.data),
                IoSlice::new(self.suffix),
            ];
            let mut written = ready!(Pin::new(&mut wire.io).poll_write_vectored(cx, &slices))?;
            if written == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            let from_head = written.min(self.head.len());
            self.head = &self.head[from_head..];
            written -= from_head;
            let from_prefix = written.min(self.prefix_len - self.prefix_sent);
            self.prefix_sent += from_prefix;
            written -= from_prefix;
            let from_data = written.min(self.data.len());
            self.data.advance(from_data);
            written -= from_data;
            self.suffix = &self.suffix[written..];
        }
        Poll::Ready(Ok(()))
    }
}

/// Reads and drops the request body bytes that have already arrived, up to [`MAX_DISCARD`],
/// without waiting for more. Returns whether the body ended, so that the connection can take
/// another request.
fn discard_arrived(wire: &mut Wire) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut discarded: u64 = 0;
    loop {
        match wire.body {
            BodyState::Done => return true,
            BodyState::Failed => return false,
            BodyState::Length(_) | BodyState::Chunked(_) => {}
        }
        if discarded > MAX_DISCARD {
            return false;
        }
        match wire.poll_body(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                discarded += frame.data_ref().map_or(0, |data| data.len() as u64);
            }
            Poll::Ready(None) => return true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => return false,
        }
    }
}

/// Waits up to [`DRAIN_GRACE`] for the client of an idle connection to send the start of a
/// request, reading it into the buffer, and returns whether it came. A read rather than a
/// readiness check, because readiness can remain from the last request's read. The wait is
/// boxed, as in [`discard_rest`].
async fn request_arrives(wire: &SharedWire) -> bool {
    let received = poll_fn(|cx| lock(wire).poll_read_more(cx, HEAD_CHUNK));
    let arrived = matches!(
        Box::pin(tokio::time::timeout(DRAIN_GRACE, received)).await,
        Ok(Ok(1..))
    );
    if !arrived {
        lock(wire).release_buffer();
    }
    arrived
}

/// Reads and drops the rest of the request body, waiting up to [`DISCARD_WAIT`] for it to
/// arrive, but not past the start of the drain. Returns whether the body ended, so that the
/// connection can take another request.
///
/// Only a body of known length reaches here, with at most [`MAX_DISCARD`] bytes left, so the
/// wait reads a bounded amount. The wait is boxed, since few requests need it, and the
/// connection's future would otherwise carry its timer while it idles.
async fn discard_rest(wire: &SharedWire, drain: &watch::Receiver<bool>) -> bool {
    if *drain.borrow() {
        return false;
    }
    let mut drain = drain.clone();
    let rest = poll_fn(|cx| {
        let mut wire = lock(wire);
        loop {
            match ready!(wire.poll_body(cx)) {
                Some(Ok(_)) => {}
                None => return Poll::Ready(matches!(wire.body, BodyState::Done)),
                Some(Err(_)) => return Poll::Ready(false),
            }
        }
    });
    let wait = async move {
        tokio::select! {
            discarded = tokio::time::timeout(DISCARD_WAIT, rest) => discarded.unwrap_or(false),
            _ = drain.wait_for(|draining| *draining) => false,
        }
    };
    Box::pin(wait).await
}

/// The fault found in a rejected head: the status the client gets, and the kind and reason
/// that the report and the connection's error carry.
struct Fault {
    status: StatusCode,
    kind: ErrorKind,
    reason: &'static str,
    /// Whether the parser accepted every line of the head, so its fields can be reported.
    fields_parsed: bool,
}

/// Reports the head in the buffer to `on_reject`, writes a bodyless rejection with the
/// fault's status and closes the connection. `started` is when the head's first bytes were
/// read, if that was before the last read.
async fn reject(
    wire: &SharedWire,
    fault: Fault,
    started: Option<Instant>,
    on_reject: impl FnOnce(Rejection),
) -> Result<(), ConnectionError> {
    let Fault {
        status,
        kind,
        reason,
        fields_parsed,
    } = fault;
    let rejected = Instant::now();
    let (parts, bytes_read) = {
        let wire = lock(wire);
        (
            rejection::read_parts(&wire.buffer, fields_parsed),
            wire.buffer.len(),
        )
    };
    on_reject(Rejection {
        status,
        kind,
        reason,
        started: started.unwrap_or(rejected),
        rejected,
        bytes_read,
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
    });

    let mut out = Vec::with_capacity(128);
    encode_rejection(&mut out, status);
    let mut pending = Outgoing::new(&out);
    poll_fn(|cx| pending.poll_write(wire, cx)).await?;
    close(wire, true).await;
    Err(ConnectionError::Rejected { status, reason })
}

/// Ends the connection with a FIN. When the client may still be sending (`unread`), keeps
/// reading and dropping its bytes for a while first. Closing a socket with unread bytes makes
/// the kernel reset the connection, and the client may then lose the response it has not
/// read yet.
async fn close(wire: &SharedWire, unread: bool) {
    let shutdown = poll_fn(|cx| Pin::new(&mut lock(wire).io).poll_shutdown(cx)).await;
    if shutdown.is_err() || !unread {
        return;
    }
    let linger = async {
        let mut read = 0;
        loop {
            let received = poll_fn(|cx| {
                let mut wire = lock(wire);
                wire.buffer.clear();
                wire.poll_read_more(cx, HEAD_CHUNK)
            })
            .await;
            match received {
                Ok(0) | Err(_) => break,
                Ok(received) => {
                    read += received;
                    if read > MAX_LINGER_BYTES {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}
