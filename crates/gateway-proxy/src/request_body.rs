//! The request body sent to a backend, which remembers whether any of it was taken, so that a
//! request can be sent again only while its body is untouched.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pin_project_lite::pin_project! {
    /// A client's request body on its way to a backend.
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        // Whether any frame was taken, after which the body cannot be sent again.
        touched: bool,
    }
}

impl RequestBody {
    /// Wraps `inner`.
    pub(crate) fn new(inner: Incoming) -> RequestBody {
        RequestBody {
            inner,
            touched: false,
        }
    }

    /// Returns whether the body can still be sent from its start: none of it was taken yet.
    pub(crate) fn is_replayable(&self) -> bool {
        !self.touched
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        *this.touched |= frame.is_some();
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
