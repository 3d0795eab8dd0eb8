//! The response body the gateway sends: a gateway-made buffer or a backend's streamed body.

use crate::chunked::{ChunkedDecoder, Decoded};
use crate::client::{Connection, Lease};
use crate::codec::BodyFraming;
use crate::request_body::RequestBody;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// A response body: either bytes the gateway made, or a backend's body streamed through.
///
/// A backend body keeps the backend's in-flight count and its connection until the body
/// ends. The connection returns to the pool only when the body was read to its end.
pub struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Backend(BackendBody),
}

impl ProxyBody {
    /// Creates an empty body.
    pub fn empty() -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(None),
        }
    }

    /// Wraps a backend's body.
    pub(crate) fn backend(backend: BackendBody) -> ProxyBody {
        ProxyBody {
            kind: Kind::Backend(backend),
        }
    }
}

impl From<Bytes> for ProxyBody {
    fn from(data: Bytes) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full((!data.is_empty()).then_some(data)),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Backend(backend) => backend.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Backend(backend) => backend.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Backend(backend) => backend.size_hint(),
        }
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full(data) => f.debug_struct("Full").field("data", data).finish(),
            Kind::Backend(_) => f.debug_struct("Backend").finish_non_exhaustive(),
        }
    }
}

/// The read position in a backend body.
enum Reading {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    /// Everything until the backend closes the connection.
    UntilClose,
    /// The body ended.
    Done,
}

/// A backend's response body, read from its connection each time the server polls it.
pub(crate) struct BackendBody {
    connection: Option<Box<Connection>>,
    reading: Reading,
    keep_alive: bool,
    // The request body, while part of it is still to be sent.
    request: Option<RequestBody>,
    lease: Option<Lease>,
    /// A read error held back for one poll (see [`BackendBody::poll_frame`]).
    failed: Option<io::Error>,
}

