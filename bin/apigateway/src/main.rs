//! The `apigateway` command: loads the configuration, sets up logging and serves until a stop
//! signal.

use apigateway::access_line::{RawStdout, ReportingStdout};
use apigateway::cli::{Cli, Command, DEFAULT_CONFIG, LogFormatArg};
use apigateway::inspect::InspectError;
use apigateway::{ACCESS_FLUSH_TIMEOUT, AccessLines, Gateway, ServeError, serve_workers};
use apigateway::{fd_limit, resolve};
use clap::Parser;
use gateway_config::{Config, ConfigError, LogFormat};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

// The request path allocates and frees small buffers and header values from several tasks;
// mimalloc's thread-local free lists make that cheaper than the system allocator. Its `no_thp`
// feature keeps it from asking for transparent huge pages, which cost about 13 MB of resident
// memory for a heap that stays small (peak RSS with every feature on: 30.6 MB against 17.6 MB).
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
            if let Some(hint) = config_hint(&cli.config, &error) {
                eprintln!("  hint: {hint}");
            }
            return ExitCode::from(2);
        }
    };
    // The filter syntax belongs to tracing-subscriber, which the config crate does not use, so
    // this one field is checked here, for --check and serving alike.
    if let Err(message) = parse_log_filter(&config.logging.level) {
        eprintln!(
            "apigateway: {}: logging.level: {message}",
            cli.config.display()
        );
        return ExitCode::from(2);
    }
    // Raised before the worker count is checked, because the count is held to the raised
    // limit.
    let limit = fd_limit::raise();
    if let Some(limit) = limit
        && limit < fd_limit::MINIMUM
    {
        eprintln!(
            "apigateway: the open-file limit is {limit}, below the {} descriptors the gateway \
             needs to start with room for a few connections: raise the hard limit (ulimit -Hn, \
             or LimitNOFILE in a systemd unit)",
            fd_limit::MINIMUM
        );
        return ExitCode::from(2);
    }
    let fitted = fit_workers(&config, limit);
    let workers = match fitted {
        Ok(fitted) => fitted,
        Err(message) => {
            eprintln!("apigateway: {}: {message}", cli.config.display());
            return ExitCode::from(2);
        }
    };
    if cli.check {
        // Serving takes RUST_LOG over logging.level, so --check reads it too.
        if let Ok(value) = std::env::var("RUST_LOG")
            && !value.is_empty()
            && let Err(message) = parse_log_filter(&value)
        {
            eprintln!("apigateway: RUST_LOG: {message}");
            return ExitCode::from(2);
        }
        // A name that does not resolve, or an address of another machine, passes the field's
        // syntax check, yet stops the start.
        if let Err(message) = check_listen_address(&config.server.host, config.server.port) {
            eprintln!("apigateway: {}: {message}", cli.config.display());
            return ExitCode::from(2);
        }
        if config.request_log.enabled
            && let Err(message) = check_request_log(&config.request_log.database)
        {
            eprintln!(
                "apigateway: {}: request_log.database: {message}",
                cli.config.display(),
            );
            return ExitCode::from(2);
        }
        for warning in config.warnings() {
            eprintln!("apigateway: {}: warning: {warning}", cli.config.display());
        }
        if let Some(limit) = workers.lowered_for {
            eprintln!(
                "apigateway: warning: {}",
                lowered_workers_message(config.server.worker_count(), workers.count, limit)
            );
        }
        for unresolved in resolve::unresolved_backends(&config, resolve::LOOKUP_TIMEOUT) {
            eprintln!(
                "apigateway: {}: warning: {unresolved}",
                cli.config.display()
            );
        }
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }

    let format = match cli.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => config.logging.format,
    };
    match init_logging(format, &config.logging.level) {
        Ok(guard) => *LOG_GUARD.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard),
        Err(message) => {
            eprintln!("apigateway: RUST_LOG: {message}");
            return ExitCode::from(2);
        }
    };
    gateway_middleware::catch_panic::install_panic_hook();

    for warning in config.warnings() {
        tracing::warn!(
            config = %cli.config.display(),
            field = %warning.field,
            warning = %warning.message,
            "configuration setting has no effect or is risky"
        );
    }
    let mut config = config;
    if let Some(limit) = workers.lowered_for {
        tracing::warn!(
            cores = config.server.worker_count(),
            workers = workers.count,
            open_file_limit = limit,
            "{}",
            LOWERED_WORKERS
        );
    }
    config.server.workers = Some(workers.count);
    warn_unresolved_backends(&config, &cli.config);
    let (code, stdout_blocked) = serve_config(config, &cli.config, format);
    if stdout_blocked {
        // The log writer thread is stuck on the same stdout: waiting for it would only add
        // its own timeout to the stop.
        abandon_log();
    } else {
        flush_log();
    }
    code
}

