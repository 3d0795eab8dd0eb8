//! `apigateway logs` and `apigateway stats`: read the request log database from the command
//! line, with or without a running gateway.

use crate::cli::{DatabaseArgs, LogsArgs, StatsArgs};
use gateway_config::Config;
use gateway_store::{
    LogCursor, LogFilter, LogPage, LogReader, Stats, StatusFilter, StoreError, Summary, now_us,
    parse_since,
};
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The fix quoted by every message about an invalid stats window or a zero `since`.
const WINDOW_HINT: &str = "write a duration like 5m or 1h, or a start time with its zone \
     like 2025-01-31T12:00:00Z or 2025-01-31T13:00:00+01:00";

/// A failure of a read command.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The configuration file, needed for the database path, did not load.
    #[error(transparent)]
    Config(#[from] gateway_config::ConfigError),
    /// The database file is missing or is a folder.
    #[error("request log database {} ({origin}) {problem}", path.display())]
    Database {
        /// The path that was checked.
        path: PathBuf,
        /// Source of the path: `--database`, or `request_log.database` in a file.
        origin: String,
        /// The problem and its fix.
        problem: String,
    },
    /// A command-line value was invalid.
    #[error("{0}")]
    Argument(String),
    /// The database could not be read, or an argument was invalid.
    #[error(transparent)]
    Store(#[from] gateway_store::StoreError),
}

/// Returns the database to read and where its path came from.
fn database_path(
    config_path: &Path,
    args: &DatabaseArgs,
) -> Result<(PathBuf, String), InspectError> {
    match &args.database {
        Some(path) => Ok((path.clone(), "--database".to_owned())),
        None => Ok((
            Config::load(config_path)?.request_log.database,
            format!("request_log.database in {}", config_path.display()),
        )),
    }
}

/// Opens the database read-only after checking that the path is an existing file, because
/// SQLite's own message for a folder or a missing file does not say which.
async fn open_reader(config_path: &Path, args: &DatabaseArgs) -> Result<LogReader, InspectError> {
    let (path, origin) = database_path(config_path, args)?;
    let problem = match std::fs::metadata(&path) {
        Ok(metadata) if metadata.is_dir() => {
            Some("is a folder: pass the database file inside it, like --database data/gateway.db")
        }
        Err(error) if error.kind() == ErrorKind::NotFound => Some(
            "not found: start the gateway once with request_log.enabled to create it, or pass --database PATH",
        ),
        // SQLite reports other failures, such as a permission error, with the path.
        _ => None,
    };
    if let Some(problem) = problem {
        return Err(InspectError::Database {
            path,
            origin,
            problem: problem.to_owned(),
        });
    }
    Ok(LogReader::open(path).await?)
}

/// Parses a start time like [`parse_since`], and also accepts an RFC 3339 timestamp with a
/// numeric UTC offset (`2025-01-31T13:00:00+01:00`), converted to UTC.
///
/// # Errors
///
/// Returns [`StoreError::InvalidSince`] when `text` is neither a duration nor a timestamp.
pub(crate) fn parse_start_time(text: &str, now_us: i64) -> Result<i64, StoreError> {
    let text = text.trim();
    match split_utc_offset(text) {
        Some((local, offset_us)) => parse_since(&format!("{local}Z"), now_us)
            .map(|local_us| local_us - offset_us)
            .map_err(|_| StoreError::InvalidSince {
                value: text.to_owned(),
            }),
        None => parse_since(text, now_us),
    }
}

/// Splits a timestamp ending in `+HH:MM` or `-HH:MM` into the local time and the offset in
/// microseconds; `None` for anything else, such as a time that has a zone already.
fn split_utc_offset(text: &str) -> Option<(&str, i64)> {
    let at = text.len().checked_sub(6)?;
    let (local, offset) = (text.get(..at)?, text.get(at..)?);
    if !is_local_time(local) {
        return None;
    }
    let sign = match offset.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    // Two digits each, as RFC 3339 writes them: `+1:00` or `+01:000` is no offset.
    let [hour_tens, hour_ones, b':', minute_tens, minute_ones] = offset.as_bytes()[1..] else {
        return None;
    };
    let digits = [hour_tens, hour_ones, minute_tens, minute_ones];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |tens: u8, ones: u8| i64::from(tens - b'0') * 10 + i64::from(ones - b'0');
    let (hours, minutes) = (
        number(hour_tens, hour_ones),
        number(minute_tens, minute_ones),
    );
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((local, sign * (hours * 3600 + minutes * 60) * 1_000_000))
}

/// Returns whether `text` is a date and time without a zone: `YYYY-MM-DDTHH:MM:SS`, with an
/// optional fraction of a second.
fn is_local_time(text: &str) -> bool {
    if text.len() < 19 || text.as_bytes()[4] != b'-' {
        return false;
    }
    match text.get(19..) {
        Some("") => true,
        Some(rest) => rest.strip_prefix('.').is_some_and(|fraction| {
            !fraction.is_empty() && fraction.bytes().all(|b| b.is_ascii_digit())
        }),
        None => false,
    }
}

/// Rejects a duration of zero length as the value of the parameter `name`, because a time
/// range that ends where it starts matches no request.
///
/// # Errors
///
/// Returns the message for the client, naming `name`, when `value` is a zero duration.
pub(crate) fn reject_zero_duration(name: &str, value: &str) -> Result<(), String> {
    if humantime::parse_duration(value.trim()).is_ok_and(|duration| duration == Duration::ZERO) {
        return Err(format!(
            "invalid {name} {value:?}: it must be longer than zero, so {WINDOW_HINT}"
        ));
    }
    Ok(())
}

/// Parses a stats window, a duration back from now or a start time, into the start time in
/// microseconds since the Unix epoch.
///
/// # Errors
///
/// Returns the message for the client when the window is invalid or zero.
pub(crate) fn parse_window(window: &str, now_us: i64) -> Result<i64, String> {
    reject_zero_duration("window", window)?;
    parse_start_time(window, now_us)
        .map_err(|_| format!("invalid window {window:?}: {WINDOW_HINT}"))
}

/// Runs `apigateway logs` and returns what it prints.
///
/// # Errors
///
/// Returns [`InspectError`] for an unreadable configuration or database, or an invalid filter.
pub async fn logs(config_path: &Path, args: &LogsArgs) -> Result<String, InspectError> {
    let mut filter = LogFilter {
        limit: args.limit,
        route: args.route.clone(),
        ..LogFilter::default()
    };
    if let Some(status) = &args.status {
        filter.status = Some(status.parse::<StatusFilter>()?);
    }
    if let Some(since) = &args.since {
        reject_zero_duration("since", since).map_err(InspectError::Argument)?;
        filter.since_us = Some(parse_start_time(since, now_us())?);
    }
    if let Some(before) = &args.before {
        filter.before = Some(before.parse::<LogCursor>()?);
    }

    let reader = open_reader(config_path, &args.database).await?;
    let LogPage { entries, next } = reader.page(&filter).await?;
    reader.close().await;

    // The JSON output is a bare array of entries without `next`, the shape that scripts
    // already read. A caller builds the next cursor from the last entry's `ts_us` and `id`.
    if args.database.json {
        return Ok(serde_json::to_string_pretty(&entries).unwrap_or_default() + "\n");
    }
    let mut out = String::new();
    for entry in &entries {
        let _ = write!(
            out,
            "{} {} {} {} {:.3}ms {} {}",
            entry.timestamp,
            entry.status,
            entry.method,
            entry.path,
            entry.latency_us as f64 / 1000.0,
            entry.backend.as_deref().unwrap_or("-"),
            entry.client_ip.as_deref().unwrap_or("-"),
        );
        // The error kind distinguishes the gateway's own responses with one status, such as
        // 503 for no healthy backend and 503 for the gateway's own shortage.
        if let Some(kind) = &entry.error_kind {
            let _ = write!(out, " {kind}");
        }
        out.push('\n');
    }
    let noun = if entries.len() == 1 {
        "request"
    } else {
        "requests"
    };
    let _ = writeln!(out, "{} {noun}", entries.len());
    // A request's path is the likely mistake: the rows name the pattern the request matched.
    if entries.is_empty()
        && let Some(route) = &filter.route
        && !route.contains([':', '*'])
    {
        let _ = writeln!(
            out,
            "--route compares the route's pattern as configured, like /api/users/:id or \
             /api/*rest, not a request's path; no row has the pattern {route:?}"
        );
    }
    if let Some(next) = next {
        let _ = writeln!(out, "older requests match: run again with --before {next}");
    }
    Ok(out)
}

/// Runs `apigateway stats` and returns what it prints.
///
/// # Errors
///
/// Returns [`InspectError`] for an unreadable configuration or database, or an invalid window.
pub async fn stats(config_path: &Path, args: &StatsArgs) -> Result<String, InspectError> {
    let since = parse_window(&args.window, now_us()).map_err(InspectError::Argument)?;
    let reader = open_reader(config_path, &args.database).await?;
    let stats = reader.stats(since).await?;
    reader.close().await;

    if args.database.json {
        return Ok(serde_json::to_string_pretty(&stats).unwrap_or_default() + "\n");
    }
    Ok(stats_table(&stats))
}

fn stats_table(stats: &Stats) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "since {}", stats.since);
    let header = format!(
        "{:<40} {:>9} {:>7} {:>7} {:>10} {:>10} {:>10}",
        "", "requests", "4xx", "5xx", "p50 ms", "p95 ms", "p99 ms"
    );
    let _ = writeln!(out, "{header}");
    row(&mut out, "all", &stats.total);
    for route in &stats.routes {
        let name = route.route.as_deref().unwrap_or("(no route)");
        row(&mut out, &format!("route {name}"), &route.summary);
    }
    for backend in &stats.backends {
        let name = backend.backend.as_deref().unwrap_or("(no backend)");
        row(&mut out, &format!("backend {name}"), &backend.summary);
    }
    out
}

