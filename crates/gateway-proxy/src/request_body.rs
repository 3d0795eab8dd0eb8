//! The request body sent to a backend, with a count of the bytes that left, so that a stalled
//! upload can be distinguished from a slow backend.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

/// Bytes of a request body forwarded so far; `u64::MAX` once the body has ended.
#[derive(Debug, Default)]
pub(crate) struct Progress(AtomicU64);

impl Progress {
    /// Returns the bytes forwarded so far, or `None` once the body has ended.
    pub(crate) fn sent(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            u64::MAX => None,
            sent => Some(sent),
        }
    }
}

pin_project_lite::pin_project! {
    /// A client's request body on its way to a backend.
    ///
    /// Bodies that are empty from the start carry no counter, so a GET costs nothing extra.
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        progress: Option<Arc<Progress>>,
        // Whether any frame was taken, after which the body cannot be sent again.
        touched: bool,
    }
}

impl RequestBody {
    /// Wraps `inner`, counting its bytes when it has any.
    pub(crate) fn new(inner: Incoming) -> (RequestBody, Option<Arc<Progress>>) {
        let progress = (!inner.is_end_stream()).then(|| Arc::new(Progress::default()));
        let body = RequestBody {
            inner,
            progress: progress.clone(),
            touched: false,
        };
        (body, progress)
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
        if let Some(progress) = this.progress {
            match &frame {
                Some(Ok(frame)) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    progress.0.fetch_add(len, Ordering::Relaxed);
                }
                None => progress.0.store(u64::MAX, Ordering::Relaxed),
                Some(Err(_)) => {}
            }
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
