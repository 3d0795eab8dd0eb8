//! The gateway's own endpoints: `GET /health` and `GET /admin/*`.
//!
//! The gateway handles them before rate limiting and routing, so a route can never shadow them and
//! the proxy's rate limit never applies to them.

use crate::app::{Gateway, RequestLogState};
use crate::inspect::{parse_start_time, parse_window, reject_zero_duration};
use bytes::Bytes;
use gateway_balancer::BackendSnapshot;
use gateway_proxy::{ErrorKind, ProxyBody, error_response};
use gateway_store::{LogCursor, LogFilter, QueryCancel, StatusFilter, now_us};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Window of `/admin/stats` when the request names none.
const DEFAULT_WINDOW: &str = "5m";

// Validation uses the same function to reject routes that these paths would hide.
pub(crate) use gateway_config::is_admin_path;

/// Builds the 403 response to an admin request from a client outside
/// `admin.allowed_clients`.
pub(crate) fn forbidden() -> Response<ProxyBody> {
    admin_error(
        StatusCode::FORBIDDEN,
        "the admin endpoints are not open to this client address",
    )
}

/// Builds the 403 response to a loopback client whose `Host` names another machine.
pub(crate) fn forbidden_host() -> Response<ProxyBody> {
    admin_error(
        StatusCode::FORBIDDEN,
        "the admin endpoints answer this machine's clients only for Host localhost or an IP \
         address, since another name may be a web page's DNS rebinding attack",
    )
}

/// Builds the response to an admin request.
pub(crate) async fn handle<B>(gateway: &Gateway, request: Request<B>) -> Response<ProxyBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = admin_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        response
            .extensions_mut()
            .insert(ErrorKind::MethodNotAllowed);
        return response;
    }
    let query = request.uri().query().unwrap_or("");
    // The router found this endpoint by the path's match form, so it is read in that form.
    let path = gateway_config::match_form(request.uri().path());
    let result = match &*path {
        "/health" => Ok(health(gateway)),
        "/admin/backends" => Ok(json_response(StatusCode::OK, &backends(gateway))),
        "/admin/logs" => logs(gateway, query).await,
        "/admin/stats" => stats(gateway, query).await,
        _ => Err(AdminError(
            StatusCode::NOT_FOUND,
            "no admin endpoint at this path".to_owned(),
        )),
    };
    result.unwrap_or_else(|AdminError(status, message)| {
        let mut response = admin_error(status, &message);
        if let Some(kind) = admin_error_kind(status) {
            response.extensions_mut().insert(kind);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    })
}

/// Returns a hint for a query value that ends in a space and an offset: a query string reads
/// `+` as a space, so a timestamp's `+01:00` arrives as ` 01:00`.
fn plus_hint(value: &str) -> &'static str {
    let offset = value.len().checked_sub(6).and_then(|at| value.get(at..));
    let decoded_plus = offset.is_some_and(|offset| {
        let bytes = offset.as_bytes();
        bytes[0] == b' '
            && bytes[3] == b':'
            && [1, 2, 4, 5].iter().all(|&i| bytes[i].is_ascii_digit())
    });
    if decoded_plus {
        " (a + in a query string reads as a space: write it as %2B)"
    } else {
        ""
    }
}

/// Builds an admin error response. Like every admin response, it is not to be stored: a 404
/// or 405 may otherwise be cached without being marked cacheable (RFC 9111 section 4.2.2).
fn admin_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = error_response(status, message);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Returns the request log's error kind for an admin error response with `status`: the kind
/// that a route's error response with that status gets. A 503 for a busy request log and the
/// 403 of [`forbidden`] match no kind, so their rows have none.
fn admin_error_kind(status: StatusCode) -> Option<ErrorKind> {
    match status {
        StatusCode::BAD_REQUEST => Some(ErrorKind::InvalidRequest),
        StatusCode::NOT_FOUND => Some(ErrorKind::NoRoute),
        StatusCode::INTERNAL_SERVER_ERROR => Some(ErrorKind::Internal),
        _ => None,
    }
}

