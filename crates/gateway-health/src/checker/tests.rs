//! Paused-time tests of the probe loop, with a stand-in probe instead of sockets.

#![allow(clippy::unwrap_used)]

use super::*;
use gateway_balancer::HealthPolicy;
use http::{StatusCode, Uri};
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;
use tracing_subscriber::fmt::MakeWriter;

const INTERVAL: Duration = Duration::from_secs(10);

fn backend(unhealthy_threshold: u32, healthy_threshold: u32) -> Arc<Backend> {
    let policy = HealthPolicy {
        unhealthy_threshold,
        healthy_threshold,
    };
    Arc::new(Backend::new(
        Uri::from_static("http://127.0.0.1:9001"),
        policy,
    ))
}

/// What the stand-in probe does on one call.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Pass,
    Fail,
    /// Passes after this long.
    SlowPass(Duration),
    /// Never completes.
    Hang,
    /// Fails for want of the gateway's own file descriptors.
    Shortage,
}

type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), ProbeError>> + Send>>;

/// Start times of the stand-in probe's calls, measured from its creation.
type Starts = Arc<Mutex<Vec<Duration>>>;

/// Builds a stand-in probe whose `n`th call (from 0) does what `script(n)` returns.
fn fake_probe(
    script: impl Fn(usize) -> Outcome + Send + 'static,
) -> (impl FnMut() -> ProbeFuture + Send + 'static, Starts) {
    let origin = Instant::now();
    let starts = Starts::default();
    let calls = AtomicUsize::new(0);
    let recorded = Arc::clone(&starts);

    let probe = move || -> ProbeFuture {
        recorded.lock().unwrap().push(origin.elapsed());
        let outcome = script(calls.fetch_add(1, Ordering::Relaxed));
        Box::pin(async move {
            match outcome {
                Outcome::Pass => Ok(()),
                Outcome::Fail => Err(ProbeError::Status(StatusCode::SERVICE_UNAVAILABLE)),
                Outcome::SlowPass(delay) => {
                    time::sleep(delay).await;
                    Ok(())
                }
                Outcome::Hang => std::future::pending().await,
                Outcome::Shortage => Err(ProbeError::OutOfResources(io::Error::from_raw_os_error(
                    rustix::io::Errno::MFILE.raw_os_error(),
                ))),
            }
        })
    };
    (probe, starts)
}

fn call_count(starts: &Starts) -> usize {
    starts.lock().unwrap().len()
}

