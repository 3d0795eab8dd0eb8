//! The writer task: drains the queue into SQLite in batches and deletes expired rows and the
//! oldest rows beyond `max_rows`.

use crate::queue::BatchReady;
use crate::row_cap::RowCap;
use crate::spool::{Encoded, Position, Spool};
use crate::thread::{JobLost, WriterThread};
use crate::{StoreError, connect, insert, retention};
use gateway_config::RequestLogConfig;
use rusqlite::Connection;
use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, trace, warn};

/// Default time between two retention runs.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Default maximum time that the writer spends committing queued rows once a stop is
/// requested. See [`Writer::with_stop_timeout`].
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The task that writes queued records to the database, returned by
/// [`RequestLog::open`](crate::RequestLog::open).
///
/// It writes a batch in one transaction when `batch_size` records wait or `flush_interval`
/// has passed since the first of them arrived, whichever comes first. Between batches it
/// deletes rows older than `retention`, one chunk of 5000 rows at a time, so that a batch
/// waits for at most one chunk.
///
/// After each transaction that takes the log over `max_rows`, it deletes the oldest rows
/// down to `max_rows`, also in chunks of 5000. Before the next transaction it deletes at
/// most as many rows as were committed since the last deletion, or one chunk if that is more.
/// So a flood cannot outgrow the deletes, and a backlog of excess rows shrinks a chunk at a
/// time.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    /// The thread on which every statement of `connection` runs.
    thread: WriterThread,
    /// `None` after a batch failed, until the next write opens a new connection, and while a
    /// statement runs on the writer's thread.
    connection: Option<Connection>,
    /// The database file opened at the start, to find it removed or replaced.
    file: Option<FileIdentity>,
    /// When `file` was last compared with what the path names.
    file_checked: Instant,
    /// Whether the path was found to name another file than `file`, or none.
    file_replaced: bool,
    failures: FailureWarnings,
    spool: Arc<Spool>,
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    batch_ready: Arc<BatchReady>,
    batch_size: usize,
    flush_interval: Duration,
    retention: Duration,
    retention_interval: Duration,
    cap: RowCap,
    stop_timeout: Duration,
    /// When [`WriterHandle::shutdown`] was called. A batch in progress then delays the
    /// writer's reading of the request, but not the stop timeout, which runs from here.
    stop_requested: Arc<OnceLock<Instant>>,
    /// When the stop's time for committing queued rows ends, once the writer is stopping.
    stop_deadline: Option<Instant>,
}

/// Counts of what a writer did between its start and its stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Rows committed.
    pub written: u64,
    /// Rows lost because their batch failed to commit.
    pub failed: u64,
    /// Records dropped by [`RequestLog::record`](crate::RequestLog::record) because the queue
    /// was full or the writer had stopped, counted up to the stop.
    pub dropped: u64,
    /// Expired rows deleted.
    pub expired: u64,
    /// Rows deleted because the log exceeded `max_rows`.
    pub capped: u64,
    /// Rows still queued when the stop timeout passed, left unwritten.
    pub unwritten: u64,
    /// Whether the database file was found removed or replaced while the writer ran, so that
    /// the rows written since went to the file it had opened, not to the one at the path.
    pub file_replaced: bool,
}

/// A running writer, returned by [`Writer::spawn`].
#[derive(Debug)]
pub struct WriterHandle {
    shutdown: oneshot::Sender<()>,
    stop_requested: Arc<OnceLock<Instant>>,
    task: JoinHandle<WriteSummary>,
}

impl WriterHandle {
    /// Stops the writer once it has committed every record queued so far and closed the
    /// database. Records queued after this call are dropped and counted.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::WriterTask`] when the writer task panicked or was aborted.
    pub async fn shutdown(self) -> Result<WriteSummary, StoreError> {
        let _ = self.stop_requested.set(Instant::now());
        // The writer may already have stopped because every handle was dropped.
        let _ = self.shutdown.send(());
        self.task.await.map_err(StoreError::WriterTask)
    }