/// Starts the access line writer and the runtime, and serves `config` until a stop signal.
/// Returns the exit code and whether stdout blocked the access lines at the stop.
fn serve_config(config: Config, config_path: &Path, format: LogFormat) -> (ExitCode, bool) {
    // Access lines bypass the subscriber, so its filter is asked once here: a directive that
    // silences the `access` target (`access=off`) turns them off. The level alone does not.
    let access_lines =
        if config.logging.access_log && tracing::enabled!(target: "access", tracing::Level::INFO) {
            match AccessLines::start(format, RawStdout) {
                Ok(lines) => Some(lines),
                Err(error) => {
                    tracing::error!(%error, "failed to start the access log writer thread");
                    return (ExitCode::FAILURE, false);
                }
            }
        } else {
            None
        };

    let workers = config.server.worker_count();
    // The calling thread runs the first worker and the tasks the workers share. Each other
    // worker gets a thread and a runtime of its own (see `serve_workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "failed to start the async runtime");
            return (ExitCode::FAILURE, false);
        }
    };

    let code = runtime.block_on(run(config, config_path, workers, access_lines.clone()));
    // `serve` has drained or ended every connection and flushed the access lines. A flush it
    // gave up on may still run on a blocking thread, which gets the same bound.
    runtime.shutdown_timeout(ACCESS_FLUSH_TIMEOUT);
    let stdout_blocked = access_lines.is_some_and(|lines| lines.stdout_blocked());
    (code, stdout_blocked)
}

