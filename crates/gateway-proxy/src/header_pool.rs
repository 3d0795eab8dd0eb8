//! Per-thread pools of emptied header maps and extension maps. Each request builds two header
//! maps, its own and its response's, so parsing a head takes a map from here and a finished
//! exchange returns both, which saves their allocations. The request's extension map goes on
//! to its response and comes back when the response head is written. Each thread has its own
//! pools, so no lock is taken.

use http::{Extensions, HeaderMap};
use std::cell::RefCell;

/// Maps kept per thread: enough for the requests one thread has in flight at a time, which
/// return their maps as they end. By estimate, a full pool takes 85 KB with maps sized for
/// about ten fields, and 340 KB with the largest maps it keeps (48 fields).
const POOLED_MAPS: usize = 64;

/// Maps that grew past this many fields are freed rather than kept, so that one odd request
/// does not leave a large map behind.
const MAX_POOLED_CAPACITY: usize = 64;

/// Extension maps kept per thread, as many as header maps. An extension map contains a few
/// values (the peer's address, the forwarder's report), so a full pool takes a few KB.
const POOLED_EXTENSIONS: usize = 64;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static EXTENSIONS: RefCell<Vec<Extensions>> = const { RefCell::new(Vec::new()) };
}

/// Returns an empty map with room for at least `capacity` fields, from the pool when it has
/// one.
pub(crate) fn take(capacity: usize) -> HeaderMap {
    match MAPS.with_borrow_mut(Vec::pop) {
        Some(map) if map.capacity() >= capacity => map,
        _ => HeaderMap::with_capacity(capacity),
    }
}

/// Empties `map` and keeps it for a later [`take`], unless the pool is full or the map is
/// large.
pub(crate) fn give(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_POOLED_CAPACITY {
        return;
    }
    map.clear();
    MAPS.with_borrow_mut(|maps| {
        if maps.len() < POOLED_MAPS {
            maps.push(map);
        }
    });
}

/// Returns an empty extension map, from the pool when it has one. A pooled map keeps the
/// table it grew, so inserting into it allocates only the value.
pub(crate) fn take_extensions() -> Extensions {
    EXTENSIONS.with_borrow_mut(Vec::pop).unwrap_or_default()
}

/// Empties `extensions` and keeps them for a later [`take_extensions`], unless the pool is
/// full. A map that never held a value has nothing allocated, and keeping it costs nothing.
pub(crate) fn give_extensions(mut extensions: Extensions) {
    extensions.clear();
    EXTENSIONS.with_borrow_mut(|pool| {
        if pool.len() < POOLED_EXTENSIONS {
            pool.push(extensions);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn given_map_returns_empty() {
        let mut map = take(4);
        map.insert("x-a", HeaderValue::from_static("1"));
        let capacity = map.capacity();
        give(map);

        let again = take(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);
    }

    #[test]
    fn large_maps_are_not_kept() {
        let mut map = HeaderMap::with_capacity(MAX_POOLED_CAPACITY * 2);
        map.insert("x-a", HeaderValue::from_static("1"));
        give(map);
        assert!(take(0).capacity() <= MAX_POOLED_CAPACITY);
    }

    #[test]
    fn given_extensions_return_empty() {
        let mut extensions = take_extensions();
        extensions.insert(7u32);
        give_extensions(extensions);

        let again = take_extensions();
        assert!(again.is_empty());
        assert_eq!(again.get::<u32>(), None);
    }

    #[test]
    fn small_pooled_map_is_not_used() {
        give(HeaderMap::with_capacity(2));
        assert!(take(40).capacity() >= 40);
    }
}
