//! The request log database as an operator meets its failures: a write lock that another
//! process holds at the stop, and a damaged file at the start and in `apigateway --check`.

use gateway_tests::{GatewayProcess, MockProcess, RawConnection, binary, quick_stop_config};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Sends `count` requests on one keep-alive connection and checks that each gets 200.
fn send_requests(gateway: &GatewayProcess, count: usize) {
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .set_read_timeout(Duration::from_secs(5))
        .expect("set read timeout");
    for i in 0..count {
        let request = format!("GET /api/item/{i} HTTP/1.1\r\nHost: a\r\n\r\n");
        let response = connection
            .exchange(request.as_bytes())
            .expect("request on keep-alive connection");
        assert_eq!(response.status, 200, "request {i}");
    }
}

/// Opens a connection that holds the database's write lock until it is closed, as an
/// `sqlite3` shell in a transaction does.
async fn hold_write_lock(database: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(database)
        .busy_timeout(Duration::from_secs(5));
    let mut connection = SqliteConnection::connect_with(&options)
        .await
        .expect("open the database");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut connection)
        .await
        .expect("take the write lock");
    connection
}

/// Returns the number after `name=` in a `key=value` log line.
fn log_field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace().find_map(|word| {
        let value = word.strip_prefix(name)?.strip_prefix('=')?;
        value.parse().ok()
    })
}

/// While another process holds the write lock, every batch waits out SQLite's busy timeout of
/// 5s before it fails. The stop waits for the rows only for `server.shutdown_timeout`, logs
/// that it waits and for how many rows, counts the rows it leaves unwritten, and exits with
/// status 1 for them.
#[tokio::test]
async fn stop_with_locked_log_keeps_to_timeout() {
    let mock = MockProcess::start("Locked");
    let mut gateway = GatewayProcess::start(&quick_stop_config(&mock.url));
    let database = gateway.dir().join("gateway.db");
    let holder = hold_write_lock(&database).await;

    send_requests(&gateway, 1500);
    let started = Instant::now();
    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(60))
        .expect("gateway exits after SIGTERM");
    let elapsed = started.elapsed();

    // A batch that began its 5s wait for the lock before the signal may finish it. Each
    // later batch would add 5s more without the stop's bound.
    assert!(
        elapsed < Duration::from_secs(6),
        "the stop took {elapsed:?}"
    );
    assert_eq!(status.code(), Some(1), "exit status {status}");
    let waiting = gateway
        .wait_for_line(&["waiting for the request log"], Duration::ZERO)
        .expect("line that says the stop waits for the request log");
    let queued = log_field(&waiting, "rows").expect("rows= in the waiting line");
    assert!(queued > 0, "{waiting}");
    let timed_out = gateway
        .wait_for_line(&["request log stop timed out"], Duration::ZERO)
        .expect("error that gives the rows left unwritten");
    let unwritten = log_field(&timed_out, "rows").expect("rows= in the error");
    assert!(unwritten > 0, "{timed_out}");
    let closed = gateway
        .wait_for_line(&["request log closed"], Duration::ZERO)
        .expect("closing line of the request log");
    assert_eq!(log_field(&closed, "unwritten"), Some(unwritten), "{closed}");
    assert_eq!(log_field(&closed, "written"), Some(0), "{closed}");
    // The rows lost at the stop are those left queued and those of the batch that was
    // waiting for the lock when the stop began, which fails during it.
    let failed = log_field(&closed, "failed").expect("failed= in the closing line");
    let stopped = gateway
        .wait_for_line(&["stopped, with request log rows lost"], Duration::ZERO)
        .expect("last line that counts the rows lost");
    let lost = log_field(&stopped, "lost_rows").expect("lost_rows= in the last line");
    assert!(lost >= unwritten, "{stopped}");
    assert!(lost <= unwritten + failed, "{stopped}");

    holder.close().await.expect("release the write lock");
}

/// A batch that waits for the lock when the stop begins fails during it. Its rows are lost at
/// the stop though none is left queued, so the exit status is 1.
#[tokio::test]
async fn stop_losing_batch_in_flight_exits_1() {
    let mock = MockProcess::start("Locked");
    let mut gateway = GatewayProcess::start(&quick_stop_config(&mock.url));
    let database = gateway.dir().join("gateway.db");
    let holder = hold_write_lock(&database).await;

    send_requests(&gateway, 20);
    // The batch of 20 rows leaves the queue within the flush interval of 1 s and waits for
    // the lock.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(60))
        .expect("gateway exits after SIGTERM");

    assert_eq!(status.code(), Some(1), "exit status {status}");
    let stopped = gateway
        .wait_for_line(&["stopped, with request log rows lost"], Duration::ZERO)
        .expect("last line that counts the rows lost");
    assert_eq!(log_field(&stopped, "lost_rows"), Some(20), "{stopped}");

    holder.close().await.expect("release the write lock");
}

