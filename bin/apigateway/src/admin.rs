//! The gateway's own endpoints: `GET /health` and `GET /admin/*`.
//!
//! They are answered before rate limiting and routing, so a route can never shadow them and
//! the proxy's rate limit never applies to them.

use crate::app::Gateway;
use bytes::Bytes;
use gateway_balancer::BackendSnapshot;
use gateway_proxy::{ProxyBody, error_response};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

/// Returns whether `path` belongs to the admin endpoints.
pub(crate) fn is_admin_path(path: &str) -> bool {
    path == "/health" || path == "/admin" || path.starts_with("/admin/")
}

/// Answers an admin request.
pub(crate) async fn handle<B>(gateway: &Gateway, request: Request<B>) -> Response<ProxyBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/health" => health(gateway),
        "/admin/backends" => json_response(StatusCode::OK, &backends(gateway)),
        _ => error_response(StatusCode::NOT_FOUND, "no admin endpoint at this path"),
    }
}

fn health(gateway: &Gateway) -> Response<ProxyBody> {
    let backends = gateway.table.backends();
    let healthy = backends.iter().filter(|(b, _)| b.is_healthy()).count();
    let draining = gateway.is_draining();
    let body = json!({
        "status": if draining { "draining" } else { "ok" },
        "uptime_seconds": gateway.started.elapsed().as_secs(),
        "routes": gateway.table.routes().len(),
        "backends": { "healthy": healthy, "total": backends.len() },
    });
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(status, &body)
}

fn backends(gateway: &Gateway) -> Value {
    let routes: Vec<Value> = gateway
        .table
        .routes()
        .iter()
        .map(|route| {
            let backends: Vec<Value> = route
                .pool
                .backends()
                .map(|(backend, weight)| backend_json(&backend.snapshot(), weight))
                .collect();
            json!({ "route": &*route.pattern, "backends": backends })
        })
        .collect();
    json!({ "routes": routes })
}

fn backend_json(snapshot: &BackendSnapshot, weight: u32) -> Value {
    json!({
        "url": snapshot.url,
        "weight": weight,
        "healthy": snapshot.healthy,
        "in_flight": snapshot.in_flight,
        "total_requests": snapshot.total_requests,
        "total_failures": snapshot.total_failures,
        "consecutive_failures": snapshot.consecutive_failures,
        "consecutive_successes": snapshot.consecutive_successes,
        "last_check": snapshot.last_check_ms.map(format_ms),
        "last_transition": snapshot.last_transition_ms.map(format_ms),
        "last_error": snapshot.last_error,
    })
}

/// Formats milliseconds since the Unix epoch as an RFC 3339 UTC timestamp.
fn format_ms(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::from(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