    /// Stops the writer at its next await point, as a crash would. The batch being written is
    /// rolled back, unless its last rows already reached the writer's thread. Meant for tests
    /// of crash recovery.
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Writer {
    pub(crate) fn new(
        config: &RequestLogConfig,
        thread: WriterThread,
        connection: Connection,
        spool: Arc<Spool>,
        dropped: Arc<AtomicU64>,
        failed: Arc<AtomicU64>,
        batch_ready: Arc<BatchReady>,
    ) -> Writer {
        Writer {
            path: config.database.clone(),
            thread,
            file: FileIdentity::of(&config.database),
            file_checked: Instant::now(),
            file_replaced: false,
            connection: Some(connection),
            failures: FailureWarnings::default(),
            spool,
            dropped,
            failed,
            batch_ready,
            batch_size: config.batch_size.max(1),
            flush_interval: config.flush_interval,
            retention: config.retention,
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            cap: RowCap::new(config.max_rows),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            stop_requested: Arc::new(OnceLock::new()),
            stop_deadline: None,
        }
    }

    /// Sets the maximum time that the writer spends committing the rows still queued once a
    /// stop is requested. The default is [`DEFAULT_STOP_TIMEOUT`], ten seconds.
    ///
    /// During the stop, each statement waits for another connection's lock only until this
    /// time is up, not for the full busy timeout of 5s. Rows still queued then are counted in
    /// [`WriteSummary::unwritten`] and left unwritten. A batch that was already waiting for the
    /// lock when the stop was requested goes on waiting up to the busy timeout of 5s, so a stop
    /// timeout shorter than that can be exceeded by the difference.
    pub fn with_stop_timeout(mut self, timeout: Duration) -> Writer {
        self.stop_timeout = timeout;
        self
    }

    /// Sets the time between two retention runs. The default is
    /// [`DEFAULT_RETENTION_INTERVAL`], one hour. The first run starts with the writer. Each run
    /// also checks `max_rows`, which the writer otherwise checks after each transaction.
    pub fn with_retention_interval(mut self, interval: Duration) -> Writer {
        self.retention_interval = interval;
        self
    }

    /// Starts the writer on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime.
    pub fn spawn(self) -> WriterHandle {
        let (shutdown, stop) = oneshot::channel::<()>();
        let stop = async move {
            // A dropped handle is not a stop request: the writer then runs until every
            // `RequestLog` is dropped.
            if stop.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let stop_requested = Arc::clone(&self.stop_requested);
        let task = tokio::spawn(self.run(stop));
        WriterHandle {
            shutdown,
            stop_requested,
            task,
        }
    }

    /// Writes queued records until `shutdown` completes or every [`RequestLog`] is dropped,
    /// then commits what is still queued, closes the database and returns what it did.
    ///
    /// [`RequestLog`]: crate::RequestLog
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> WriteSummary {
        let mut shutdown = pin!(shutdown);
        let mut stopping = false;
        let mut summary = WriteSummary::default();
        let mut drops = DropWarnings::new(self.flush_interval.max(MIN_DROP_WARNING_INTERVAL));
        let mut batch = Encoded::default();

        // The first tick completes at once, so expired rows go when the writer starts.
        let mut retention_timer = tokio::time::interval(self.retention_interval);
        retention_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retention_cutoff: Option<i64> = None;

        loop {
            // Expired rows go first, because deleting them may take the log under the cap.
            // NOTE: no cap pass runs during the stop, so the rows committed then can leave
            // the log up to a queue's worth over `max_rows` until the next start trims it.
            if let Some(cutoff_us) = retention_cutoff {
                retention_cutoff = self.delete_expired_chunk(cutoff_us, &mut summary).await;
            } else if !stopping && self.cap.is_due() {
                self.delete_over_cap(&mut summary).await;
            }
            let more_deletes = retention_cutoff.is_some() || (!stopping && self.cap.is_due());

            let drop_warning_at = drops.due_at(&self.dropped);
            // Wait for the first record of the next batch, a retention run or the stop. The
            // retention tick comes before the records, which a busy gateway always has ready:
            // it is ready once an interval, so it cannot hold the records up.
            let received = tokio::select! {
                biased;
                () = &mut shutdown, if !stopping => {
                    debug!(path = %self.path.display(), "request log writer draining");
                    self.start_stop();
                    stopping = true;
                    retention_cutoff = None;
                    continue;
                }
                _ = retention_timer.tick(), if !stopping => {
                    retention_cutoff = Some(crate::now_us().saturating_sub(micros(self.retention)));
                    self.cap.check_soon();
                    continue;
                }
                received = next_records(&self.spool, &self.batch_ready, &mut batch) => received,
                () = std::future::ready(()), if more_deletes => continue,
                // Records dropped in a burst are reported when their interval ends, not at the
                // next batch, which may come only at the stop.
                () = tokio::time::sleep_until(drop_warning_at.unwrap_or_else(Instant::now)),
                    if drop_warning_at.is_some() && !stopping =>
                {
                    drops.warn_if_due(&self.dropped, &self.path, false);
                    continue;
                }
            };
            if received == 0 {
                // Every sender is gone or the queue was closed, and nothing is left in it.
                break;
            }

            // Wait until the batch is full or has waited `flush_interval`. The queue is read
            // when a sender finds enough records waiting to fill the batch (or half the queue)
            // or the time is up, so a busy gateway wakes this task about once per batch.
            let mut deadline = pin!(tokio::time::sleep_until(
                Instant::now() + self.flush_interval
            ));
            // Whether to write every record taken, or only full batches and keep the rest.
            let write_all = loop {
                let open = take_queued(&self.spool, &mut batch);
                let commit_now = self.batch_ready.commit_now.load(Ordering::Relaxed);
                if stopping || !open || commit_now {
                    break true;
                }
                if batch.len() >= self.batch_size {
                    break false;
                }
                let needed = self.batch_size - batch.len();
                self.batch_ready.needed.store(needed, Ordering::Relaxed);
                tokio::select! {
                    biased;
                    () = &mut shutdown => {
                        self.start_stop();
                        stopping = true;
                        retention_cutoff = None;
                    }
                    () = self.batch_ready.notify.notified() => {}
                    () = &mut deadline => {
                        take_queued(&self.spool, &mut batch);
                        break true;
                    }
                }
            };

            self.check_file();
            self.write_batch(&mut batch, write_all, &mut summary).await;
            drops.warn_if_due(&self.dropped, &self.path, false);
            self.failures.report_due(&self.path);
            if self.stop_timed_out() {
                self.leave_unwritten(&mut batch, &mut summary);
                break;
            }
        }

        drops.warn_if_due(&self.dropped, &self.path, true);
        self.failures.report_unreported(&self.path);
        self.cap.report(0, &self.path, true);
        summary.dropped = self.dropped.load(Ordering::Relaxed);
        // Closing the last connection copies the WAL into the database file, but the gateway's
        // reader pool may still be open. A passive checkpoint copies it now, so that a copy of
        // the database file alone is complete. It never waits. A reader in the middle of a
        // query can keep it from finishing, and then the WAL file is needed with the database.
        let checkpoint = self
            .on_connection(|connection| {
                connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
            })
            .await
            .and_then(|checked| checked.map_err(WriteError::from));
        match checkpoint {
            // SQLite's columns: whether it was blocked, frames in the WAL, frames copied.
            Ok((_, frames, copied)) if frames == copied => {}
            Ok((_, frames, copied)) => warn!(
                path = %self.path.display(),
                frames,
                copied,
                "request log checkpoint left rows in the WAL file: a reader was mid-query (an \
                 admin query still running, or another program), so copy the -wal file along \
                 with the database"
            ),
            Err(error) => {
                warn!(path = %self.path.display(), %error, "request log checkpoint failed");
            }
        }
        self.close_connection().await;
        // The last rows may have gone in less than a check interval after a removal.
        summary.file_replaced = self.file_replaced || FileIdentity::of(&self.path) != self.file;
        debug!(
            path = %self.path.display(),
            written = summary.written,
            failed = summary.failed,
            dropped = summary.dropped,
            "request log writer stopped"
        );
        summary
    }

    /// Writes the records the writer took, in order of start time, in transactions of at most
    /// `batch_size` rows, and releases each transaction's records from the spool as it ends.
    /// Unless `write_all`, keeps the newest records that do not fill a transaction in `batch`
    /// for the next one; otherwise leaves `batch` empty.
    async fn write_batch(
        &mut self,
        batch: &mut Encoded,
        write_all: bool,
        summary: &mut WriteSummary,
    ) {
        let total = batch.len();
        let to_write = if write_all {
            total
        } else {
            total - total % self.batch_size
        };
        if to_write == 0 {
            return;
        }
        // Ordered on the writer's thread: a backlog can hold many records.
        let records = std::mem::take(batch);
        let ordered = self
            .thread
            .run(move || {
                let order = records.positions_by_time();
                let remainder = records.copy_of(&order[to_write..]);
                (records, order, remainder)
            })
            .await;
        let (mut records, order, remainder) = match ordered {
            Ok(ordered) => ordered,
            Err(lost) => {
                self.spool.release(total);
                self.lose_rows(total, &WriteError::from(lost), summary)
                    .await;
                return;
            }
        };
        let order = Arc::new(order);

        let mut done = 0;
        while done < to_write {
            if self.stop_timed_out() {
                // The caller logs these with the rest of the queue.
                let rest = to_write - done;
                self.spool.release(rest);
                summary.unwritten += rest as u64;
                break;
            }
            let rows = self.batch_size.min(to_write - done);
            let transaction = Arc::clone(&order);
            match self
                .insert_transaction(records, transaction, done..done + rows)
                .await
            {
                Ok(back) => {
                    records = back;
                    summary.written += rows as u64;
                    trace!(rows, "request log batch committed");
                    self.cap.committed(rows as u64);
                    // Rows are deleted for the cap after each transaction, not after the whole
                    // backlog. So once within `max_rows`, the log exceeds it by at most one
                    // transaction.
                    if self.stop_deadline.is_none() && self.cap.is_due() {
                        self.delete_over_cap(summary).await;
                    }
                }
                Err((Some(back), error)) => {
                    records = back;
                    // Released before they count as failed, so that a reader of both counts
                    // never finds these rows queued and failed at once.
                    self.spool.release(rows);
                    self.lose_rows(rows, &error, summary).await;
                    done += rows;
                    continue;
                }
                Err((None, error)) => {
                    // The records went with the lost job.
                    self.spool.release(to_write - done);
                    self.lose_rows(to_write - done, &error, summary).await;
                    *batch = remainder;
                    return;
                }
            }
            self.spool.release(rows);
            done += rows;
        }
        *batch = remainder;
        // A backlog's blocks can add up to hundreds of MB: they are freed off the runtime's
        // threads. Should the job be lost, they are freed with it.
        let _ = self.thread.run(move || drop((records, order))).await;
    }

    /// Counts `rows` as failed, reports the error and closes the connection, so that the
    /// next transaction starts on a new one.
    ///
    /// NOTE: failed rows are not retried. The busy timeout already covers lock contention,
    /// so what is left (disk full, I/O error) would fail again.
    async fn lose_rows(&mut self, rows: usize, error: &WriteError, summary: &mut WriteSummary) {
        summary.failed += rows as u64;
        self.failed.fetch_add(rows as u64, Ordering::Relaxed);
        self.failures.report(rows as u64, error, &self.path);
        // SQLite rolls a transaction back by itself on some errors, a full disk among them.
        // A new connection starts clean whatever state the failure left.
        self.close_connection().await;
    }

    /// Inserts the records of `records` at `order[range]` in one transaction, in jobs of
    /// [`insert::CHUNK_ROWS`] rows on the writer's thread, and returns `records`. On an error,
    /// returns them too unless a job was lost with them.
    async fn insert_transaction(
        &mut self,
        mut records: Encoded,
        order: Arc<Vec<Position>>,
        range: std::ops::Range<usize>,
    ) -> Result<Encoded, (Option<Encoded>, WriteError)> {
        let mut start = range.start;
        while start < range.end {
            let end = (start + insert::CHUNK_ROWS).min(range.end);
            let begin = start == range.start;
            let commit = end == range.end;
            let order = Arc::clone(&order);
            let job = self
                .on_connection(move |connection| {
                    let chunk: Vec<_> = order[start..end]
                        .iter()
                        .filter_map(|&position| records.get(position))
                        .collect();
                    let inserted = insert::insert_chunk(connection, &chunk, begin, commit);
                    drop(chunk);
                    (records, inserted)
                })
                .await;
            let (back, inserted) = match job {
                Ok(output) => output,
                Err(error) => return Err((None, error)),
            };
            records = back;
            if let Err(error) = inserted {
                return Err((Some(records), WriteError::from(error)));
            }
            start = end;
        }
        Ok(records)
    }

    /// Returns the writer's connection, first opening a new one when the last batch failed.
    ///
    /// A new connection opens only the file the writer started with. Were the path to name a
    /// new file, SQLite would take the old file's `-wal` and `-shm` files, still at the old
    /// names and in use by open connections, as the new file's: that corrupts both. A file
    /// put in its place may also be another program's database.
    async fn take_connection(&mut self) -> Result<Connection, StoreError> {
        if let Some(connection) = self.connection.take() {
            return Ok(connection);
        }
        if self.file_replaced || FileIdentity::of(&self.path) != self.file {
            self.file_replaced = true;
            return Err(StoreError::Replaced {
                path: self.path.clone(),
            });
        }
        let connection = connect::reopen_insert_connection(&self.path, &self.thread).await?;
        debug!(path = %self.path.display(), "request log database reopened");
        Ok(connection)
    }

    /// Runs `work` with the writer's connection on the writer's thread, so that SQLite's work
    /// and waits (a commit, the busy timeout) never hold up the runtime's threads. Opens the
    /// connection first when the last batch failed; see [`Writer::take_connection`].
    ///
    /// The connection is lost when `work` panics, and the next call opens a new one.
    async fn on_connection<T, F>(&mut self, work: F) -> Result<T, WriteError>
    where
        F: FnOnce(&mut Connection) -> T + Send + 'static,
        T: Send + 'static,
    {
        let mut connection = self.take_connection().await?;
        // During the stop, a lock held by another process is waited for only until the stop
        // timeout, so that each batch does not wait the full busy timeout again.
        let busy_timeout = self
            .stop_deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        let (connection, output) = self
            .thread
            .run(move || {
                if let Some(timeout) = busy_timeout {
                    // Only fails on a closed connection, which the work then reports.
                    let _ = connection.busy_timeout(timeout);
                }
                let output = work(&mut connection);
                (connection, output)
            })
            .await?;
        self.connection = Some(connection);
        Ok(output)
    }

    /// Logs an error, once, when the database path no longer names the file the writer
    /// started with. Checks at most once per [`FILE_CHECK_INTERVAL`]. Rows still go to the
    /// open file: see [`Writer::take_connection`] for why a new file is not opened.
    fn check_file(&mut self) {
        let now = Instant::now();
        if self.file_replaced || now.duration_since(self.file_checked) < FILE_CHECK_INTERVAL {
            return;
        }
        self.file_checked = now;
        if FileIdentity::of(&self.path) == self.file {
            return;
        }
        self.file_replaced = true;
        error!(
            path = %self.path.display(),
            "request log database file was removed or replaced while the gateway runs: rows \
             still go to the file it opened, and are lost at the stop if that file was removed. \
             Restart the gateway to write to a file at the path, and move the -wal and -shm \
             files with the database when you rotate it"
        );
    }

    async fn close_connection(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let closed = self
            .thread
            .run(move || connection.close().map_err(|(_, error)| error))
            .await;
        if let Ok(Err(error)) = closed {
            debug!(path = %self.path.display(), %error, "request log close failed");
        }
    }

    /// Closes the queue to new records and starts the stop timeout.
    fn start_stop(&mut self) {
        self.spool.close();
        let requested = self
            .stop_requested
            .get()
            .copied()
            .unwrap_or_else(Instant::now);
        self.stop_deadline = Some(requested + self.stop_timeout);
    }

    fn stop_timed_out(&self) -> bool {
        self.stop_deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Releases the records in `batch` and every record still queued without writing them,
    /// counts them as unwritten and logs how many rows the stop left unwritten.
    fn leave_unwritten(&mut self, batch: &mut Encoded, summary: &mut WriteSummary) {
        self.spool.take(batch);
        let rows = batch.len();
        self.spool.release(rows);
        *batch = Encoded::default();
        summary.unwritten += rows as u64;
        if summary.unwritten > 0 {
            error!(
                path = %self.path.display(),
                rows = summary.unwritten,
                timeout = ?self.stop_timeout,
                "request log stop timed out, rows not written: the database was locked by \
                 another process or too slow to take them"
            );
        }
    }

    /// Deletes the oldest rows, by `ts_us`, while the log exceeds `max_rows`, in chunks of
    /// [`retention::CHUNK_ROWS`] that are each a transaction. Stops at `max_rows`, or once it
    /// deleted [`RowCap::pass_budget`] rows, and leaves the rest to the next pass.
    async fn delete_over_cap(&mut self, summary: &mut WriteSummary) {
        let max_rows = self.cap.max_rows();
        let budget = self.cap.pass_budget();
        let chunk_rows = retention::CHUNK_ROWS;
        let mut deleted = 0;
        loop {
            let chunk = self
                .on_connection(move |connection| {
                    retention::delete_over_cap(connection, max_rows, chunk_rows)
                })
                .await
                .and_then(|chunk| chunk.map_err(WriteError::from));
            match chunk {
                Ok(chunk) => {
                    deleted += chunk.deleted;
                    let over = self.cap.chunk_done(chunk);
                    if !over || deleted >= budget {
                        break;
                    }
                }
                Err(error) => {
                    self.cap.pass_failed();
                    if error.is_corrupt() {
                        error!(
                            path = %self.path.display(),
                            %error,
                            fix = %crate::error::corrupt_fix(&self.path),
                            "request log deletion for max_rows failed: the database file is \
                             corrupt"
                        );
                    } else {
                        error!(
                            path = %self.path.display(),
                            %error,
                            "request log deletion for max_rows failed, retried in a minute"
                        );
                    }
                    break;
                }
            }
        }
        if deleted > 0 {
            trace!(deleted, max_rows, "request log rows over max_rows deleted");
        }
        summary.capped += deleted;
        self.cap.report(deleted, &self.path, false);
    }

    /// Deletes one chunk of rows older than `cutoff_us` and returns the cutoff again when
    /// more may remain.
    async fn delete_expired_chunk(
        &mut self,
        cutoff_us: i64,
        summary: &mut WriteSummary,
    ) -> Option<i64> {
        let chunk = retention::CHUNK_ROWS;
        let deleted = self
            .on_connection(move |connection| {
                retention::delete_expired(connection, cutoff_us, chunk)
            })
            .await
            .and_then(|deleted| deleted.map_err(WriteError::from));
        match deleted {
            Ok(deleted) => {
                summary.expired += deleted;
                if deleted > 0 {
                    trace!(deleted, cutoff_us, "request log expired rows deleted");
                }
                (deleted == u64::from(chunk)).then_some(cutoff_us)
            }
            Err(error) if error.is_corrupt() => {
                error!(
                    path = %self.path.display(),
                    %error,
                    fix = %crate::error::corrupt_fix(&self.path),
                    "request log retention failed: the database file is corrupt"
                );
                None
            }
            Err(error) => {
                error!(
                    path = %self.path.display(),
                    %error,
                    "request log retention failed"
                );
                None
            }
        }
    }
}

/// Waits until records are queued, unless `batch` already has some, and moves every queued
/// record into `batch`. Returns how many records `batch` contains, 0 once the spool is closed
/// and nothing is left in it.
async fn next_records(spool: &Spool, batch_ready: &BatchReady, batch: &mut Encoded) -> usize {
    loop {
        // Set before the spool is read, so a push after the read finds `needed` at 1 and wakes
        // this task. The notification is kept until the wait below begins.
        batch_ready.needed.store(1, Ordering::Relaxed);
        // Read before the take: once the spool is closed, a take finds every record that a
        // push will ever add, so an empty take then means the end.
        let closed = spool.is_closed();
        spool.take(batch);
        if batch.len() > 0 || closed {
            return batch.len();
        }
        batch_ready.notify.notified().await;
    }
}

/// Moves the records already queued into `batch`, without waiting. Returns false when the
/// spool was closed before the take (every sender is gone or the writer is stopping), so that
/// nothing more can come.
fn take_queued(spool: &Spool, batch: &mut Encoded) -> bool {
    let closed = spool.is_closed();
    spool.take(batch);
    !closed
}

/// The failure of a batch, a retention run or the checkpoint at the stop.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// A new connection could not be opened.
    #[error(transparent)]
    Open(#[from] StoreError),
    /// A statement failed.
    #[error(transparent)]
    Statement(#[from] rusqlite::Error),
    /// The writer's thread lost the statement: it panicked, and the connection went with it.
    #[error(transparent)]
    Lost(#[from] JobLost),
}

impl WriteError {
    /// Returns whether SQLite found the database file damaged (`SQLITE_CORRUPT` or
    /// `SQLITE_NOTADB`).
    fn is_corrupt(&self) -> bool {
        match self {
            WriteError::Open(StoreError::Corrupt { .. } | StoreError::NotDatabase { .. }) => true,
            WriteError::Statement(error) => matches!(
                error.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            ),
            _ => false,
        }
    }
}

/// Time between two checks that the database path still names the writer's file.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The device and inode of a file, which change when the file at a path is removed and
/// created again, or replaced by a rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    /// Returns the identity of the file at `path`, or `None` when there is none. On other
    /// systems than Unix, every file has the same identity, so only a removal is found.
    fn of(path: &std::path::Path) -> Option<FileIdentity> {
        let metadata = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Some(FileIdentity {
                device: metadata.dev(),
                inode: metadata.ino(),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = metadata;
            Some(FileIdentity {
                device: 0,
                inode: 0,
            })
        }
    }
}

/// Shortest time between two errors about failed batches.
const MIN_FAILURE_ERROR_INTERVAL: Duration = Duration::from_secs(1);

/// Rate-limits the error about failed batches, which a full disk repeats for every batch, to
/// one a second. Each error counts the rows lost since the previous one.
#[derive(Default)]
struct FailureWarnings {
    unreported: u64,
    last_error: Option<Instant>,
}

impl std::fmt::Debug for FailureWarnings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureWarnings")
            .field("unreported", &self.unreported)
            .finish_non_exhaustive()
    }
}

impl FailureWarnings {
    fn report(&mut self, rows: u64, error: &WriteError, path: &std::path::Path) {
        self.unreported += rows;
        let now = Instant::now();
        if self
            .last_error
            .is_some_and(|at| now.duration_since(at) < MIN_FAILURE_ERROR_INTERVAL)
        {
            return;
        }
        // The causes give the reason, such as SQLite's own message under a failed migration.
        let mut message = error.to_string();
        let mut cause = std::error::Error::source(error);
        while let Some(source) = cause {
            let text = source.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = source.source();
        }
        if error.is_corrupt() {
            error!(
                path = %path.display(),
                rows = self.unreported,
                error = %message,
                fix = %crate::error::corrupt_fix(path),
                "request log batch write failed, rows lost: the database file is corrupt"
            );
        } else {
            error!(
                path = %path.display(),
                rows = self.unreported,
                error = %message,
                "request log batch write failed, rows lost"
            );
        }
        self.unreported = 0;
        self.last_error = Some(now);
    }

    /// Logs the rows that the rate limit held back, once the interval since the last error
    /// line has passed. Called after every batch, so that a loss is reported within about a
    /// second even when the batches after it succeed.
    fn report_due(&mut self, path: &std::path::Path) {
        let due = self
            .last_error
            .is_none_or(|at| at.elapsed() >= MIN_FAILURE_ERROR_INTERVAL);
        if due && self.unreported > 0 {
            self.report_unreported(path);
            self.last_error = Some(Instant::now());
        }
    }

    /// Logs the rows lost since the last error, which the rate limit held back. Called at the
    /// stop, so that the error lines add up to every row lost.
    fn report_unreported(&mut self, path: &std::path::Path) {
        if self.unreported == 0 {
            return;
        }
        error!(
            path = %path.display(),
            rows = self.unreported,
            "request log batch writes failed since the last error, rows lost"
        );
        self.unreported = 0;
    }
}

/// Shortest time between two warnings about dropped records, for a short flush interval.
const MIN_DROP_WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Rate-limits the warning about dropped records to one per flush interval, and at most one
/// a second.
struct DropWarnings {
    interval: Duration,
    reported: u64,
    last_warning: Option<Instant>,
}

impl DropWarnings {
    fn new(interval: Duration) -> DropWarnings {
        DropWarnings {
            interval,
            reported: 0,
            last_warning: None,
        }
    }

    /// Returns when the next warning is due: `None` while every dropped record has been
    /// reported, else the end of the interval that follows the last warning.
    fn due_at(&self, dropped: &AtomicU64) -> Option<Instant> {
        if dropped.load(Ordering::Relaxed) == self.reported {
            return None;
        }
        Some(
            self.last_warning
                .map_or_else(Instant::now, |at| at + self.interval),
        )
    }

    /// Warns about records dropped since the last warning, unless one was logged less than an
    /// interval ago and this is not the final call.
    fn warn_if_due(&mut self, dropped: &AtomicU64, path: &std::path::Path, last: bool) {
        let total = dropped.load(Ordering::Relaxed);
        if total == self.reported {
            return;
        }
        let now = Instant::now();
        let recent = self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < self.interval);
        if recent && !last {
            return;
        }
        warn!(
            path = %path.display(),
            dropped = total - self.reported,
            total,
            "request log records dropped, queue full or writer stopped"
        );
        self.reported = total;
        self.last_warning = Some(now);
    }
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{RequestLog, RequestRecord};
    use std::borrow::Cow;

    #[tokio::test(start_paused = true)]
    async fn drop_warning_falls_due_after_its_interval() {
        let dropped = AtomicU64::new(0);
        let path = std::path::Path::new("requests.db");
        let mut drops = DropWarnings::new(Duration::from_secs(1));
        assert_eq!(drops.due_at(&dropped), None, "nothing dropped");

        dropped.store(5, Ordering::Relaxed);
        assert!(
            drops.due_at(&dropped).unwrap() <= Instant::now(),
            "first drops: at once"
        );
        drops.warn_if_due(&dropped, path, false);
        assert_eq!(drops.due_at(&dropped), None, "every drop reported");

        // Drops after a warning wait for the end of its interval.
        dropped.store(9, Ordering::Relaxed);
        let due = drops.due_at(&dropped).unwrap();
        assert_eq!(due, Instant::now() + Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(500)).await;
        drops.warn_if_due(&dropped, path, false);
        assert_eq!(drops.reported, 5, "warned again within the interval");
        tokio::time::advance(Duration::from_millis(500)).await;
        drops.warn_if_due(&dropped, path, false);
        assert_eq!(drops.reported, 9);
        assert_eq!(drops.due_at(&dropped), None);
    }

    fn record(i: u64) -> RequestRecord {
        RequestRecord {
            timestamp_us: crate::now_us(),
            request_id: format!("req-{i}"),
            method: Cow::Borrowed("GET"),
            path: format!("/items/{i}/{}", "x".repeat(200)),
            query: None,
            route: None,
            status: 200,
            latency_us: i,
            client_ip: None,
            user_agent: Some("test-agent/1.0".to_owned()),
            backend: None,
            bytes_received: 0,
            bytes_sent: 0,
            error_kind: None,
            retried: false,
        }
    }

    /// Returns the `rows=` figure of each error line in `output`.
    fn rows_in_error_lines(output: &std::sync::Mutex<Vec<u8>>) -> Vec<u64> {
        let text = String::from_utf8(output.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|line| line.contains("ERROR"))
            .filter_map(|line| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix("rows=")?.parse().ok())
            })
            .collect()
    }