async fn run(
    config: Config,
    config_path: &Path,
    workers: usize,
    access_lines: Option<AccessLines>,
) -> ExitCode {
    // Before the listener exists, so that no client can see a SIGHUP end the process.
    ignore_hangup();
    let host = config.server.host.clone();
    let port = config.server.port;
    let database = config.request_log.database.clone();
    let gateway = match Gateway::new(config) {
        Ok(gateway) => match access_lines.clone() {
            Some(lines) => Arc::new(gateway.with_access_lines(lines)),
            None => Arc::new(gateway),
        },
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "failed to build the gateway");
            return ExitCode::FAILURE;
        }
    };
    // Resolved apart from the bind, so that a name that does not resolve is reported as the
    // configuration error it is.
    let addresses = match resolve_listen_address(&host, port) {
        Ok(addresses) => addresses,
        Err(message) => {
            eprintln!("apigateway: {}: {message}", config_path.display());
            return ExitCode::from(2);
        }
    };
    let listeners = match apigateway::listen::bind(&addresses, workers) {
        Ok(listeners) => listeners,
        Err(error) => {
            eprintln!(
                "apigateway: {}: {}",
                config_path.display(),
                bind_error_message(&host, port, &error)
            );
            // A port in use by another process may be free on the next try. The other causes
            // are in the configuration.
            return if error.kind() == ErrorKind::AddrInUse {
                ExitCode::FAILURE
            } else {
                ExitCode::from(2)
            };
        }
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), workers, "starting");

    let (first_signal_tx, first_signal_rx) = tokio::sync::oneshot::channel();
    let signalled = Arc::clone(&gateway);
    // Set at the second signal. The exit status is then 130, whichever of the signal task and
    // the server's own stop ends the process.
    let stopped_at_once = Arc::new(AtomicBool::new(false));
    let second_signal = Arc::clone(&stopped_at_once);
    tokio::spawn(async move {
        let name = wait_for_signal().await;
        tracing::info!(
            signal = name,
            "stop signal received, draining; send it again to stop at once"
        );
        let _ = first_signal_tx.send(());
        let first_at = std::time::Instant::now();
        let name = loop {
            let name = wait_for_signal().await;
            if first_at.elapsed() >= REPEATED_SIGNAL_WINDOW {
                break name;
            }
            tracing::debug!(
                signal = name,
                "stop signal repeated within {REPEATED_SIGNAL_WINDOW:?} of the first, taken as \
                 the same stop"
            );
        };
        tracing::warn!(
            signal = name,
            "second stop signal received, stopping at once"
        );
        second_signal.store(true, Ordering::Relaxed);
        // Requests still in flight are ended as the drain deadline ends them, so that they
        // get their rows and lines. Those and the rows of finished requests are still
        // written, briefly.
        if !signalled
            .cut_off_requests(SECOND_SIGNAL_CUT_OFF_TIMEOUT)
            .await
        {
            tracing::warn!(
                timeout = ?SECOND_SIGNAL_CUT_OFF_TIMEOUT,
                "in-flight requests not ended at the second stop signal, so they have no rows"
            );
        }
        if !signalled
            .commit_request_log(SECOND_SIGNAL_COMMIT_TIMEOUT)
            .await
        {
            tracing::warn!(
                rows = signalled.queued_request_log_rows(),
                timeout = ?SECOND_SIGNAL_COMMIT_TIMEOUT,
                "request log rows still queued at the second stop signal are lost"
            );
        } else if let Some((dropped, failed)) = signalled.request_log_losses() {
            // The writer's own closing line never comes: the process exits below.
            if dropped > 0 || failed > 0 {
                tracing::warn!(
                    dropped,
                    failed,
                    "request log closed at the second stop signal with rows lost: `failed` \
                     rows were in batches that did not commit, `dropped` rows found the queue \
                     full"
                );
            } else {
                tracing::info!(
                    dropped,
                    failed,
                    "request log closed at the second stop signal, every queued row committed"
                );
            }
        }
        let stdout_blocked =
            access_lines.is_some_and(|lines| !lines.flush(SECOND_SIGNAL_FLUSH_TIMEOUT));
        if stdout_blocked {
            abandon_log();
        } else {
            flush_log();
        }
        std::process::exit(130);
    });

    let shutdown = async {
        let _ = first_signal_rx.await;
    };
    let served = serve_workers(listeners, gateway, shutdown).await;
    if served.is_ok() && stopped_at_once.load(Ordering::Relaxed) {
        return ExitCode::from(130);
    }
    match served {
        Ok(outcome) if outcome.is_clean() => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Ok(outcome) if outcome.cut_off > 0 => {
            tracing::warn!(
                cut_off = outcome.cut_off,
                lost_rows = outcome.lost_rows,
                "stopped, with requests cut off at the drain deadline"
            );
            ExitCode::FAILURE
        }
        Ok(outcome) => {
            tracing::warn!(
                lost_rows = outcome.lost_rows,
                "stopped, with request log rows lost: they were still queued when the \
                 shutdown timeout passed, or in batches that failed during the stop"
            );
            ExitCode::FAILURE
        }
        Err(ServeError::RequestLog(error)) => {
            // Most store errors name the file already.
            let mut message = error_chain(&error);
            let database = database.display().to_string();
            if !message.contains(&database) {
                message = format!("{database}: {message}");
            }
            eprintln!(
                "apigateway: {}: request_log.database: {message}",
                config_path.display(),
            );
            ExitCode::from(2)
        }
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "server failed");
            ExitCode::FAILURE
        }
    }
}

/// The worker count that serving uses.
struct Workers {
    count: usize,
    /// The open-file limit, when it lowered the default of one worker per core.
    lowered_for: Option<u64>,
}

