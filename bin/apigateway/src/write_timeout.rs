//! The server's write timeout: a response body that is still sending when the deadline passes
//! fails, which makes the server close the connection.

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

/// The error a body reports when its deadline passes.
#[derive(Debug, thiserror::Error)]
#[error("response not sent within the write timeout")]
pub(crate) struct WriteTimedOut;

pin_project! {
    /// A body that fails once `deadline` has passed. The timer is only created when the inner
    /// body has to wait, so bodies that are ready at once cost no timer.
    pub(crate) struct DeadlineBody<B> {
        #[pin]
        inner: B,
        deadline: Instant,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<B> DeadlineBody<B> {
    pub(crate) fn new(inner: B, deadline: Instant) -> DeadlineBody<B> {
        DeadlineBody {
            inner,
            deadline,
            sleep: None,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        if this.sleep.is_none() {
            this.sleep
                .set(Some(tokio::time::sleep_until(*this.deadline)));
        }
        if let Some(sleep) = this.sleep.as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(Box::new(WriteTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