    #[test]
    fn held_back_failures_reported_after_interval() {
        let (output, _guard) = capture_logs();
        let path = std::path::Path::new("requests.db");
        let error = WriteError::Lost(JobLost);

        let mut failures = FailureWarnings::default();
        failures.report(10, &error, path);
        failures.report(5, &error, path);
        failures.report_due(path);
        assert_eq!(
            rows_in_error_lines(&output),
            [10],
            "the second is held back"
        );

        // A second later, the rows held back are reported though no batch failed since.
        failures.last_error = Instant::now().checked_sub(MIN_FAILURE_ERROR_INTERVAL);
        failures.report_due(path);
        assert_eq!(rows_in_error_lines(&output), [10, 5]);
        failures.report_due(path);
        assert_eq!(rows_in_error_lines(&output), [10, 5], "reported once");
    }

    /// A batch that meets a damaged page fails with `SQLITE_CORRUPT` while the gateway runs.
    /// Its error line must give the fix, as the start's error does.
    #[test]
    fn corrupt_file_error_gives_fix() {
        let (output, _guard) = capture_logs();
        let path = std::path::Path::new("requests.db");
        let corrupt = WriteError::Statement(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some("database disk image is malformed".to_owned()),
        ));

        let mut failures = FailureWarnings::default();
        failures.report(512, &corrupt, path);
        let text = String::from_utf8(output.lock().unwrap().clone()).unwrap();

