//! The gateway's own endpoints: `GET /health` and `GET /admin/*`.
//!
//! They are answered before rate limiting and routing, so a route can never shadow them and
//! the proxy's rate limit never applies to them.

use crate::app::{Gateway, RequestLogState};
use bytes::Bytes;
use gateway_balancer::BackendSnapshot;
use gateway_proxy::{ProxyBody, error_response};
use gateway_store::{LogFilter, StatusFilter, now_us, parse_since};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

/// Window of `/admin/stats` when the request names none.
const DEFAULT_WINDOW: &str = "5m";

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
    let query = request.uri().query().unwrap_or("");
    let result = match request.uri().path() {
        "/health" => Ok(health(gateway)),
        "/admin/backends" => Ok(json_response(StatusCode::OK, &backends(gateway))),
        "/admin/logs" => logs(gateway, query).await,
        "/admin/stats" => stats(gateway, query).await,
        _ => Err(AdminError(
            StatusCode::NOT_FOUND,
            "no admin endpoint at this path".to_owned(),
        )),
    };
    result.unwrap_or_else(|AdminError(status, message)| error_response(status, &message))
}

/// An admin request that fails: the status and the reason sent to the client.
struct AdminError(StatusCode, String);

type AdminResult = Result<Response<ProxyBody>, AdminError>;

fn bad_parameter(message: String) -> AdminError {
    AdminError(StatusCode::BAD_REQUEST, message)
}

fn query_failed(error: gateway_store::StoreError) -> AdminError {
    tracing::error!(%error, "request log query failed");
    AdminError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "request log query failed".to_owned(),
    )
}

fn request_log(gateway: &Gateway) -> Result<&RequestLogState, AdminError> {
    gateway.request_log.get().ok_or_else(|| {
        AdminError(
            StatusCode::NOT_FOUND,
            "the request log is disabled: set request_log.enabled to true".to_owned(),
        )
    })
}

/// `GET /admin/logs?limit=&status=&route=&since=`: recent requests, newest first.
async fn logs(gateway: &Gateway, query: &str) -> AdminResult {
    let state = request_log(gateway)?;
    let mut filter = LogFilter::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|limit| (1..=LogFilter::MAX_LIMIT).contains(limit))
                    .ok_or_else(|| {
                        bad_parameter(format!(
                            "invalid limit {value:?}: write a whole number from 1 to {}",
                            LogFilter::MAX_LIMIT
                        ))
                    })?;
            }
            "status" => {
                let status = value
                    .parse::<StatusFilter>()
                    .map_err(|error| bad_parameter(format!("invalid status: {error}")))?;
                filter.status = Some(status);
            }
            "route" => filter.route = Some(value.into_owned()),
            "since" => {
                let since = parse_since(&value, now_us())
                    .map_err(|error| bad_parameter(format!("invalid since: {error}")))?;
                filter.since_us = Some(since);
            }
            other => {
                return Err(bad_parameter(format!(
                    "unknown parameter {other:?}: use limit, status, route or since"
                )));
            }
        }
    }
    let entries = state.reader.recent(&filter).await.map_err(query_failed)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "count": entries.len(), "entries": entries }),
    ))
}

/// `GET /admin/stats?window=5m`: counts and latency percentiles per route and backend.
async fn stats(gateway: &Gateway, query: &str) -> AdminResult {
    let state = request_log(gateway)?;
    let mut window = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "window" => window = Some(value.into_owned()),
            other => {
                return Err(bad_parameter(format!(
                    "unknown parameter {other:?}: use window"
                )));
            }
        }
    }
    let window = window.as_deref().unwrap_or(DEFAULT_WINDOW);
    let since = parse_since(window, now_us()).map_err(|error| {
        bad_parameter(format!(
            "invalid window: {error}; write a duration like 5m or 1h"
        ))
    })?;
    let stats = state.reader.stats(since).await.map_err(query_failed)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "window": window,
            "stats": stats,
            "request_log": { "dropped": state.log.dropped(), "queued": state.log.queued() },
        }),
    ))
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
