//! The probe tasks: one per backend, each probing at start and then every interval until
//! shutdown, and logging each change of health once.

use crate::probe::{self, ProbeError};
use gateway_balancer::{Backend, Transition};
use gateway_config::HealthCheckConfig;
use http::StatusCode;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{self, MissedTickBehavior};
use tracing::{Instrument, debug, info, info_span, trace, warn};

/// Time between probes of an unhealthy backend, when the configured interval is longer.
pub const UNHEALTHY_INTERVAL: Duration = Duration::from_secs(1);

/// Shortest time between probes. Validation rejects a zero interval, but one that gets here
/// anyway is raised to this rather than making the timer panic.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Starts one probe task for each target whose health check is enabled.
///
/// Each task sends `GET` to the backend's URL joined with `path` (`http://h:1/v1` with
/// `/health` probes `http://h:1/v1/health`) right away and then every `interval`, and records
/// the result with [`Backend::record_check_success`] or [`Backend::record_check_failure`]. A probe
/// fails on a connect error, on a status outside 2xx and 3xx (redirects are not followed), or
/// when it takes longer than `timeout`, including reading the response body. The backend's own
/// [`HealthPolicy`](gateway_balancer::HealthPolicy) decides when it becomes healthy or
/// unhealthy, so the config's threshold fields take effect only through the policy the backend
/// was built with.
///
/// The tasks stop, in the middle of a probe or of a wait, once `shutdown` is `true` or its
/// sender is dropped. All tasks share one HTTP/1 client that keeps one idle connection per
/// backend. Targets are probed as given, so a backend listed twice is probed twice as often.
///
/// # Panics
///
/// Panics when called outside a tokio runtime.
pub fn spawn(
    targets: Vec<(Arc<Backend>, HealthCheckConfig)>,
    shutdown: watch::Receiver<bool>,
) -> HealthTasks {
    let client = probe::client();
    let mut tasks = JoinSet::new();

    for (backend, config) in targets {
        if !config.enabled {
            debug!(backend = %backend.url_text(), "health check disabled");
            continue;
        }

        let url = probe::probe_url(backend.url(), &config.path);
        let timeout = config.timeout;
        let client = client.clone();
        let probe = move || {
            let client = client.clone();
            let url = url.clone();
            async move { probe::probe(&client, &url?, timeout).await }
        };

        let span = info_span!("health_check", backend = %backend.url_text());
        let interval = config.interval.max(MIN_INTERVAL);
        tasks.spawn(run(backend, interval, shutdown.clone(), probe).instrument(span));
    }

    HealthTasks { tasks }
}

/// The running probe tasks. Dropping it aborts them.
#[derive(Debug)]
pub struct HealthTasks {
    tasks: JoinSet<()>,
}

impl HealthTasks {
    /// Returns the number of tasks still running or not yet joined.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Returns whether no task runs, as when every health check is disabled.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Waits until every task has stopped. Tasks stop only on shutdown, so call this after
    /// sending `true` on the shutdown channel.
    pub async fn join(mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(error) = result {
                warn!(%error, "health check task failed");
            }
        }
    }
}

/// Probes at once and then every `interval` until shutdown, recording each result on
/// `backend`.
async fn run<P, F>(
    backend: Arc<Backend>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut probe: P,
) where
    P: FnMut() -> F,
    F: Future<Output = Result<(), ProbeError>>,
{
    debug!(?interval, "health check started");

    // The first tick completes at once. `Delay` starts the next full interval after a probe
    // that overran, so a slow backend is not probed in a burst.
    let mut period = interval;
    let mut ticker = time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            biased;
            () = stopped(&mut shutdown) => break,
            _ = ticker.tick() => {}
            // Failed requests took the backend out: probe now rather than at the next tick.
            () = backend.health_check_requested() => {}
        }

        // A probe cut short by shutdown is not recorded, because it tells nothing about the
        // backend.
        let result = tokio::select! {
            biased;
            () = stopped(&mut shutdown) => break,
            result = probe() => result,
        };
        record(&backend, result);

        // An unhealthy backend is probed more often, so that it returns soon after it
        // recovers; a healthy one at the configured interval.
        let next_period = if backend.is_healthy() {
            interval
        } else {
            interval.min(UNHEALTHY_INTERVAL)
        };
        if next_period != period {
            period = next_period;
            ticker = time::interval_at(time::Instant::now() + period, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
    }

    debug!("health check stopped");
}

/// Completes once the shutdown value is `true` or its sender is gone, because a dropped
/// sender can never ask for shutdown and nothing would stop the task otherwise.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Records one probe result on `backend` and logs a change of health.
fn record(backend: &Backend, result: Result<(), ProbeError>) {
    let url = backend.url_text();
    // The gateway's own shortage is no sign of the backend's health, so the probe does not
    // count as a check. The shortage shows in the accept warnings and the access lines.
    if let Err(error @ ProbeError::OutOfResources(_)) = &result {
        debug!(backend = %url, error = %error.message(), "health check skipped");
        return;
    }
    backend.mark_checked();

    match result {
        Ok(()) => match backend.record_check_success() {
            Transition::Up => info!(backend = %url, "backend is healthy again"),
            Transition::None | Transition::Down => trace!("health check passed"),
        },
        Err(error) => {
            let message = error.message();
            // `last_error` also contains failed requests' messages, so the source is named.
            match backend.record_check_failure(&format!("health check failed: {message}")) {
                Transition::Down if matches!(error, ProbeError::Status(StatusCode::NOT_FOUND)) => {
                    // Health checks are on by default, so a backend without the endpoint
                    // is the likely cause, not a failing one.
                    let failures = backend.snapshot().consecutive_failures;
                    warn!(
                        backend = %url,
                        failures,
                        error = %message,
                        "backend is unhealthy: it has no endpoint at the health check path; set \
                         health_check.path to a path it serves, or health_check.enabled: false"
                    );
                }
                Transition::Down => {
                    let failures = backend.snapshot().consecutive_failures;
                    warn!(backend = %url, failures, error = %message, "backend is unhealthy");
                }
                Transition::None | Transition::Up => {
                    debug!(backend = %url, error = %message, "health check failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
