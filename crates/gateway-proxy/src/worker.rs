//! The worker that the calling thread serves as.
//!
//! With several workers, each worker thread runs a runtime of its own, and a socket belongs
//! to the I/O driver of the runtime it was opened on: only that runtime's thread hears that
//! the socket is ready. So a backend connection must be reused by the worker that opened it,
//! and the pools are kept per worker, by the index set here.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `index` (counted from 0). A thread that is never marked
/// is worker 0.
pub fn enter(index: usize) {
    INDEX.set(index);
}

/// Returns the calling thread's worker index.
pub(crate) fn current() -> usize {
    INDEX.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_keep_own_worker_index() {
        assert_eq!(current(), 0);
        enter(3);
        assert_eq!(current(), 3);
        let other = std::thread::spawn(current).join().unwrap_or(usize::MAX);
        assert_eq!(other, 0, "a new thread is worker 0 until marked");
        assert_eq!(current(), 3);
    }
}
