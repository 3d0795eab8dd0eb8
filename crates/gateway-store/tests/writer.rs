//! The queue and the batch writer, on real SQLite files.

#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_entry_matches, config, connect, count_rows, record, wait_for_rows};
use gateway_store::{LogFilter, LogReader, RequestLog, WriterHandle, now_us};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();

    let start_us = now_us();
    let records: Vec<_> = (0..10_000)
        .map(|i| record(i, start_us + i as i64))
        .collect();
    for record in &records {
        log.record(record.clone());
    }
    let summary = writer.shutdown().await.unwrap();

    assert_eq!(log.dropped(), 0);
    assert_eq!(summary.written, 10_000);
    assert_eq!(summary.failed, 0);
    assert_eq!(count_rows(&config.database).await, 10_000);

    let reader = LogReader::open(&config.database).await.unwrap();
    let filter = LogFilter {
        limit: LogFilter::MAX_LIMIT,
        ..LogFilter::default()
    };
    let entries = reader.recent(&filter).await.unwrap();
    assert_eq!(entries.len(), 10_000);
    let by_id: HashMap<_, _> = entries.iter().map(|e| (e.request_id.as_str(), e)).collect();
    for record in &records {
        assert_entry_matches(by_id[record.request_id.as_str()], record);
    }
}

#[tokio::test]
async fn stop_leaves_rows_in_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();
    // A reader with an open connection, as the gateway's admin endpoints keep, so that the
    // writer's connection is not the last one to close.
    let reader = LogReader::open(&config.database).await.unwrap();
    assert!(
        reader
            .recent(&LogFilter::default())
            .await
            .unwrap()
            .is_empty()
    );

    let start_us = now_us();
    for i in 0..2_000 {
        log.record(record(i, start_us + i as i64));
    }
    let summary = writer.shutdown().await.unwrap();
    assert_eq!(summary.written, 2_000);

    let copy = tempfile::tempdir().unwrap();
    let copied = copy.path().join("requests.db");
    std::fs::copy(&config.database, &copied).unwrap();
    assert_eq!(count_rows(&copied).await, 2_000);
    drop(reader);
}

#[tokio::test]
async fn flush_interval_commits_without_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();

    log.record(record(1, now_us()));

    // One record is far below batch_size, so only the interval can commit it.
    assert_eq!(wait_for_rows(&config.database, 1).await, 1);
    writer.shutdown().await.unwrap();
}

#[tokio::test]
async fn full_batch_commits_before_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.batch_size = 10;
    config.flush_interval = Duration::from_secs(3600);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    for i in 0..11 {
        log.record(record(i, now_us()));
    }
    let writer = writer.spawn();

    assert_eq!(wait_for_rows(&config.database, 10).await, 10);

    // The eleventh record starts the next batch, which waits for the hour-long interval.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count_rows(&config.database).await, 10);

    let summary = writer.shutdown().await.unwrap();
    assert_eq!(summary.written, 11);
    assert_eq!(count_rows(&config.database).await, 11);
}

