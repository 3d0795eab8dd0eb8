//! The queue between the request path and the writer: records encoded into blocks of bytes,
//! one list of blocks per request thread.
//!
//! A request thread appends its record to its own list under that list's mutex, which only the
//! writer also takes, to move the blocks out. A record costs no allocation but a new 64 KiB
//! block now and then, and no channel operation. Blocks are never grown or copied: a record
//! that does not fit in the last block starts a new one. The writer takes every list whole by
//! moving its blocks, so the lock is held for a moment whatever the backlog. It then orders
//! what it took by start time, and its thread binds the text straight from the blocks.
//! The texts are read back as [`RowRef`]'s bytes: they were `str`s when encoded, so the writer
//! does not check them for UTF-8 again.
//!
//! Each record is a little-endian `u32` length, then the record: the integers, the client
//! address, and each text as a `u32` length (`u32::MAX` for none) followed by its bytes.

use crate::record::RecordRef;
use crate::thread_index::buffer_index;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Number of lists that request threads spread over. Threads are assigned round-robin, so up
/// to this many runtime workers never share one.
const BUFFERS: usize = 16;

/// The size of a block, unless one record needs more.
// NOTE: blocks come from the request thread's heap and are freed on the writer's thread. After
// a large backlog, the allocator can keep that memory until the request thread allocates
// again: after 60,000 rows with 8 KB `User-Agent` values, RSS stayed at 485 MB for up to 30 s
// in some runs and fell to 19 MB in others (the channel this queue replaced kept 126 to 503
// MB). Why it varies is not known.
const BLOCK_BYTES: usize = 64 * 1024;

/// The length that marks a missing text.
const NONE: u32 = u32::MAX;

/// Bytes of a record before its texts: the length prefix, four 64-bit integers, the status,
/// the retried flag and the address's kind.
const FIXED_BYTES: usize = 4 + 4 * 8 + 2 + 1 + 1;

/// Encoded records: the contents of a request thread's list, and what the writer takes.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    blocks: Vec<Vec<u8>>,
    records: usize,
}

/// The start of a record: its block, and its byte in that block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    block: u32,
    byte: u32,
}

/// A record as the spool stores it: the fields of [`RecordRef`], with each text as its UTF-8
/// bytes. Only [`RowRef::from`] builds one, from `str`s, and the spool returns the bytes it
/// was given. So the bytes are UTF-8, and SQLite can take them as text without a check.
/// The check cost the writer about 400 instructions per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowRef<'a> {
    pub(crate) timestamp_us: i64,
    pub(crate) request_id: &'a [u8],
    pub(crate) method: &'a [u8],
    pub(crate) path: &'a [u8],
    pub(crate) query: Option<&'a [u8]>,
    pub(crate) route: Option<&'a [u8]>,
    pub(crate) status: u16,
    pub(crate) latency_us: u64,
    pub(crate) client_ip: Option<IpAddr>,
    pub(crate) user_agent: Option<&'a [u8]>,
    pub(crate) backend: Option<&'a [u8]>,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) error_kind: Option<&'a [u8]>,
    pub(crate) retried: bool,
}

impl<'a> From<&RecordRef<'a>> for RowRef<'a> {
    fn from(record: &RecordRef<'a>) -> RowRef<'a> {
        RowRef {
            timestamp_us: record.timestamp_us,
            request_id: record.request_id.as_bytes(),
            method: record.method.as_bytes(),
            path: record.path.as_bytes(),
            query: record.query.map(str::as_bytes),
            route: record.route.map(str::as_bytes),
            status: record.status,
            latency_us: record.latency_us,
            client_ip: record.client_ip,
            user_agent: record.user_agent.map(str::as_bytes),
            backend: record.backend.map(str::as_bytes),
            bytes_received: record.bytes_received,
            bytes_sent: record.bytes_sent,
            error_kind: record.error_kind.map(str::as_bytes),
            retried: record.retried,
        }
    }
}

impl<'a> RowRef<'a> {
    /// Returns the record with its texts as `str`s again, or `None` if one is not UTF-8.
    #[cfg(test)]
    pub(crate) fn to_record(self) -> Option<RecordRef<'a>> {
        let text = |bytes: &'a [u8]| std::str::from_utf8(bytes).ok();
        let optional = |bytes: Option<&'a [u8]>| match bytes {
            None => Some(None),
            Some(bytes) => text(bytes).map(Some),
        };
        Some(RecordRef {
            timestamp_us: self.timestamp_us,
            request_id: text(self.request_id)?,
            method: text(self.method)?,
            path: text(self.path)?,
            query: optional(self.query)?,
            route: optional(self.route)?,
            status: self.status,
            latency_us: self.latency_us,
            client_ip: self.client_ip,
            user_agent: optional(self.user_agent)?,
            backend: optional(self.backend)?,
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            error_kind: optional(self.error_kind)?,
            retried: self.retried,
        })
    }
}

