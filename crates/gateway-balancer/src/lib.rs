//! Backend pools: each backend's live state and the weighted round-robin pick that skips
//! unhealthy backends.
//!
//! All state here is atomics, so the request path, the health checker and the admin endpoints
//! share it without locks. Nothing here does I/O.
//!
//! # Layout
//!
//! - [`backend`]: [`Backend`], its URL and [`BackendState`] with the health state machine.
//! - [`pool`]: [`Pool`], a route's backends with their weights, the pick and the count of
//!   requests the route sent to each.

pub mod backend;
pub mod pool;

pub use backend::{Backend, BackendSnapshot, BackendState, HealthPolicy, InFlight, Transition};
pub use pool::{Pick, Pool};
