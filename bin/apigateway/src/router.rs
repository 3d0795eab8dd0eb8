//! The innermost service: admin paths are answered here, other paths go to their route.

use crate::admin;
use crate::app::{Gateway, RouteService};
use gateway_middleware::cors;
use gateway_proxy::{ErrorKind, ProxyBody, ProxyError, RouteMatch};
use http::{Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// The innermost service: dispatches a request to the admin endpoints or to its route.
#[derive(Debug, Clone)]
pub struct Router {
    gateway: Arc<Gateway>,
}

impl Router {
    pub(crate) fn new(gateway: Arc<Gateway>) -> Router {
        Router { gateway }
    }

    /// Sends `request` to the service of the route at `index` in the route table.
    fn dispatch(&self, index: usize, request: Request<Incoming>) -> RouterFuture {
        // Route services are cheap to clone: every layer holds its state behind Arc.
        let mut service = self.gateway.routes[index].clone();
        RouterFuture::Route {
            future: service.call(request),
        }
    }
}

impl Service<Request<Incoming>> for Router {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = RouterFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> RouterFuture {
        let path = request.uri().path();
        if admin::is_admin_path(path) {
            let gateway = Arc::clone(&self.gateway);
            return RouterFuture::Admin {
                future: Box::pin(async move { Ok(admin::handle(&gateway, request).await) }),
            };
        }

        let response = match self.gateway.table.find(request.method(), path) {
            RouteMatch::Found(route) => return self.dispatch(route.index, request),
            // NOTE: a 404 carries no CORS headers, because no route means no route policy,
            // so a browser reports a network error to a cross-origin script, not the 404.
            RouteMatch::NotFound => ProxyError::new(ErrorKind::NoRoute).into_response(),
            RouteMatch::MethodNotAllowed(route) => {
                let cors = self.gateway.route_cors(route.index);

                // The route's methods are what its backends accept, but a preflight is
                // checked against the CORS policy's methods. The route's CORS layer responds
                // to it without forwarding, so it goes there even when OPTIONS is not listed.
                if cors.is_some() && cors::is_preflight(&request) {
                    return self.dispatch(route.index, request);
                }

                let error = ProxyError::method_not_allowed(route.allow().clone());
                let mut response = error.into_response();
                if let Some(policy) = cors {
                    policy.apply(request.headers(), response.headers_mut());
                }
                response
            }
        };
        RouterFuture::Ready {
            response: Some(response),
        }
    }
}

type AdminFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

pin_project_lite::pin_project! {
    /// Response future of [`Router`].
    #[project = RouterProj]
    pub enum RouterFuture {
        Ready { response: Option<Response<ProxyBody>> },
        Route { #[pin] future: <RouteService as Service<Request<Incoming>>>::Future },
        Admin { future: AdminFuture },
    }
}

impl Future for RouterFuture {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RouterProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            RouterProj::Route { future } => future.poll(cx),
            RouterProj::Admin { future } => future.as_mut().poll(cx),
        }
    }
}