#[tokio::test]
async fn batch_filled_while_running_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.batch_size = 10;
    config.flush_interval = Duration::from_secs(3600);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();

    // The writer takes the first record and then waits for the other nine of its batch.
    log.record(record(0, now_us()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 1..10 {
        log.record(record(i, now_us()));
        tokio::task::yield_now().await;
    }

    assert_eq!(wait_for_rows(&config.database, 10).await, 10);
    let summary = writer.shutdown().await.unwrap();
    assert_eq!(summary.written, 10);
}

#[tokio::test]
async fn queued_counts_rows_in_writer_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.flush_interval = Duration::from_secs(3600);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();

    for i in 0..5 {
        log.record(record(i, now_us()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The writer has taken the records into its batch, which waits for the interval.
    assert_eq!(log.queued(), 5);

    let summary = writer.shutdown().await.unwrap();
    assert_eq!(summary.written, 5);
    assert_eq!(log.queued(), 0);
}

#[tokio::test]
async fn small_queue_drains_before_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.queue_capacity = 8;
    config.flush_interval = Duration::from_secs(3600);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();

    // Far more records than the queue has room for, with a chance for the writer to run between
    // them: it must take them from the queue although its batch of 512 never fills.
    for i in 0..200 {
        log.record(record(i, now_us()));
        tokio::task::yield_now().await;
    }
    assert_eq!(log.dropped(), 0);

    let summary = writer.shutdown().await.unwrap();
    assert_eq!(summary.written, 200);
    assert_eq!(count_rows(&config.database).await, 200);
}

/// Opens a log in `dir` with batches of 10 and starts its writer, then drops the table from
/// another connection, as a change under the gateway would, so that every insert fails.
async fn open_failing(dir: &Path) -> (RequestLog, WriterHandle) {
    use sqlx::Connection;

    let mut config = config(dir);
    config.batch_size = 10;
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();
    let url = format!("sqlite://{}", config.database.display());
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("DROP TABLE requests")
        .execute(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();
    (log, writer)
}

/// Rows of a batch that fails to commit are counted as failed while the writer runs, so that
/// `/admin/stats` shows the loss, not only the writer's closing line.
#[tokio::test]
async fn failed_batch_is_counted_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let (log, writer) = open_failing(dir.path()).await;

    for i in 0..10 {
        log.record(record(i, now_us()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while log.failed() < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(log.failed(), 10);
    assert_eq!(log.queued(), 0);

    let summary = writer.shutdown().await.unwrap();
    assert_eq!(summary.failed, 10);
    assert_eq!(summary.written, 0);
}

#[tokio::test]
async fn error_lines_count_every_lost_row() {
    // The test runtime has one thread, so the writer task logs to this subscriber too.
    let (buffer, _guard) = LogBuffer::capture();
    let dir = tempfile::tempdir().unwrap();
    let (log, writer) = open_failing(dir.path()).await;

    // Three failed batches within a second: the rate limit holds back the second and third.
    for batch in 0..3 {
        for i in 0..10 {
            log.record(record(batch * 10 + i, now_us()));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while log.failed() < (batch + 1) * 10 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let summary = writer.shutdown().await.unwrap();
    assert_eq!(summary.failed, 30);

    let logged: u64 = buffer
        .errors()
        .iter()
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix("rows=")?.parse::<u64>().ok())
        })
        .sum();
    assert_eq!(logged, 30, "{:?}", buffer.errors());
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.queue_capacity = 4;
    let (log, writer) = RequestLog::open(&config).await.unwrap();

    // The writer has not started, so nothing leaves the queue.
    for i in 0..100 {
        log.record(record(i, now_us()));
    }
    assert_eq!(log.queued(), 4);
    assert_eq!(log.dropped(), 96);

    let summary = writer.spawn().shutdown().await.unwrap();
    assert_eq!(summary.written, 4);
    assert_eq!(summary.dropped, 96);
    assert_eq!(count_rows(&config.database).await, 4);
}

#[tokio::test]
async fn records_after_shutdown_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    writer.spawn().shutdown().await.unwrap();

    log.record(record(1, now_us()));

    assert_eq!(log.dropped(), 1);
    assert_eq!(count_rows(&config.database).await, 0);
}

#[tokio::test]
async fn dropping_every_handle_stops_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.flush_interval = Duration::from_secs(3600);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let clone = log.clone();
    let task = tokio::spawn(writer.run(std::future::pending()));

    log.record(record(1, now_us()));
    clone.record(record(2, now_us()));
    drop(log);
    drop(clone);

    let summary = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("writer still running after every handle was dropped")
        .unwrap();
    assert_eq!(summary.written, 2);
    assert_eq!(count_rows(&config.database).await, 2);
}

#[tokio::test]
async fn retention_deletes_only_expired_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.retention = Duration::from_secs(3600);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer
        .with_retention_interval(Duration::from_millis(20))
        .spawn();

    let now = now_us();
    let two_hours_us = 2 * 3_600_000_000;
    for i in 0..300 {
        log.record(record(i, now - two_hours_us - i as i64));
    }
    for i in 300..350 {
        log.record(record(i, now));
    }

    // Rows arrive before or after the first run, so a later periodic run has to catch them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count_rows(&config.database).await != 50 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let summary = writer.shutdown().await.unwrap();

    assert_eq!(summary.written, 350);
    assert_eq!(summary.expired, 300);
    let reader = LogReader::open(&config.database).await.unwrap();
    let entries = reader.recent(&LogFilter::default()).await.unwrap();
    assert_eq!(entries.len(), 50);
    assert!(entries.iter().all(|entry| entry.ts_us == now));
}

/// Records pushed from another thread while the writer stops are written or counted as
/// dropped, and the stop does not wait for the pushes to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_while_records_keep_coming() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.queue_capacity = 64;
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let log = log.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut pushed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && pushed < 2_000_000 {
                log.record(record(pushed, now_us()));
                pushed += 1;
            }
            pushed
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let summary = tokio::time::timeout(Duration::from_secs(10), writer.shutdown())
        .await
        .expect("the writer did not stop while records kept coming")
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pushed = pusher.join().unwrap();

    assert_eq!(summary.written + log.dropped(), pushed);
    assert_eq!(count_rows(&config.database).await, summary.written as i64);
}

