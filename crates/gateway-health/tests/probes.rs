//! Health checks against real mock backends on 127.0.0.1, in real time with short intervals.

#![allow(clippy::unwrap_used)]

mod support;

use gateway_balancer::{Backend, HealthPolicy};
use gateway_config::HealthCheckConfig;
use gateway_health::HealthTasks;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;
use support::{MockBackend, SilentBackend, refused_url, wait_until};
use tokio::sync::watch;
use tokio::time::{sleep, timeout};

const INTERVAL: Duration = Duration::from_millis(50);

fn backend(url: &str, unhealthy_threshold: u32, healthy_threshold: u32) -> Arc<Backend> {
    let policy = HealthPolicy {
        unhealthy_threshold,
        healthy_threshold,
    };
    Arc::new(Backend::new(url.parse().unwrap(), policy))
}

/// A health check every 50 ms. The timeout is far longer than a loopback exchange takes, so
/// only a backend that never responds times out, even on a busy machine.
fn check(path: &str) -> HealthCheckConfig {
    HealthCheckConfig {
        enabled: true,
        path: path.to_owned(),
        interval: INTERVAL,
        timeout: Duration::from_secs(2),
        unhealthy_threshold: 3,
        healthy_threshold: 2,
    }
}

/// Starts health checks on `targets` and returns the tasks with the shutdown sender.
fn start(targets: Vec<(Arc<Backend>, HealthCheckConfig)>) -> (HealthTasks, watch::Sender<bool>) {
    let (sender, shutdown) = watch::channel(false);
    (gateway_health::spawn(targets, shutdown), sender)
}

/// Sends shutdown and fails unless every task stops within two seconds.
async fn stop(tasks: HealthTasks, sender: watch::Sender<bool>) {
    // `send` fails when no task holds a receiver, as when every check is disabled.
    sender.send_replace(true);
    let joined = timeout(Duration::from_secs(2), tasks.join()).await;
    assert!(
        joined.is_ok(),
        "health check tasks still running after shutdown"
    );
}

fn status(code: u16) -> Arc<AtomicU16> {
    Arc::new(AtomicU16::new(code))
}

#[tokio::test]
async fn healthy_backend_stays_healthy() {
    let mock = MockBackend::start("/health", status(200)).await;
    let backend = backend(&mock.url(), 3, 2);
    let (tasks, sender) = start(vec![(Arc::clone(&backend), check("/health"))]);
    assert_eq!(tasks.len(), 1);

    wait_until("five probes arrived", || mock.request_count() >= 5).await;
    let snapshot = backend.snapshot();
    assert!(snapshot.healthy);
    assert_eq!(snapshot.total_failures, 0);
    assert_eq!(snapshot.last_error, None);
    assert!(snapshot.last_check_ms.is_some());

    for request in mock.requests() {
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/health");
        assert_eq!(
            request.user_agent.as_deref(),
            Some("apigateway-health-check")
        );
    }
    stop(tasks, sender).await;
}

#[tokio::test]
async fn probes_reuse_one_connection() {
    let mock = MockBackend::start("/health", status(200)).await;
    let backend = backend(&mock.url(), 3, 2);
    let (tasks, sender) = start(vec![(Arc::clone(&backend), check("/health"))]);

    wait_until("five probes arrived", || mock.request_count() >= 5).await;
    assert_eq!(mock.connection_count(), 1);
    stop(tasks, sender).await;
}

#[tokio::test]
async fn failing_backend_becomes_unhealthy() {
    let mock = MockBackend::start("/health", status(503)).await;
    let backend = backend(&mock.url(), 3, 2);
    let (tasks, sender) = start(vec![(Arc::clone(&backend), check("/health"))]);

    wait_until("backend is unhealthy", || !backend.is_healthy()).await;
    let snapshot = backend.snapshot();
    assert!(snapshot.consecutive_failures >= 3);
    assert_eq!(
        snapshot.last_error.as_deref(),
        Some("health check failed: status 503")
    );
    assert!(snapshot.last_transition_ms.is_some());
    assert!(mock.request_count() >= 3);
    stop(tasks, sender).await;
}