/// Keeps the worker count within what the open-file limit allows, `limit` being the limit
/// once raised to the hard one (see `fd_limit`). A `server.workers` above that is an error
/// that names the field and the fix. The default of one worker per core is lowered to fit
/// instead.
fn fit_workers(config: &Config, limit: Option<u64>) -> Result<Workers, String> {
    let server = &config.server;
    let count = server.worker_count();
    let Some(limit) = limit else {
        return Ok(Workers {
            count,
            lowered_for: None,
        });
    };
    // Each worker keeps idle connections to every backend when pooling is on.
    let pooled_backends = if config.proxy.pool_max_idle_per_backend > 0 {
        let urls: std::collections::HashSet<&str> = config
            .routes
            .iter()
            .flat_map(|route| &route.backends)
            .map(|backend| backend.url.as_str())
            .collect();
        urls.len()
    } else {
        0
    };
    let allowed = fd_limit::max_workers(limit, pooled_backends);
    if count <= allowed {
        return Ok(Workers {
            count,
            lowered_for: None,
        });
    }
    if server.workers.is_none() {
        return Ok(Workers {
            count: allowed,
            lowered_for: Some(limit),
        });
    }
    let per_worker = fd_limit::per_worker(pooled_backends);
    let needed = u64::try_from(count)
        .unwrap_or(u64::MAX)
        .saturating_mul(per_worker);
    Err(format!(
        "server.workers: {count} workers keep about {needed} file descriptors open ({per_worker} each: \
         {} of their own and an idle connection to each of {pooled_backends} backends), more \
         than half of the {limit} this process may open: set server.workers to {allowed} or \
         less, or raise the hard open-file limit (ulimit -Hn, or LimitNOFILE in a systemd unit)",
        fd_limit::PER_WORKER
    ))
}

/// Resolves the listen address. A (host, port) pair takes IPv6 addresses such as `::`
/// unbracketed, and names through the system's resolver. The error names the field and the
/// fix.
fn resolve_listen_address(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(host, port));
    match resolved.map(Iterator::collect::<Vec<_>>) {
        Ok(addresses) if !addresses.is_empty() => Ok(addresses),
        Ok(_) => Err(format!(
            "server.host: {host} resolves to no address: set server.host to an IP address \
             such as 0.0.0.0 or 127.0.0.1, or to a name this machine resolves"
        )),
        Err(error) => Err(format!(
            "server.host: cannot resolve {host}: {error}: set server.host to an IP address \
             such as 0.0.0.0 or 127.0.0.1, or to a name this machine resolves"
        )),
    }
}

/// Looks up the backends' host names on a thread of its own, so that a slow resolver does not
/// hold up the start, and logs a warning for each that does not resolve.
fn warn_unresolved_backends(config: &Config, config_path: &Path) {
    let config = config.clone();
    let config_path = config_path.display().to_string();
    let _ = std::thread::Builder::new()
        .name("resolve".to_owned())
        .spawn(move || {
            for unresolved in resolve::unresolved_backends(&config, resolve::LOOKUP_TIMEOUT) {
                tracing::warn!(
                    config = %config_path,
                    field = %unresolved.field,
                    host = %unresolved.host,
                    error = %unresolved.error,
                    "backend host name does not resolve, so requests to it fail until it does"
                );
            }
        });
}

/// The warning logged when the open-file limit lowers the default worker count.
const LOWERED_WORKERS: &str = "fewer workers than CPU cores, so that their own file descriptors \
     take at most half of the open-file limit: raise the hard limit (ulimit -Hn, or \
     LimitNOFILE in a systemd unit) for one worker per core";

/// Returns [`LOWERED_WORKERS`] with the counts, as `--check` prints it.
fn lowered_workers_message(cores: usize, workers: usize, limit: u64) -> String {
    format!("{LOWERED_WORKERS} (cores={cores} workers={workers} open_file_limit={limit})")
}

