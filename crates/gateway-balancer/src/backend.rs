//! One backend: its address and the live state the balancer, health checks and admin share.

use http::Uri;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Consecutive results that flip a backend between healthy and unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that mark a healthy backend unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive passing health checks that mark an unhealthy backend healthy.
    pub healthy_threshold: u32,
}

impl Default for HealthPolicy {
    /// Three failures down, two passing health checks up.
    fn default() -> Self {
        HealthPolicy {
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

/// A change of health caused by one recorded result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The backend stays as it was.
    None,
    /// The backend just became unhealthy.
    Down,
    /// The backend just became healthy.
    Up,
}

/// A backend that routes send requests to. Several routes listing the same URL share one, so
/// its health and in-flight count cover every route, while each route's [`Pool`] counts the
/// requests it sent.
///
/// [`Pool`]: crate::Pool
#[derive(Debug)]
pub struct Backend {
    id: u64,
    url: Uri,
    url_text: Arc<str>,
    policy: HealthPolicy,
    state: BackendState,
}

/// Live counters and health of a backend.
#[derive(Debug, Default)]
pub struct BackendState {
    unhealthy: AtomicBool,
    in_flight: AtomicU64,
    failures_total: AtomicU64,
    // Failed requests since the last successful request or passing check.
    request_failures: AtomicU32,
    // Failed checks since the last passing check. Successful requests leave it alone, so a
    // backend that fails its checks leaves rotation however much traffic it still serves.
    check_failures: AtomicU32,
    consecutive_successes: AtomicU32,
    last_check_ms: AtomicU64,
    last_transition_ms: AtomicU64,
    // Written only by failed probes and failed forwards, never on a successful request.
    last_error: Mutex<Option<LastError>>,
    // Wakes the backend's health check when failed requests mark it unhealthy.
    went_down: tokio::sync::Notify,
    // When a failed request was last logged, in milliseconds since the Unix epoch, and the
    // failed requests since then that were not.
    failure_logged_ms: AtomicU64,
    failures_unlogged: AtomicU64,
}

/// The message and time of a backend's latest failure.
#[derive(Debug)]
struct LastError {
    message: String,
    at_ms: u64,
}

/// A copy of a backend's state at one moment, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSnapshot {
    /// Backend URL as configured.
    pub url: String,
    /// Whether the balancer picks it.
    pub healthy: bool,
    /// Requests being forwarded to it now, by every route that lists it.
    pub in_flight: u64,
    /// Failed forwards and probes since start.
    pub total_failures: u64,
    /// The longer of two failure streaks, either of which takes the backend out at
    /// `unhealthy_threshold`: failed health checks since the last passing one, and failed
    /// requests since the last successful request or passing health check.
    pub consecutive_failures: u32,
    /// Passing health checks since the last failed request or probe, also while healthy.
    /// Successful requests are not counted.
    pub consecutive_successes: u32,
    /// Time of the last probe, in milliseconds since the Unix epoch; `None` before the first.
    pub last_check_ms: Option<u64>,
    /// Time health last changed, in milliseconds since the Unix epoch; `None` if never.
    pub last_transition_ms: Option<u64>,
    /// The latest failure's message, kept after the backend recovers, or `None` if it never
    /// failed.
    pub last_error: Option<String>,
    /// Time of the latest failure in milliseconds since the Unix epoch, or `None` if it never
    /// failed.
    pub last_error_ms: Option<u64>,
}

impl Backend {
    /// Creates a healthy backend for `url` with zeroed counters.
    pub fn new(url: Uri, policy: HealthPolicy) -> Backend {
        let text = url.to_string();
        let text = text
            .strip_suffix('/')
            .filter(|_| url.path() == "/")
            .unwrap_or(&text);
        Backend {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            url_text: Arc::from(text),
            url,
            policy,
            state: BackendState::default(),
        }
    }

    /// Identifier unique among all backends created by this process, for keying per-backend
    /// caches such as connection pools.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Base URL of the backend.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// Base URL as text, shared so that request records can hold it without copying.
    pub fn url_text(&self) -> &Arc<str> {
        &self.url_text
    }

