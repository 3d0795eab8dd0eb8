//! Response bodies: a complete buffer, a run of `x` bytes of known length, and timed chunks.
//!
//! The streamed bodies hand out one frame at a time, so a large or slow response never
//! keeps more than one frame in memory.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// Size of each frame of a [`MockBody::Filler`] body.
pub(crate) const FILLER_FRAME_SIZE: usize = 64 * 1024;

/// One frame of filler, shared by every response so that no response allocates its body.
static FILLER: [u8; FILLER_FRAME_SIZE] = [b'x'; FILLER_FRAME_SIZE];

/// The body of every response this server sends.
pub(crate) enum MockBody {
    /// A complete body, sent as one frame. `None` once sent.
    Full(Option<Bytes>),
    /// `remaining` more bytes of `x`, in frames of [`FILLER_FRAME_SIZE`].
    Filler { remaining: u64 },
    /// Numbered chunks with a pause between them.
    Chunks(Chunks),
}

/// State of a [`MockBody::Chunks`] body.
pub(crate) struct Chunks {
    next: u64,
    count: u64,
    delay: Duration,
    pause: Option<Pin<Box<Sleep>>>,
}

impl MockBody {
    /// Creates a body of `count` chunks `chunk 0\n`, `chunk 1\n`, and so on, the first sent at once
    /// and each later one `delay` after the previous.
    pub(crate) fn chunks(count: u64, delay: Duration) -> Self {
        Self::Chunks(Chunks {
            next: 0,
            count,
            delay,
            pause: None,
        })
    }
}

impl From<Bytes> for MockBody {
    fn from(bytes: Bytes) -> Self {
        Self::Full(Some(bytes))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|data| Ok(Frame::data(data)))),

            Self::Filler { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let len = usize::try_from(*remaining).map_or(FILLER_FRAME_SIZE, |remaining| {
                    remaining.min(FILLER_FRAME_SIZE)
                });
                *remaining -= len as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILLER[..len])))))
            }

            Self::Chunks(chunks) => {
                if chunks.next == chunks.count {
                    return Poll::Ready(None);
                }
                if let Some(pause) = chunks.pause.as_mut() {
                    ready!(pause.as_mut().poll(cx));
                    chunks.pause = None;
                }

                let data = Bytes::from(format!("chunk {}\n", chunks.next));
                chunks.next += 1;
                if chunks.next < chunks.count && !chunks.delay.is_zero() {
                    chunks.pause = Some(Box::pin(tokio::time::sleep(chunks.delay)));
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Filler { remaining } => *remaining == 0,
            Self::Chunks(chunks) => chunks.next == chunks.count,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Filler { remaining } => SizeHint::with_exact(*remaining),
            // Unknown length makes hyper use `Transfer-Encoding: chunked`.
            Self::Chunks(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn frames(mut body: MockBody) -> Vec<Bytes> {
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        frames
    }

    #[tokio::test]
    async fn filler_is_split_into_frames() {
        let total = 2 * FILLER_FRAME_SIZE as u64 + 10;
        let body = MockBody::Filler { remaining: total };
        assert_eq!(body.size_hint().exact(), Some(total));

        let frames = frames(body).await;
        let lengths: Vec<usize> = frames.iter().map(Bytes::len).collect();
        assert_eq!(lengths, [FILLER_FRAME_SIZE, FILLER_FRAME_SIZE, 10]);
        assert!(frames.iter().all(|frame| frame.iter().all(|&b| b == b'x')));
    }

    #[tokio::test]
    async fn empty_filler_has_no_frames() {
        let body = MockBody::Filler { remaining: 0 };
        assert!(body.is_end_stream());
        assert!(frames(body).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_are_numbered_from_zero() {
        let body = MockBody::chunks(3, Duration::from_millis(50));
        assert_eq!(body.size_hint().exact(), None);

        let frames = frames(body).await;
        assert_eq!(frames, ["chunk 0\n", "chunk 1\n", "chunk 2\n"]);
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_wait_between_frames() {
        let start = tokio::time::Instant::now();
        frames(MockBody::chunks(3, Duration::from_millis(50))).await;
        // Paused time advances only through the sleeps, so this is exact, not a timing race.
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}
