//! The index that spreads request threads over a fixed array of buffers, so that threads
//! append without contending for one lock.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Returns the calling thread's index into an array of `buffers` buffers.
///
/// Threads are numbered round-robin in the order of their first call, so the first `buffers`
/// threads never share an index. The numbering is the same for every caller, so a thread
/// that writes to two such arrays of one size gets the same index in both. `buffers` must
/// not be zero.
#[inline]
pub fn buffer_index(buffers: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    let number = NUMBER.with(|number| {
        if number.get() == usize::MAX {
            number.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        number.get()
    });
    number % buffers
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn index_is_fixed_per_thread() {
        let indexes: Vec<(usize, usize, usize)> = (0..8)
            .map(|_| {
                std::thread::spawn(|| (buffer_index(16), buffer_index(16), buffer_index(64)))
                    .join()
                    .unwrap()
            })
            .collect();

        for &(first, second, wider) in &indexes {
            assert!(first < 16, "{first}");
            assert_eq!(first, second, "one thread got two indexes");
            assert_eq!(wider % 16, first, "sizes disagree on the thread's number");
        }
    }

    #[test]
    fn threads_get_distinct_numbers() {
        // Other tests of this process number their threads too, so the numbers need not be
        // 0 to 15. No thread number reaches usize::MAX, so that size returns the number.
        let mut numbers: Vec<usize> = (0..16)
            .map(|_| std::thread::spawn(|| buffer_index(usize::MAX)))
            .map(|thread| thread.join().unwrap())
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), 16, "{numbers:?}");
    }
}
