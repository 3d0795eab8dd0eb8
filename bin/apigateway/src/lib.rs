//! The API gateway assembled: the route table, the layer stack, the admin endpoints, the
//! listener with graceful shutdown, and the hook that logs each request.
//!
//! `main.rs` only parses arguments, loads the configuration, sets up logging and calls
//! [`serve`]. Tests call [`serve`] directly with a listener bound to port 0.
//!
//! # Layout
//!
//! - [`app`]: [`Gateway`], everything built once from the configuration.
//! - `router`: the innermost service, which handles admin paths and dispatches to routes.
//! - `admin`: `/health` and `/admin/*`.
//! - `access`: the timing hook that prints the access line and records the request.
//! - `shed`: closing idle connections when accepts run out of file descriptors.
//! - [`access_line`]: the access line's format and the thread that writes it to stdout.
//! - [`fd_limit`]: the open-file limit, raised at start, and the workers it allows.
//! - [`listen`]: binding the listen address, one listener per worker.
//! - [`server`]: the workers, their accept loops, connections, timeouts and draining.
//! - [`cli`]: command-line arguments.
//! - [`inspect`]: the `logs` and `stats` commands that read the request log.

pub mod access_line;
pub mod app;
pub mod cli;
pub mod fd_limit;
pub mod inspect;
pub mod listen;
pub mod resolve;
pub mod server;

mod access;
mod admin;
mod deadline;
pub mod router;
mod shed;

pub use access_line::AccessLines;
pub use app::{BuildError, Gateway};
pub use server::{
    ACCESS_FLUSH_TIMEOUT, InnerService, Router, ServeError, ServeOutcome, serve, serve_with,
    serve_workers,
};
