//! The hand-over of interim (1xx) responses from the backend side to the client side, within
//! one poll of the service's future.
//!
//! The forwarder reads a backend's interim responses while the connection's task polls the
//! service's future, and the connection loop writes them to the client. The loop polls the
//! future inside [`collect`], and an [`offer`] made during that poll is encoded for the client
//! at once and returned when the poll ends. The slot is a thread-local rather than a handle in
//! the request, so that a request without interim responses pays a few stores per poll and no
//! allocation. An offer made outside such a poll is rejected. The loop does not collect for an
//! HTTP/1.0 client, which must never get a 1xx (RFC 9110 section 15.2), and a forwarder driven
//! by another caller has no client to send to.

use crate::server::response::encode_interim;
use http::{HeaderMap, StatusCode};
use std::cell::{Cell, RefCell};

/// Most interim responses of one request that are offered to the client, `100 Continue`
/// counted though it is never offered. Later ones are read and dropped, so a client that does
/// not read gets at most this many heads queued for it. Every interim response restarts the
/// response timeout, offered or not.
pub(crate) const MAX_INTERIM_RESPONSES: usize = 10;

/// The state of the slot: closed, open to offers, or open with an offer taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Closed,
    Open,
    Offered,
}

thread_local! {
    static SLOT: Cell<Slot> = const { Cell::new(Slot::Closed) };
    // The interim responses offered during the current poll, encoded for the client.
    static OFFERED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Returns whether an [`offer`] would be taken now, so that a caller can skip building an
/// interim response that no client would get.
pub(crate) fn is_open() -> bool {
    SLOT.get() != Slot::Closed
}

/// Encodes an interim response for the client whose request is being polled, and returns
/// whether it was taken. It is not taken outside [`collect`].
pub(crate) fn offer(status: StatusCode, headers: &HeaderMap) -> bool {
    if !is_open() {
        return false;
    }
    OFFERED.with_borrow_mut(|offered| encode_interim(offered, status, headers));
    SLOT.set(Slot::Offered);
    true
}

/// Opens the slot to offers until [`Collecting::finish`], which returns what was offered.
/// The service's future is polled in between, where it stays, so that its output is not moved
/// through this module.
pub(crate) fn open() -> Collecting {
    SLOT.set(Slot::Open);
    Collecting
}

/// The slot, open to offers. Dropping it unfinished (when the poll panics) closes the slot and
/// drops what was offered, so that a later poll neither takes offers it did not open for nor
/// sends them.
pub(crate) struct Collecting;

impl Collecting {
    /// Closes the slot and returns the interim responses offered since [`open`], encoded for
    /// the client, if any.
    pub(crate) fn finish(self) -> Option<Vec<u8>> {
        std::mem::forget(self);
        (SLOT.replace(Slot::Closed) == Slot::Offered)
            .then(|| OFFERED.with_borrow_mut(std::mem::take))
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        if SLOT.replace(Slot::Closed) == Slot::Offered {
            OFFERED.with_borrow_mut(Vec::clear);
        }
    }
}

/// Runs `poll` between [`open`] and [`Collecting::finish`], and returns its result with what
/// was offered during it.
#[cfg(test)]
pub(crate) fn collect<T>(poll: impl FnOnce() -> T) -> (T, Option<Vec<u8>>) {
    let collecting = open();
    let result = poll();
    (result, collecting.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::LINK;

    fn hints() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(LINK, HeaderValue::from_static("</a.css>; rel=preload"));
        headers
    }

    #[test]
    fn offers_outside_collect_are_rejected() {
        assert!(!is_open());
        assert!(!offer(StatusCode::EARLY_HINTS, &hints()));
        let ((), offered) = collect(|| ());
        assert_eq!(offered, None);
    }

    #[test]
    fn offers_during_collect_are_returned_in_order() {
        let (taken, offered) = collect(|| {
            assert!(is_open());
            offer(StatusCode::PROCESSING, &HeaderMap::new())
                && offer(StatusCode::EARLY_HINTS, &hints())
        });
        assert!(taken);
        let offered = String::from_utf8(offered.unwrap()).unwrap();
        assert_eq!(
            offered,
            "HTTP/1.1 102 Processing\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
        );

        // Each collect returns only what was offered during it.
        assert!(!is_open());
        let ((), offered) = collect(|| ());
        assert_eq!(offered, None);
    }

    #[test]
    fn panic_during_collect_drops_offers() {
        let panicked = std::panic::catch_unwind(|| {
            collect(|| {
                offer(StatusCode::EARLY_HINTS, &hints());
                panic!("the service panicked");
            })
        });
        assert!(panicked.is_err());
        assert!(!is_open());
        let (_, offered) = collect(|| offer(StatusCode::PROCESSING, &HeaderMap::new()));
        assert_eq!(
            offered.as_deref(),
            Some(&b"HTTP/1.1 102 Processing\r\n\r\n"[..])
        );
    }
}
