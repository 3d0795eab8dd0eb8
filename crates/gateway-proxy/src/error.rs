//! Proxy failures, the side that caused each, and the one mapping from failure to status.

use crate::body::ProxyBody;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use std::fmt;
use std::time::Duration;

/// The party a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something the gateway cannot serve.
    Client,
    /// A backend failed or could not be reached.
    Backend,
    /// The gateway itself failed.
    Gateway,
}

/// The kind of failure, as recorded in the request log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matches the path.
    NoRoute,
    /// The route does not accept the method.
    MethodNotAllowed,
    /// Every backend of the route is unhealthy.
    NoHealthyBackend,
    /// Connecting to the backend failed (refused, unreachable, reset).
    BackendConnect,
    /// Connecting to the backend or waiting for its response head timed out.
    BackendTimeout,
    /// The backend closed the connection or sent an invalid response.
    BackendError,
    /// The client's request body failed while it was being forwarded.
    ClientBody,
    /// The client's request body stopped arriving.
    ClientTimeout,
    /// The request is malformed: a head that the server rejected with 400, 414 or 431, or a
    /// request that the HTTP parser lets through and the gateway rejects later.
    InvalidRequest,
    /// The method is one the gateway does not proxy, such as CONNECT.
    UnsupportedMethod,
    /// The request body uses a transfer coding other than chunked, or the last coding of its
    /// `Transfer-Encoding` is not `chunked`.
    UnsupportedTransferCoding,
    /// The gateway ran out of file descriptors, memory or local ports for a backend
    /// connection.
    OutOfResources,
    /// The gateway failed for a reason of its own.
    Internal,
}

impl ErrorKind {
    /// Returns a stable snake_case name for the request log.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::NoHealthyBackend => "no_healthy_backend",
            ErrorKind::BackendConnect => "backend_connect",
            ErrorKind::BackendTimeout => "backend_timeout",
            ErrorKind::BackendError => "backend_error",
            ErrorKind::ClientBody => "client_body",
            ErrorKind::ClientTimeout => "client_timeout",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::UnsupportedMethod => "unsupported_method",
            ErrorKind::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ErrorKind::OutOfResources => "out_of_resources",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A failure to proxy one request.
#[derive(Debug, thiserror::Error)]
pub struct ProxyError {
    kind: ErrorKind,
    detail: Detail,
    // True when another backend may get the request: nothing of it reached a backend, or a
    // safe method's every attempt failed before a response byte.
    nothing_sent: bool,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

#[derive(Debug)]
enum Detail {
    None,
    Timeout(Duration),
    ConnectTimeout(Duration),
    Allow(HeaderValue),
    Reason(&'static str),
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.detail) {
            (ErrorKind::NoRoute, _) => f.write_str("no route matches the path"),
            (ErrorKind::MethodNotAllowed, _) => f.write_str("method not allowed on this route"),
            (ErrorKind::NoHealthyBackend, _) => f.write_str("no healthy backend for this route"),
            (ErrorKind::BackendConnect, _) => f.write_str("failed to connect to backend"),
            (ErrorKind::BackendTimeout, Detail::Timeout(after)) => {
                write!(f, "backend timed out after {after:?}")
            }
            (ErrorKind::BackendTimeout, Detail::ConnectTimeout(after)) => {
                write!(f, "connecting to the backend timed out after {after:?}")
            }
            (ErrorKind::BackendTimeout, _) => f.write_str("backend timed out"),
            (ErrorKind::BackendError, _) => f.write_str("backend failed"),
            (ErrorKind::ClientBody, _) => f.write_str("failed to read the request body"),
            (ErrorKind::ClientTimeout, Detail::Timeout(after)) => {
                write!(f, "request body not received within {after:?}")
            }
            (ErrorKind::ClientTimeout, _) => f.write_str("request body not received in time"),
            (ErrorKind::InvalidRequest, Detail::Reason(reason)) => f.write_str(reason),
            (ErrorKind::InvalidRequest, _) => f.write_str("invalid request"),
            (ErrorKind::UnsupportedMethod, _) => f.write_str("method not supported by the gateway"),
            (ErrorKind::UnsupportedTransferCoding, _) => f.write_str(
                "unsupported transfer coding: send the body with Content-Length or chunked",
            ),
            (ErrorKind::OutOfResources, _) => {
                f.write_str("gateway out of file descriptors, memory or local ports")
            }
            (ErrorKind::Internal, _) => f.write_str("internal gateway error"),
        }
    }
}

impl ProxyError {
    /// Creates an error of `kind` with no source.
    pub fn new(kind: ErrorKind) -> ProxyError {
        ProxyError {
            kind,
            detail: Detail::None,
            nothing_sent: false,
            source: None,
        }
    }

