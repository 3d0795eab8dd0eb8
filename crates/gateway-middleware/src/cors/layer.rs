//! The tower service, layer and response future around [`CorsPolicy`].

use super::{CorsPolicy, OriginFields, is_preflight};
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
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
/// - A request without `Origin` passes through, and its response gets only `Vary: Origin`
///   when [`CorsPolicy::varies_by_origin`].
/// - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) gets a 204
///   response from this layer and never reaches the inner service, even though that service
///   was polled ready.
/// - Any other request with `Origin`, including a plain `OPTIONS`, goes to the inner service,
///   and its response gets the headers of [`CorsPolicy::apply_to_response`]. A request with
///   several `Origin` fields is treated as one from an origin that is not allowed.
#[derive(Debug, Clone)]
pub struct Cors<S> {
    inner: S,
    policy: Arc<CorsPolicy>,
}

impl<S> Cors<S> {
    /// Returns the policy this service applies.
    pub fn policy(&self) -> &CorsPolicy {
        &self.policy
    }
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
        let allow_origin = match OriginFields::of(request.headers()) {
            OriginFields::Missing => {
                let actual = self.policy.varies_by_origin().then(|| ActualRequest {
                    policy: Arc::clone(&self.policy),
                    origin: RequestOrigin::Missing,
                });
                return ResponseFuture::forward(self.inner.call(request), actual);
            }
            OriginFields::One(origin) => self.policy.allow_origin(origin),
            OriginFields::Several => None,
        };

        if is_preflight(&request) {
            let response = self.policy.preflight(request.headers());
            return ResponseFuture::ready(response);
        }

        let actual = ActualRequest {
            origin: RequestOrigin::Sent { allow_origin },
            policy: Arc::clone(&self.policy),
        };
        ResponseFuture::forward(self.inner.call(request), Some(actual))
    }
}

/// The policy and what it decided about the origin of an actual request, kept for its
/// response.
#[derive(Debug)]
struct ActualRequest {
    policy: Arc<CorsPolicy>,
    origin: RequestOrigin,
}

#[derive(Debug)]
enum RequestOrigin {
    /// The request had no `Origin`.
    Missing,
    /// The request had an `Origin`, and the policy returned this
    /// `Access-Control-Allow-Origin` value for it, or `None` when it is not allowed.
    Sent { allow_origin: Option<HeaderValue> },
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
                if let Some(ActualRequest { policy, origin }) = actual.take() {
                    let headers = response.headers_mut();
                    match origin {
                        RequestOrigin::Missing => policy.add_vary_origin(headers),
                        RequestOrigin::Sent { allow_origin } => {
                            policy.apply_to_response(allow_origin, headers);
                        }
                    }
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