/// A busy gateway always has records ready when the writer looks for the next batch. The
/// retention runs must still happen while they keep coming.
#[tokio::test]
async fn retention_runs_under_steady_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.retention = Duration::from_secs(3600);
    config.batch_size = 10;
    config.flush_interval = Duration::from_secs(3600);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer
        .with_retention_interval(Duration::from_millis(10))
        .spawn();

    // Expired records, one between every two steps of the writer, for 300 ms.
    let two_hours_ago = now_us() - 2 * 3_600_000_000;
    let start = tokio::time::Instant::now();
    let mut pushed = 0;
    while start.elapsed() < Duration::from_millis(300) {
        log.record(record(pushed, two_hours_ago));
        pushed += 1;
        tokio::task::yield_now().await;
    }
    let summary = writer.shutdown().await.unwrap();

    assert_eq!(summary.written + summary.dropped, pushed);
    assert!(
        summary.expired > 0,
        "no retention run under load: {summary:?}"
    );
}

#[tokio::test]
async fn expired_rows_go_when_writer_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    let now = now_us();
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();
    log.record(record(1, now - 2 * 3_600_000_000));
    log.record(record(2, now));
    writer.shutdown().await.unwrap();
    assert_eq!(count_rows(&config.database).await, 2);

    // Reopen with a one-hour retention and the default hourly interval: only the run at
    // start can delete the old row.
    config.retention = Duration::from_secs(3600);
    let (_log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count_rows(&config.database).await != 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let summary = writer.shutdown().await.unwrap();

    assert_eq!(summary.expired, 1);
    assert_eq!(count_rows(&config.database).await, 1);
}

/// A `tracing` output buffer shared with the test.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    /// Sends this thread's `tracing` output to a new buffer until the guard is dropped.
    fn capture() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
        let buffer = LogBuffer::default();
        let writer_buffer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer_buffer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (buffer, guard)
    }

    fn errors(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|line| line.contains("ERROR"))
            .map(str::to_owned)
            .collect()
    }

    fn warnings(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|line| line.contains("WARN"))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn drop_warning_is_rate_limited() {
    // The test runtime has one thread, so the writer task logs to this subscriber too.
    let (buffer, _guard) = LogBuffer::capture();

    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.queue_capacity = 4;
    config.batch_size = 4;
    config.flush_interval = Duration::from_secs(3600);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    for i in 0..100 {
        log.record(record(i, now_us()));
    }
    let writer = writer.spawn();
    assert_eq!(wait_for_rows(&config.database, 4).await, 4);
    // The writer warns after its commit, which the query above can see first. The second
    // burst of drops must come after that warning.
    let waited = std::time::Instant::now();
    while buffer.warnings().is_empty() {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "no drop warning"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    for i in 100..200 {
        log.record(record(i, now_us()));
    }
    assert_eq!(wait_for_rows(&config.database, 8).await, 8);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The second batch's drops come within one flush interval of the first warning.
    let warnings = buffer.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("dropped=96 total=96"),
        "{}",
        warnings[0]
    );

    // Stopping reports what is left unreported.
    writer.shutdown().await.unwrap();
    let warnings = buffer.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[1].contains("dropped=96 total=192"),
        "{}",
        warnings[1]
    );
}

/// A reader in the middle of a read transaction keeps the stop's checkpoint from copying the
/// rows written after its snapshot. The stop does not wait for it, warns that the WAL file is
/// needed, and the rows stay readable through the WAL.
#[tokio::test]
async fn stop_with_reader_mid_query_warns_without_waiting() {
    use sqlx::Connection;

    // The test runtime has one thread, so the writer task logs to this subscriber too.
    let (buffer, _guard) = LogBuffer::capture();

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();

    // The snapshot of an open read transaction pins the WAL frames written after it.
    let mut reader = common::connect(&config.database).await;
    sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
    let before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests")
        .fetch_one(&mut reader)
        .await
        .unwrap();
    assert_eq!(before, 0);

    let start_us = now_us();
    for i in 0..500 {
        log.record(record(i, start_us + i as i64));
    }
    let stopping = std::time::Instant::now();
    let summary = writer.shutdown().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        stopping.elapsed()
    );
    assert_eq!(summary.written, 500);

    let warnings = buffer.warnings();
    assert!(
        warnings
            .iter()
            .any(|line| line.contains("copy the -wal file along with the database")),
        "{warnings:?}"
    );

    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    reader.close().await.unwrap();
    assert_eq!(count_rows(&config.database).await, 500);
}