/// Bytes of row text after which a page of `/admin/logs` ends, even short of its `limit`. Rows
/// with 64 KiB paths and `User-Agent` values would otherwise make a page of 10,000 rows more
/// than a gigabyte, held in memory several times over while it is built.
const PAGE_BYTES: usize = 8 * 1024 * 1024;

/// How long a request log query waits for the one running before it, before it gets 503.
const QUERY_WAIT: Duration = Duration::from_secs(1);

/// Runs the query that `query` makes on the request log once no other admin query runs. A
/// query can take seconds of CPU on a large table, on the cores that also serve requests, so
/// queries run one at a time. One that waits longer than [`QUERY_WAIT`] gets 503 with
/// `Retry-After`.
///
/// The query runs in a task of its own that keeps the slot until the query ends. When the
/// client leaves, this future is dropped and sets the [`QueryCancel`] that `query` received,
/// so that SQLite abandons the query rather than finishing it for no one.
async fn one_at_a_time<T, F, Q>(state: &RequestLogState, query: Q) -> Result<T, AdminError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, gateway_store::StoreError>> + Send + 'static,
    Q: FnOnce(QueryCancel) -> F,
{
    let slot = Arc::clone(&state.query_slot).acquire_owned();
    let Ok(Ok(permit)) = tokio::time::timeout(QUERY_WAIT, slot).await else {
        return Err(AdminError(
            StatusCode::SERVICE_UNAVAILABLE,
            "another request log query is running: try again when it ends".to_owned(),
        ));
    };
    let cancel = QueryCancel::default();
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let query = query(cancel);
    let task = tokio::spawn(async move {
        let result = query.await;
        drop(permit);
        result
    });
    match task.await {
        Ok(result) => result.map_err(query_failed),
        Err(error) => {
            tracing::error!(%error, "request log query task failed");
            Err(AdminError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "request log query failed".to_owned(),
            ))
        }
    }
}

/// Sets its [`QueryCancel`] when dropped.
struct CancelOnDrop(QueryCancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// An admin request that fails: the status and the reason sent to the client.
#[derive(Debug)]
struct AdminError(StatusCode, String);

type AdminResult = Result<Response<ProxyBody>, AdminError>;

fn bad_parameter(message: String) -> AdminError {
    AdminError(StatusCode::BAD_REQUEST, message)
}

fn query_failed(error: gateway_store::StoreError) -> AdminError {
    let cause = std::error::Error::source(&error).map(ToString::to_string);
    tracing::error!(%error, cause = cause.as_deref().unwrap_or(""), "request log query failed");
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

/// `GET /admin/logs?limit=&status=&route=&since=&before=`: recent requests, newest first, and
/// the `before` value of the next page as `next` (null on the last page).
async fn logs(gateway: &Gateway, query: &str) -> AdminResult {
    let state = request_log(gateway)?;
    let filter = logs_filter(query, now_us())?;
    let reader = state.reader.clone();
    let page = one_at_a_time(state, |cancel| async move {
        reader.page_within(&filter, PAGE_BYTES, &cancel).await
    })
    .await?;
    // Serialized straight from the rows, without a `json!` tree of them. Three listings of
    // 10,000 rows (4 MB of text each) took the process from 15 to 111 MB of RSS with the
    // tree and to 82 MB without, since the allocator keeps much of what a response used.
    #[derive(serde::Serialize)]
    struct Body<'a> {
        count: usize,
        entries: &'a [gateway_store::LogEntry],
        next: &'a Option<gateway_store::LogCursor>,
    }
    let body = Body {
        count: page.entries.len(),
        entries: &page.entries,
        next: &page.next,
    };
    let text = serde_json::to_vec(&body).map_err(|error| {
        tracing::error!(%error, "failed to serialize request log rows");
        AdminError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "request log query failed".to_owned(),
        )
    })?;
    Ok(json_bytes_response(StatusCode::OK, Bytes::from(text)))
}

