//! The handle the request path uses: a bounded queue in front of the writer.

use crate::record::RecordRef;
use crate::spool::Spool;
use crate::thread::WriterThread;
use crate::writer::Writer;
use crate::{RequestRecord, StoreError, connect};
use gateway_config::RequestLogConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use tokio::sync::Notify;

/// The request log's handle: queues records for the [`Writer`] without waiting.
///
/// Cloning is cheap and every clone feeds the same queue. When every clone is dropped, the
/// writer commits what is queued and stops.
#[derive(Debug, Clone)]
pub struct RequestLog {
    spool: Arc<Spool>,
    dropped: Arc<AtomicU64>,
    /// Rows whose batch failed to commit, counted by the writer.
    failed: Arc<AtomicU64>,
    /// Wakes the writer when enough records wait, so it is not woken for every record.
    batch_ready: Arc<BatchReady>,
    /// Half the queue: the writer is woken at this many records even when its batch needs
    /// more, so the queue still has room while the writer catches up.
    half_queue: usize,
    /// Closes the spool and wakes the writer when the last handle is dropped.
    _last_drop: Arc<WakeOnDrop>,
}

/// The signal between the senders and the writer while the writer fills a batch.
#[derive(Debug)]
pub(crate) struct BatchReady {
    pub(crate) notify: Notify,
    /// Records the writer still needs to fill its batch.
    pub(crate) needed: AtomicUsize,
    /// Set by [`RequestLog::commit_now`]: the writer commits each batch without waiting for
    /// it to fill or for the flush interval.
    pub(crate) commit_now: AtomicBool,
}

/// Closes the spool and wakes the writer when the last [`RequestLog`] is dropped, so that the
/// writer commits what is queued and stops.
#[derive(Debug)]
struct WakeOnDrop {
    spool: Arc<Spool>,
    batch_ready: Arc<BatchReady>,
}

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.spool.close();
        self.batch_ready.notify.notify_one();
    }
}

impl RequestLog {
    /// Opens the database at `config.database` and returns the handle and its writer, which the
    /// caller starts with [`Writer::spawn`].
    ///
    /// Creates the folder and the file when missing, switches the database to WAL with
    /// `synchronous=NORMAL` and a busy timeout of 5s, and applies the schema migrations. The
    /// writer deletes expired rows when it starts and then every hour; see
    /// [`Writer::with_retention_interval`]. `config.enabled` is not read here: a caller that
    /// sees it false should not open the log at all.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::CreateFolder`] when the folder cannot be created,
    /// [`StoreError::Open`] when SQLite cannot open or create the file (a folder in its place,
    /// a file that is not a database), [`StoreError::ReadOnly`] when it cannot write to it,
    /// [`StoreError::NewerSchema`] when a newer gateway upgraded it, and
    /// [`StoreError::Migrate`] when the schema cannot be applied.
    pub async fn open(config: &RequestLogConfig) -> Result<(RequestLog, Writer), StoreError> {
        let thread = WriterThread::spawn().map_err(|error| StoreError::WriterThread {
            source: Some(error),
        })?;
        let connection = connect::open_insert_connection(&config.database, &thread).await?;

        // Config validation rejects a capacity of 0, which would drop every record.
        let spool = Arc::new(Spool::new(
            config.queue_capacity.max(1),
            config.batch_size.max(1),
        ));
        let dropped = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let batch_ready = Arc::new(BatchReady {
            notify: Notify::new(),
            needed: AtomicUsize::new(config.batch_size.max(1)),
            commit_now: AtomicBool::new(false),
        });
        let log = RequestLog {
            spool: Arc::clone(&spool),
            dropped: Arc::clone(&dropped),
            failed: Arc::clone(&failed),
            batch_ready: Arc::clone(&batch_ready),
            half_queue: (config.queue_capacity / 2).max(1),
            _last_drop: Arc::new(WakeOnDrop {
                spool: Arc::clone(&spool),
                batch_ready: Arc::clone(&batch_ready),
            }),
        };
        let writer = Writer::new(
            config,
            thread,
            connection,
            spool,
            dropped,
            failed,
            batch_ready,
        );
        Ok((log, writer))
    }

    /// Queues `record` for the writer, or drops and counts it when the queue is full or the
    /// writer has stopped. Does not wait for the writer. See [`RequestLog::record_ref`].
    pub fn record(&self, record: RequestRecord) {
        self.record_ref(&record.to_ref());
    }

    /// Queues a copy of `record` for the writer, or drops and counts it when the queue is
    /// full, the writer has stopped or a text is longer than 4 GiB. Does not wait for the
    /// writer: it takes only the lock of the calling thread's list of blocks, which the writer
    /// takes just long enough to move the blocks out, and allocates only a new 64 KiB block
    /// now and then.
    pub fn record_ref(&self, record: &RecordRef<'_>) {
        if self.spool.push(record) {
            let needed = self.batch_ready.needed.load(Ordering::Relaxed);
            if self.in_queue() >= needed.min(self.half_queue) {
                self.batch_ready.notify.notify_one();
            }
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Returns how many records were dropped since the log opened because the queue was full
    /// or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Returns how many rows were lost since the log opened because their batch failed to
    /// commit (a full disk, an I/O error, a table changed under the gateway).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Makes the writer commit what is queued at once, and every later batch as soon as it
    /// has a record, and waits until nothing is queued or `timeout` passes. Returns whether
    /// the queue emptied. Meant for a process about to exit without the writer's stop.
    pub async fn commit_now(&self, timeout: std::time::Duration) -> bool {
        self.batch_ready.commit_now.store(true, Ordering::Relaxed);
        self.batch_ready.notify.notify_one();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.queued() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }

    /// Returns how many records wait to be committed: in the queue, and taken by the writer
    /// and not yet written. At most the queue's capacity plus one batch.
    pub fn queued(&self) -> usize {
        self.spool.len()
    }

    /// Returns how many records the writer has not taken yet.
    fn in_queue(&self) -> usize {
        self.spool.waiting()
    }
}