/// A short flush interval does not make the drop warning more frequent than once a second.
#[tokio::test]
async fn drop_warning_waits_a_second_with_short_interval() {
    // The test runtime has one thread, so the writer task logs to this subscriber too.
    let (buffer, _guard) = LogBuffer::capture();

    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.queue_capacity = 4;
    config.batch_size = 4;
    config.flush_interval = Duration::from_millis(10);
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let writer = writer.spawn();

    // Drops keep coming for about half a second, past many flush intervals.
    for round in 0..25 {
        for i in 0..20 {
            log.record(record(round * 20 + i, now_us()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = buffer.warnings().len();
    writer.shutdown().await.unwrap();

    assert!(log.dropped() > 0, "no record was dropped");
    assert!(
        (1..=2).contains(&during),
        "{during} warnings in half a second: {:?}",
        buffer.warnings()
    );
}

#[tokio::test]
async fn replaced_database_file_is_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let (buffer, _guard) = LogBuffer::capture();
    let writer = writer.spawn();

    for i in 0..10 {
        log.record(record(i, now_us()));
    }
    wait_for_rows(&config.database, 10).await;

    // Another program's database moved onto the path, as a restore from a backup would.
    let other = dir.path().join("other.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&other)
        .create_if_missing(true);
    let mut connection = sqlx::ConnectOptions::connect(&options).await.unwrap();
    sqlx::query("CREATE TABLE notes (text TEXT)")
        .execute(&mut connection)
        .await
        .unwrap();
    sqlx::Connection::close(connection).await.unwrap();
    let before = std::fs::read(&other).unwrap();
    std::fs::rename(&other, &config.database).unwrap();

    // The writer compares the path with its file before a batch, at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 10..20 {
        log.record(record(i, now_us()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while buffer.errors().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let summary = writer.shutdown().await.unwrap();

    let errors = buffer.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("removed or replaced"), "{errors:?}");
    // The rows went to the file the writer opened, and the new file is as it was put there.
    assert_eq!(summary.written, 20);
    assert!(summary.file_replaced, "{summary:?}");
    assert!(!has_requests_table(&config.database).await);
    assert!(
        std::fs::read(&config.database).unwrap() == before,
        "the file put in place was changed"
    );
}

async fn has_requests_table(path: &std::path::Path) -> bool {
    if !path.exists() {
        return false;
    }
    let mut connection = connect(path).await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'requests'",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    tables == 1
}

/// A lock held by another connection fails each batch only after the busy timeout of 5s. At
/// the stop, the writer waits for the lock only until its stop timeout, and then leaves the
/// rest of the queue unwritten instead of waiting 5s for each of its batches.
#[tokio::test]
async fn stop_with_held_lock_keeps_to_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let holder = rusqlite::Connection::open(&config.database).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let writer = writer.with_stop_timeout(Duration::from_secs(1)).spawn();
    for i in 0..5000 {
        log.record(record(i, now_us()));
    }
    let started = std::time::Instant::now();
    let summary = writer.shutdown().await.unwrap();
    let elapsed = started.elapsed();

    // One batch may have begun its 5s wait before the stop.
    assert!(
        elapsed < Duration::from_secs(6),
        "the stop took {elapsed:?}: {summary:?}"
    );
    assert_eq!(summary.written, 0, "{summary:?}");
    assert_eq!(summary.failed + summary.unwritten, 5000, "{summary:?}");
    assert!(summary.unwritten >= 5000 - 2 * 512, "{summary:?}");
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(count_rows(&config.database).await, 0);
}

/// A lock released before the stop timeout passes costs no rows.
#[tokio::test]
async fn stop_waits_for_released_lock() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (log, writer) = RequestLog::open(&config).await.unwrap();
    let holder = rusqlite::Connection::open(&config.database).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let writer = writer.with_stop_timeout(Duration::from_secs(20)).spawn();
    for i in 0..2000 {
        log.record(record(i, now_us()));
    }
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        holder.execute_batch("ROLLBACK").unwrap();
    });
    let summary = writer.shutdown().await.unwrap();
    release.join().unwrap();

    assert_eq!(summary.written, 2000, "{summary:?}");
    assert_eq!(summary.unwritten, 0, "{summary:?}");
    assert_eq!(count_rows(&config.database).await, 2000);
}