fn row(out: &mut String, name: &str, summary: &Summary) {
    let ms = |us: u64| us as f64 / 1000.0;
    let _ = writeln!(
        out,
        "{:<40} {:>9} {:>7} {:>7} {:>10.3} {:>10.3} {:>10.3}",
        name,
        summary.requests,
        summary.errors_4xx,
        summary.errors_5xx,
        ms(summary.latency_p50_us),
        ms(summary.latency_p95_us),
        ms(summary.latency_p99_us),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_split_from_timestamps() {
        assert_eq!(
            split_utc_offset("2025-01-31T13:00:00+01:00"),
            Some(("2025-01-31T13:00:00", 3_600_000_000))
        );
        assert_eq!(
            split_utc_offset("2025-01-31T13:00:00.25-00:30"),
            Some(("2025-01-31T13:00:00.25", -1_800_000_000))
        );
        for text in [
            "5m",
            "2025-01-31T13:00:00Z",
            "2025-01-31T13:00:00+24:00",
            "1h30m+01:00",
        ] {
            assert_eq!(split_utc_offset(text), None, "{text}");
        }
    }

    /// An offset is two digits, a colon and two digits, after a time without a zone, so
    /// these are rejected rather than read with part of them left out.
    #[test]
    fn malformed_offsets_are_rejected() {
        for text in [
            "2025-01-31T12:00:00Z+01:00",
            "2025-01-31T12:00:00++1:00",
            "2025-01-31T12:00:00+00:00+01:00",
            "2025-01-31T12:00:00-1:000",
            "2025-01-31T12:00:00.+01:00",
            "2025-01-31T12:00:00",
        ] {
            let error = parse_start_time(text, 0).unwrap_err();
            assert!(error.to_string().contains(text), "{error}");
        }
        let valid = parse_start_time("2025-01-31T13:00:00+01:00", 0).unwrap();
        assert_eq!(valid, parse_start_time("2025-01-31T12:00:00Z", 0).unwrap());
    }

    #[test]
    fn invalid_timestamp_with_offset_names_whole_value() {
        let error = parse_start_time("2025-13-45T13:00:00+01:00", 0).unwrap_err();
        assert!(
            error.to_string().contains("2025-13-45T13:00:00+01:00"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn invalid_before_is_rejected_before_open() {
        let args = |before: &str| LogsArgs {
            database: DatabaseArgs {
                database: Some(PathBuf::from("absent.db")),
                json: false,
            },
            since: None,
            route: None,
            status: None,
            before: Some(before.to_owned()),
            limit: 100,
        };
        for before in [
            "",
            "42",
            "1700000000000000.",
            "+1.2",
            "-1.5",
            "1.-5",
            "1.2.3",
        ] {
            let error = logs(Path::new("unused.yaml"), &args(before))
                .await
                .unwrap_err();
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("invalid cursor `{before}`")),
                "{message}"
            );
            assert!(message.contains("<ts_us>.<id>"), "{message}");
        }

        // A valid cursor passes, so the missing database is what fails.
        let error = logs(Path::new("unused.yaml"), &args("1700000000000000.42"))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("not found"), "{error}");
    }

    #[tokio::test]
    async fn folder_and_missing_database_are_named() {
        // The package's own folder exists, and nothing in it is named absent.db.
        let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let missing = folder.join("absent.db");
        for (path, problem) in [(folder, "is a folder"), (missing, "not found")] {
            let args = DatabaseArgs {
                database: Some(path.clone()),
                json: false,
            };
            let error = open_reader(Path::new("unused.yaml"), &args)
                .await
                .unwrap_err();
            let message = error.to_string();
            assert!(message.contains(problem), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
    }
}
