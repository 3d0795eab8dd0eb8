//! The writer's bookkeeping for `request_log.max_rows`: when a pass deletes the oldest rows,
//! how many it may delete before the next batch, and the rate-limited line that reports them.

use crate::retention::{CHUNK_ROWS, CapChunk};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;
use tracing::info;

/// Shortest time between two log lines about rows deleted for the cap.
const NOTICE_INTERVAL: Duration = Duration::from_secs(60);

/// Time after a failed pass before the next one starts, so that a lasting failure (a corrupt
/// file, another process holding the write lock) is not retried and logged at every batch.
const RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// The cap on the request log's rows and the state of its enforcement.
///
/// The writer never counts the rows. It reads the id span (see [`crate::retention::id_span`])
/// in each pass and adds the rows it commits, which raise the highest id by one each. A pass
/// starts once that estimate exceeds the cap, so below the cap a batch costs no query.
#[derive(Debug)]
pub(crate) struct RowCap {
    max_rows: u64,
    /// The id span that the last pass read, plus the rows committed since. An upper bound on
    /// the rows, unless another program inserted rows.
    span: u64,
    /// Whether a pass should run, because the span may exceed the cap or a pass stopped at its
    /// budget.
    pending: bool,
    /// Rows committed since the last pass.
    committed: u64,
    /// When a pass may run again after a failure.
    retry_at: Option<Instant>,
    /// Rows deleted since the last log line.
    unreported: u64,
    last_notice: Option<Instant>,
}

impl RowCap {
    /// Returns the bookkeeping of a log capped at `max_rows`. The writer's first retention run,
    /// at its start, makes the first pass due, which reads the span of the rows in the file.
    pub(crate) fn new(max_rows: u64) -> RowCap {
        RowCap {
            max_rows: max_rows.max(1),
            span: 0,
            pending: false,
            committed: 0,
            retry_at: None,
            unreported: 0,
            last_notice: None,
        }
    }

    pub(crate) fn max_rows(&self) -> u64 {
        self.max_rows
    }

    /// Makes a pass due, whatever the estimate: the retention timer calls it, so that a file
    /// changed by another program is brought under the cap too.
    pub(crate) fn check_soon(&mut self) {
        self.pending = true;
    }

    /// Counts `rows` just committed, and makes a pass due when they take the span over the cap.
    pub(crate) fn committed(&mut self, rows: u64) {
        self.span = self.span.saturating_add(rows);
        self.committed = self.committed.saturating_add(rows);
        if self.span > self.max_rows {
            self.pending = true;
        }
    }

    /// Returns whether a pass should run now.
    pub(crate) fn is_due(&self) -> bool {
        self.pending && self.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Returns how many rows a pass may delete before it lets the next batch in. That is the
    /// rows committed since the last pass, so that a flood cannot outgrow the deletes, but at
    /// least one chunk, so that a backlog of excess rows shrinks.
    pub(crate) fn pass_budget(&self) -> u64 {
        self.committed.max(u64::from(CHUNK_ROWS))
    }

    /// Takes the outcome of one chunk of a pass and returns whether rows over the cap remain.
    /// While they do, the pass stays due, so that a pass stopped at its budget goes on
    /// between the next batches.
    pub(crate) fn chunk_done(&mut self, chunk: CapChunk) -> bool {
        self.span = chunk.span;
        self.committed = 0;
        // A chunk that deleted nothing found the table empty, or another program deleting.
        self.pending = chunk.deleted > 0 && chunk.span > self.max_rows;
        self.pending
    }

    /// Ends a pass that failed. The next waits for [`RETRY_INTERVAL`].
    pub(crate) fn pass_failed(&mut self) {
        self.pending = false;
        self.committed = 0;
        self.retry_at = Some(Instant::now() + RETRY_INTERVAL);
    }

    /// Counts `deleted` rows and logs the rows deleted since the last line, at most once per
    /// [`NOTICE_INTERVAL`] unless `last`.
    pub(crate) fn report(&mut self, deleted: u64, path: &Path, last: bool) {
        self.unreported += deleted;
        if self.unreported == 0 {
            return;
        }
        let now = Instant::now();
        let recent = self
            .last_notice
            .is_some_and(|at| now.duration_since(at) < NOTICE_INTERVAL);
        if recent && !last {
            return;
        }
        info!(
            path = %path.display(),
            deleted = self.unreported,
            max_rows = self.max_rows,
            "request log reached max_rows, oldest rows deleted"
        );
        self.unreported = 0;
        self.last_notice = Some(now);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pass_due_only_over_cap() {
        let mut cap = RowCap::new(1000);
        cap.check_soon();
        assert!(cap.is_due(), "the first pass reads the file's span");
        let read = CapChunk {
            deleted: 0,
            span: 400,
        };
        assert!(!cap.chunk_done(read));
        assert!(!cap.is_due());

        cap.committed(600);
        assert!(!cap.is_due(), "span 1000 is at the cap, not over it");
        cap.committed(1);
        assert!(cap.is_due());
    }

    #[test]
    fn budget_covers_rows_committed() {
        let mut cap = RowCap::new(100);
        cap.committed(20_000);
        assert_eq!(cap.pass_budget(), 20_000);

        let chunk = CapChunk {
            deleted: 5000,
            span: 15_100,
        };
        assert!(cap.chunk_done(chunk), "rows over the cap remain");
        assert!(cap.is_due(), "the pass goes on after the next batch");
        assert_eq!(
            cap.pass_budget(),
            u64::from(CHUNK_ROWS),
            "at least one chunk"
        );
    }

    #[test]
    fn pass_ends_when_nothing_deleted() {
        let mut cap = RowCap::new(100);
        cap.committed(500);
        let chunk = CapChunk {
            deleted: 0,
            span: 500,
        };
        assert!(!cap.chunk_done(chunk));
        assert!(!cap.is_due());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_pass_waits_before_retry() {
        let mut cap = RowCap::new(100);
        cap.committed(500);
        cap.pass_failed();
        cap.committed(1);
        assert!(!cap.is_due(), "retried at once");

        tokio::time::advance(RETRY_INTERVAL).await;
        assert!(cap.is_due());
    }
}
