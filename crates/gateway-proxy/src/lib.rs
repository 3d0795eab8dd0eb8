//! The proxy: the route table, header rules, pooled backend connections and forwarding with
//! streamed bodies.
//!
//! A request reaches [`Forward`] after the gateway matched its route with [`RouteTable`]. The
//! forwarder picks a backend from the route's pool, rewrites the headers, sends the request on a
//! pooled connection and streams the response back as a [`ProxyBody`]. Every failure becomes a
//! [`ProxyError`] that records which side failed, and [`ProxyError::status`] maps it to a status.
//!
//! # Layout
//!
//! - [`routes`]: the compiled route table and the per-route settings.
//! - [`headers`]: hop-by-hop and forwarding headers, applied as the request head is written.
//! - [`client`]: backend connections, pooled per worker and backend, read and written by the
//!   request's own task.
//! - `codec` and `chunked`: the HTTP/1.1 request head, response head and chunked body on the
//!   backend side.
//! - [`server`]: the client side of HTTP/1.1, one connection's loop of request heads,
//!   request bodies and responses.
//! - [`forward`]: the per-route forwarding service and its retry.
//! - [`body`]: the response body type shared with the middleware.
//! - [`error`]: [`ProxyError`] and the JSON error response.
//! - `field_name`: header names read from a head, with the common ones found first.
//! - `header_pool`: emptied header maps kept per thread for the next heads.
//! - [`short_copy`]: appending short strings to a head or a log line without a call to
//!   `memcpy`.
//! - [`socket`]: socket reads and writes made as direct system calls.
//! - [`clock`]: the coarse clock that timeouts and idle times are read from.
//! - [`worker`]: the worker index of the calling thread, which picks its backend pools.
#![warn(missing_docs)]

pub mod body;
mod chunked;
pub mod client;
pub mod clock;
mod codec;
pub mod error;
mod field_name;
pub mod forward;
mod header_pool;
pub mod headers;
mod request_body;
pub mod routes;
pub mod server;
pub mod short_copy;
pub mod socket;
pub mod worker;

pub use body::ProxyBody;
pub use client::BackendClient;
pub use error::{ErrorKind, ProxyError, Side, error_response};
pub use forward::{Forward, ForwardInfo, take_abandoned};
pub use request_body::{ReceivedBytes, RequestBody};
pub use routes::{Route, RouteMatch, RouteTable};
