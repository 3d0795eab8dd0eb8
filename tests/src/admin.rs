//! Reading backend state from the gateway's `/admin/backends` endpoint.

use crate::client::{Reply, get, request};
use crate::process::{GatewayProcess, MockProcess};
use bytes::Bytes;
use http::Method;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Fetches every backend entry of every route from `GET /admin/backends`.
///
/// # Panics
///
/// Panics when the endpoint does not return 200 with the expected JSON shape.
pub async fn admin_backends(gateway_url: &str) -> Vec<Value> {
    let reply = get(&format!("{gateway_url}/admin/backends")).await;
    assert_eq!(reply.status, 200, "GET /admin/backends");
    let body = reply.json();
    let routes = body["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("no routes array in {body}"));
    routes
        .iter()
        .flat_map(|route| {
            route["backends"]
                .as_array()
                .unwrap_or_else(|| panic!("no backends array in {route}"))
                .clone()
        })
        .collect()
}

/// Fetches the `/admin/backends` entry whose `url` is `backend_url`.
///
/// # Panics
///
/// Panics when no entry has that URL.
pub async fn backend_state(gateway_url: &str, backend_url: &str) -> Value {
    admin_backends(gateway_url)
        .await
        .into_iter()
        .find(|entry| entry["url"] == backend_url)
        .unwrap_or_else(|| panic!("/admin/backends does not list {backend_url}"))
}

/// Polls `/admin/backends` every 50 ms until `backend_url` reports `healthy`, for at most
/// `timeout`. Returns the entry and the time waited, or the last entry seen on timeout.
///
/// # Errors
///
/// Returns the last entry when the state was not reached in time.
pub async fn wait_for_health(
    gateway_url: &str,
    backend_url: &str,
    healthy: bool,
    timeout: Duration,
) -> Result<(Value, Duration), Value> {
    let start = Instant::now();
    loop {
        let entry = backend_state(gateway_url, backend_url).await;
        if entry["healthy"] == healthy {
            return Ok((entry, start.elapsed()));
        }
        if start.elapsed() >= timeout {
            return Err(entry);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a GET of `path_and_query` on `gateway`, which should make `mock` hold it (with a
/// `delay` parameter), and returns once the gateway counts it in flight to that backend.
///
/// # Panics
///
/// Panics when the request is not in flight within 5 seconds.
pub async fn start_slow_request(
    gateway: &GatewayProcess,
    mock: &MockProcess,
    path_and_query: &str,
) -> JoinHandle<Result<Reply, hyper_util::client::legacy::Error>> {
    let url = format!("{}{path_and_query}", gateway.url);
    let task = tokio::spawn(async move { request(Method::GET, &url, &[], Bytes::new()).await });

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entry = backend_state(&gateway.url, &mock.url).await;
        if entry["in_flight"] == 1 {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "{path_and_query} not in flight after 5 s: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