impl BackendBody {
    /// Creates the body that follows a response head on `connection`. `request` is the
    /// request body when part of it is still unsent; `keep_alive` is whether the backend
    /// allows another request on the connection.
    pub(crate) fn new(
        connection: Box<Connection>,
        framing: BodyFraming,
        keep_alive: bool,
        request: Option<RequestBody>,
        lease: Lease,
    ) -> BackendBody {
        let reading = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => Reading::Done,
            BodyFraming::Length(length) => Reading::Length(length),
            BodyFraming::Chunked => Reading::Chunked(Box::new(ChunkedDecoder::for_response())),
            BodyFraming::UntilClose => Reading::UntilClose,
        };
        let mut body = BackendBody {
            connection: Some(connection),
            reading,
            keep_alive,
            request,
            lease: Some(lease),
            failed: None,
        };
        if matches!(body.reading, Reading::Done) && body.request.is_none() {
            release(&mut body.connection, &mut body.lease, keep_alive);
        }
        body
    }

    /// Returns the next frame of the body.
    ///
    /// A read error is held back for one poll, with a wake-up. A server that buffers what it
    /// writes may close the connection on a body error without writing what it buffered,
    /// which can be the response head and the first bytes of the body. The client would then
    /// get an empty reply while the log records the status. Held back, the error lets such a
    /// server write first, and the client gets the head and the body up to the failure, then
    /// the close, as from NGINX. The gateway's own server writes each frame before it polls
    /// for the next, so for it the hold costs one poll.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(error) = self.failed.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match self.read_frame(cx) {
            Poll::Ready(Some(Err(error))) => {
                self.failed = Some(error);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            polled => polled,
        }
    }

    fn read_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let BackendBody {
            connection: slot,
            reading,
            keep_alive,
            request,
            lease,
            failed: _,
        } = self;
        let Some(connection) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        // A backend may respond before it read the whole request. The rest is still sent,
        // because some backends stream their response while reading.
        if let Some(unsent) = request.as_mut() {
            match connection.poll_send(cx, unsent) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => *request = None,
                Poll::Ready(Err(_)) => {
                    *request = None;
                    *keep_alive = false;
                }
            }
        }
        // The response ending before the request means the connection is not reused: waiting
        // for the rest of the request would hold the client for nothing.
        let reusable =
            |keep_alive: bool, request: &Option<RequestBody>| keep_alive && request.is_none();
        loop {
            let buffered = connection.buffered().len();
            match reading {
                Reading::Done => {
                    release(slot, lease, reusable(*keep_alive, request));
                    return Poll::Ready(None);
                }
                Reading::Length(left) if buffered > 0 => {
                    let take = (*left).min(buffered as u64) as usize;
                    let data = connection.take(take);
                    *left -= take as u64;
                    if *left == 0 {
                        *reading = Reading::Done;
                        if request.is_none() {
                            // Frees the connection now rather than on the next poll.
                            release(slot, lease, *keep_alive);
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Reading::Chunked(decoder) if buffered > 0 => {
                    let mut joined = BytesMut::new();
                    let (used, found) =
                        match decoder.decode_joined(connection.buffered(), &mut joined) {
                            Ok(step) => step,
                            Err(error) => {
                                *reading = Reading::Done;
                                if let Some(lease) = lease.as_ref() {
                                    lease.note_body_failure(&error);
                                }
                                release(slot, lease, false);
                                return Poll::Ready(Some(Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    error,
                                ))));
                            }
                        };
                    match found {
                        None => connection.consume(used),
                        Some(Decoded::Data(range)) => {
                            let data = connection.copy(range);
                            connection.consume(used);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Some(Decoded::Joined) => {
                            connection.consume(used);
                            return Poll::Ready(Some(Ok(Frame::data(joined.freeze()))));
                        }
                        Some(Decoded::Trailers(trailers)) => {
                            // Trailers end the body, and a server may stop polling after
                            // them, so the connection is released now.
                            connection.consume(used);
                            *reading = Reading::Done;
                            release(slot, lease, reusable(*keep_alive, request));
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Some(Decoded::End) => {
                            connection.consume(used);
                            *reading = Reading::Done;
                        }
                    }
                }
                Reading::UntilClose if buffered > 0 => {
                    return Poll::Ready(Some(Ok(Frame::data(connection.take(buffered)))));
                }
                _ => {
                    let error = match ready!(connection.poll_fill(cx)) {
                        Ok(0) if matches!(reading, Reading::UntilClose) => {
                            *reading = Reading::Done;
                            *keep_alive = false;
                            continue;
                        }
                        Ok(0) => io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "backend closed the connection before the end of the body",
                        ),
                        Ok(_) => continue,
                        Err(error) => error,
                    };
                    *reading = Reading::Done;
                    if let Some(lease) = lease.as_ref() {
                        lease.note_body_failure(&error);
                    }
                    release(slot, lease, false);
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A connection still held after the body is read goes back to the pool on the next
        // poll, so the body does not end before that poll. The exception is a backend that
        // responded before reading the whole request. Its connection closes either way, and
        // a server that stops polling here drops the body, which closes it. The response is
        // complete, and reporting the end here lets the log record it as complete.
        // A held-back error is not an end: ending here would let a server end the body as
        // if it were whole, with a last chunk a client reads as complete.
        matches!(self.reading, Reading::Done)
            && (self.connection.is_none() || self.request.is_some())
            && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Done if self.failed.is_some() => SizeHint::default(),
            Reading::Done => SizeHint::with_exact(0),
            Reading::Length(left) => SizeHint::with_exact(left),
            Reading::Chunked(_) | Reading::UntilClose => SizeHint::default(),
        }
    }
}

/// Ends a body's use of its connection: the connection returns to the pool when `reusable`
/// and nothing unread is left on it, and closes otherwise.
fn release(slot: &mut Option<Box<Connection>>, lease: &mut Option<Lease>, reusable: bool) {
    let connection = slot.take();
    if let Some(lease) = lease.take() {
        lease.finish(connection.filter(|c| reusable && c.buffered().is_empty()));
    }
}

impl Drop for BackendBody {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response: it closes.
        release(&mut self.connection, &mut self.lease, false);
    }
}