/// Builds the filter of `/admin/logs` from its query string.
fn logs_filter(query: &str, now_us: i64) -> Result<LogFilter, AdminError> {
    let mut filter = LogFilter::default();
    let mut seen = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        reject_repeated(&mut seen, &name)?;
        match &*name {
            "limit" => {
                // Digits only: the integer parser also takes a leading `+`, which the CLI
                // rejects, so both read the same values.
                filter.limit = Some(&value)
                    .filter(|value| value.bytes().all(|byte| byte.is_ascii_digit()))
                    .and_then(|value| value.parse().ok())
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
                    .map_err(|error| bad_parameter(error.to_string()))?;
                filter.status = Some(status);
            }
            "route" => filter.route = Some(value.into_owned()),
            "since" => {
                reject_zero_duration("since", &value).map_err(bad_parameter)?;
                let since = parse_start_time(&value, now_us).map_err(|error| {
                    bad_parameter(format!("since: {error}{}", plus_hint(&value)))
                })?;
                filter.since_us = Some(since);
            }
            "before" => {
                let cursor = value
                    .parse::<LogCursor>()
                    .map_err(|error| bad_parameter(format!("before: {error}")))?;
                filter.before = Some(cursor);
            }
            other => {
                return Err(bad_parameter(format!(
                    "unknown parameter {other:?}: use limit, status, route, since or before"
                )));
            }
        }
    }
    Ok(filter)
}

/// `GET /admin/stats?window=5m`: counts and latency percentiles per route and backend.
async fn stats(gateway: &Gateway, query: &str) -> AdminResult {
    let state = request_log(gateway)?;
    let window = stats_window(query)?;
    let since = parse_window(&window, now_us())
        .map_err(|error| bad_parameter(format!("{error}{}", plus_hint(&window))))?;
    let reader = state.reader.clone();
    let stats = one_at_a_time(state, |cancel| async move {
        reader.stats_cancellable(since, &cancel).await
    })
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "window": window,
            "stats": stats,
            "request_log": {
                "dropped": state.log.dropped(),
                "failed": state.log.failed(),
                "queued": state.log.queued(),
            },
        }),
    ))
}

/// Returns the `window` parameter of `/admin/stats`, or the default window.
fn stats_window(query: &str) -> Result<String, AdminError> {
    let mut window = None;
    let mut seen = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        reject_repeated(&mut seen, &name)?;
        match &*name {
            "window" => window = Some(value.into_owned()),
            other => {
                return Err(bad_parameter(format!(
                    "unknown parameter {other:?}: use window"
                )));
            }
        }
    }
    Ok(window.unwrap_or_else(|| DEFAULT_WINDOW.to_owned()))
}

/// Rejects a parameter given twice, because silently using one value would hide a mistake.
fn reject_repeated(seen: &mut Vec<String>, name: &str) -> Result<(), AdminError> {
    if seen.iter().any(|earlier| earlier == name) {
        return Err(bad_parameter(format!(
            "parameter {name:?} is repeated: send it once"
        )));
    }
    seen.push(name.to_owned());
    Ok(())
}

/// Reports the gateway's state: `ok`, `degraded` when some backends are unhealthy,
/// `unavailable` (503) when no backend can serve, and `draining` (503) during shutdown.
fn health(gateway: &Gateway) -> Response<ProxyBody> {
    let backends = gateway.table.backends();
    let healthy = backends.iter().filter(|(b, _)| b.is_healthy()).count();
    let routes = gateway.table.routes().len();
    let (status, state) = health_state(gateway.is_draining(), routes, healthy, backends.len());
    let body = json!({
        "status": state,
        "uptime_seconds": gateway.started.elapsed().as_secs(),
        "routes": routes,
        "backends": { "healthy": healthy, "total": backends.len() },
    });
    json_response(status, &body)
}

