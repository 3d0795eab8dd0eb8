//! `apigateway logs` and `apigateway stats`: read the request log database from the command
//! line, with or without a running gateway.

use crate::cli::{DatabaseArgs, LogsArgs, StatsArgs};
use gateway_config::Config;
use gateway_store::{LogFilter, LogReader, Stats, StatusFilter, Summary, now_us, parse_since};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A failure of a read command.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The configuration file, needed for the database path, did not load.
    #[error(transparent)]
    Config(#[from] gateway_config::ConfigError),
    /// The database could not be read, or an argument was invalid.
    #[error(transparent)]
    Store(#[from] gateway_store::StoreError),
}

fn database_path(config_path: &Path, args: &DatabaseArgs) -> Result<PathBuf, InspectError> {
    match &args.database {
        Some(path) => Ok(path.clone()),
        None => Ok(Config::load(config_path)?.request_log.database),
    }
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
        filter.since_us = Some(parse_since(since, now_us())?);
    }

    let reader = LogReader::open(database_path(config_path, &args.database)?).await?;
    let entries = reader.recent(&filter).await?;
    reader.close().await;

    if args.database.json {
        return Ok(serde_json::to_string_pretty(&entries).unwrap_or_default() + "\n");
    }
    let mut out = String::new();
    for entry in &entries {
        let _ = writeln!(
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
    }
    let _ = writeln!(out, "{} requests", entries.len());
    Ok(out)
}

/// Runs `apigateway stats` and returns what it prints.
///
/// # Errors
///
/// Returns [`InspectError`] for an unreadable configuration or database, or an invalid window.
pub async fn stats(config_path: &Path, args: &StatsArgs) -> Result<String, InspectError> {
    let since = parse_since(&args.window, now_us())?;
    let reader = LogReader::open(database_path(config_path, &args.database)?).await?;
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
