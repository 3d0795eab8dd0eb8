//! Request ids: a client's `X-Request-Id` is kept, a missing or unusable one is generated, and
//! the id goes to the backend and back on the response.

use crate::value_store;
use http::header::Entry;
use http::{HeaderName, HeaderValue, Request, Response};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// The `X-Request-Id` header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Maximum length of a client-sent id that is kept. A longer one is replaced.
const MAX_ID_LEN: usize = 128;

/// A random value per process in hex, so ids from different runs differ.
static PROCESS_PREFIX: LazyLock<[u8; 16]> =
    LazyLock::new(|| hex(RandomState::new().hash_one(std::process::id())));
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Generates a new request id: 32 hex digits, unique within the process.
pub fn generate() -> HeaderValue {
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut text = [0u8; 32];
    text[..16].copy_from_slice(&*PROCESS_PREFIX);
    text[16..].copy_from_slice(&hex(count));
    // Hex digits are always a valid header value.
    value_store::header_value(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The two hex digits of each byte value.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// Returns `value` as 16 lowercase hex digits, a byte at a time.
fn hex(value: u64) -> [u8; 16] {
    let mut text = [0u8; 16];
    for (pair, byte) in text.chunks_exact_mut(2).zip(value.to_be_bytes()) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    text
}

fn is_usable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_ID_LEN && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// Layer that applies [`RequestId`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

/// Keeps or assigns `X-Request-Id` on the request and copies it onto the response.
///
/// A client id of 1 to 128 visible ASCII characters is kept; any other is replaced.
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestId<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // One lookup serves both the check and the insert.
        let id = match request.headers_mut().entry(&X_REQUEST_ID) {
            Entry::Occupied(mut entry) if is_usable(entry.get()) => {
                let id = entry.get().clone();
                // The backend gets the one id kept, not the client's others after it.
                if entry.iter().nth(1).is_some() {
                    entry.insert(id.clone());
                }
                id
            }
            Entry::Occupied(mut entry) => {
                let value = generate();
                entry.insert(value.clone());
                value
            }
            Entry::Vacant(entry) => {
                let value = generate();
                entry.insert(value.clone());
                value
            }
        };
        ResponseFuture {
            inner: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`RequestId`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(&X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    async fn run(request: Request<()>) -> (Option<HeaderValue>, Response<()>) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let recorder = std::sync::Arc::clone(&seen);
        let service = RequestIdLayer.layer(tower::service_fn(move |request: Request<()>| {
            *recorder.lock().unwrap() = request.headers().get(&X_REQUEST_ID).cloned();
            async { Ok::<_, Infallible>(Response::new(())) }
        }));
        let response = service.oneshot(request).await.unwrap();
        let forwarded = seen.lock().unwrap().clone();
        (forwarded, response)
    }

    #[tokio::test]
    async fn client_id_is_kept() {
        let request = Request::builder()
            .header("x-request-id", "abc-123")
            .body(())
            .unwrap();
        let (forwarded, response) = run(request).await;
        assert_eq!(forwarded.unwrap(), "abc-123");
        assert_eq!(response.headers()["x-request-id"], "abc-123");
    }

    #[tokio::test]
    async fn first_of_several_ids_is_kept_alone() {
        let request = Request::builder()
            .header("x-request-id", "one")
            .header("x-request-id", "two")
            .body(())
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = std::sync::Arc::clone(&seen);
        let service = RequestIdLayer.layer(tower::service_fn(move |request: Request<()>| {
            let values = request.headers().get_all(&X_REQUEST_ID).iter().cloned();
            recorder.lock().unwrap().extend(values);
            async { Ok::<_, Infallible>(Response::new(())) }
        }));
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), ["one"]);
        assert_eq!(response.headers()["x-request-id"], "one");
    }

    #[tokio::test]
    async fn missing_id_is_generated() {
        let (forwarded, response) = run(Request::new(())).await;
        let forwarded = forwarded.unwrap();
        assert_eq!(forwarded.len(), 32);
        assert_eq!(response.headers()["x-request-id"], forwarded);
    }

    #[tokio::test]
    async fn unusable_id_is_replaced() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in ["has space", long.as_str(), ""] {
            let request = Request::builder()
                .header("x-request-id", bad)
                .body(())
                .unwrap();
            let (forwarded, _) = run(request).await;
            assert_eq!(forwarded.unwrap().len(), 32, "{bad:?}");
        }
    }

    #[test]
    fn hex_matches_formatting() {
        for value in [0, 1, 0xf, 0x10, 0xab_cdef, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(hex(value), format!("{value:016x}").as_bytes(), "{value:#x}");
        }
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(generate(), generate());
    }

    #[test]
    fn generated_ids_stay_intact() {
        // Enough ids to fill several id buffers, all alive at once.
        let ids: Vec<HeaderValue> = (0..1000).map(|_| generate()).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert_ne!(ids[i], ids[(i + 1) % ids.len()]);
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