/// Checks that `host` resolves to addresses of this machine, by binding each to a free port.
/// The configured port is left alone, so a running gateway on it does not fail the check.
fn check_listen_address(host: &str, port: u16) -> Result<(), String> {
    for address in resolve_listen_address(host, port)? {
        let probe = SocketAddr::new(address.ip(), 0);
        if let Err(error) = std::net::TcpListener::bind(probe)
            && error.kind() == ErrorKind::AddrNotAvailable
        {
            return Err(bind_error_message(host, port, &error));
        }
    }
    Ok(())
}

/// Describes a failure to bind `host`:`port`, naming the fields to change. Only an address
/// already in use suggests another process, because other errors have other causes.
fn bind_error_message(host: &str, port: u16, error: &std::io::Error) -> String {
    let address = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{host}:{port}"),
    };
    let hint = match error.kind() {
        ErrorKind::AddrInUse => format!(
            "another process is using port {port}: stop it, or set server.port to a free port"
        ),
        ErrorKind::PermissionDenied if port < 1024 => {
            format!("port {port} needs extra privileges: set server.port to 1024 or above")
        }
        _ if gateway_proxy::client::is_resource_shortage(error) => {
            return format!(
                "server.workers: failed to bind the listener to {address}: {error}: the process \
                 is out of file descriptors or memory, so lower server.workers or raise the hard \
                 open-file limit (ulimit -Hn, or LimitNOFILE in a systemd unit)"
            );
        }
        ErrorKind::AddrNotAvailable => format!(
            "{host} is not an address of this machine: set server.host to one, like 0.0.0.0 or 127.0.0.1"
        ),
        _ => "check server.host and server.port".to_owned(),
    };
    format!("server.host, server.port: failed to bind the listener to {address}: {error}: {hint}")
}

/// Returns a hint for a configuration file that does not exist or is a folder.
fn config_hint(path: &Path, error: &ConfigError) -> Option<String> {
    let ConfigError::Read { source, .. } = error else {
        return None;
    };
    match source.kind() {
        ErrorKind::NotFound if path == Path::new(DEFAULT_CONFIG) => {
            Some("run from the repository root or pass --config PATH".to_owned())
        }
        ErrorKind::NotFound => Some("check the path given to --config".to_owned()),
        ErrorKind::IsADirectory => {
            let inside = path.join("gateway.yaml");
            if inside.is_file() {
                Some(format!(
                    "{} is a folder: pass the configuration file in it, --config {}",
                    path.display(),
                    inside.display()
                ))
            } else {
                Some(format!(
                    "{} is a folder: pass the YAML configuration file itself with --config PATH",
                    path.display()
                ))
            }
        }
        _ => None,
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
            if let InspectError::Config(error) = &error
                && let Some(hint) = config_hint(&cli.config, error)
            {
                eprintln!("  hint: {hint}");
            }
            ExitCode::from(2)
        }
    }
}

/// Waits for SIGINT or SIGTERM and returns its name.
/// Keeps SIGHUP from ending the process, which is its default action. Operators send it
/// expecting a configuration reload, and a closed terminal sends it too. The gateway does not
/// reload its configuration, so it logs a warning and keeps serving.
fn ignore_hangup() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::warn!(
                    signal = "SIGHUP",
                    "signal ignored: the configuration is not reloaded, restart the gateway \
                     to apply changes"
                );
            }
        });
    }
}

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

/// The log writer thread's guard, kept here rather than on `main`'s stack so that an exit
/// without unwinding can still write the queued log lines through [`flush_log`].
static LOG_GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Writes the log lines still queued for stdout and stops the log writer thread. Later log
/// lines are lost, so this runs just before the process exits.
fn flush_log() {
    // Dropping the guard waits, for a bounded time, until the writer thread has written
    // every queued line.
    let guard = LOG_GUARD
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    drop(guard);
    apigateway::access_line::report_lost_log_lines();
}

/// Leaves the log writer thread and its queued lines to end with the process, without waiting.
fn abandon_log() {
    let guard = LOG_GUARD
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    // Dropping the guard would wait for the stuck thread. The process exits right after.
    std::mem::forget(guard);
}