#[tokio::test]
async fn redirecting_backend_stays_healthy() {
    for code in [301, 302, 307, 308] {
        let mock = MockBackend::start("/health", status(code)).await;
        let backend = backend(&mock.url(), 1, 1);
        let (tasks, sender) = start(vec![(Arc::clone(&backend), check("/health"))]);

        wait_until("three probes arrived", || mock.request_count() >= 3).await;
        let snapshot = backend.snapshot();
        assert!(snapshot.healthy, "{code}: {snapshot:?}");
        assert_eq!(snapshot.total_failures, 0, "{code}");
        assert_eq!(snapshot.last_error, None, "{code}");
        // The probe does not follow the redirect to /health/, which would get 404.
        for request in mock.requests() {
            assert_eq!(request.path, "/health", "{code}");
        }
        stop(tasks, sender).await;
    }
}

#[tokio::test]
async fn client_error_status_counts_as_failure() {
    let mock = MockBackend::start("/health", status(404)).await;
    let backend = backend(&mock.url(), 1, 1);
    let (tasks, sender) = start(vec![(Arc::clone(&backend), check("/health"))]);

    wait_until("backend is unhealthy", || !backend.is_healthy()).await;
    assert_eq!(
        backend.snapshot().last_error.as_deref(),
        Some("health check failed: status 404")
    );
    stop(tasks, sender).await;
}

#[tokio::test]
async fn unhealthy_backend_recovers() {
    let code = status(503);
    let mock = MockBackend::start("/health", Arc::clone(&code)).await;
    let backend = backend(&mock.url(), 3, 2);
    let (tasks, sender) = start(vec![(Arc::clone(&backend), check("/health"))]);

    wait_until("backend is unhealthy", || !backend.is_healthy()).await;
    code.store(200, Ordering::Relaxed);
    let requests_before_recovery = mock.request_count();

    wait_until("backend is healthy", || backend.is_healthy()).await;
    let snapshot = backend.snapshot();
    assert_eq!(snapshot.consecutive_failures, 0);
    assert!(snapshot.consecutive_successes >= 2);
    assert!(mock.request_count() - requests_before_recovery >= 2);
    stop(tasks, sender).await;
}

#[tokio::test]
async fn refused_connection_counts_as_failure() {
    let backend = backend(&refused_url().await, 3, 2);
    let (tasks, sender) = start(vec![(Arc::clone(&backend), check("/health"))]);

    wait_until("backend is unhealthy", || !backend.is_healthy()).await;
    let snapshot = backend.snapshot();
    assert_eq!(
        snapshot.last_error.as_deref(),
        Some("health check failed: connection refused")
    );
    assert!(snapshot.total_failures >= 3);
    stop(tasks, sender).await;
}

#[tokio::test]
async fn stopped_backend_becomes_unhealthy() {
    let mock = MockBackend::start("/health", status(200)).await;
    let backend = backend(&mock.url(), 3, 2);
    let (tasks, sender) = start(vec![(Arc::clone(&backend), check("/health"))]);

    wait_until("two probes arrived", || mock.request_count() >= 2).await;
    assert!(backend.is_healthy());
    mock.stop();

    wait_until("backend is unhealthy", || !backend.is_healthy()).await;
    wait_until("last error is a refused connection", || {
        backend.snapshot().last_error.as_deref() == Some("health check failed: connection refused")
    })
    .await;
    stop(tasks, sender).await;
}

#[tokio::test]
async fn silent_backend_times_out() {
    let silent = SilentBackend::start().await;
    let backend = backend(&silent.url(), 2, 2);
    let config = HealthCheckConfig {
        interval: Duration::from_millis(150),
        timeout: Duration::from_millis(100),
        ..check("/health")
    };
    let (tasks, sender) = start(vec![(Arc::clone(&backend), config)]);

    wait_until("backend is unhealthy", || !backend.is_healthy()).await;
    let snapshot = backend.snapshot();
    assert_eq!(
        snapshot.last_error.as_deref(),
        Some("health check failed: no response within 100ms")
    );
    assert!(silent.connection_count() >= 1);
    stop(tasks, sender).await;
}

#[tokio::test]
async fn prefixed_backend_is_probed_at_joined_path() {
    let mock = MockBackend::start("/v1/health", status(200)).await;
    let backend = backend(&format!("{}/v1", mock.url()), 3, 2);
    let (tasks, sender) = start(vec![(Arc::clone(&backend), check("/health"))]);

    wait_until("three probes arrived", || mock.request_count() >= 3).await;
    for request in mock.requests() {
        assert_eq!(request.path, "/v1/health");
    }
    assert!(backend.is_healthy());
    assert_eq!(backend.snapshot().total_failures, 0);
    stop(tasks, sender).await;
}