fn start_seconds(starts: &Starts) -> Vec<u64> {
    starts
        .lock()
        .unwrap()
        .iter()
        .map(Duration::as_secs)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn probes_at_start_then_every_interval() {
    let (probe, starts) = fake_probe(|_| Outcome::Pass);
    let (_sender, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(backend(3, 2), INTERVAL, shutdown, probe));

    time::sleep(Duration::from_millis(1)).await;
    assert_eq!(start_seconds(&starts), [0]);

    time::sleep(Duration::from_secs(35)).await;
    assert_eq!(start_seconds(&starts), [0, 10, 20, 30]);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn overrunning_probe_delays_next_tick() {
    let (probe, starts) = fake_probe(|call| match call {
        0 => Outcome::SlowPass(Duration::from_secs(25)),
        _ => Outcome::Pass,
    });
    let (_sender, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(backend(3, 2), INTERVAL, shutdown, probe));

    // The ticks at 10s and 20s are missed: one probe follows at once, then the schedule
    // restarts from there instead of catching up.
    time::sleep(Duration::from_secs(50)).await;
    assert_eq!(start_seconds(&starts), [0, 25, 35, 45]);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn descriptor_shortage_not_counted() {
    let backend = backend(3, 2);
    let (probe, starts) = fake_probe(|_| Outcome::Shortage);
    let (_sender, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(Arc::clone(&backend), INTERVAL, shutdown, probe));

    time::sleep(Duration::from_secs(45)).await;
    assert_eq!(call_count(&starts), 5);
    assert!(backend.is_healthy());
    let snapshot = backend.snapshot();
    assert_eq!(snapshot.consecutive_failures, 0);
    assert!(
        snapshot.last_check_ms.is_none(),
        "a skipped probe counted as a check"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn failures_at_threshold_mark_unhealthy() {
    let backend = backend(3, 2);
    let (probe, starts) = fake_probe(|call| {
        if call < 3 {
            Outcome::Fail
        } else {
            Outcome::Pass
        }
    });
    let (_sender, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(Arc::clone(&backend), INTERVAL, shutdown, probe));

    time::sleep(Duration::from_millis(1)).await;
    let snapshot = backend.snapshot();
    assert!(snapshot.last_check_ms.is_some());
    assert_eq!(snapshot.consecutive_failures, 1);
    assert_eq!(
        snapshot.last_error.as_deref(),
        Some("health check failed: status 503")
    );
    assert!(snapshot.healthy);

    time::sleep(INTERVAL).await;
    assert_eq!(call_count(&starts), 2);
    assert!(backend.is_healthy());

    time::sleep(INTERVAL).await;
    assert_eq!(call_count(&starts), 3);
    assert!(!backend.is_healthy());

    // An unhealthy backend is probed every UNHEALTHY_INTERVAL. The fourth probe is the first
    // success: one short of the healthy threshold.
    time::sleep(UNHEALTHY_INTERVAL).await;
    assert_eq!(call_count(&starts), 4);
    assert!(!backend.is_healthy());

    time::sleep(UNHEALTHY_INTERVAL).await;
    assert_eq!(call_count(&starts), 5);
    assert!(backend.is_healthy());

    // Healthy again, it goes back to the configured interval.
    time::sleep(UNHEALTHY_INTERVAL).await;
    assert_eq!(call_count(&starts), 5);
    time::sleep(INTERVAL).await;
    assert_eq!(call_count(&starts), 6);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn requested_check_probes_at_once() {
    let backend = backend(3, 2);
    let (probe, starts) = fake_probe(|_| Outcome::Pass);
    let (_sender, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(Arc::clone(&backend), INTERVAL, shutdown, probe));

    time::sleep(Duration::from_millis(1)).await;
    assert_eq!(call_count(&starts), 1);
    backend.request_health_check();
    time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        call_count(&starts),
        2,
        "a requested check waits for no interval"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn flapping_probes_never_transition() {
    let backend = backend(2, 2);
    let (probe, starts) = fake_probe(|call| {
        if call.is_multiple_of(2) {
            Outcome::Fail
        } else {
            Outcome::Pass
        }
    });
    let (_sender, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(Arc::clone(&backend), INTERVAL, shutdown, probe));

    for _ in 0..20 {
        time::sleep(INTERVAL).await;
        assert!(backend.is_healthy());
    }
    assert_eq!(call_count(&starts), 20);
    assert_eq!(backend.snapshot().total_failures, 10);
    assert_eq!(backend.snapshot().last_transition_ms, None);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn shutdown_interrupts_wait() {
    let (probe, starts) = fake_probe(|_| Outcome::Pass);
    let (sender, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(
        backend(3, 2),
        Duration::from_secs(3600),
        shutdown,
        probe,
    ));

    time::sleep(Duration::from_millis(1)).await;
    assert_eq!(call_count(&starts), 1);
    sender.send(true).unwrap();

    // Paused time jumps to the earliest timer, so a task still waiting for its hourly tick
    // would let this one-second timeout fire first.
    let stopped = time::timeout(Duration::from_secs(1), task).await;
    assert!(stopped.is_ok(), "task still running after shutdown");
    assert_eq!(call_count(&starts), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_interrupts_probe() {
    let backend = backend(3, 2);
    let (probe, starts) = fake_probe(|_| Outcome::Hang);
    let (sender, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(Arc::clone(&backend), INTERVAL, shutdown, probe));

    time::sleep(Duration::from_millis(1)).await;
    assert_eq!(call_count(&starts), 1);
    sender.send(true).unwrap();

    let stopped = time::timeout(Duration::from_secs(1), task).await;
    assert!(stopped.is_ok(), "task still running after shutdown");
    assert_eq!(backend.snapshot().last_check_ms, None);
}

#[tokio::test(start_paused = true)]
async fn shutdown_before_start_skips_probe() {
    let (probe, starts) = fake_probe(|_| Outcome::Pass);
    let (_sender, shutdown) = watch::channel(true);

    let stopped = time::timeout(INTERVAL, run(backend(3, 2), INTERVAL, shutdown, probe)).await;
    assert!(stopped.is_ok(), "task still running after shutdown");
    assert_eq!(call_count(&starts), 0);
}

#[tokio::test(start_paused = true)]
async fn dropped_sender_stops_task() {
    let (probe, starts) = fake_probe(|_| Outcome::Pass);
    let (sender, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(backend(3, 2), INTERVAL, shutdown, probe));

    time::sleep(Duration::from_millis(1)).await;
    drop(sender);

    let stopped = time::timeout(Duration::from_secs(1), task).await;
    assert!(
        stopped.is_ok(),
        "task still running after its sender was dropped"
    );
    assert_eq!(call_count(&starts), 1);
}

/// Log output kept in memory, so a test can read what was logged.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl MakeWriter<'_> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&self) -> LogBuffer {
        self.clone()
    }
}

#[tokio::test(start_paused = true)]
async fn transitions_are_logged_once() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    // Five failures, then three successes: down at the third failure, up at the second
    // success.
    let (probe, starts) = fake_probe(|call| {
        if call < 5 {
            Outcome::Fail
        } else {
            Outcome::Pass
        }
    });
    let (_sender, shutdown) = watch::channel(false);
    let running = run(backend(3, 2), INTERVAL, shutdown, probe);
    // Probes at 0, 10 and 20 s (down), then every second while unhealthy: 21, 22, 23 and 24 s
    // (up).
    let _ = time::timeout(Duration::from_secs(30), running).await;
    assert_eq!(call_count(&starts), 7);

    let lines = logs.lines();
    let matching = |level: &str, message: &str| -> Vec<&String> {
        lines
            .iter()
            .filter(|line| line.contains(level) && line.contains(message))
            .collect()
    };

    let down = matching("WARN", "backend is unhealthy");
    assert_eq!(down.len(), 1, "{lines:#?}");
    assert!(
        down[0].contains("backend=http://127.0.0.1:9001"),
        "{}",
        down[0]
    );
    assert!(down[0].contains("failures=3"), "{}", down[0]);
    assert!(down[0].contains("error=status 503"), "{}", down[0]);

    let up = matching("INFO", "backend is healthy again");
    assert_eq!(up.len(), 1, "{lines:#?}");
    assert!(up[0].contains("backend=http://127.0.0.1:9001"), "{}", up[0]);

    let failed = matching("DEBUG", "health check failed");
    assert_eq!(failed.len(), 4, "{lines:#?}");
    assert_eq!(matching("WARN", "").len(), 1, "{lines:#?}");
    assert_eq!(matching("INFO", "").len(), 1, "{lines:#?}");
}
