//! Helpers for the end-to-end tests: the real `apigateway` and `mockserver` binaries as child
//! processes on free loopback ports, and a small HTTP client.
//!
//! The binaries are found next to the test executable, in the target folder that
//! `cargo test --workspace` builds them into. Every child process is killed by its PID when its
//! handle is dropped, so a failing test leaves nothing running.
#![allow(missing_docs)]

mod admin;
mod client;
mod configs;
mod process;
mod raw;

pub use admin::{admin_backends, backend_state, start_slow_request, wait_for_health};
pub use client::{Reply, get, raw_request, request};
pub use configs::{log_config, quick_stop_config, route_yaml};
pub use process::{ConfigFile, GatewayProcess, MockProcess, binary, free_port};
pub use raw::{RawConnection, RawResponse};
