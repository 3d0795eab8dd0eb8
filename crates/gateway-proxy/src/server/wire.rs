//! A client connection's socket and read buffer, shared by the connection's loop and the body
//! of the request in progress, and that body, [`Inbound`].
//!
//! Both run in the connection's one task and take turns. The loop reads request heads and
//! writes responses, and the request's body reads its own bytes when the code that owns it
//! polls it. The lock is never contended. It only lets the body live inside the request,
//! which the layers and the forwarder move around freely.

use crate::chunked::{ChunkedDecoder, Decoded};
use crate::server::head::BodyFraming;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::cell::RefCell;
use std::io;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// Room a read of body bytes offers the socket at least.
const BODY_CHUNK: usize = 16 * 1024;

/// The interim response sent before the body of a request that expects it.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Room the first read for a request head offers the socket. Most heads fit in one read of
/// this size; a larger one grows the buffer.
pub(crate) const HEAD_CHUNK: usize = 4 * 1024;

/// Maximum spare head buffers each thread keeps for its connections.
const MAX_SPARE_BUFFERS: usize = 64;

thread_local! {
    // Read buffers of connections that went idle, for the next connection that has bytes to
    // read. Idle connections then hold no buffer, and busy ones take turns with a few.
    static SPARE_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A client connection's byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {
    /// Waits until a read would return bytes or the end of the stream, without reading.
    /// An idle connection waits here without a read buffer. The default reports ready at
    /// once, so the wait happens in the read, with a buffer.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// Called when the connection starts to wait for its next request head, with whether
    /// bytes of that head were already read (pipelined, or read ahead during the response).
    /// The default does nothing.
    fn awaiting_head(&self, buffered: bool) {
        let _ = buffered;
    }

    /// Called once per head when part of it has arrived and the rest is awaited, the moment a
    /// slow or stalled client is first seen. A head that arrives whole makes no call. The
    /// default does nothing.
    fn head_partial(&self) {}
}

impl Io for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl Io for tokio::io::DuplexStream {}

/// The state of the body of the request in progress.
#[derive(Debug)]
pub(crate) enum BodyState {
    /// No body, or all of it was read.
    Done,
    /// This many bytes are still to come.
    Length(u64),
    /// A chunked body, decoded as it arrives.
    Chunked(ChunkedDecoder),
    /// The body could not be read; the connection cannot serve another request.
    Failed,
}

/// The connection state that the loop and the request body share.
pub(crate) struct Wire {
    pub(crate) io: Box<dyn Io>,
    /// Bytes read and not yet taken: the rest of a head, body bytes, or a pipelined request.
    pub(crate) buffer: BytesMut,
    pub(crate) body: BodyState,
    /// Bytes of `100 Continue` still to write before the body is read, when the client
    /// waits for it.
    continue_left: usize,
    /// Interim responses from the backend, encoded for the client and not yet written whole
    /// (see [`Wire::poll_flush_interim`]).
    interim: Vec<u8>,
    /// Bytes of `interim` written so far.
    interim_sent: usize,
    /// Whether the service has polled the request body. Until it does, the connection loop
    /// reads ahead on its own to notice a client that leaves.
    pub(crate) body_polled: bool,
}

pub(crate) type SharedWire = Arc<Mutex<Wire>>;

