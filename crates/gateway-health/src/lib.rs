//! Active health checks: one probe task per backend that marks it healthy or unhealthy.
//!
//! Each task sends `GET {backend URL}{path}` every `interval` and records the result on the
//! backend through [`gateway_balancer::Backend`], whose thresholds decide when its health
//! changes. Failed forwards on the request path feed the same counters.
//!
//! # Layout
//!
//! - [`checker`]: [`spawn`], which starts the tasks, and [`HealthTasks`], which waits for them.
//! - `probe`: one probe over the shared HTTP client, and the errors that fail it.

#![warn(missing_docs)]

pub mod checker;
mod probe;

pub use checker::{HealthTasks, spawn};
