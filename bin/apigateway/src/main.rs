//! The `apigateway` command: loads the configuration, sets up logging and serves until a stop
//! signal.

use apigateway::cli::{Cli, Command, LogFormatArg};
use apigateway::{Gateway, serve};
use clap::Parser;
use gateway_config::{Config, LogFormat};
use std::process::ExitCode;
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

// The request path allocates and frees small buffers and header values from several tasks;
// mimalloc's thread-local free lists make that cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = &cli.command {
        return inspect(&cli, command);
    }

    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("apigateway: {error}");
            print_sources(&error);
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }

    let format = match cli.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => config.logging.format,
    };
    let _log_guard = match init_logging(format, &config.logging.level) {
        Ok(guard) => guard,
        Err(message) => {
            eprintln!(
                "apigateway: {}: logging.level: {message}",
                cli.config.display()
            );
            return ExitCode::from(2);
        }
    };
    gateway_middleware::catch_panic::install_panic_hook();

    let workers = config
        .server
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "failed to start the async runtime");
            return ExitCode::FAILURE;
        }
    };

    runtime.block_on(run(config, workers))
}

async fn run(config: Config, workers: usize) -> ExitCode {
    let address = format!("{}:{}", config.server.host, config.server.port);
    let gateway = match Gateway::new(config) {
        Ok(gateway) => Arc::new(gateway),
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "failed to build the gateway");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&address).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%address, %error, "failed to bind the listener; is another process using the port?");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), workers, "starting");

    let (first_signal_tx, first_signal_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let name = wait_for_signal().await;
        tracing::info!(
            signal = name,
            "stop signal received, draining; send it again to stop at once"
        );
        let _ = first_signal_tx.send(());
        let name = wait_for_signal().await;
        tracing::warn!(
            signal = name,
            "second stop signal received, stopping at once"
        );
        std::process::exit(130);
    });

    let shutdown = async {
        let _ = first_signal_rx.await;
    };
    match serve(listener, gateway, shutdown).await {
        Ok(outcome) if outcome.is_clean() => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs `logs` or `stats` and prints the result.
fn inspect(cli: &Cli, command: &Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("apigateway: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Logs(args) => apigateway::inspect::logs(&cli.config, args).await,
            Command::Stats(args) => apigateway::inspect::stats(&cli.config, args).await,
        }
    });
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("apigateway: {}", error_chain(&error));
            ExitCode::from(2)
        }
    }
}

/// Waits for SIGINT or SIGTERM and returns its name.
async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            std::future::pending::<()>().await;
            return "none";
        };
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}

/// Size of the buffer between the log writer thread and stdout.
const STDOUT_BUFFER_BYTES: usize = 64 * 1024;

fn init_logging(
    format: LogFormat,
    level: &str,
) -> Result<tracing_appender::non_blocking::WorkerGuard, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(value),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|error| format!("invalid log filter ({error}): write a level like info or debug"))?;

    // Log lines go through a writer thread, so a request task never blocks on stdout. The
    // thread writes each batch of queued lines through one buffer and flushes it when the
    // queue is empty, so a busy gateway makes one write per batch instead of one per line.
    let stdout = std::io::BufWriter::with_capacity(STDOUT_BUFFER_BYTES, std::io::stdout());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(stdout);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(guard)
}

fn print_sources(error: &dyn std::error::Error) {
    let mut source = error.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}

/// Joins an error and its sources with ": ", skipping a source whose message the text already
/// contains, since some errors print their source themselves.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}
