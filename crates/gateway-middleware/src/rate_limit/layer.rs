//! The tower service, layer and response future around [`RateLimiter`].

use super::{Decision, RATELIMIT, RateLimiter, ratelimit_value, whole_seconds_up};
use crate::client_ip::ClientIp;
use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// Applies a shared [`RateLimiter`] to every request of the wrapped service.
pub struct RateLimitLayer<C: Clock = DefaultClock> {
    limiter: Arc<RateLimiter<C>>,
}

impl<C: Clock> RateLimitLayer<C> {
    /// Creates the layer. Every service it wraps shares `limiter`'s buckets.
    pub fn new(limiter: Arc<RateLimiter<C>>) -> Self {
        RateLimitLayer { limiter }
    }
}

impl<C: Clock> Clone for RateLimitLayer<C> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<C: Clock> std::fmt::Debug for RateLimitLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl<S, C: Clock> Layer<S> for RateLimitLayer<C> {
    type Service = RateLimit<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

/// Rate-limits requests before they reach the inner service.
///
/// The client is the request's [`ClientIp`] extension, else the ip of its
/// [`SocketAddr`](std::net::SocketAddr) extension, else `0.0.0.0`. An allowed request goes to the inner service and
/// its response gets a `RateLimit` field appended. A rejected request gets a 429 response from
/// this layer, and the inner service is not called even though it was polled ready.
pub struct RateLimit<S, C: Clock = DefaultClock> {
    inner: S,
    limiter: Arc<RateLimiter<C>>,
}

impl<S: Clone, C: Clock> Clone for RateLimit<S, C> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<S: std::fmt::Debug, C: Clock> std::fmt::Debug for RateLimit<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    C: Clock,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !self.limiter.is_enabled() {
            return ResponseFuture::forward(self.inner.call(request), None);
        }

        let client = client_of(&request);
        match self.limiter.check(client) {
            Decision::Unlimited => ResponseFuture::forward(self.inner.call(request), None),
            Decision::Allowed {
                remaining,
                full_after,
            } => {
                let value = ratelimit_value(remaining, whole_seconds_up(full_after));
                ResponseFuture::forward(self.inner.call(request), Some(value))
            }
            Decision::Rejected { retry_after } => {
                tracing::debug!(%client, ?retry_after, "rate limit exceeded");
                ResponseFuture::rejected(self.limiter.rejection(retry_after))
            }
        }
    }
}

fn client_of<B>(request: &Request<B>) -> IpAddr {
    ClientIp::of(request.extensions()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

pin_project! {
    /// Response future of [`RateLimit`]: the inner service's future, or a ready 429.
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
            ratelimit: Option<HeaderValue>,
        },
        Rejected {
            response: Option<Response<B>>,
        },
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn forward(future: F, ratelimit: Option<HeaderValue>) -> Self {
        ResponseFuture {
            kind: Kind::Forward { future, ratelimit },
        }
    }

    fn rejected(response: Response<B>) -> Self {
        ResponseFuture {
            kind: Kind::Rejected {
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
            KindProjection::Forward { future, ratelimit } => {
                let mut response = ready!(future.poll(cx))?;

                // Appended, not inserted: the backend may report its own policies, and the
                // draft lets one response carry several.
                if let Some(value) = ratelimit.take() {
                    response.headers_mut().append(RATELIMIT, value);
                }
                Poll::Ready(Ok(response))
            }
            KindProjection::Rejected { response } => {
                let response = response
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(response))
            }
        }
    }
}
