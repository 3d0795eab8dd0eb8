//! A cheap clock for timeouts.
//!
//! A proxied request needs the time five times: the pool's check-out and check-in, the start
//! of the backend's response timeout, and the client's write and read deadlines. The precise
//! monotonic clock costs about 28 ns a read on the test machine, a virtual machine. The
//! kernel's coarse monotonic clock costs about 8 ns there.
//! It advances once a scheduler tick, every 1 to 10 ms depending on the kernel's
//! configuration. [`now_for`] reads it for timeouts long enough that a tick does not matter.

use std::sync::LazyLock;
use std::time::Duration;
use tokio::time::Instant;

/// A precise and a coarse reading taken together, which relate the two clocks.
static ORIGIN: LazyLock<(Instant, Duration)> = LazyLock::new(|| (Instant::now(), coarse()));

/// Reads the coarse monotonic clock, as time since an unspecified start.
fn coarse() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Timeouts at least this long are counted on the coarse clock, where a tick of up to 10 ms
/// is at most a tenth of the timeout.
const COARSE_FROM: Duration = Duration::from_millis(100);

/// Returns the time to count `timeout` from: the coarse clock's reading when `timeout` is
/// 100 ms or more, else the precise clock's.
pub fn now_for(timeout: Duration) -> Instant {
    if timeout >= COARSE_FROM {
        coarse_now()
    } else {
        Instant::now()
    }
}

/// Returns the current time from the coarse clock. It is at most one scheduler tick away from
/// [`Instant::now`], either way, and never goes back.
pub fn coarse_now() -> Instant {
    let (instant, at) = *ORIGIN;
    instant + coarse().saturating_sub(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduler tick of a Linux kernel configured with its lowest rate, 100 Hz.
    const TICK: Duration = Duration::from_millis(10);

    #[test]
    fn stays_within_a_tick_of_the_precise_clock() {
        for _ in 0..50 {
            let before = Instant::now();
            let coarse = coarse_now();
            let after = Instant::now();
            assert!(coarse + TICK >= before, "{coarse:?} is behind {before:?}");
            assert!(coarse <= after + TICK, "{coarse:?} is ahead of {after:?}");
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    #[test]
    fn follows_the_precise_clock_over_time() {
        let (coarse, precise) = (coarse_now(), Instant::now());
        std::thread::sleep(Duration::from_millis(200));
        let coarse_elapsed = coarse_now() - coarse;
        let precise_elapsed = precise.elapsed();
        let gap = coarse_elapsed.abs_diff(precise_elapsed);
        assert!(
            gap <= 2 * TICK,
            "coarse {coarse_elapsed:?} against precise {precise_elapsed:?}"
        );
    }

    #[test]
    fn short_timeouts_read_the_precise_clock() {
        // A precise reading falls between the two readings around it, whatever the tick.
        for _ in 0..50 {
            let before = Instant::now();
            let now = now_for(Duration::from_millis(99));
            assert!(now >= before);
            assert!(now <= Instant::now());
        }
    }

    #[test]
    fn never_goes_back() {
        let mut last = coarse_now();
        for _ in 0..100_000 {
            let now = coarse_now();
            assert!(now >= last);
            last = now;
        }
    }
}
