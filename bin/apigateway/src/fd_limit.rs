//! The limit on open file descriptors, which every connection and every worker draw on.
//!
//! Many systems start processes with a soft limit of 1,024 and a much higher hard limit. A
//! proxied request uses two descriptors (the client's and the backend's socket), so at 1,024
//! the gateway could serve only about 500 connections at once. The gateway raises the soft
//! limit to the hard one at start, as any process may.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors each worker keeps open while it runs: its listener, and its runtime's two
/// epoll instances, wake-up eventfd and copy of the signal socket (counted with `ls
/// /proc/PID/fd` on Linux 6 with tokio 1).
pub const PER_WORKER: u64 = 5;

/// The minimum open-file limit the gateway starts with. With every feature on and one worker it
/// keeps about 20 open at rest: the standard streams, the request log's database files, its
/// runtimes' epoll instances and wake-ups, and the signal sockets. The rest leaves room for a
/// few connections. Below about 14 the start failed with errors that blamed the request log's
/// database or the runtime instead of the limit.
pub const MINIMUM: u64 = 32;

/// Raises the soft limit on open file descriptors to the hard limit, and returns the limit in
/// force afterwards, or `None` when there is none. A hard limit of "unlimited" is left alone,
/// because Linux takes no such soft limit for descriptors. When raising fails, the limit stays
/// as it was and is returned.
pub fn raise() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let Some(maximum) = limit.maximum else {
        return limit.current;
    };
    if limit.current.is_some_and(|current| current >= maximum) {
        return limit.current;
    }
    let raised = Rlimit {
        current: Some(maximum),
        maximum: Some(maximum),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Some(maximum),
        Err(_) => limit.current,
    }
}

/// Returns the descriptors each worker keeps: its own, and one idle pooled connection to
/// each of `pooled_backends` backends, since every worker keeps at least one per backend.
pub fn per_worker(pooled_backends: usize) -> u64 {
    PER_WORKER.saturating_add(u64::try_from(pooled_backends).unwrap_or(u64::MAX))
}

/// Returns the most workers that a limit of `limit` descriptors allows, with
/// `pooled_backends` backends to keep idle connections to. Their descriptors take at most half
/// of the limit, so that the rest is left to client connections and the connections in use.
/// The result is at least one.
pub fn max_workers(limit: u64, pooled_backends: usize) -> usize {
    usize::try_from(limit / 2 / per_worker(pooled_backends))
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_take_half_the_limit() {
        assert_eq!(max_workers(1024, 0), 102);
        assert_eq!(max_workers(20_000, 0), 2_000);
        assert_eq!(max_workers(5, 0), 1);
    }

    #[test]
    fn pooled_backends_count_per_worker() {
        assert_eq!(per_worker(3), 8);
        assert_eq!(max_workers(1024, 3), 64);
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let raised = raise();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(raised, limit.current);
        if limit.maximum.is_some() {
            assert_eq!(limit.current, limit.maximum);
        }
    }
}
