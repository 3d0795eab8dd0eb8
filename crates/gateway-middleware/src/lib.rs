//! Tower layers that wrap the proxy: panic catching, request ids, client addresses, rate
//! limiting, CORS, and the timing hook that reports each finished request.
//!
//! Each layer works on its own over any inner service, so each is tested with `oneshot`. Layers
//! that respond to a request themselves build the response body with `ResBody::from(Bytes)`, so
//! they compose with the gateway's body type.
//!
//! # Layout
//!
//! - [`catch_panic`]: turns a panic in the inner service into a 500 response.
//! - [`request_id`]: keeps or assigns `X-Request-Id` and returns it on the response.
//! - [`client_ip`]: the client address behind trusted proxies.
//! - [`rate_limit`]: token-bucket limits per client or global.
//! - [`cors`]: preflight responses and CORS response headers.
//! - [`timing`]: reports each request to a sink when its response body ends.
#![warn(missing_docs)]

pub mod catch_panic;
pub mod client_ip;
pub mod cors;
pub mod rate_limit;
pub mod request_id;
pub mod timing;

mod json;
mod value_store;
