//! The report of a request head that the server rejected, with what could be read of it.

use crate::error::ErrorKind;
use crate::server::head::{MAX_HEADERS, MAX_METHOD_BYTES};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use std::time::{Duration, Instant};

/// A request head that the server rejected with a 4xx before any service saw it.
///
/// The server hands it to the connection's rejection callback before it writes the response.
/// The request parts are read again from the raw head and kept only where they are valid, so
/// they hold no byte that a parsed request could not hold.
#[derive(Debug)]
pub struct Rejection {
    /// The status sent: 400, 414 or 431.
    pub status: StatusCode,
    /// The kind of failure for the request log: [`ErrorKind::UnsupportedTransferCoding`] for a
    /// `Transfer-Encoding` that does not end in `chunked`, else [`ErrorKind::InvalidRequest`].
    pub kind: ErrorKind,
    /// The fault in the head, such as `invalid Content-Length`.
    pub reason: &'static str,
    /// Time the head's first bytes were read. A head that arrived in one read was rejected as
    /// it arrived, and then this is the rejection time.
    pub started: Instant,
    /// Time the head was rejected, before the response was written.
    pub rejected: Instant,
    /// Bytes read for the request before the rejection: its head so far, and whatever came
    /// after the head in the same reads.
    pub bytes_read: usize,
    /// The method, when the request line is valid.
    pub method: Option<Method>,
    /// The request target, when the request line is valid.
    pub uri: Option<Uri>,
    /// The header fields, when every line of the head parsed and only the body framing that
    /// the fields declare was rejected.
    pub headers: Option<HeaderMap>,
}

impl Rejection {
    /// Returns the time from the head's first bytes to its rejection.
    pub fn latency(&self) -> Duration {
        self.rejected.saturating_duration_since(self.started)
    }
}

/// The parts of a rejected head that could be read.
#[derive(Debug, Default)]
pub(crate) struct HeadParts {
    pub(crate) method: Option<Method>,
    pub(crate) uri: Option<Uri>,
    pub(crate) headers: Option<HeaderMap>,
}

/// Reads the request line of the head at the start of `buffer`, and its header fields when
/// `fields_parsed` is true because the head's parser accepted every line of it.
///
/// The request line counts only when it ended and has the form `method SP target SP
/// HTTP/1.x`, with a valid method of at most [`MAX_METHOD_BYTES`] and a valid target. This parser is separate from the one for
/// accepted heads because a second caller of that one changed how the compiler inlined it
/// on the request path.
pub(crate) fn read_parts(buffer: &[u8], fields_parsed: bool) -> HeadParts {
    let mut parts = HeadParts::default();
    // Empty lines before the request line are ignored (RFC 9112 section 2.2).
    let start = buffer
        .iter()
        .position(|&byte| byte != b'\r' && byte != b'\n')
        .unwrap_or(buffer.len());
    let rest = &buffer[start..];
    let Some(line_end) = rest.iter().position(|&byte| byte == b'\n') else {
        return parts;
    };
    let line = trim_cr(&rest[..line_end]);
    let mut pieces = line.split(|&byte| byte == b' ');
    if let (Some(method), Some(target), Some(version), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
        && method.len() <= MAX_METHOD_BYTES
        && let (Ok(method), Ok(uri)) = (Method::from_bytes(method), Uri::try_from(target))
    {
        parts.method = Some(method);
        parts.uri = Some(uri);
    }
    if !fields_parsed {
        return parts;
    }

    let mut headers = HeaderMap::new();
    let lines = rest[line_end + 1..]
        .split(|&byte| byte == b'\n')
        .map(trim_cr)
        .take_while(|line| !line.is_empty())
        .take(MAX_HEADERS);
    for line in lines {
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            continue;
        };
        let name = HeaderName::from_bytes(&line[..colon]);
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.append(name, value);
        }
    }
    parts.headers = Some(headers);
    parts
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_head_gives_every_part() {
        let parts = read_parts(
            b"\r\nPOST /a/b?c=d HTTP/1.1\r\nUser-Agent: probe/1\r\nContent-Length: 1\r\n\
              Content-Length:2\r\n\r\nbody",
            true,
        );
        assert_eq!(parts.method, Some(Method::POST));
        assert_eq!(parts.uri.as_ref().map(Uri::path), Some("/a/b"));
        assert_eq!(parts.uri.as_ref().and_then(Uri::query), Some("c=d"));
        let headers = parts.headers.expect("fields of a parsed head");
        assert_eq!(headers["user-agent"], "probe/1");
        let lengths: Vec<_> = headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["1", "2"]);
        assert_eq!(headers.len(), 3);
    }

    #[test]
    fn extension_method_is_named() {
        let parts = read_parts(b"PROPFIND /dav/a HTTP/1.1\r\nX-Long: aaaa", false);
        assert_eq!(parts.method.as_ref().map(Method::as_str), Some("PROPFIND"));
        assert_eq!(parts.uri.as_ref().map(Uri::path), Some("/dav/a"));
        // A method too long to take is not recorded.
        let line = format!("{} /a HTTP/1.1\r\n", "M".repeat(MAX_METHOD_BYTES + 1));
        assert!(read_parts(line.as_bytes(), false).method.is_none());
    }

    #[test]
    fn unparsed_fields_are_left_out() {
        let parts = read_parts(
            b"GET /x HTTP/1.1\r\nUser-Agent: a\r\n folded\r\n\r\n",
            false,
        );
        assert_eq!(parts.method, Some(Method::GET));
        assert_eq!(parts.uri.as_ref().map(Uri::path), Some("/x"));
        assert!(parts.headers.is_none());
    }

    #[test]
    fn bad_request_line_gives_nothing() {
        for head in [
            &b"GET /x\r\n\r\n"[..],
            b"G\0T /x HTTP/1.1\r\n\r\n",
            b"GET /x\0 HTTP/1.1\r\n\r\n",
            b"GET  /x HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/2.0\r\n\r\n",
            b"GET /x HTTP/1.1 extra\r\n\r\n",
            b"GET /aaaaaaaa",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n",
        ] {
            let parts = read_parts(head, false);
            let text = String::from_utf8_lossy(head);
            assert!(parts.method.is_none(), "{text:?}");
            assert!(parts.uri.is_none(), "{text:?}");
            assert!(parts.headers.is_none(), "{text:?}");
        }
    }

    #[test]
    fn unfinished_head_keeps_request_line() {
        let parts = read_parts(b"GET /x HTTP/1.1\r\nUser-Agent: a\r\nX-Long: aaaa", false);
        assert_eq!(parts.method, Some(Method::GET));
        assert_eq!(parts.uri.as_ref().map(Uri::path), Some("/x"));
        assert!(parts.headers.is_none());
    }
}