    /// Creates a failure to open a connection to a backend: nothing was sent, so a retry is
    /// safe.
    pub fn connect(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ProxyError {
        ProxyError {
            kind: ErrorKind::BackendConnect,
            detail: Detail::None,
            nothing_sent: true,
            source: Some(source.into()),
        }
    }

    /// Creates a failure to open a backend connection for want of the gateway's own file
    /// descriptors or memory, or of the machine's local ports. Nothing was sent, but another backend would fail the same way,
    /// so it is not retried.
    pub fn out_of_resources(
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ProxyError {
        ProxyError {
            kind: ErrorKind::OutOfResources,
            detail: Detail::None,
            nothing_sent: false,
            source: Some(source.into()),
        }
    }

    /// Creates a connect attempt that timed out after `after`: nothing was sent, so a retry is
    /// safe.
    pub fn connect_timeout(after: Duration) -> ProxyError {
        ProxyError {
            kind: ErrorKind::BackendTimeout,
            detail: Detail::ConnectTimeout(after),
            nothing_sent: true,
            source: None,
        }
    }

    /// Creates an error of `kind` caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ProxyError {
        ProxyError {
            kind,
            detail: Detail::None,
            nothing_sent: false,
            source: Some(source.into()),
        }
    }

    /// Creates the failure of a backend that sent no response head within `after`.
    pub fn timeout(after: Duration) -> ProxyError {
        ProxyError {
            kind: ErrorKind::BackendTimeout,
            detail: Detail::Timeout(after),
            nothing_sent: false,
            source: None,
        }
    }

    /// Creates the failure of a client whose request body made no progress for `after`.
    pub fn client_timeout(after: Duration) -> ProxyError {
        ProxyError {
            kind: ErrorKind::ClientTimeout,
            detail: Detail::Timeout(after),
            nothing_sent: false,
            source: None,
        }
    }

    /// Creates the rejection of a request before routing. The client receives `reason`.
    pub fn invalid_request(reason: &'static str) -> ProxyError {
        ProxyError {
            kind: ErrorKind::InvalidRequest,
            detail: Detail::Reason(reason),
            nothing_sent: false,
            source: None,
        }
    }

    /// Creates the error of a request body whose chunked coding is invalid, with the
    /// decoder's error as the source, so that the client and the log tell it apart from a
    /// body the client cut off.
    pub(crate) fn invalid_chunked_body(
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ProxyError {
        ProxyError {
            kind: ErrorKind::InvalidRequest,
            detail: Detail::Reason("invalid chunked request body"),
            nothing_sent: false,
            source: Some(source.into()),
        }
    }

    /// A method the route does not accept; `allow` lists the accepted ones.
    pub fn method_not_allowed(allow: HeaderValue) -> ProxyError {
        ProxyError {
            kind: ErrorKind::MethodNotAllowed,
            detail: Detail::Allow(allow),
            nothing_sent: false,
            source: None,
        }
    }

    /// Returns the kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Returns the side that failed.
    pub fn side(&self) -> Side {
        match self.kind {
            ErrorKind::NoRoute
            | ErrorKind::MethodNotAllowed
            | ErrorKind::ClientBody
            | ErrorKind::ClientTimeout
            | ErrorKind::InvalidRequest
            | ErrorKind::UnsupportedMethod
            | ErrorKind::UnsupportedTransferCoding => Side::Client,
            ErrorKind::NoHealthyBackend
            | ErrorKind::BackendConnect
            | ErrorKind::BackendTimeout
            | ErrorKind::BackendError => Side::Backend,
            ErrorKind::OutOfResources | ErrorKind::Internal => Side::Gateway,
        }
    }

    /// Marks the error as one that came after the request reached a backend once, so that it
    /// is not sent to another: the connect of a resend after a pooled connection closed.
    /// A failed connect then becomes a backend failure, as the closed connection would have
    /// been without the resend, because the backend may have received the request.
    pub(crate) fn after_earlier_send(mut self) -> ProxyError {
        self.nothing_sent = false;
        if self.kind == ErrorKind::BackendConnect {
            self.kind = ErrorKind::BackendError;
        }
        self
    }

    /// Marks the error of a safe method's last attempt, which failed before a response byte,
    /// as one after which the request may go to another backend: it requests no change, so
    /// a second backend's handling of it is harmless.
    pub(crate) fn retry_elsewhere(mut self) -> ProxyError {
        self.nothing_sent = true;
        self
    }

    /// Returns whether the request may go to another backend: when nothing of it reached a
    /// backend, which is true of failed and timed-out connects, or when it is a safe method
    /// whose resend failed before a response byte (see [`ProxyError::retry_elsewhere`]).
    pub fn is_retry_safe(&self) -> bool {
        self.nothing_sent
    }

    /// Returns whether the failure counts toward the backend's unhealthy threshold: a failed
    /// or timed-out connect, a broken exchange, and a response that did not come within the
    /// response timeout, as NGINX counts them by default. A backend that stopped responding
    /// but still accepts connections is then taken out after `unhealthy_threshold` timeouts in
    /// a row. A success in between starts the count again, so an occasional slow response
    /// does not.
    pub fn counts_against_backend(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::BackendConnect | ErrorKind::BackendError | ErrorKind::BackendTimeout
        )
    }

    /// Returns the status the client receives for this failure.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::ClientBody | ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::UnsupportedMethod | ErrorKind::UnsupportedTransferCoding => {
                StatusCode::NOT_IMPLEMENTED
            }
            ErrorKind::NoHealthyBackend | ErrorKind::OutOfResources => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::BackendConnect | ErrorKind::BackendError => StatusCode::BAD_GATEWAY,
            ErrorKind::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Builds the client's response: a small JSON body with the status and a short reason,
    /// plus `Allow` for 405 and `Retry-After` for 503. Internal details stay out of it.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let reason = match self.side() {
            Side::Gateway if self.kind == ErrorKind::OutOfResources => {
                "gateway overloaded".to_owned()
            }
            Side::Gateway => "internal gateway error".to_owned(),
            _ => self.to_string(),
        };
        let mut response = error_response(status, &reason);
        match self.detail {
            Detail::Allow(allow) => {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            _ if self.kind == ErrorKind::NoHealthyBackend => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            // Descriptors come back as connections close, within a second on a busy gateway.
            _ if self.kind == ErrorKind::OutOfResources => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response.extensions_mut().insert(self.kind);
        response
    }
}

/// Builds a gateway-made JSON error response: `{"error": reason, "status": code}`.
pub fn error_response(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": reason, "status": status.as_u16() }).to_string();
    let mut response = Response::new(ProxyBody::from(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_side() {
        let cases = [
            (ErrorKind::NoRoute, 404, Side::Client),
            (ErrorKind::ClientTimeout, 408, Side::Client),
            (ErrorKind::InvalidRequest, 400, Side::Client),
            (ErrorKind::UnsupportedMethod, 501, Side::Client),
            (ErrorKind::UnsupportedTransferCoding, 501, Side::Client),
            (ErrorKind::ClientBody, 400, Side::Client),
            (ErrorKind::NoHealthyBackend, 503, Side::Backend),
            (ErrorKind::BackendConnect, 502, Side::Backend),
            (ErrorKind::BackendError, 502, Side::Backend),
            (ErrorKind::BackendTimeout, 504, Side::Backend),
            (ErrorKind::OutOfResources, 503, Side::Gateway),
            (ErrorKind::Internal, 500, Side::Gateway),
        ];
        for (kind, status, side) in cases {
            let error = ProxyError::new(kind);
            assert_eq!(error.status().as_u16(), status, "{kind:?}");
            assert_eq!(error.side(), side, "{kind:?}");
        }
    }

    #[test]
    fn only_connect_failures_retry() {
        assert!(ProxyError::connect("refused").is_retry_safe());
        assert!(ProxyError::connect_timeout(Duration::from_secs(1)).is_retry_safe());
        assert_eq!(
            ProxyError::connect_timeout(Duration::from_secs(1)).to_string(),
            "connecting to the backend timed out after 1s"
        );
        assert_eq!(
            ProxyError::timeout(Duration::from_secs(1)).to_string(),
            "backend timed out after 1s"
        );
        assert!(!ProxyError::new(ErrorKind::BackendError).is_retry_safe());
        assert!(!ProxyError::timeout(Duration::from_secs(1)).is_retry_safe());
        assert!(!ProxyError::out_of_resources("no descriptors").is_retry_safe());
    }

    #[test]
    fn unavailable_response_has_retry_after() {
        let response = ProxyError::new(ErrorKind::NoHealthyBackend).into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn internal_details_stay_hidden() {
        let error = ProxyError::with_source(ErrorKind::Internal, "secret detail");
        let response = error.into_response();
        assert_eq!(response.status(), 500);
        let body = format!("{:?}", response.body());
        assert!(!body.contains("secret"), "{body}");
    }
}
