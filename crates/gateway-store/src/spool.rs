//! The queue between the request path and the writer: records encoded into a few byte
//! buffers, one per request thread.
//!
//! A request thread appends its record to its own buffer under that buffer's mutex, which only
//! the writer also takes, to move the records out. A record costs no allocation once the
//! buffers have grown, and no channel operation: the writer takes buffers whole, by swapping
//! each for an empty one, so the lock is held for a moment whatever the backlog. The writer's
//! thread binds the text straight from the bytes.
//!
//! Each record is a little-endian `u32` length, then the record: the integers, the client
//! address, and each text as a `u32` length (`u32::MAX` for none) followed by its bytes.

use crate::record::RecordRef;
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Buffers the request threads spread over. Threads are assigned round-robin, so up to this
/// many runtime workers never share one.
// NOTE: the writer sorts what it takes by start time before it inserts it, so row ids follow
// start times within one take only. A request that ends after newer ones were taken gets a
// later id than theirs. Every listing orders by `ts_us`.
const BUFFERS: usize = 16;

/// An emptied batch that grew past this while the writer fell behind is not kept for reuse.
const KEEP_CAPACITY: usize = 4 * 1024 * 1024;

/// The length that marks a missing text.
const NONE: u32 = u32::MAX;

/// Encoded records: what a request thread's buffer holds, and what the writer takes as one
/// batch.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    bytes: Vec<u8>,
    records: usize,
}

impl Encoded {
    /// Returns the number of records.
    pub(crate) fn len(&self) -> usize {
        self.records
    }

    /// Appends `record`. Returns false, and appends nothing, when a text is too long for its
    /// length field (4 GiB).
    pub(crate) fn push(&mut self, record: &RecordRef<'_>) -> bool {
        if encode(&mut self.bytes, record) {
            self.records += 1;
            true
        } else {
            false
        }
    }

    /// Removes every record, and keeps the memory unless it grew past [`KEEP_CAPACITY`].
    pub(crate) fn clear(&mut self) {
        self.records = 0;
        if self.bytes.capacity() > KEEP_CAPACITY {
            self.bytes = Vec::new();
        } else {
            self.bytes.clear();
        }
    }

    /// Returns at most `count` records from byte `start_byte` on, and the byte after them,
    /// where the next step of a caller that walks the batch in steps starts.
    pub(crate) fn range(&self, start_byte: usize, count: usize) -> (Records<'_>, usize) {
        let rest = self.bytes.get(start_byte..).unwrap_or_default();
        let end = split_point(rest, count);
        let records = Records {
            bytes: &rest[..end],
        };
        (records, start_byte + end)
    }

    /// Removes the first `count` records, which end at byte `end_byte`. Keeps at most
    /// [`KEEP_CAPACITY`] of the memory, or what the records left need.
    pub(crate) fn remove_front(&mut self, end_byte: usize, count: usize) {
        if count >= self.records {
            self.clear();
        } else {
            self.bytes.drain(..end_byte.min(self.bytes.len()));
            self.records -= count;
            if self.bytes.capacity() > KEEP_CAPACITY {
                self.bytes.shrink_to(KEEP_CAPACITY.max(self.bytes.len()));
            }
        }
    }

    /// Puts the records in order of their `timestamp_us`, keeping the order of equal ones.
    /// Each request thread appends to its own buffer, so a batch taken from several is out
    /// of order, and rows get their ids in the order they are inserted.
    pub(crate) fn sort_by_time(&mut self) {
        let live = &self.bytes;
        let mut index: Vec<(i64, usize, usize)> = Vec::with_capacity(self.records);
        let mut start = 0;
        while start < live.len() {
            let mut reader = Reader(&live[start..]);
            let (Some(length), Some(timestamp)) = (reader.u32(), reader.array::<8>()) else {
                break;
            };
            let end = (start + 4 + length as usize).min(live.len());
            index.push((i64::from_le_bytes(timestamp), start, end));
            start = end;
        }
        if index.is_sorted_by_key(|&(timestamp, _, _)| timestamp) {
            return;
        }
        index.sort_by_key(|&(timestamp, _, _)| timestamp);
        let mut sorted = Vec::with_capacity(live.len());
        for (_, start, end) in index {
            sorted.extend_from_slice(&live[start..end]);
        }
        self.bytes = sorted;
    }

    /// Returns every record.
    #[cfg(test)]
    pub(crate) fn records(&self) -> Records<'_> {
        Records { bytes: &self.bytes }
    }

    /// Moves every record of `from` to the end of this batch, and returns how many moved.
    fn take_all(&mut self, from: &mut Encoded) -> usize {
        let moved = from.records;
        if self.records == 0 {
            // The request thread's buffer gets this batch's emptied memory in exchange.
            std::mem::swap(&mut self.bytes, &mut from.bytes);
        } else {
            self.bytes.extend_from_slice(&from.bytes);
        }
        from.bytes.clear();
        from.records = 0;
        self.records += moved;
        moved
    }
}

