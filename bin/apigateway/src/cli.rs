//! Command-line arguments.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

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
        default_value = "config/gateway.yaml",
        global = true
    )]
    pub config: PathBuf,

    /// Validate the configuration file, print `ok` or every problem, and exit.
    #[arg(long)]
    pub check: bool,

    /// Format of every log line, replacing `logging.format` from the configuration.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