/// Returns the status code and state name of `/health`. A load balancer that polls it takes
/// a 503 as "send no traffic here", so only a gateway that cannot serve any route gets one.
fn health_state(
    draining: bool,
    routes: usize,
    healthy: usize,
    total: usize,
) -> (StatusCode, &'static str) {
    if draining {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if routes > 0 && healthy == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if healthy < total {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    }
}

/// Builds the body of `/admin/backends`, which lists each route's backends. `weight` and
/// `total_requests` belong to the route. The other fields belong to the backend, which every
/// route that lists its URL shares.
fn backends(gateway: &Gateway) -> Value {
    let routes: Vec<Value> = gateway
        .table
        .routes()
        .iter()
        .map(|route| {
            let backends: Vec<Value> = route
                .pool
                .backends()
                .zip(route.pool.request_counts())
                .map(|((backend, weight), requests)| {
                    backend_json(&backend.snapshot(), weight, requests)
                })
                .collect();
            json!({ "route": &*route.pattern, "backends": backends })
        })
        .collect();
    json!({ "routes": routes })
}

fn backend_json(snapshot: &BackendSnapshot, weight: u32, requests: u64) -> Value {
    json!({
        "url": snapshot.url,
        "weight": weight,
        "healthy": snapshot.healthy,
        "in_flight": snapshot.in_flight,
        "total_requests": requests,
        "total_failures": snapshot.total_failures,
        "consecutive_failures": snapshot.consecutive_failures,
        "consecutive_successes": snapshot.consecutive_successes,
        "last_check": snapshot.last_check_ms.map(format_ms),
        "last_transition": snapshot.last_transition_ms.map(format_ms),
        "last_error": snapshot.last_error,
        "last_error_at": snapshot.last_error_ms.map(format_ms),
    })
}

/// Formats milliseconds since the Unix epoch as an RFC 3339 UTC timestamp.
fn format_ms(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    json_bytes_response(status, Bytes::from(body.to_string()))
}

/// Builds a response of `status` whose body is the JSON text `body`.
fn json_bytes_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::from(body));
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

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_config::Config;

    const NOW_US: i64 = 1_700_000_000_000_000;

    #[tokio::test]
    async fn second_query_waits_then_gets_503() {
        let dir = tempfile::tempdir().unwrap();
        let config = gateway_config::RequestLogConfig {
            database: dir.path().join("requests.db"),
            ..gateway_config::RequestLogConfig::default()
        };
        let (log, writer) = gateway_store::RequestLog::open(&config).await.unwrap();
        let reader = gateway_store::LogReader::open(&config.database)
            .await
            .unwrap();
        let state = RequestLogState {
            log,
            reader,
            query_slot: Arc::new(tokio::sync::Semaphore::new(1)),
        };
        let recent = || {
            let reader = state.reader.clone();
            async move { reader.recent(&LogFilter::default()).await }
        };
        let entries = one_at_a_time(&state, |_| recent()).await.unwrap();
        assert!(entries.is_empty());

        // A query whose client gives up is cancelled, and keeps the slot until the query
        // itself ends.
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let mut received = None;
        let long_query = |cancel: QueryCancel| {
            received = Some(cancel);
            async move {
                let _ = finished.await;
                Ok(())
            }
        };
        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), one_at_a_time(&state, long_query))
                .await;
        assert!(gave_up.is_err(), "the long query ended early");
        assert!(received.is_some_and(|cancel| cancel.is_cancelled()));

        let started = std::time::Instant::now();
        let (status, message) = rejection(one_at_a_time(&state, |_| recent()).await);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(message.contains("another request log query"), "{message}");
        assert!(started.elapsed() >= QUERY_WAIT, "{:?}", started.elapsed());

        finish.send(()).unwrap();
        assert!(one_at_a_time(&state, |_| recent()).await.is_ok());
        writer.spawn().shutdown().await.unwrap();
    }

    fn rejection(result: Result<impl std::fmt::Debug, AdminError>) -> (StatusCode, String) {
        match result {
            Ok(value) => panic!("accepted: {value:?}"),
            Err(AdminError(status, message)) => (status, message),
        }
    }

    #[test]
    fn limit_outside_digits_or_range_is_rejected() {
        for limit in [
            "0",
            "10001",
            "-1",
            "+5",
            " 5",
            "5 ",
            "abc",
            "",
            "99999999999",
        ] {
            let query = format!("limit={}", limit.replace('+', "%2B"));
            let (status, message) = rejection(logs_filter(&query, NOW_US));
            assert_eq!(status, StatusCode::BAD_REQUEST, "{limit:?}");
            assert!(message.contains("invalid limit"), "{limit:?}: {message}");
        }
        assert_eq!(logs_filter("limit=10000", NOW_US).unwrap().limit, 10_000);
        assert_eq!(logs_filter("limit=007", NOW_US).unwrap().limit, 7);
    }

    #[test]
    fn repeated_parameter_is_rejected() {
        let (status, message) = rejection(logs_filter("limit=5&limit=7", NOW_US));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("\"limit\" is repeated"), "{message}");

        let (status, message) = rejection(stats_window("window=5m&window=1h"));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("\"window\" is repeated"), "{message}");
    }

    #[test]
    fn distinct_parameters_are_accepted() {
        let filter = logs_filter("limit=5&status=5xx&route=/a/*rest&since=1m", NOW_US).unwrap();
        assert_eq!(filter.limit, 5);
        assert_eq!(filter.route.as_deref(), Some("/a/*rest"));
        assert_eq!(filter.since_us, Some(NOW_US - 60_000_000));
        assert_eq!(stats_window("").unwrap(), DEFAULT_WINDOW);
    }

    #[test]
    fn before_takes_time_and_id() {
        let filter = logs_filter("before=1700000000000000.42&limit=5", NOW_US).unwrap();
        let cursor = filter.before.unwrap();
        assert_eq!(cursor.ts_us, 1_700_000_000_000_000);
        assert_eq!(cursor.id, 42);
        assert_eq!(filter.limit, 5);

        let filter = logs_filter("status=5xx&route=/a/*rest&since=1m&before=5.7", NOW_US).unwrap();
        assert_eq!(filter.before, Some(LogCursor { ts_us: 5, id: 7 }));
        assert_eq!(filter.status, Some(StatusFilter::Class(5)));
        assert_eq!(filter.route.as_deref(), Some("/a/*rest"));
        assert_eq!(filter.since_us, Some(NOW_US - 60_000_000));

        assert_eq!(logs_filter("", NOW_US).unwrap().before, None);
    }

    #[test]
    fn invalid_before_is_rejected_with_format() {
        for before in [
            "",
            "42",
            "abc",
            "1700000000000000.",
            "1700000000000000.42.1",
            "1700000000000000%2B42",
            "%2B1700000000000000.42",
            "-1.5",
            "1.-5",
            "1700000000000000.42%20",
            "99999999999999999999.1",
        ] {
            let (status, message) = rejection(logs_filter(&format!("before={before}"), NOW_US));
            assert_eq!(status, StatusCode::BAD_REQUEST, "{before:?}");
            assert!(
                message.starts_with("before: invalid cursor"),
                "{before:?}: {message}"
            );
            assert!(message.contains("<ts_us>.<id>"), "{before:?}: {message}");
            assert!(message.contains("`next`"), "{before:?}: {message}");
        }
        // The message quotes the decoded value.
        let message = rejection(logs_filter("before=1%2B2", NOW_US)).1;
        assert!(message.contains("`1+2`"), "{message}");
    }

    #[test]
    fn repeated_before_is_rejected() {
        let (status, message) = rejection(logs_filter("before=5.7&before=5.6", NOW_US));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("\"before\" is repeated"), "{message}");
    }

    #[test]
    fn unknown_parameter_lists_before() {
        let (status, message) = rejection(logs_filter("cursor=5.7", NOW_US));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            message.contains("unknown parameter \"cursor\""),
            "{message}"
        );
        assert!(message.contains("since or before"), "{message}");
    }

    #[test]
    fn since_with_offset_is_converted_to_utc() {
        let utc = logs_filter("since=2023-11-14T22:13:20Z", NOW_US).unwrap();
        let plus = logs_filter("since=2023-11-14T23:13:20%2B01:00", NOW_US).unwrap();
        let minus = logs_filter("since=2023-11-14T20:43:20.000-01:30", NOW_US).unwrap();
        assert_eq!(utc.since_us, Some(1_700_000_000_000_000));
        assert_eq!(plus.since_us, utc.since_us);
        assert_eq!(minus.since_us, utc.since_us);
    }

    #[test]
    fn decoded_plus_gets_hint() {
        assert!(plus_hint("2025-01-31T12:00:00 01:00").contains("%2B"));
        assert_eq!(plus_hint("2025-01-31T12:00:00Z"), "");
        // A space in place of the `T` is no decoded `+`.
        assert_eq!(plus_hint("2025-01-31 12:00:00"), "");
    }

    #[test]
    fn zero_and_invalid_windows_share_hint() {
        let zero = parse_window("0s", NOW_US).unwrap_err();
        let zero_minutes = parse_window("0m", NOW_US).unwrap_err();
        let invalid = parse_window("soon", NOW_US).unwrap_err();
        assert!(zero.contains("longer than zero"), "{zero}");
        assert!(zero_minutes.contains("longer than zero"), "{zero_minutes}");
        let hint = "write a duration like 5m or 1h, or a start time with its zone like";
        for message in [&zero, &zero_minutes, &invalid] {
            assert!(message.contains(hint), "{message}");
        }
        assert_eq!(parse_window("5m", NOW_US), Ok(NOW_US - 300_000_000));
    }

    #[test]
    fn zero_since_is_rejected_like_zero_window() {
        for since in ["0s", "0m", "%200ms%20"] {
            let (status, message) = rejection(logs_filter(&format!("since={since}"), NOW_US));
            assert_eq!(status, StatusCode::BAD_REQUEST, "{since}");
            assert!(message.starts_with("invalid since"), "{since}: {message}");
            assert!(message.contains("longer than zero"), "{since}: {message}");
        }
        let since = rejection(logs_filter("since=0s", NOW_US)).1;
        let window = parse_window("0s", NOW_US).unwrap_err();
        assert_eq!(since.replacen("since", "window", 1), window);
    }

    #[test]
    fn health_state_follows_backends() {
        let cases = [
            (false, 2, 3, 3, StatusCode::OK, "ok"),
            (false, 2, 1, 3, StatusCode::OK, "degraded"),
            (
                false,
                2,
                0,
                3,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (true, 2, 3, 3, StatusCode::SERVICE_UNAVAILABLE, "draining"),
            (true, 2, 0, 3, StatusCode::SERVICE_UNAVAILABLE, "draining"),
        ];
        for (draining, routes, healthy, total, status, state) in cases {
            assert_eq!(
                health_state(draining, routes, healthy, total),
                (status, state),
                "draining {draining}, {healthy} of {total} healthy"
            );
        }
    }

    async fn health_body(gateway: &Gateway) -> (StatusCode, Value) {
        use http_body_util::BodyExt;
        let response = health(gateway);
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn health_reports_unhealthy_backends() {
        let text = r#"
routes:
  - path: "/a/*rest"
    backends:
      - url: "http://127.0.0.1:9001"
      - url: "http://127.0.0.1:9002"
"#;
        let gateway = Gateway::new(Config::from_yaml(text, "test.yaml").unwrap()).unwrap();
        let (status, body) = health_body(&gateway).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok", "{body}");

        // Enough failures cross the default unhealthy threshold of 3.
        let backends = gateway.table().backends();
        let fail = |index: usize| {
            for _ in 0..3 {
                backends[index]
                    .0
                    .record_request_failure("connection refused");
            }
        };
        fail(0);
        let (status, body) = health_body(&gateway).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "degraded", "{body}");
        assert_eq!(body["backends"]["healthy"], 1, "{body}");

        fail(1);
        let (status, body) = health_body(&gateway).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "unavailable", "{body}");
        assert_eq!(body["backends"]["healthy"], 0, "{body}");
    }
}