#[tokio::test]
async fn flapping_backend_never_transitions() {
    let alternate = Arc::new(|request: usize| if request.is_multiple_of(2) { 503 } else { 200 });
    let mock = MockBackend::start_with("/health", alternate).await;
    let backend = backend(&mock.url(), 2, 2);
    let (tasks, sender) = start(vec![(Arc::clone(&backend), check("/health"))]);

    wait_until("ten probes arrived", || mock.request_count() >= 10).await;
    let snapshot = backend.snapshot();
    assert!(snapshot.healthy);
    assert_eq!(snapshot.last_transition_ms, None);
    assert!(snapshot.total_failures >= 5);
    stop(tasks, sender).await;
}

#[tokio::test]
async fn shutdown_stops_all_tasks() {
    let mock = MockBackend::start("/health", status(200)).await;
    let silent = SilentBackend::start().await;
    let refused = refused_url().await;

    // The silent backend's probe is still waiting for a response when shutdown arrives.
    let hanging = HealthCheckConfig {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(10),
        ..check("/health")
    };
    let targets = vec![
        (backend(&mock.url(), 3, 2), check("/health")),
        (backend(&silent.url(), 3, 2), hanging),
        (backend(&refused, 3, 2), check("/health")),
    ];
    let (tasks, sender) = start(targets);
    assert_eq!(tasks.len(), 3);

    wait_until("the silent backend accepted a probe", || {
        silent.connection_count() >= 1
    })
    .await;
    wait_until("a probe arrived", || mock.request_count() >= 1).await;
    stop(tasks, sender).await;

    let requests_at_stop = mock.request_count();
    sleep(INTERVAL * 4).await;
    assert_eq!(mock.request_count(), requests_at_stop);
}

#[tokio::test]
async fn dropped_tasks_stop_probing() {
    let mock = MockBackend::start("/health", status(200)).await;
    let (tasks, _sender) = start(vec![(backend(&mock.url(), 3, 2), check("/health"))]);

    wait_until("a probe arrived", || mock.request_count() >= 1).await;
    drop(tasks);

    // An aborted task may have had one request on the wire.
    sleep(INTERVAL).await;
    let requests_after_drop = mock.request_count();
    sleep(INTERVAL * 4).await;
    assert_eq!(mock.request_count(), requests_after_drop);
}

#[tokio::test]
async fn disabled_check_spawns_no_task() {
    let mock = MockBackend::start("/health", status(200)).await;
    let config = HealthCheckConfig {
        enabled: false,
        ..check("/health")
    };
    let (tasks, sender) = start(vec![(backend(&mock.url(), 3, 2), config)]);
    assert!(tasks.is_empty());

    sleep(INTERVAL * 4).await;
    assert_eq!(mock.request_count(), 0);
    stop(tasks, sender).await;
}

#[tokio::test]
async fn zero_interval_and_timeout_fail_without_panic() {
    // A zero timeout still lets a fast exchange finish before the timer fires, so only a
    // backend that never responds fails every probe.
    let silent = SilentBackend::start().await;
    let backend = backend(&silent.url(), 3, 2);
    let config = HealthCheckConfig {
        interval: Duration::ZERO,
        timeout: Duration::ZERO,
        ..check("/health")
    };
    let (tasks, sender) = start(vec![(Arc::clone(&backend), config)]);

    wait_until("backend is unhealthy", || !backend.is_healthy()).await;
    // The timer may fire before or after the connect to 127.0.0.1 completes.
    let last_error = backend.snapshot().last_error.unwrap();
    assert!(
        [
            "health check failed: connect timed out after 0ns",
            "health check failed: no response within 0ns"
        ]
        .contains(&last_error.as_str()),
        "{last_error}"
    );
    stop(tasks, sender).await;
}

#[tokio::test]
async fn invalid_path_counts_as_failure() {
    let mock = MockBackend::start("/health", status(200)).await;
    let backend = backend(&mock.url(), 1, 1);
    let (tasks, sender) = start(vec![(Arc::clone(&backend), check("/health check"))]);

    wait_until("backend is unhealthy", || !backend.is_healthy()).await;
    let last_error = backend.snapshot().last_error.unwrap();
    assert!(
        last_error.starts_with("health check failed: invalid health check url"),
        "{last_error}"
    );
    assert_eq!(mock.request_count(), 0);
    stop(tasks, sender).await;
}
