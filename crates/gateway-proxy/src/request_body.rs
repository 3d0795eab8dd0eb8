//! The request body sent to a backend, which remembers whether any of it was taken, so that a
//! request can be sent again only while its body is untouched.

use crate::server::{Inbound, InboundError};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

/// A request extension that counts the request body bytes read from the client, for the
/// access line and the request log. The reader of the count adds it. Without it, nothing is
/// counted.
#[derive(Debug, Clone, Default)]
pub struct ReceivedBytes(Arc<AtomicU64>);

impl ReceivedBytes {
    /// Returns the bytes counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.0.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A client's request body on its way to a backend.
    pub struct RequestBody {
        #[pin]
        inner: Inbound,
        // Whether any frame was taken, after which the body cannot be sent again.
        touched: bool,
        received: Option<ReceivedBytes>,
    }
}

impl RequestBody {
    /// Wraps `inner`, counting the data it reads into `received` when given.
    pub(crate) fn new(inner: Inbound, received: Option<ReceivedBytes>) -> RequestBody {
        RequestBody {
            inner,
            touched: false,
            received,
        }
    }

    /// Returns whether the body can still be sent from its start: none of it was taken yet.
    pub(crate) fn is_replayable(&self) -> bool {
        !self.touched
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = InboundError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InboundError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        *this.touched |= frame.is_some();
        if let (Some(received), Some(Ok(frame))) = (this.received.as_ref(), frame.as_ref())
            && let Some(data) = frame.data_ref()
        {
            received.add(data.len());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
