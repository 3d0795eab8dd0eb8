//! Panic recovery: a panic while handling a request becomes a 500 response, and the panic's
//! message and stack trace are logged with the request it broke.
//!
//! Rust's panic hook runs where the panic happens, before unwinding, so it is the only place a
//! stack trace can be captured. [`install_panic_hook`] records the message and trace in a
//! thread-local slot while a [`CatchPanic`] future is being polled; the future then logs them
//! with the request's id, method and path. A panic anywhere else is logged by the hook itself.

use crate::json::error_response;
use crate::request_id::X_REQUEST_ID;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

struct Caught {
    message: String,
    location: String,
    backtrace: Backtrace,
}

thread_local! {
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    static CAUGHT: RefCell<Option<Caught>> = const { RefCell::new(None) };
}

/// Installs the process-wide panic hook that captures stack traces. Call it once at start.
/// Without it, caught panics still get a 500 response but are logged without a trace.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let backtrace = Backtrace::force_capture();
        if CATCHING.get() {
            CAUGHT.set(Some(Caught {
                message,
                location,
                backtrace,
            }));
        } else {
            tracing::error!(panic = %message, %location, backtrace = %backtrace, "thread panicked");
        }
    }));
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Runs `f` with the hook in recording mode and returns its result or the recorded panic.
fn catching<T>(f: impl FnOnce() -> T) -> Result<T, Caught> {
    let was = CATCHING.replace(true);
    let result = catch_unwind(AssertUnwindSafe(f));
    CATCHING.set(was);
    result.map_err(|payload| {
        CAUGHT.take().unwrap_or_else(|| Caught {
            message: panic_message(&*payload),
            location: String::new(),
            backtrace: Backtrace::disabled(),
        })
    })
}

/// Layer that applies [`CatchPanic`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// Turns a panic in the inner service's `call` or future into a 500 JSON response that carries
/// the request id, and logs the panic at error with the request id, method and path.
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CatchPanic<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Cheap clones: standard methods are plain values, and the URI and header value share
        // their bytes.
        let context = RequestContext {
            method: request.method().clone(),
            uri: request.uri().clone(),
            // A scan of the few fields of a head costs less than a hashed lookup.
            request_id: request
                .headers()
                .iter()
                .find(|(name, _)| **name == X_REQUEST_ID)
                .map(|(_, value)| value.clone()),
        };
        match catching(|| self.inner.call(request)) {
            Ok(future) => ResponseFuture {
                inner: Some(future),
                context,
            },
            Err(caught) => {
                context.log(caught);
                ResponseFuture {
                    inner: None,
                    context,
                }
            }
        }
    }
}

struct RequestContext {
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
}

impl RequestContext {
    fn request_id(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn log(&self, caught: Caught) {
        tracing::error!(
            request_id = self.request_id(),
            method = %self.method,
            path = self.uri.path(),
            panic = %caught.message,
            location = %caught.location,
            backtrace = %caught.backtrace,
            "request handler panicked"
        );
    }

    fn response<B: From<Bytes>>(&self) -> Response<B> {
        let id = Some(self.request_id()).filter(|id| !id.is_empty());
        let mut response = error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal gateway error",
            id,
        );
        if let Some(value) = &self.request_id {
            response.headers_mut().insert(&X_REQUEST_ID, value.clone());
        }
        response
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`CatchPanic`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        context: RequestContext,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(this.context.response()));
        };
        match catching(|| inner.poll(cx)) {
            Ok(poll) => poll,
            Err(caught) => {
                // A future that panicked must never be polled again.
                this.inner.set(None);
                this.context.log(caught);
                Poll::Ready(Ok(this.context.response()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[tokio::test]
    async fn panic_in_future_becomes_500() {
        install_panic_hook();
        let service = CatchPanicLayer.layer(tower::service_fn(|request: Request<()>| async move {
            if request.uri().path() == "/boom" {
                panic!("handler exploded");
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"fine"))))
        }));

        let request = Request::builder()
            .uri("/boom")
            .header("x-request-id", "req-1")
            .body(())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["x-request-id"], "req-1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains("\"request_id\":\"req-1\""), "{text}");
        assert!(!text.contains("exploded"), "{text}");

        let request = Request::builder().uri("/ok").body(()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn panic_in_call_becomes_500() {
        #[derive(Clone)]
        struct Explodes;
        impl Service<Request<()>> for Explodes {
            type Response = Response<Full<Bytes>>;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Self::Response, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request<()>) -> Self::Future {
                panic!("call exploded")
            }
        }
        let response = CatchPanicLayer
            .layer(Explodes)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
    }

    #[test]
    fn hook_records_trace_while_catching() {
        install_panic_hook();
        let caught = catching(|| panic!("traced")).err().unwrap();
        assert_eq!(caught.message, "traced");
        assert!(
            caught.location.contains("catch_panic.rs"),
            "{}",
            caught.location
        );
    }
}