/// Locks `wire`. A panic while it was held leaves nothing half-done that a later user could
/// trip on (every change is a single assignment), so a poisoned lock is used as it is.
pub(crate) fn lock(wire: &Mutex<Wire>) -> MutexGuard<'_, Wire> {
    wire.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Wire {
    /// Starts with no buffer: the first read makes one.
    pub(crate) fn new(io: Box<dyn Io>) -> Wire {
        Wire {
            io,
            buffer: BytesMut::new(),
            body: BodyState::Done,
            continue_left: 0,
            interim: Vec::new(),
            interim_sent: 0,
            body_polled: false,
        }
    }

    /// Starts the body of a new request.
    pub(crate) fn start_body(&mut self, framing: BodyFraming, expects_continue: bool) {
        self.body = match framing {
            BodyFraming::Empty => BodyState::Done,
            BodyFraming::Length(length) => BodyState::Length(length),
            BodyFraming::Chunked => BodyState::Chunked(ChunkedDecoder::new()),
        };
        self.continue_left = if expects_continue { CONTINUE.len() } else { 0 };
        self.body_polled = false;
    }

    /// Waits for bytes to read, as [`Io::poll_read_ready`].
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_read_ready(cx)
    }

    /// Gives the empty read buffer of a connection that went idle to the thread's spares.
    pub(crate) fn release_buffer(&mut self) {
        if self.buffer.capacity() == 0 {
            return;
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        // A buffer that grew for a large head or a body goes back to the allocator.
        if buffer.capacity() <= 2 * HEAD_CHUNK {
            SPARE_BUFFERS.with_borrow_mut(|spare| {
                if spare.len() < MAX_SPARE_BUFFERS {
                    spare.push(buffer);
                }
            });
        }
    }

    /// Reads more bytes into the buffer, first making room for about `chunk` bytes when it
    /// has less than a quarter of that. Returns how many were read; 0 at the end of the
    /// stream.
    pub(crate) fn poll_read_more(
        &mut self,
        cx: &mut Context<'_>,
        chunk: usize,
    ) -> Poll<io::Result<usize>> {
        if self.buffer.capacity() == 0 && chunk == HEAD_CHUNK {
            self.buffer = SPARE_BUFFERS
                .with_borrow_mut(Vec::pop)
                .unwrap_or_else(|| BytesMut::with_capacity(HEAD_CHUNK));
        }
        if self.buffer.capacity() - self.buffer.len() < chunk / 4 {
            self.buffer.reserve(chunk);
        }
        let read = pin!(self.io.read_buf(&mut self.buffer));
        read.poll(cx)
    }

    /// Returns the next piece of the request body, and reads the socket when the buffer
    /// contains none of it.
    pub(crate) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InboundError>>> {
        self.body_polled = true;
        loop {
            match &mut self.body {
                BodyState::Done | BodyState::Failed => return Poll::Ready(None),
                BodyState::Length(left) if !self.buffer.is_empty() => {
                    let take = (*left).min(self.buffer.len() as u64) as usize;
                    *left -= take as u64;
                    if *left == 0 {
                        self.body = BodyState::Done;
                    }
                    let data = self.buffer.split_to(take).freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // Decoded even with nothing buffered: after the trailers, the end needs no
                // more input.
                BodyState::Chunked(decoder) => {
                    let mut joined = BytesMut::new();
                    match decoder.decode_joined(&self.buffer, &mut joined) {
                        Ok((used, Some(Decoded::Data(range)))) => {
                            let data = self.buffer.split_to(used).freeze().slice(range);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok((used, Some(Decoded::Joined))) => {
                            let _ = self.buffer.split_to(used);
                            return Poll::Ready(Some(Ok(Frame::data(joined.freeze()))));
                        }
                        Ok((used, Some(Decoded::Trailers(fields)))) => {
                            let _ = self.buffer.split_to(used);
                            return Poll::Ready(Some(Ok(Frame::trailers(fields))));
                        }
                        Ok((used, Some(Decoded::End))) => {
                            let _ = self.buffer.split_to(used);
                            self.body = BodyState::Done;
                            return Poll::Ready(None);
                        }
                        // Every byte went into a size line or a trailer: read on.
                        Ok((used, None)) => {
                            let _ = self.buffer.split_to(used);
                        }
                        Err(error) => {
                            self.body = BodyState::Failed;
                            return Poll::Ready(Some(Err(InboundError::Chunked(
                                error.to_string(),
                            ))));
                        }
                    }
                }
                BodyState::Length(_) => {}
            }
            if let Err(error) = ready!(self.poll_send_continue(cx)) {
                self.body = BodyState::Failed;
                return Poll::Ready(Some(Err(InboundError::Io(error))));
            }
            match ready!(self.poll_read_more(cx, BODY_CHUNK)) {
                Ok(0) => {
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(InboundError::Closed)));
                }
                Ok(_) => {}
                Err(error) => {
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(InboundError::Io(error))));
                }
            }
        }
    }

    /// Writes what is left of `100 Continue`, if the client waits for it, after the interim
    /// responses queued before it.
    fn poll_send_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.continue_left > 0 {
            // Checked only while `100 Continue` is due, so a body read without one pays
            // nothing for it. One response must not start inside another.
            if self.continue_left == CONTINUE.len() && !self.interim.is_empty() {
                ready!(self.poll_write_interim(cx))?;
            }
            let rest = &CONTINUE[CONTINUE.len() - self.continue_left..];
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_left -= written;
        }
        Poll::Ready(Ok(()))
    }

    /// Queues interim responses encoded for the client, to be written by
    /// [`Wire::poll_flush_interim`] or ahead of the final response head
    /// ([`Wire::take_unsent_interim`]).
    pub(crate) fn queue_interim(&mut self, encoded: Vec<u8>) {
        if self.interim.is_empty() {
            self.interim = encoded;
            self.interim_sent = 0;
        } else {
            self.interim.extend_from_slice(&encoded);
        }
    }

    /// Writes the queued interim responses, after the rest of a `100 Continue` that is partly
    /// written, so that no response starts inside another. Ready once all of them are
    /// written.
    pub(crate) fn poll_flush_interim(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.continue_left > 0 && self.continue_left < CONTINUE.len() {
            ready!(self.poll_send_continue(cx))?;
        }
        self.poll_write_interim(cx)
    }

    /// Writes the queued interim responses, and frees their buffer once they are written.
    fn poll_write_interim(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.interim_sent < self.interim.len() {
            let rest = &self.interim[self.interim_sent..];
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.interim_sent += written;
        }
        self.interim = Vec::new();
        self.interim_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Returns whether interim responses wait to be written.
    pub(crate) fn has_unsent_interim(&self) -> bool {
        !self.interim.is_empty()
    }

    /// Moves what is unwritten of the queued interim responses to `out`, which the final
    /// response head follows, with the rest of a `100 Continue` that is partly written in
    /// front of them.
    pub(crate) fn take_unsent_interim(&mut self, out: &mut Vec<u8>) {
        if self.continue_left > 0 && self.continue_left < CONTINUE.len() {
            out.extend_from_slice(&CONTINUE[CONTINUE.len() - self.continue_left..]);
            self.continue_left = 0;
        }
        out.extend_from_slice(&self.interim[self.interim_sent..]);
        self.interim = Vec::new();
        self.interim_sent = 0;
    }

    /// Returns whether `100 Continue` was due and never sent: the request body was never
    /// asked for.
    pub(crate) fn continue_unsent(&self) -> bool {
        self.continue_left == CONTINUE.len()
    }
}