    /// Thresholds of the health state machine.
    pub fn policy(&self) -> HealthPolicy {
        self.policy
    }

    /// Returns whether the balancer may pick this backend.
    pub fn is_healthy(&self) -> bool {
        !self.state.unhealthy.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped.
    /// [`Pick::start_request`](crate::Pick::start_request) also counts it for the route.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Records a successful exchange with the backend, which ends a streak of failed requests
    /// but not one of failed health checks: a backend whose health endpoint reports it unwell
    /// may still respond to requests, with errors or not.
    ///
    /// It does not count toward `healthy_threshold`, because the balancer never picks an
    /// unhealthy backend. A request that succeeds on one started before the backend went
    /// down, so its success is no evidence of recovery.
    pub fn record_request_success(&self) {
        let failures = &self.state.request_failures;
        // Without a failure streak there is nothing to store, and skipping the store keeps
        // the shared cache line clean on the request path.
        if failures.load(Ordering::Relaxed) != 0 {
            failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a passing health check and returns the health change it caused.
    pub fn record_check_success(&self) -> Transition {
        let state = &self.state;
        state.check_failures.store(0, Ordering::Relaxed);
        state.request_failures.store(0, Ordering::Relaxed);
        // Saturates rather than wraps, so that a backend healthy for long never reads as one
        // that just failed.
        let (Ok(previous) | Err(previous)) = state.consecutive_successes.fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |count| Some(count.saturating_add(1)),
        );
        let successes = previous.saturating_add(1);
        if successes >= self.policy.healthy_threshold
            && state.unhealthy.swap(false, Ordering::Relaxed)
        {
            state.last_transition_ms.store(now_ms(), Ordering::Relaxed);
            return Transition::Up;
        }
        Transition::None
    }

    /// Records a failed health check with its message and returns the health change it caused.
    pub fn record_check_failure(&self, error: &str) -> Transition {
        self.record_failure(&self.state.check_failures, error)
    }

    /// Records a failed request with its message and returns the health change it caused.
    pub fn record_request_failure(&self, error: &str) -> Transition {
        self.record_failure(&self.state.request_failures, error)
    }

    /// Records a response body that the backend broke off or garbled after its head. It
    /// counts in `total_failures` and `last_error`, but not in the failure streak, because
    /// the head showed the backend up.
    pub fn record_body_failure(&self, error: &str) {
        self.state.failures_total.fetch_add(1, Ordering::Relaxed);
        self.store_last_error(error);
    }

    fn store_last_error(&self, error: &str) {
        if let Ok(mut last) = self.state.last_error.lock() {
            *last = Some(LastError {
                message: error.to_owned(),
                at_ms: now_ms(),
            });
        }
    }

    /// Decides whether a failed request to this backend is logged: at most one a second, so
    /// that a backend failing every request cannot flood the log. Returns `None` for a
    /// failure to leave unlogged, which is counted, or the count of failures left unlogged
    /// since the last one logged.
    pub fn take_failure_report(&self) -> Option<u64> {
        let state = &self.state;
        let now = now_ms();
        let last = state.failure_logged_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= FAILURE_LOG_INTERVAL_MS
            && state
                .failure_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if !due {
            state.failures_unlogged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(state.failures_unlogged.swap(0, Ordering::Relaxed))
    }

    /// Counts a failure in `streak` and takes the backend out when the streak reaches the
    /// threshold.
    fn record_failure(&self, streak: &AtomicU32, error: &str) -> Transition {
        let state = &self.state;
        state.failures_total.fetch_add(1, Ordering::Relaxed);
        state.consecutive_successes.store(0, Ordering::Relaxed);
        self.store_last_error(error);
        let failures = streak.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.policy.unhealthy_threshold
            && !state.unhealthy.swap(true, Ordering::Relaxed)
        {
            state.last_transition_ms.store(now_ms(), Ordering::Relaxed);
            return Transition::Down;
        }
        Transition::None
    }

    /// Asks the backend's health check to probe now. The proxy calls it when failed requests
    /// took the backend out of rotation, so that the probes that bring it back start at once
    /// instead of at the next interval.
    pub fn request_health_check(&self) {
        self.state.went_down.notify_one();
    }

    /// Completes when [`Backend::request_health_check`] was called, at once when it was called
    /// since the last wait.
    pub async fn health_check_requested(&self) {
        self.state.went_down.notified().await;
    }

    /// Stores the time of a probe, for reports.
    pub fn mark_checked(&self) {
        self.state.last_check_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Copies the backend's state for a report.
    pub fn snapshot(&self) -> BackendSnapshot {
        let state = &self.state;
        let optional = |value: u64| (value != 0).then_some(value);
        let (last_error, last_error_ms) = match state.last_error.lock().as_deref() {
            Ok(Some(last)) => (Some(last.message.clone()), Some(last.at_ms)),
            _ => (None, None),
        };
        BackendSnapshot {
            url: self.url_text.to_string(),
            healthy: self.is_healthy(),
            in_flight: state.in_flight.load(Ordering::Relaxed),
            total_failures: state.failures_total.load(Ordering::Relaxed),
            consecutive_failures: state
                .check_failures
                .load(Ordering::Relaxed)
                .max(state.request_failures.load(Ordering::Relaxed)),
            consecutive_successes: state.consecutive_successes.load(Ordering::Relaxed),
            last_check_ms: optional(state.last_check_ms.load(Ordering::Relaxed)),
            last_transition_ms: optional(state.last_transition_ms.load(Ordering::Relaxed)),
            last_error,
            last_error_ms,
        }
    }
}

/// An in-flight request on a backend; dropping it counts the request as finished.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    /// Returns the backend the request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Minimum time between two logged request failures of one backend.
const FAILURE_LOG_INTERVAL_MS: u64 = 1000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(unhealthy: u32, healthy: u32) -> Backend {
        let policy = HealthPolicy {
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
        };
        Backend::new(Uri::from_static("http://127.0.0.1:9001"), policy)
    }

    #[test]
    fn url_text_drops_root_slash() {
        assert_eq!(&**backend(1, 1).url_text(), "http://127.0.0.1:9001");
        let prefixed = Backend::new(Uri::from_static("http://h:1/v1"), HealthPolicy::default());
        assert_eq!(&**prefixed.url_text(), "http://h:1/v1");
    }

    #[test]
    fn body_failure_counted_outside_streak() {
        let b = backend(1, 1);
        b.record_body_failure("response body failed: reset");
        assert!(b.is_healthy());
        let snapshot = b.snapshot();
        assert_eq!(snapshot.total_failures, 1);
        assert_eq!(snapshot.consecutive_failures, 0);
        assert_eq!(
            snapshot.last_error.as_deref(),
            Some("response body failed: reset")
        );
    }

    #[test]
    fn failure_reports_limited_per_second() {
        let b = backend(3, 2);
        assert_eq!(b.take_failure_report(), Some(0));
        assert_eq!(b.take_failure_report(), None);
        assert_eq!(b.take_failure_report(), None);

        // A second later the next failure is logged with the count of those that were not.
        let logged = b.state.failure_logged_ms.load(Ordering::Relaxed);
        b.state
            .failure_logged_ms
            .store(logged - FAILURE_LOG_INTERVAL_MS, Ordering::Relaxed);
        assert_eq!(b.take_failure_report(), Some(2));
        assert_eq!(b.take_failure_report(), None);
    }

    #[test]
    fn goes_down_after_threshold() {
        let b = backend(3, 2);
        assert_eq!(b.record_request_failure("refused"), Transition::None);
        assert_eq!(b.record_request_failure("refused"), Transition::None);
        assert!(b.is_healthy());
        assert_eq!(b.record_request_failure("refused"), Transition::Down);
        assert!(!b.is_healthy());
        assert_eq!(b.record_request_failure("refused"), Transition::None);
        assert_eq!(b.snapshot().consecutive_failures, 4);
        assert_eq!(b.snapshot().last_error.as_deref(), Some("refused"));
    }

    #[test]
    fn comes_back_after_threshold() {
        let b = backend(1, 2);
        assert_eq!(b.record_check_failure("timeout"), Transition::Down);
        assert_eq!(b.record_check_success(), Transition::None);
        assert!(!b.is_healthy());
        assert_eq!(b.record_check_success(), Transition::Up);
        assert!(b.is_healthy());
        assert!(b.snapshot().last_transition_ms.is_some());
    }

    #[test]
    fn passing_checks_count_while_healthy() {
        let never_failed = backend(1, 2);
        for _ in 0..5 {
            assert_eq!(never_failed.record_check_success(), Transition::None);
        }
        assert_eq!(never_failed.snapshot().consecutive_successes, 5);

        let recovered = backend(1, 2);
        recovered.record_check_failure("connection refused");
        for _ in 0..4 {
            recovered.record_check_success();
        }
        assert!(recovered.is_healthy());
        assert_eq!(recovered.snapshot().consecutive_successes, 4);
    }

    #[test]
    fn last_error_keeps_its_time_after_recovery() {
        let b = backend(1, 1);
        assert_eq!(b.snapshot().last_error_ms, None);
        b.record_check_failure("connection refused");
        assert_eq!(b.record_check_success(), Transition::Up);

        let snapshot = b.snapshot();
        assert!(snapshot.healthy);
        assert_eq!(snapshot.last_error.as_deref(), Some("connection refused"));
        let failed_at = snapshot.last_error_ms.unwrap();
        let recovered_at = snapshot.last_transition_ms.unwrap();
        assert!(failed_at <= recovered_at, "{failed_at} > {recovered_at}");
    }

    #[test]
    fn request_success_does_not_bring_backend_back() {
        let b = backend(1, 1);
        b.record_request_failure("connection refused");
        b.record_request_success();
        assert!(!b.is_healthy());
        assert_eq!(b.snapshot().consecutive_failures, 0);
        assert_eq!(b.snapshot().consecutive_successes, 0);
    }

    #[test]
    fn request_success_resets_request_streak() {
        let b = backend(3, 1);
        b.record_request_failure("x");
        b.record_request_failure("x");
        b.record_request_success();
        assert_eq!(b.record_request_failure("x"), Transition::None);
        assert_eq!(b.record_request_failure("x"), Transition::None);
        assert!(b.is_healthy());
        assert_eq!(b.record_request_failure("x"), Transition::Down);
    }

    #[test]
    fn request_success_keeps_check_streak() {
        // A backend whose health endpoint fails while it still serves requests.
        let b = backend(3, 1);
        for _ in 0..2 {
            assert_eq!(b.record_check_failure("status 503"), Transition::None);
            b.record_request_success();
        }
        assert_eq!(b.snapshot().consecutive_failures, 2);
        assert_eq!(b.record_check_failure("status 503"), Transition::Down);
    }

    #[test]
    fn streaks_count_apart() {
        // Two failed checks and two failed requests: neither streak reached 3.
        let b = backend(3, 1);
        b.record_check_failure("status 503");
        b.record_request_failure("refused");
        b.record_check_failure("status 503");
        b.record_request_failure("refused");
        assert!(b.is_healthy());
        assert_eq!(b.snapshot().consecutive_failures, 2);
        // A passing check ends both.
        b.record_check_success();
        assert_eq!(b.snapshot().consecutive_failures, 0);
    }

    #[test]
    fn flapping_never_reaches_threshold() {
        let b = backend(2, 2);
        for _ in 0..10 {
            assert_eq!(b.record_check_failure("x"), Transition::None);
            assert_eq!(b.record_check_success(), Transition::None);
        }
        assert!(b.is_healthy());
    }

    #[test]
    fn in_flight_guard_counts() {
        let b = Arc::new(backend(1, 1));
        let first = b.start_request();
        let second = b.start_request();
        assert_eq!(b.snapshot().in_flight, 2);
        drop(first);
        assert_eq!(b.snapshot().in_flight, 1);
        drop(second);
        assert_eq!(b.snapshot().in_flight, 0);
    }
}
