//! The tower service, layer and response future around [`CorsPolicy`].

use super::CorsPolicy;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// Applies a shared [`CorsPolicy`] to every request of the wrapped service.
#[derive(Debug, Clone)]
pub struct CorsLayer {
    policy: Arc<CorsPolicy>,
}

impl CorsLayer {
    /// Creates the layer. Every service it wraps shares `policy`.
    pub fn new(policy: Arc<CorsPolicy>) -> Self {
        CorsLayer { policy }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cors {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// Responds to CORS preflights itself and adds CORS headers to the inner service's responses.
///
/// - A request without `Origin` passes through untouched.
/// - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) gets a 204
///   response from this layer and never reaches the inner service, even though that service
///   was polled ready.
/// - Any other request with `Origin`, including a plain `OPTIONS`, goes to the inner service,
///   and its response gets the headers of [`CorsPolicy::apply_to_response`].
#[derive(Debug, Clone)]
pub struct Cors<S> {
    inner: S,
    policy: Arc<CorsPolicy>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cors<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !self.policy.is_enabled() {
            return ResponseFuture::forward(self.inner.call(request), None);
        }
        let Some(origin) = request.headers().get(header::ORIGIN) else {
            return ResponseFuture::forward(self.inner.call(request), None);
        };

        let is_preflight = request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if is_preflight {
            let response = self.policy.preflight(request.headers());
            return ResponseFuture::ready(response);
        }

        let actual = ActualRequest {
            allow_origin: self.policy.allow_origin(origin),
            policy: Arc::clone(&self.policy),
        };
        ResponseFuture::forward(self.inner.call(request), Some(actual))
    }
}

/// The policy and `Access-Control-Allow-Origin` value for the response to an actual request.
#[derive(Debug)]
struct ActualRequest {
    policy: Arc<CorsPolicy>,
    allow_origin: Option<HeaderValue>,
}

pin_project! {
    /// Response future of [`Cors`]: the inner service's future, or a ready preflight response.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<F, B> {
        Forward {
            #[pin]
            future: F,
            actual: Option<ActualRequest>,
        },
        Ready {
            response: Option<Response<B>>,
        },
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn forward(future: F, actual: Option<ActualRequest>) -> Self {
        ResponseFuture {
            kind: Kind::Forward { future, actual },
        }
    }

    fn ready(response: Response<B>) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProjection::Forward { future, actual } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(actual) = actual.take() {
                    actual
                        .policy
                        .apply_to_response(actual.allow_origin, response.headers_mut());
                }
                Poll::Ready(Ok(response))
            }
            KindProjection::Ready { response } => {
                let response = response
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(response))
            }
        }
    }
}