impl Encoded {
    /// Returns the number of records.
    pub(crate) fn len(&self) -> usize {
        self.records
    }

    /// Appends `record`. Returns false, and appends nothing, when it is too long for its
    /// length fields (4 GiB).
    pub(crate) fn push(&mut self, record: &RecordRef<'_>) -> bool {
        self.push_row(&RowRef::from(record))
    }

    /// Appends `row`, as [`Encoded::push`] appends a record.
    fn push_row(&mut self, record: &RowRef<'_>) -> bool {
        let Some(size) = encoded_size(record) else {
            return false;
        };
        let room = self
            .blocks
            .last()
            .map_or(0, |block| block.capacity() - block.len());
        if room < size {
            self.blocks.push(Vec::with_capacity(size.max(BLOCK_BYTES)));
        }
        let Some(block) = self.blocks.last_mut() else {
            return false;
        };
        encode(block, record);
        self.records += 1;
        true
    }

    /// Moves every block of `from` to the end of this batch, and returns how many records
    /// moved. No record is copied.
    fn take_all(&mut self, from: &mut Encoded) -> usize {
        let moved = from.records;
        self.blocks.append(&mut from.blocks);
        from.records = 0;
        self.records += moved;
        moved
    }

    /// Returns the position of every record, in order of `timestamp_us`, keeping the order of
    /// equal ones. Each request thread appends to its own list, so the records of several are
    /// out of order, and rows get their ids in the order they are inserted.
    // NOTE: ids follow start times within one take only. A request that ends after newer ones
    // were taken gets a later id than theirs. Every listing orders by `ts_us`.
    pub(crate) fn positions_by_time(&self) -> Vec<Position> {
        let mut index: Vec<(i64, Position)> = Vec::with_capacity(self.records);
        for (block_index, block) in self.blocks.iter().enumerate() {
            let mut byte = 0;
            while byte < block.len() {
                let mut reader = Reader(&block[byte..]);
                let (Some(length), Some(timestamp)) = (reader.u32(), reader.array::<8>()) else {
                    break;
                };
                index.push((
                    i64::from_le_bytes(timestamp),
                    Position {
                        block: block_index as u32,
                        byte: byte as u32,
                    },
                ));
                byte += 4 + length as usize;
            }
        }
        // Nearly sorted already: each list is in the order its requests ended.
        index.sort_by_key(|&(timestamp, _)| timestamp);
        index.into_iter().map(|(_, position)| position).collect()
    }

    /// Returns the record at `position`, or `None` when there is none.
    pub(crate) fn get(&self, position: Position) -> Option<RowRef<'_>> {
        let block = self.blocks.get(position.block as usize)?;
        let mut reader = Reader(block.get(position.byte as usize..)?);
        let length = reader.u32()? as usize;
        let record = decode(reader.take(length)?);
        // Only `encode` writes these bytes, so a record always reads back.
        debug_assert!(record.is_some(), "an encoded record did not decode");
        record
    }

    /// Returns a copy of the records at `positions`, in that order.
    pub(crate) fn copy_of(&self, positions: &[Position]) -> Encoded {
        let mut copy = Encoded::default();
        for &position in positions {
            if let Some(record) = self.get(position) {
                copy.push_row(&record);
            }
        }
        copy
    }

    /// Returns every record, in the order they were appended.
    #[cfg(test)]
    pub(crate) fn records(&self) -> impl Iterator<Item = RecordRef<'_>> {
        self.rows()
            .map(|row| row.to_record().expect("an encoded text is UTF-8"))
    }

    /// Returns every record as the spool stores it, in the order they were appended.
    #[cfg(test)]
    fn rows(&self) -> impl Iterator<Item = RowRef<'_>> {
        self.blocks
            .iter()
            .enumerate()
            .flat_map(move |(block, bytes)| {
                let mut byte = 0;
                std::iter::from_fn(move || {
                    if byte >= bytes.len() {
                        return None;
                    }
                    let position = Position {
                        block: block as u32,
                        byte: byte as u32,
                    };
                    let length = Reader(&bytes[byte..]).u32()? as usize;
                    byte += 4 + length;
                    self.get(position)
                })
            })
    }
}