/// Records in encoded form, read one by one.
#[derive(Debug, Clone)]
pub(crate) struct Records<'a> {
    bytes: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        let mut reader = Reader(self.bytes);
        let length = reader.u32()? as usize;
        let body = reader.take(length)?;
        self.bytes = reader.0;
        let record = decode(body);
        // Only `encode` writes these bytes, so a record always reads back.
        debug_assert!(record.is_some(), "an encoded record did not decode");
        record
    }
}

/// The request threads' buffers and the count of records in them.
#[derive(Debug)]
pub(crate) struct Spool {
    buffers: [Padded; BUFFERS],
    /// Records in the buffers, never more than `capacity`.
    queued: AtomicUsize,
    capacity: usize,
    /// Set when the writer stops taking records: later pushes are refused.
    closed: AtomicBool,
    /// The buffer the next take starts at: the one after the last buffer taken, so that
    /// takes that stop early go round every buffer in turn.
    next_take: AtomicUsize,
}

/// A buffer on a cache line of its own, so that threads appending to neighbouring buffers do
/// not slow each other down.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(Mutex<Encoded>);

impl Padded {
    fn lock(&self) -> MutexGuard<'_, Encoded> {
        // Nothing that runs under the lock panics, so a buffer is whole even when poisoned.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Spool {
    /// Creates a spool of at most `capacity` records.
    pub(crate) fn new(capacity: usize) -> Spool {
        Spool {
            buffers: Default::default(),
            queued: AtomicUsize::new(0),
            capacity,
            closed: AtomicBool::new(false),
            next_take: AtomicUsize::new(0),
        }
    }

