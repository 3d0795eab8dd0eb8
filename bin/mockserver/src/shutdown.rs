//! The signals that stop the server: Ctrl-C (SIGINT) and, on Unix, SIGTERM.

use std::io;

/// Signal handlers, registered before the listening lines are printed, so that a signal sent
/// right after a caller reads them is handled instead of killing the process.
pub(crate) struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Registers the handlers.
    ///
    /// # Errors
    ///
    /// Returns the operating system's error when a handler cannot be registered.
    pub(crate) fn register() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};

            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }

        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Waits for the first signal and returns its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }

        // NOTE: on other systems the Ctrl-C handler is registered only here, after the
        // listening lines, and an error from it is treated as the signal.
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