/// Checks the request log database as the start would, without changing it, and returns the
/// error message when the start would fail.
fn check_request_log(database: &Path) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("failed to start the runtime for the check: {error}"))?;
    runtime
        .block_on(gateway_store::check_database(database))
        .map_err(|error| error_chain(&error))
}

/// A stop signal this soon after the first is the same stop, not the second that stops at
/// once. GNU `timeout` sends its signal to the gateway and then to the whole process group,
/// so the gateway gets it twice within a millisecond. A person pressing Ctrl-C twice takes
/// longer than this.
const REPEATED_SIGNAL_WINDOW: Duration = Duration::from_millis(100);

/// Maximum time a second stop signal waits for the server to end the requests in flight.
const SECOND_SIGNAL_CUT_OFF_TIMEOUT: Duration = Duration::from_millis(200);

/// Maximum time a second stop signal waits for queued request log rows to be committed.
const SECOND_SIGNAL_COMMIT_TIMEOUT: Duration = Duration::from_millis(500);

/// Maximum time a second stop signal waits for buffered access lines before the process exits.
const SECOND_SIGNAL_FLUSH_TIMEOUT: Duration = Duration::from_millis(200);

/// Size of the buffer between the log writer thread and stdout.
const STDOUT_BUFFER_BYTES: usize = 64 * 1024;

/// Parses a log filter in `RUST_LOG` syntax, the syntax of `logging.level`.
///
/// That syntax reads a bare word as a target to log at every level, so a misspelled level
/// (`warning`, `infoo`) would log only that target, which is nothing. A bare word must be a
/// level here (a name, or 0 to 5); a target is written with its level, as
/// `gateway_proxy=trace`. Spaces around directives are dropped, since the syntax would read
/// them as part of a target, and an empty filter is rejected, since it logs nothing.
fn parse_log_filter(text: &str) -> Result<EnvFilter, String> {
    const LEVELS: [&str; 12] = [
        "error", "warn", "info", "debug", "trace", "off", "0", "1", "2", "3", "4", "5",
    ];
    let directives: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(format!(
            "invalid log filter {text:?}: it is empty, so nothing would be logged: write a level \
             like info"
        ));
    }
    let bare_word = directives.iter().find(|directive| {
        !directive.contains(['=', '['])
            && !LEVELS
                .iter()
                .any(|level| directive.eq_ignore_ascii_case(level))
    });
    if let Some(word) = bare_word {
        return Err(format!(
            "invalid log filter {text:?}: {word:?} is not a level: write one of error, warn, \
             info, debug, trace or off, or a target with its level like gateway_proxy=debug"
        ));
    }
    EnvFilter::try_new(directives.join(",")).map_err(|error| {
        format!(
            "invalid log filter {text:?} ({error}): write a level like info or debug, or directives like info,gateway_proxy=debug"
        )
    })
}

/// Returns whether the log filter `text` has a directive for the `access` target, such as
/// `access=off`.
fn names_access_target(text: &str) -> bool {
    text.split(',')
        .map(str::trim)
        .any(|directive| directive.starts_with("access=") || directive.starts_with("access["))
}

/// Installs the global subscriber with the filter from `RUST_LOG`, or `level` when it is unset.
///
/// # Errors
///
/// Returns a message when `RUST_LOG` is not a valid filter.
fn init_logging(
    format: LogFormat,
    level: &str,
) -> Result<tracing_appender::non_blocking::WorkerGuard, String> {
    let text = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => value,
        _ => level.to_owned(),
    };
    let mut filter = parse_log_filter(&text)?;
    // Access lines follow `logging.access_log`, not the level, as NGINX's access log is apart
    // from its error log's level. Only a directive for the `access` target changes them.
    if !names_access_target(&text)
        && let Ok(directive) = "access=info".parse()
    {
        filter = filter.add_directive(directive);
    }

    // Log lines go through a writer thread, so a request task never blocks on stdout. The
    // thread writes each batch of queued lines through one buffer and flushes it when the
    // queue is empty, so a busy gateway makes one write per batch instead of one per line.
    let stdout = std::io::BufWriter::with_capacity(STDOUT_BUFFER_BYTES, ReportingStdout::new());
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