    /// Appends `record` to the calling thread's buffer. Returns false when the spool is full
    /// or closed, or a text is too long, and then appends nothing.
    pub(crate) fn push(&self, record: &RecordRef<'_>) -> bool {
        let mut buffer = self.buffers[buffer_index()].lock();
        // Read under the buffer's lock: the writer sets the flag before it locks each buffer
        // for the last time, so a push after that lock reads the flag as set.
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let counted = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                (queued < self.capacity).then_some(queued + 1)
            });
        if counted.is_err() {
            return false;
        }
        if !buffer.push(record) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Moves whole buffers into `batch` until it contains at least `until` records or every
    /// buffer is empty, and returns how many records moved. A batch can so end up above
    /// `until` by at most one buffer.
    pub(crate) fn take(&self, batch: &mut Encoded, until: usize) -> usize {
        let first = self.next_take.load(Ordering::Relaxed);
        let mut moved = 0;
        for i in 0..BUFFERS {
            if batch.len() >= until {
                break;
            }
            let index = (first + i) % BUFFERS;
            let mut buffer = self.buffers[index].lock();
            if buffer.len() > 0 {
                moved += batch.take_all(&mut buffer);
                self.next_take
                    .store((index + 1) % BUFFERS, Ordering::Relaxed);
            }
        }
        self.queued.fetch_sub(moved, Ordering::Relaxed);
        moved
    }

    /// Returns the number of records in the buffers.
    pub(crate) fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Refuses every later push. The records already waiting can still be taken.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Returns whether [`Spool::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Returns the buffer index of the calling thread, assigned on its first record.
fn buffer_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        if index.get() == usize::MAX {
            index.set(NEXT.fetch_add(1, Ordering::Relaxed) % BUFFERS);
        }
        index.get()
    })
}

/// Returns the number of bytes that the first `count` records of `bytes` take (all of them
/// when there are fewer).
fn split_point(bytes: &[u8], count: usize) -> usize {
    let mut end = 0;
    for _ in 0..count {
        let mut reader = Reader(&bytes[end..]);
        let Some(length) = reader.u32() else {
            break;
        };
        end = (end + 4 + length as usize).min(bytes.len());
    }
    end
}

/// Appends `record` with its length prefix. Returns false, with `out` as it was, when a text
/// is too long for its length field.
fn encode(out: &mut Vec<u8>, record: &RecordRef<'_>) -> bool {
    let start = out.len();
    // The length goes here once the record is written.
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&record.timestamp_us.to_le_bytes());
    out.extend_from_slice(&record.latency_us.to_le_bytes());
    out.extend_from_slice(&record.bytes_received.to_le_bytes());
    out.extend_from_slice(&record.bytes_sent.to_le_bytes());
    out.extend_from_slice(&record.status.to_le_bytes());
    out.push(u8::from(record.retried));

    match record.client_ip {
        None => out.push(0),
        Some(IpAddr::V4(ip)) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        Some(IpAddr::V6(ip)) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    let texts = [
        Some(record.request_id),
        Some(record.method),
        Some(record.path),
        record.query,
        record.route,
        record.user_agent,
        record.backend,
        record.error_kind,
    ];

    for text in texts {
        let length = match text {
            None => NONE,
            Some(text) => match u32::try_from(text.len()) {
                Ok(length) if length != NONE => length,
                _ => {
                    out.truncate(start);
                    return false;
                }
            },
        };
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(text.unwrap_or_default().as_bytes());
    }

    let Ok(length) = u32::try_from(out.len() - start - 4) else {
        out.truncate(start);
        return false;
    };
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    true
}

/// Reads one record without its length prefix, or returns `None` when the bytes are not one.
fn decode(body: &[u8]) -> Option<RecordRef<'_>> {
    let mut reader = Reader(body);
    let timestamp_us = i64::from_le_bytes(reader.array()?);
    let latency_us = u64::from_le_bytes(reader.array()?);
    let bytes_received = u64::from_le_bytes(reader.array()?);
    let bytes_sent = u64::from_le_bytes(reader.array()?);
    let status = u16::from_le_bytes(reader.array()?);
    let retried = reader.array::<1>()?[0] != 0;
    let client_ip = match reader.array::<1>()?[0] {
        0 => None,
        4 => Some(IpAddr::V4(Ipv4Addr::from(reader.array::<4>()?))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(reader.array::<16>()?))),
        _ => return None,
    };

    let request_id = reader.text()??;
    let method = reader.text()??;
    let path = reader.text()??;
    let query = reader.text()?;
    let route = reader.text()?;
    let user_agent = reader.text()?;
    let backend = reader.text()?;
    let error_kind = reader.text()?;

    Some(RecordRef {
        timestamp_us,
        request_id,
        method,
        path,
        query,
        route,
        status,
        latency_us,
        client_ip,
        user_agent,
        backend,
        bytes_received,
        bytes_sent,
        error_kind,
        retried,
    })
}

/// A cursor over encoded bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if count > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Some(taken)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    /// Reads a text: `Some(None)` for a missing one, `None` when the bytes are not a text.
    fn text(&mut self) -> Option<Option<&'a str>> {
        let length = self.u32()?;
        if length == NONE {
            return Some(None);
        }
        let bytes = self.take(length as usize)?;
        std::str::from_utf8(bytes).ok().map(Some)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::Arc;

    fn record(i: u64, text: &str) -> RecordRef<'_> {
        let odd = i % 2 == 1;
        RecordRef {
            timestamp_us: -(i as i64),
            request_id: text,
            method: "GET",
            path: text,
            query: odd.then_some(text),
            route: odd.then_some("/r"),
            status: 200 + i as u16,
            latency_us: u64::MAX - i,
            client_ip: match i % 3 {
                0 => None,
                1 => Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8))),
                _ => Some(IpAddr::V6(Ipv6Addr::new(1, 2, 3, 4, 5, 6, 7, i as u16))),
            },
            user_agent: odd.then_some(""),
            backend: (!odd).then_some("http://b"),
            bytes_received: i,
            bytes_sent: 2 * i,
            error_kind: odd.then_some("backend_error"),
            retried: odd,
        }
    }

    #[test]
    fn records_read_back_whole() {
        let texts: Vec<String> = (0..50).map(|i| format!("/é/{}", "x".repeat(i))).collect();
        let mut encoded = Encoded::default();
        for (i, text) in texts.iter().enumerate() {
            assert!(encoded.push(&record(i as u64, text)));
        }
        assert_eq!(encoded.len(), 50);
        let read: Vec<_> = encoded.records().collect();
        let expected: Vec<_> = (0..50).map(|i| record(i as u64, &texts[i])).collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn range_walks_batch_in_steps() {
        let mut encoded = Encoded::default();
        for i in 0..10 {
            encoded.push(&record(i, "/a"));
        }
        let mut start = 0;
        let mut steps = Vec::new();
        while steps.iter().sum::<usize>() < 10 {
            let (records, next) = encoded.range(start, 4);
            steps.push(records.count());
            start = next;
        }
        assert_eq!(steps, [4, 4, 2]);
        assert_eq!(encoded.range(start, 4).0.count(), 0);
    }

    #[test]
    fn sort_orders_by_time() {
        let mut encoded = Encoded::default();
        // Timestamps are -i, so these are pushed newest first. The two equal ones keep their
        // order.
        for (i, path) in [
            (0, "/a"),
            (1, "/a"),
            (2, "/a"),
            (3, "/first"),
            (3, "/second"),
            (4, "/a"),
        ] {
            encoded.push(&record(i, path));
        }
        encoded.sort_by_time();

        let read: Vec<(i64, &str)> = encoded
            .records()
            .map(|record| (record.timestamp_us, record.path))
            .collect();
        let expected = [
            (-4, "/a"),
            (-3, "/first"),
            (-3, "/second"),
            (-2, "/a"),
            (-1, "/a"),
            (0, "/a"),
        ];
        assert_eq!(read, expected);
        assert_eq!(encoded.len(), 6);
    }

    #[test]
    fn take_empties_every_buffer() {
        let spool = Spool::new(100);
        for i in 0..10 {
            assert!(spool.push(&record(i, "/a")));
        }
        assert_eq!(spool.len(), 10);

        let mut batch = Encoded::default();
        assert_eq!(spool.take(&mut batch, 4), 10);
        assert_eq!(spool.len(), 0);
        assert_eq!(spool.take(&mut batch, 100), 0);
        let statuses: Vec<u16> = batch.records().map(|record| record.status).collect();
        let expected: Vec<u16> = (200..210).collect();
        assert_eq!(statuses, expected);
    }

    #[test]
    fn full_spool_refuses_records() {
        let spool = Spool::new(3);
        let pushed: Vec<bool> = (0..5).map(|i| spool.push(&record(i, "/a"))).collect();
        assert_eq!(pushed, [true, true, true, false, false]);
        assert_eq!(spool.len(), 3);

        let mut batch = Encoded::default();
        spool.take(&mut batch, 1);
        assert!(spool.push(&record(5, "/a")));
        assert_eq!(spool.len(), 1);
    }

    /// Pushes ten records into buffer `index`, as the thread assigned to it would.
    fn fill(spool: &Spool, index: usize) {
        for i in 0..10 {
            spool.buffers[index]
                .lock()
                .push(&record(index as u64 * 100 + i, "/a"));
            spool.queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn takes_go_round_every_buffer() {
        let spool = Spool::new(1000);
        // Two buffers in use, as with two runtime workers. Takes that stop after one buffer
        // must alternate between them, not keep taking the first.
        fill(&spool, 3);
        fill(&spool, 7);
        let mut taken = Vec::new();
        for _ in 0..4 {
            let mut batch = Encoded::default();
            assert_eq!(spool.take(&mut batch, 1), 10);
            let index = batch.records().next().unwrap().bytes_received / 100;
            taken.push(index);
            fill(&spool, index as usize);
        }
        assert_eq!(taken, [3, 7, 3, 7]);
    }

    #[test]
    fn closed_spool_keeps_waiting_records() {
        let spool = Spool::new(10);
        spool.push(&record(0, "/a"));
        spool.close();
        assert!(!spool.push(&record(1, "/a")));
        assert_eq!(spool.len(), 1);

        let mut batch = Encoded::default();
        assert_eq!(spool.take(&mut batch, 10), 1);
        assert_eq!(batch.records().next().unwrap().status, 200);
    }

    #[test]
    fn take_reaches_every_thread() {
        let spool = Arc::new(Spool::new(10_000));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let spool = Arc::clone(&spool);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        assert!(spool.push(&record(t * 1000 + i, "/a")));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }

        let mut batch = Encoded::default();
        assert_eq!(spool.take(&mut batch, usize::MAX), 4000);
        let mut seen: Vec<u64> = batch.records().map(|r| r.bytes_received).collect();
        seen.sort_unstable();
        let expected: Vec<u64> = (0..4000).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn remove_front_keeps_the_rest() {
        let mut batch = Encoded::default();
        let long = "x".repeat(KEEP_CAPACITY);
        batch.push(&record(0, &long));
        batch.push(&record(1, "/kept"));
        let (_, end_byte) = batch.range(0, 1);
        batch.remove_front(end_byte, 1);

        assert_eq!(batch.len(), 1);
        let paths: Vec<&str> = batch.records().map(|record| record.path).collect();
        assert_eq!(paths, ["/kept"]);
        assert!(
            batch.bytes.capacity() <= KEEP_CAPACITY,
            "{}",
            batch.bytes.capacity()
        );
    }

    #[test]
    fn cleared_batch_drops_large_memory() {
        let mut batch = Encoded::default();
        let long = "x".repeat(KEEP_CAPACITY);
        batch.push(&record(0, &long));
        batch.clear();
        assert_eq!(batch.len(), 0);
        assert_eq!(batch.bytes.capacity(), 0);

        batch.push(&record(0, "/a"));
        batch.clear();
        assert!(batch.bytes.capacity() > 0);
    }
}
