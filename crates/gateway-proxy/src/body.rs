//! The response body the gateway sends: a gateway-made buffer or a backend's streamed body.

use crate::client::Lease;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// A response body: either bytes the gateway made, or a backend's body streamed through.
    ///
    /// A backend body keeps the backend's in-flight count and its pooled connection until the
    /// body ends; the connection returns to the pool only when the body was read to its end.
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind {
        Full { data: Option<Bytes> },
        Backend {
            #[pin]
            body: Incoming,
            lease: Option<Lease>,
        },
    }

    impl PinnedDrop for Kind {
        fn drop(this: Pin<&mut Self>) {
            if let KindProj::Backend { body, lease } = this.project()
                && let Some(lease) = lease.take()
            {
                lease.finish(body.is_end_stream());
            }
        }
    }
}

impl ProxyBody {
    /// Creates an empty body.
    pub fn empty() -> ProxyBody {
        ProxyBody {
            kind: Kind::Full { data: None },
        }
    }

    /// Wraps a backend's body, keeping `lease` until it ends.
    pub fn backend(body: Incoming, lease: Lease) -> ProxyBody {
        ProxyBody {
            kind: Kind::Backend {
                body,
                lease: Some(lease),
            },
        }
    }
}

impl From<Bytes> for ProxyBody {
    fn from(data: Bytes) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Backend { body, lease } => {
                let polled = body.poll_frame(cx);
                match &polled {
                    // The end of the body frees the connection for the next request now,
                    // rather than when the server drops the body.
                    Poll::Ready(None) => {
                        if let Some(lease) = lease.take() {
                            lease.finish(true);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(lease) = lease.take() {
                            lease.finish(false);
                        }
                    }
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Backend { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Backend { body, .. } => body.size_hint(),
        }
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full { data } => f.debug_struct("Full").field("data", data).finish(),
            Kind::Backend { .. } => f.debug_struct("Backend").finish_non_exhaustive(),
        }
    }
}
