//! Command-line arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Configuration file read when `--config` is not given, relative to the working folder.
pub const DEFAULT_CONFIG: &str = "config/gateway.yaml";

/// An HTTP API gateway: routes, load balancing, health checks, rate limits, CORS and a
/// request log.
#[derive(Debug, Parser)]
#[command(name = "apigateway", version, about)]
pub struct Cli {
    /// Configuration file to load.
    #[arg(
        long,
        short,
        value_name = "PATH",
        default_value = DEFAULT_CONFIG,
        global = true
    )]
    pub config: PathBuf,

    /// Validate the configuration file, print `ok` or every problem, and exit.
    #[arg(long)]
    pub check: bool,

    /// Format of every log line, replacing `logging.format` from the configuration.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,

    /// Read the request log instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands that read the request log database, with or without a running gateway.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print recent requests, newest first.
    Logs(LogsArgs),
    /// Print request counts, errors and latency percentiles per route and backend.
    Stats(StatsArgs),
}

/// The location of the request log database, and the output format.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Database file; by default `request_log.database` from the configuration file.
    #[arg(long, value_name = "PATH")]
    pub database: Option<PathBuf>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `apigateway logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Only requests since this time: a duration back from now (`5m`, `1h`, longer than zero)
    /// or an RFC 3339 timestamp (`2025-01-31T12:00:00Z`, or with an offset like `+01:00`).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,

    /// Only requests of this route, written as in the configuration (`/api/users/*filepath`).
    #[arg(long, value_name = "PATH")]
    pub route: Option<String>,

    /// Only requests with this status (`404`) or status class (`5xx`).
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,

    /// Only requests older than this cursor, `<ts_us>.<id>`: the value that the previous page
    /// prints after `--before`, or the `ts_us` and `id` of its last entry.
    #[arg(long, value_name = "CURSOR")]
    pub before: Option<String>,

    /// Maximum number of requests printed, 1 to 10000.
    #[arg(
        long,
        default_value_t = 100,
        allow_negative_numbers = true,
        value_parser = parse_limit
    )]
    pub limit: u32,
}

/// Reads `--limit`: digits only, from 1 to 10000. Rust's integer parser also takes a leading
/// `+`, which `/admin/logs` rejects, so both read the same values.
fn parse_limit(text: &str) -> Result<u32, String> {
    Some(text)
        .filter(|text| text.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|text| text.parse().ok())
        .filter(|limit| (1..=10_000).contains(limit))
        .ok_or_else(|| "expected a whole number from 1 to 10000".to_owned())
}

/// Arguments of `apigateway stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Time window back from now, like `5m` or `1h` (longer than zero), or an RFC 3339 start
    /// time like `2025-01-31T12:00:00Z`.
    #[arg(long, default_value = "5m", value_name = "WINDOW")]
    pub window: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
