//! The handle the request path uses: a bounded queue in front of the writer.

use crate::writer::Writer;
use crate::{RequestRecord, StoreError, connect};
use gateway_config::RequestLogConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// The request log's handle: queues records for the [`Writer`] without waiting.
///
/// Cloning is cheap and every clone feeds the same queue. When every clone is dropped, the
/// writer commits what is queued and stops.
#[derive(Debug, Clone)]
pub struct RequestLog {
    sender: mpsc::Sender<RequestRecord>,
    dropped: Arc<AtomicU64>,
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
    /// a file that is not a database, no write permission), and [`StoreError::Migrate`] when the
    /// schema cannot be applied.
    pub async fn open(config: &RequestLogConfig) -> Result<(RequestLog, Writer), StoreError> {
        let connection = connect::open_writer(&config.database).await?;

        // tokio's bounded channel panics on a capacity of 0, which config validation rejects.
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let log = RequestLog {
            sender,
            dropped: Arc::clone(&dropped),
        };
        let writer = Writer::new(config, connection, receiver, dropped);
        Ok((log, writer))
    }

    /// Queues `record` for the writer, or drops and counts it when the queue is full or the
    /// writer has stopped. Never waits and takes no lock. The channel (tokio 1.x) reuses its
    /// blocks of slots, but a send may allocate a new block while the queue grows.
    pub fn record(&self, record: RequestRecord) {
        match self.sender.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Returns how many records were dropped since the log opened because the queue was full
    /// or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Returns how many records wait in the queue.
    pub fn queued(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }
}