/// The request threads' lists of blocks, and the count of records not yet written.
#[derive(Debug)]
pub(crate) struct Spool {
    buffers: [Padded; BUFFERS],
    /// Records pushed and not yet released by the writer: those in the lists, and those the
    /// writer took.
    queued: AtomicUsize,
    /// Records the writer took and has not yet released.
    in_writer: AtomicUsize,
    /// Maximum records in the lists, while the writer has taken none.
    capacity: usize,
    /// Maximum records counted in `queued`: `capacity` plus one batch.
    limit: usize,
    /// Set when the writer stops taking records: later pushes are refused.
    closed: AtomicBool,
}

/// A list on a cache line of its own, so that threads appending to neighbouring lists do not
/// slow each other down.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(Mutex<Encoded>);

impl Padded {
    fn lock(&self) -> MutexGuard<'_, Encoded> {
        // Nothing that runs under the lock panics, so a list is whole even when poisoned.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Spool {
    /// Creates a spool whose lists take at most `capacity` records, and which counts at most
    /// `capacity + batch_size` with the ones the writer took.
    pub(crate) fn new(capacity: usize, batch_size: usize) -> Spool {
        Spool {
            buffers: Default::default(),
            queued: AtomicUsize::new(0),
            in_writer: AtomicUsize::new(0),
            capacity,
            limit: capacity.saturating_add(batch_size),
            closed: AtomicBool::new(false),
        }
    }

