//! One finished request, as the gateway's timing hook reports it.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// One finished request, queued by [`RequestLog::record`](crate::RequestLog::record) and
/// written as one row of the `requests` table.
///
/// The shared strings (`route`, `backend`) are `Arc<str>` so that building a record clones a
/// pointer rather than copying the route table's text. Unsigned counters above `i64::MAX` are
/// stored as `i64::MAX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Time the request started, in microseconds since the Unix epoch (UTC).
    pub timestamp_us: i64,
    /// The request id the gateway assigned or kept.
    pub request_id: String,
    /// The HTTP method. Standard methods are cheapest as `Cow::Borrowed("GET")`.
    pub method: Cow<'static, str>,
    /// The request path, without the query string.
    pub path: String,
    /// The query string without the `?`, when the request had one.
    pub query: Option<String>,
    /// The matched route pattern, such as `/users/:id`. `None` when no route matched.
    pub route: Option<Arc<str>>,
    /// The response status code sent to the client.
    pub status: u16,
    /// Time from the start of the request to the end of the response body, in microseconds.
    pub latency_us: u64,
    /// The client's IP address, when known.
    pub client_ip: Option<IpAddr>,
    /// The `User-Agent` header, when present.
    pub user_agent: Option<String>,
    /// The backend's URL. `None` when no backend was chosen.
    pub backend: Option<Arc<str>>,
    /// Request body bytes read from the client.
    pub bytes_received: u64,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// Why the gateway generated the response itself, such as `no_route`, `rate_limited` or
    /// `backend_timeout`. `None` for responses proxied from a backend.
    pub error_kind: Option<&'static str>,
    /// Whether the request was sent to a second backend after the first failed.
    pub retried: bool,
}

/// One finished request, with its text borrowed from the caller: what
/// [`RequestLog::record_ref`](crate::RequestLog::record_ref) takes, so that the request path
/// builds no strings for the log. Its fields mean what [`RequestRecord`]'s do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[expect(missing_docs, reason = "each field is documented on RequestRecord")]
pub struct RecordRef<'a> {
    pub timestamp_us: i64,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub route: Option<&'a str>,
    pub status: u16,
    pub latency_us: u64,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub error_kind: Option<&'a str>,
    pub retried: bool,
}

impl RequestRecord {
    /// Returns the record with its text borrowed.
    pub fn to_ref(&self) -> RecordRef<'_> {
        RecordRef {
            timestamp_us: self.timestamp_us,
            request_id: &self.request_id,
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            route: self.route.as_deref(),
            status: self.status,
            latency_us: self.latency_us,
            client_ip: self.client_ip,
            user_agent: self.user_agent.as_deref(),
            backend: self.backend.as_deref(),
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            error_kind: self.error_kind,
            retried: self.retried,
        }
    }
}
