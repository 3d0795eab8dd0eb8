//! A small HTTP/1.1 server that plays a backend service for the gateway's demos and tests.
//!
//! It echoes each request as JSON and lets the caller shape the response with knobs
//! (`delay`, `status`, `size`, `chunks`, `chunk_delay`), given as query parameters or
//! `X-Mock-*` headers. `/health` and `/_mock/stats` ignore the knobs.
//!
//! # Layout
//!
//! - `main`: command-line options, the runtime, listeners and signals.
//! - `fleet`: the three backends of the default gateway config, started with `--fleet`.
//! - `server`: binding a listener and serving its connections with hyper.
//! - `handler`: the routes (`/health`, `/_mock/stats`, echo) and the responses they build.
//! - `knobs`: reading the knobs from the query string and headers.
//! - `body`: the streamed response bodies.
//! - `shutdown`: the signals that stop the server.

mod body;
mod fleet;
mod handler;
mod knobs;
mod server;
mod shutdown;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use http::HeaderValue;
use tokio::task::JoinSet;

use crate::handler::Backend;
use crate::server::BindError;
use crate::shutdown::ShutdownSignals;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "mockserver",
    about = "Serve a mock backend that echoes each request as JSON",
    after_help = "Knobs (query parameter, or header; the query parameter wins):\n  \
        delay / X-Mock-Delay              wait this many milliseconds before responding\n  \
        status / X-Mock-Status            respond with this status code (200 to 599)\n  \
        size / X-Mock-Size                respond with a body of this many bytes of 'x'\n  \
        chunks / X-Mock-Chunks            respond with this many chunks (\"chunk i\\n\")\n  \
        chunk_delay / X-Mock-Chunk-Delay  wait this many milliseconds between chunks\n\n\
        /health and /_mock/stats ignore the knobs and always respond at once. To make health\n\
        checks slow or fail, point health_check.path at another path, such as /hc?delay=600."
)]
struct Args {
    /// IP address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,

    /// TCP port to listen on, or 0 to pick a free port.
    #[arg(long, required_unless_present = "fleet", conflicts_with = "fleet")]
    port: Option<u16>,

    /// Name reported in responses and in the `X-Mock-Server` header.
    #[arg(long, default_value = "mock", value_parser = parse_name, conflicts_with = "fleet")]
    name: String,

    /// Start UserService-1 on 9001, UserService-2 on 9002 and OrderService on 9003.
    #[arg(long)]
    fleet: bool,

    /// First port of the fleet, with the other members on the next ports. 0 gives each
    /// member a free port.
    #[arg(
        long,
        default_value_t = fleet::DEFAULT_BASE_PORT,
        value_parser = clap::value_parser!(u16).range(0..=i64::from(fleet::MAX_BASE_PORT)),
        requires = "fleet",
        // Without these, `--port` makes clap accept a missing `--fleet` and ignore this option.
        conflicts_with_all = ["port", "name"]
    )]
    fleet_base_port: u16,
}

/// Accepts a name only if it can be sent as the `X-Mock-Server` header value.
fn parse_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    HeaderValue::from_str(name)
        .map(|_| name.to_owned())
        .map_err(|_| "must be visible ASCII characters or spaces".to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();

    let plan: Vec<(String, SocketAddr)> = if args.fleet {
        fleet::members(args.fleet_base_port)
            .into_iter()
            .map(|(name, port)| (name.to_owned(), SocketAddr::new(args.host, port)))
            .collect()
    } else {
        // clap enforces `--port` unless `--fleet` is given.
        let port = args.port.unwrap_or_default();
        vec![(args.name, SocketAddr::new(args.host, port))]
    };

    let signals = match ShutdownSignals::register() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("mockserver: failed to register signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };

    match run(plan, signals).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mockserver: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Binds every listener in `plan`, prints one listening line for each, then serves them
/// until one of `signals` arrives.
///
/// # Errors
///
/// Returns the first address that failed to bind. Nothing is served in that case.
async fn run(
    plan: Vec<(String, SocketAddr)>,
    mut signals: ShutdownSignals,
) -> Result<(), BindError> {
    // Bind everything before printing, so a caller never sees a listening line from a
    // process that is about to exit.
    let mut bound = Vec::with_capacity(plan.len());
    for (name, addr) in plan {
        let (listener, local_addr) = server::bind(addr).await?;
        bound.push((Arc::new(Backend::new(name)), listener, local_addr));
    }

    let mut stdout = std::io::stdout().lock();
    for (backend, _, local_addr) in &bound {
        // Tests find the port by parsing this exact line, so keep its shape.
        let _ = writeln!(
            stdout,
            "{} listening on http://{local_addr}",
            backend.name()
        );
    }
    let _ = stdout.flush();
    drop(stdout);

    let mut servers = JoinSet::new();
    for (backend, listener, _) in bound {
        servers.spawn(server::serve(listener, backend));
    }

    let signal = signals.recv().await;
    eprintln!("mockserver: received {signal}, shutting down");

    // In-flight requests are cut off: a mock backend has nothing to drain.
    servers.abort_all();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        Args::command().debug_assert();
    }

    #[test]
    fn name_must_be_header_safe() {
        assert!(parse_name("").is_err());
        assert!(parse_name("bad\nname").is_err());
        assert_eq!(parse_name("UserService-1").as_deref(), Ok("UserService-1"));
    }
}