    /// Appends `record` to the calling thread's list. Returns false when the spool is full
    /// or closed, or a text is too long, and then appends nothing.
    pub(crate) fn push(&self, record: &RecordRef<'_>) -> bool {
        let mut buffer = self.buffers[buffer_index(BUFFERS)].lock();
        // Read under the list's lock: the writer sets the flag before it locks each list for
        // the last time, so a push after that lock reads the flag as set.
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        // The writer may take or release records meanwhile, so the lists' share is an
        // estimate. The limit on both together is exact.
        let in_writer = self.in_writer.load(Ordering::Relaxed);
        let counted = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                let waiting = queued.saturating_sub(in_writer);
                (queued < self.limit && waiting < self.capacity).then_some(queued + 1)
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

    /// Moves every list's records into `batch`, and returns how many moved. They still
    /// count in `queued` until [`Spool::release`].
    pub(crate) fn take(&self, batch: &mut Encoded) -> usize {
        let mut moved = 0;
        for buffer in &self.buffers {
            let mut buffer = buffer.lock();
            if buffer.len() > 0 {
                moved += batch.take_all(&mut buffer);
            }
        }
        self.in_writer.fetch_add(moved, Ordering::Relaxed);
        moved
    }

    /// Gives back the room of `count` taken records, written or lost.
    pub(crate) fn release(&self, count: usize) {
        self.in_writer.fetch_sub(count, Ordering::Relaxed);
        self.queued.fetch_sub(count, Ordering::Relaxed);
    }

    /// Returns the number of records pushed and not yet released.
    pub(crate) fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Returns the number of records in the lists, which the writer has not taken.
    pub(crate) fn waiting(&self) -> usize {
        self.len()
            .saturating_sub(self.in_writer.load(Ordering::Relaxed))
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

/// Returns the bytes `encode` writes for `record`, or `None` when a text or the whole is too
/// long for its length field.
fn encoded_size(record: &RowRef<'_>) -> Option<usize> {
    let ip = match record.client_ip {
        None => 0,
        Some(IpAddr::V4(_)) => 4,
        Some(IpAddr::V6(_)) => 16,
    };
    let mut size = FIXED_BYTES + ip;
    for text in texts(record) {
        let length = text.map_or(0, <[u8]>::len);
        if length >= NONE as usize {
            return None;
        }
        size += 4 + length;
    }
    (size - 4 < NONE as usize).then_some(size)
}

/// Returns the texts of `record` in the order they are encoded.
fn texts<'a>(record: &RowRef<'a>) -> [Option<&'a [u8]>; 8] {
    [
        Some(record.request_id),
        Some(record.method),
        Some(record.path),
        record.query,
        record.route,
        record.user_agent,
        record.backend,
        record.error_kind,
    ]
}

/// Appends `record` with its length prefix. The caller checked its size with
/// [`encoded_size`].
fn encode(out: &mut Vec<u8>, record: &RowRef<'_>) {
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

    for text in texts(record) {
        let length = text.map_or(NONE, |text| text.len() as u32);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(text.unwrap_or_default());
    }

    let length = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
}

/// Reads one record without its length prefix, or returns `None` when the bytes are not one.
fn decode(body: &[u8]) -> Option<RowRef<'_>> {
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

    Some(RowRef {
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

    /// Reads a text's bytes: `Some(None)` for a missing one, `None` when the bytes end first.
    fn text(&mut self) -> Option<Option<&'a [u8]>> {
        let length = self.u32()?;
        if length == NONE {
            return Some(None);
        }
        self.take(length as usize).map(Some)
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
    fn records_span_many_blocks() {
        // Records of 10 KiB fill a block after six, and one of 100 KiB gets a block of its own.
        let mut texts: Vec<String> = (0..20)
            .map(|i| format!("{i:05}{}", "x".repeat(10_000)))
            .collect();
        texts.insert(7, "y".repeat(100_000));
        let mut encoded = Encoded::default();
        for (i, text) in texts.iter().enumerate() {
            assert!(encoded.push(&record(i as u64, text)));
        }
        assert!(encoded.blocks.len() > 3, "{} blocks", encoded.blocks.len());
        assert!(
            encoded
                .blocks
                .iter()
                .all(|block| block.len() <= block.capacity()),
            "a block grew"
        );
        let paths: Vec<&str> = encoded.records().map(|record| record.path).collect();
        let expected: Vec<&str> = texts.iter().map(String::as_str).collect();
        assert_eq!(paths, expected);
    }

    #[test]
    fn positions_follow_start_time() {
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
        let read: Vec<(i64, &str)> = encoded
            .positions_by_time()
            .into_iter()
            .map(|position| {
                let record = encoded.get(position).unwrap().to_record().unwrap();
                (record.timestamp_us, record.path)
            })
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
    }

    #[test]
    fn copy_keeps_given_records() {
        let mut encoded = Encoded::default();
        for i in 0..5 {
            encoded.push(&record(i, "/a"));
        }
        let positions = encoded.positions_by_time();
        let copy = encoded.copy_of(&positions[3..]);
        assert_eq!(copy.len(), 2);
        let statuses: Vec<u16> = copy.records().map(|record| record.status).collect();
        assert_eq!(statuses, [201, 200]);
    }

    #[test]
    fn take_empties_every_list() {
        let spool = Spool::new(100, 10);
        for i in 0..10 {
            assert!(spool.push(&record(i, "/a")));
        }
        assert_eq!(spool.len(), 10);
        assert_eq!(spool.waiting(), 10);

        let mut batch = Encoded::default();
        assert_eq!(spool.take(&mut batch), 10);
        assert_eq!(spool.take(&mut batch), 0);
        assert_eq!(spool.waiting(), 0);
        assert_eq!(spool.len(), 10, "held until released");
        spool.release(10);
        assert_eq!(spool.len(), 0);
        let statuses: Vec<u16> = batch.records().map(|record| record.status).collect();
        let expected: Vec<u16> = (200..210).collect();
        assert_eq!(statuses, expected);
    }

    #[test]
    fn full_spool_refuses_records() {
        let spool = Spool::new(3, 2);
        let pushed: Vec<bool> = (0..5).map(|i| spool.push(&record(i, "/a"))).collect();
        assert_eq!(pushed, [true, true, true, false, false]);
        assert_eq!(spool.len(), 3);

        // Taken records free the lists' room, up to the batch size on top of the capacity.
        let mut batch = Encoded::default();
        spool.take(&mut batch);
        let pushed: Vec<bool> = (5..9).map(|i| spool.push(&record(i, "/a"))).collect();
        assert_eq!(pushed, [true, true, false, false]);
        assert_eq!(spool.len(), 5);
        spool.release(3);
        assert!(spool.push(&record(9, "/a")));
    }

    #[test]
    fn closed_spool_keeps_waiting_records() {
        let spool = Spool::new(10, 10);
        spool.push(&record(0, "/a"));
        spool.close();
        assert!(!spool.push(&record(1, "/a")));
        assert_eq!(spool.len(), 1);

        let mut batch = Encoded::default();
        assert_eq!(spool.take(&mut batch), 1);
        assert_eq!(batch.records().next().unwrap().status, 200);
    }

    #[test]
    fn take_reaches_every_thread() {
        let spool = Arc::new(Spool::new(10_000, 10));
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
        assert_eq!(spool.take(&mut batch), 4000);
        let mut seen: Vec<u64> = batch.records().map(|r| r.bytes_received).collect();
        seen.sort_unstable();
        let expected: Vec<u64> = (0..4000).collect();
        assert_eq!(seen, expected);
    }
}