        assert_eq!(rows_in_error_lines(&output), [512]);
        assert!(text.contains("database file is corrupt"), "{text}");
        assert!(text.contains("move the file away"), "{text}");
        assert!(text.contains("sqlite3 requests.db .recover"), "{text}");
    }

    /// A `tracing` output shared with the test.
    struct SharedSink(Arc<std::sync::Mutex<Vec<u8>>>);

    /// Sends this thread's log lines to the returned buffer until the guard drops.
    fn capture_logs() -> (
        Arc<std::sync::Mutex<Vec<u8>>>,
        tracing::subscriber::DefaultGuard,
    ) {
        let output = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&output);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || SharedSink(Arc::clone(&sink)))
            .finish();
        (output, tracing::subscriber::set_default(subscriber))
    }

    impl std::io::Write for SharedSink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn count_rows(path: &std::path::Path) -> i64 {
        use sqlx::Connection as _;
        let mut connection = crate::connect::open_writer(path).await.unwrap();
        let count = sqlx::query_scalar("SELECT count(*) FROM requests")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        connection.close().await.unwrap();
        count
    }

    /// Names the database that [`outside_connection`] opens, in a child process.
    const OUTSIDE_DATABASE: &str = "GATEWAY_STORE_OUTSIDE_DATABASE";

    /// Another program's connection to the log, run in a process of its own by
    /// [`reopen_keeps_the_wal_file`]: it reads the table and closes the connection.
    #[test]
    #[ignore = "run in a child process by reopen_keeps_the_wal_file"]
    fn outside_connection() {
        let Ok(path) = std::env::var(OUTSIDE_DATABASE) else {
            return;
        };
        let connection = Connection::open(path).unwrap();
        let _: i64 = connection
            .query_row("SELECT count(*) FROM requests", [], |row| row.get(0))
            .unwrap();
        connection.close().unwrap();
    }

    /// Opens a log in `dir` whose writer runs with [`fill_up`]'s page limit, and starts it.
    async fn open_full(dir: &std::path::Path) -> (RequestLogConfig, RequestLog, WriterHandle) {
        let config = RequestLogConfig {
            enabled: true,
            database: dir.join("requests.db"),
            batch_size: 512,
            flush_interval: Duration::from_millis(20),
            queue_capacity: 65_536,
            retention: Duration::from_secs(86_400),
            max_rows: gateway_config::DEFAULT_MAX_ROWS,
        };
        let (log, writer) = RequestLog::open(&config).await.unwrap();
        fill_up(&writer);
        (config, log, writer.spawn())
    }

    /// Sets the writer's page limit just above the file's size, so that its next batches
    /// fail as on a full disk, until the failure makes it open a new connection.
    fn fill_up(writer: &Writer) {
        let connection = writer.connection.as_ref().unwrap();
        let pages: i64 = connection
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .unwrap();
        let limit: i64 = connection
            .query_row(
                &format!("PRAGMA max_page_count = {}", pages + 1),
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(limit, pages + 1);
    }

    /// Closing a connection that SQLite takes for the last one on a file checkpoints the WAL
    /// file and deletes it. The gateway's connections must keep their locks across the
    /// writer's reopen, so that another program's connection never takes itself for the last.
    #[tokio::test]
    async fn reopen_keeps_the_wal_file() {
        let dir = tempfile::tempdir().unwrap();
        let (config, log, writer) = open_full(dir.path()).await;
        // The admin endpoints' reader, with a connection open, as in the gateway.
        let reader = crate::LogReader::open(&config.database).await.unwrap();
        reader.recent(&crate::LogFilter::default()).await.unwrap();

        for i in 0..2000 {
            log.record(record(i));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.failed() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(log.failed() > 0, "the full database failed no batch");
        for i in 2000..2010 {
            log.record(record(i));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["writer::tests::outside_connection", "--exact", "--ignored"])
            .env(OUTSIDE_DATABASE, &config.database)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let wal = format!("{}-wal", config.database.display());
        assert!(
            std::path::Path::new(&wal).exists(),
            "another process deleted the WAL file under the writer"
        );

        drop(reader);
        let summary = writer.shutdown().await.unwrap();
        let rows = count_rows(&config.database).await;
        assert_eq!(u64::try_from(rows).unwrap(), summary.written, "{summary:?}");
        assert!(summary.written >= 10, "{summary:?}");
    }

    /// A full disk fails a batch with `SQLITE_FULL`, after which SQLite rolls the
    /// transaction back itself. `max_page_count` makes the database full the same way, for
    /// the writer's connection only. Rows after the failure must reach the file once there is
    /// room again, and must be counted as written only when they do.
    #[tokio::test]
    async fn writing_resumes_after_a_full_database() {
        let dir = tempfile::tempdir().unwrap();
        let (config, log, writer) = open_full(dir.path()).await;

        for i in 0..2000 {
            log.record(record(i));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.failed() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(log.failed() > 0, "the full database failed no batch");

        for i in 2000..2010 {
            log.record(record(i));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let summary = writer.shutdown().await.unwrap();

        let rows = count_rows(&config.database).await;
        assert_eq!(u64::try_from(rows).unwrap(), summary.written, "{summary:?}");
        assert_eq!(summary.written + summary.failed, 2010, "{summary:?}");
        assert!(
            summary.written >= 10,
            "rows after the failure were lost: {summary:?}"
        );
    }
}