/// A failure to read a request body from the client.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The client closed the connection before the body ended.
    #[error("client closed the connection before the request body ended")]
    Closed,
    /// The chunked coding is invalid. The message names the fault.
    #[error("invalid chunked request body: {0}")]
    Chunked(String),
    /// Reading the socket failed.
    #[error("failed to read the request body")]
    Io(#[source] io::Error),
}

/// A request body as it arrives from the client. The task that polls it reads the
/// connection's socket.
pub struct Inbound {
    /// The connection, while the body may still have bytes to read.
    wire: Option<SharedWire>,
    /// The address of the connection's peer, when the caller recorded it.
    peer: Option<IpAddr>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("ended", &self.wire.is_none())
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// Returns a body with nothing in it.
    pub fn empty() -> Inbound {
        Inbound {
            wire: None,
            peer: None,
        }
    }

    pub(crate) fn new(wire: &SharedWire, framing: BodyFraming) -> Inbound {
        match framing {
            BodyFraming::Empty => Inbound::empty(),
            BodyFraming::Length(_) | BodyFraming::Chunked => Inbound {
                wire: Some(Arc::clone(wire)),
                peer: None,
            },
        }
    }

    /// Records the address of the connection's peer, which the forwarder appends to
    /// `X-Forwarded-For`.
    ///
    /// The body carries it because the request's extension map would box it: an allocation
    /// and a hash-map insert per request, about 400 instructions with the map's clearing.
    pub fn set_peer(&mut self, peer: IpAddr) {
        self.peer = Some(peer);
    }

    /// Returns the address of the connection's peer, when it was recorded.
    pub fn peer(&self) -> Option<IpAddr> {
        self.peer
    }
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = InboundError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InboundError>>> {
        let Some(wire) = self.wire.as_ref() else {
            return Poll::Ready(None);
        };
        let frame = ready!(lock(wire).poll_body(cx));
        if frame.is_none() {
            // Ended: the connection needs no more turns from this body.
            self.wire = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.wire.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let Some(wire) = self.wire.as_ref() else {
            return SizeHint::with_exact(0);
        };
        // The bytes still to come, once some were read.
        match lock(wire).body {
            BodyState::Length(left) => SizeHint::with_exact(left),
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Chunked(_) | BodyState::Failed => SizeHint::default(),
        }
    }
}