/// Runs `apigateway` with `args` and returns its exit code and stderr, or fails after 30s.
fn run_gateway(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(binary("apigateway"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start apigateway");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait for apigateway").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("apigateway {args:?} still runs after 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("read output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts a gateway, sends it `requests` requests, stops it, and copies its log and its
/// configuration into a new folder, where they outlive the gateway's own folder. Returns the
/// folder, which contains `gateway.yaml` and `gateway.db`.
async fn stopped_log(requests: usize) -> tempfile::TempDir {
    let mock = MockProcess::start("Log");
    let mut gateway = GatewayProcess::start(&quick_stop_config(&mock.url));
    send_requests(&gateway, requests);
    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits after SIGTERM");
    assert!(status.success(), "exit status {status}");

    let dir = tempfile::tempdir().expect("temporary folder");
    std::fs::copy(
        gateway.dir().join("gateway.db"),
        dir.path().join("gateway.db"),
    )
    .expect("copy the log");
    let yaml = std::fs::read_to_string(gateway.config_path())
        .expect("read config")
        .replace(
            &gateway.dir().display().to_string(),
            &dir.path().display().to_string(),
        );
    std::fs::write(dir.path().join("gateway.yaml"), yaml).expect("write config");
    dir
}

/// Runs `--check` and then a start in `dir`, checks that both fail, and returns their stderr.
fn check_and_start(dir: &Path) -> (String, String) {
    let (code, checked) = run_gateway(&["--check", "--config", "gateway.yaml"], dir);
    assert_eq!(code, Some(2), "--check passed: {checked}");
    let (code, started) = run_gateway(&["--config", "gateway.yaml"], dir);
    assert_ne!(code, Some(0), "the start passed: {started}");
    (checked, started)
}

/// Returns the line of `output` that gives the request log's error, from the database path on,
/// which `--check` and the start print after different prefixes.
fn database_error<'a>(output: &'a str, database: &Path) -> &'a str {
    let path = database.display().to_string();
    let line = output
        .lines()
        .find(|line| line.contains(&path))
        .unwrap_or_else(|| panic!("no line names {path}: {output}"));
    let start = line.find("request log database").unwrap_or(0);
    &line[start..]
}

/// A log whose pages were overwritten passed `--check`, and the gateway served on it while
/// every batch failed. Both must now fail, with a message that names the file and the fix.
#[tokio::test]
async fn corrupt_log_fails_check_and_start() {
    let dir = stopped_log(3000).await;

    // Pages 3 and 4 of the default 4 KiB pages hold rows or index entries.
    let database = dir.path().join("gateway.db");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&database)
        .expect("open the log");
    file.seek(SeekFrom::Start(8192)).expect("seek to page 3");
    let noise: Vec<u8> = (0..8192u32).map(|i| (i * 131 + 7) as u8).collect();
    file.write_all(&noise).expect("overwrite pages 3 and 4");
    drop(file);

    let (checked, started) = check_and_start(dir.path());
    for output in [&checked, &started] {
        assert!(output.contains("is corrupt"), "{output}");
        assert!(output.contains(&database.display().to_string()), "{output}");
        assert!(output.contains("move the file away"), "{output}");
        assert!(output.contains(".recover"), "{output}");
    }
}

/// Each of these passed `--check` and then stopped the start, some with SQLite's own text or
/// with a fix meant for the command line. `--check` must fail with the start's message.
#[tokio::test]
async fn broken_logs_fail_check_as_start() {
    let cases = [
        (
            "failed migration",
            "UPDATE _sqlx_migrations SET success = 0 WHERE version = 2",
            "records schema migration 2 as failed",
        ),
        (
            "migrations without requests table",
            "DROP TABLE requests",
            "has no `requests` table",
        ),
        (
            "requests table without a column",
            "ALTER TABLE requests DROP COLUMN retried",
            "lacks the columns retried",
        ),
    ];
    for (case, sql, expected) in cases {
        let dir = stopped_log(10).await;
        let database = dir.path().join("gateway.db");
        let mut connection =
            SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&database))
                .await
                .expect("open the log");
        sqlx::query(sql)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{case}: {error}"));
        connection.close().await.expect("close the log");

        let (checked, started) = check_and_start(dir.path());
        let checked = database_error(&checked, &database);
        let started = database_error(&started, &database);
        assert_eq!(checked, started, "{case}");
        assert!(checked.contains(expected), "{case}: {checked}");
        assert!(checked.contains("move the file away"), "{case}: {checked}");
        assert!(!checked.contains("--database"), "{case}: {checked}");
    }
}

/// A lock that another process keeps for longer than the busy timeout of 5s fails both, with
/// a message that names the cause. Waits out that timeout twice.
#[tokio::test]
async fn locked_log_fails_check_as_start() {
    let dir = stopped_log(10).await;
    let database = dir.path().join("gateway.db");
    let holder = hold_write_lock(&database).await;

    let (checked, started) = check_and_start(dir.path());
    let checked = database_error(&checked, &database);
    let started = database_error(&started, &database);
    assert_eq!(checked, started);
    assert!(checked.contains("is locked"), "{checked}");
    assert!(checked.contains("another process"), "{checked}");

    holder.close().await.expect("release the write lock");
}
