//! HTTP/1.1 on the backend side: writing a request head and reading a response head, with the
//! body framing rules of RFC 9112 section 6.
//!
//! The gateway speaks HTTP/1.1 to backends itself rather than through a client library. The
//! request's own task reads and writes the backend socket, so there is no second task and no
//! channel between tasks, and the request head is written from the client's header map without
//! building a new one.

use crate::field_name;
use crate::header_pool;
use crate::headers::{is_hop_by_hop, write_forwarded_headers};
use crate::short_copy;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use std::mem::MaybeUninit;
use std::net::IpAddr;

/// Largest response head accepted from a backend.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most header fields accepted in a response head.
const MAX_HEADERS: usize = 100;

/// The framing of the request body on the way to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    Empty,
    /// A body of this many bytes, the length the client declared. The gateway writes its own
    /// `Content-Length` for it, never the client's header, so that no header the client
    /// controls (such as a `Connection` that names `Content-Length`) can change the framing.
    Length(u64),
    /// A body of unknown length, sent with chunked transfer coding.
    Chunked,
}

/// A request head as it goes to a backend, borrowed from the client's request.
#[derive(Debug)]
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a Method,
    /// The backend's path prefix, joined in front of `target`.
    pub(crate) prefix: Option<&'a str>,
    /// The client's path and query, byte for byte.
    pub(crate) target: &'a str,
    pub(crate) headers: &'a HeaderMap,
    /// The client's address, appended to `X-Forwarded-For`.
    pub(crate) peer: Option<IpAddr>,
    /// The backend's authority for `Host`, or `None` to keep the client's.
    pub(crate) host: Option<&'a HeaderValue>,
    pub(crate) framing: RequestFraming,
    /// Whether the connection closes after this exchange, announced with `Connection: close`,
    /// as RFC 9112 (section 9.6) requires of a client that will not reuse it. The backend then
    /// closes first, so the connection's TIME_WAIT stays on its side rather than holding a
    /// local port of the gateway for a minute.
    pub(crate) close: bool,
}

impl RequestHead<'_> {
    /// Appends the head to `out`: the request line, the client's headers with the proxy's
    /// header rules applied (see [`write_forwarded_headers`]), and the framing header that
    /// the body needs.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        short_copy::append(out, self.method.as_str().as_bytes());
        out.push(b' ');
        if let Some(prefix) = self.prefix {
            out.extend_from_slice(prefix.as_bytes());
        }
        short_copy::append(out, self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        write_forwarded_headers(out, self.headers, self.peer, self.host);
        match self.framing {
            RequestFraming::Empty => {}
            RequestFraming::Length(length) => {
                out.extend_from_slice(b"content-length: ");
                put_decimal(out, length);
                out.extend_from_slice(b"\r\n");
            }
            RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        if self.close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `value` in decimal.
pub(crate) fn put_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        // The remainder is below 10, so the cast keeps it whole.
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    short_copy::append(out, &digits[start..]);
}

/// The framing of a response body (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body: a response to HEAD, a 204 or a 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the backend closes the connection.
    UntilClose,
}

/// A response head read from a backend, with hop-by-hop headers already removed. The
/// backend's HTTP version is not kept: it belongs to its hop, and the client gets the
/// gateway's.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: BodyFraming,
    /// Whether the connection may carry another request after this response.
    pub(crate) keep_alive: bool,
}

/// The outcome of parsing the start of a backend's read buffer.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// An interim (1xx) response of this many bytes, with its status. Its fields are read
    /// only when it is forwarded (see [`parse_interim_head`]).
    Interim(usize, StatusCode),
    /// A final response head of this many bytes.
    Head(usize, ResponseHead),
}

/// The reason a backend's response head was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum HeadError {
    #[error("invalid response head: {0}")]
    Syntax(httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("response version is not HTTP/1.x")]
    Version,
    #[error("invalid header in the response: {0}")]
    Header(&'static str),
    #[error("invalid or conflicting Content-Length in the response")]
    ContentLength,
    #[error("backend switched protocols, which the gateway does not proxy")]
    Upgrade,
    #[error("response uses a transfer coding other than chunked")]
    TransferCoding,
}

/// Size of a connection's copy store (see [`copy_to_store`]). A typical response head of a
/// few hundred bytes fits, with room for a small body after it.
pub(crate) const STORE_BYTES: usize = 1024;

/// Copies `bytes` into `store`, a buffer a backend connection keeps across responses, and
/// returns the copy. Once the copies made for earlier responses are dropped, the store's
/// memory is reused, so a copy costs no allocation. A copy larger than the store gets memory
/// of its own, so the store of an idle pooled connection never grows past [`STORE_BYTES`].
pub(crate) fn copy_to_store(store: &mut BytesMut, bytes: &[u8]) -> Bytes {
    if bytes.len() > STORE_BYTES {
        return Bytes::copy_from_slice(bytes);
    }
    if store.capacity() < bytes.len() {
        store.reserve(STORE_BYTES);
    }
    store.extend_from_slice(bytes);
    store.split().freeze()
}

/// Parses a response head at the start of `buf`, the response to a request with `method`.
///
/// Copies the head once, with [`copy_to_store`], and the header values of the result share
/// that copy.
pub(crate) fn parse_response_head(
    buf: &[u8],
    method: &Method,
    store: &mut BytesMut,
) -> Result<Parsed, HeadError> {
    // Left uninitialized: the parser writes the fields it finds, where zeroing all of them
    // would write 3.2 KB for each response.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    // Whitespace between a field's name and its colon is read and left out: RFC 9112 (section
    // 5.1) has a proxy remove it from a response, where a server rejects a request with it.
    let parsed = httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .parse_response_with_uninit_headers(&mut response, buf, &mut fields);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::Header("too many fields")),
        Err(error) => return Err(HeadError::Syntax(error)),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Version),
    };
    let code = response.code.unwrap_or_default();
    // `StatusCode` takes 100 to 999, but HTTP defines only 100 to 599 (RFC 9110 section 15).
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|status| status.as_u16() <= 599)
        .ok_or(HeadError::Header("invalid status"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(HeadError::Upgrade);
    }
    if status.is_informational() {
        return Ok(Parsed::Interim(len, status));
    }

    // First pass: read the connection and framing headers.
    let mut keep_alive = version == Version::HTTP_11;
    let mut named_by_connection: Vec<&str> = Vec::new();
    let mut transfer_encoding: Option<()> = None;
    let mut content_length: Option<u64> = None;
    for field in response.headers.iter() {
        if field.name.eq_ignore_ascii_case("connection") {
            let value = std::str::from_utf8(field.value)
                .map_err(|_| HeadError::Header("Connection is not text"))?;
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive |= version == Version::HTTP_10;
                } else if !token.is_empty() {
                    named_by_connection.push(token);
                }
            }
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked is the only coding the gateway decodes. Another coding would reach the
            // client undeclared once Transfer-Encoding is removed, so it is rejected, as is
            // chunked listed twice.
            let chunked = field.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            if !chunked || transfer_encoding.is_some() {
                return Err(HeadError::TransferCoding);
            }
            transfer_encoding = Some(());
        } else if field.name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(field.value)?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(HeadError::ContentLength);
            }
            content_length = Some(length);
        }
    }

    let no_body = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        BodyFraming::Empty
    } else {
        match (transfer_encoding, content_length) {
            (Some(_), _) => BodyFraming::Chunked,
            (None, Some(length)) => BodyFraming::Length(length),
            (None, None) => BodyFraming::UntilClose,
        }
    };
    // A message with both headers may be an attempt at request smuggling, and HTTP/1.0 has no
    // transfer codings, so in either case the connection ends with the message (RFC 9112
    // sections 6.1 and 6.3).
    if transfer_encoding.is_some() && (content_length.is_some() || version == Version::HTTP_10) {
        keep_alive = false;
    }
    if framing == BodyFraming::UntilClose {
        keep_alive = false;
    }

    // Second pass: build the headers the client receives.
    // Room for the headers the gateway adds (such as X-Request-Id), so that adding them does
    // not grow the map.
    let mut headers = header_pool::take(response.headers.len() + 4);
    let head = copy_to_store(store, &buf[..len]);
    let base = buf.as_ptr() as usize;
    let mut length_written = false;
    for field in response.headers.iter() {
        let name = field_name::from_token(field.name.as_bytes())
            .map_err(|_| HeadError::Header("invalid field name"))?;
        if name == header::CONTENT_LENGTH {
            // One field with one value, whatever `Connection` names: a list of equal values
            // or repeated fields reach the client as one number, which every client parses.
            if let (None, Some(length), false) = (transfer_encoding, content_length, length_written)
            {
                // A plain number is passed on as the backend wrote it, without building a new
                // value.
                let digits = field.value.trim_ascii();
                let plain = digits.iter().all(u8::is_ascii_digit)
                    && (digits.len() == 1 || digits[0] != b'0');
                let value = if plain {
                    let start = digits.as_ptr() as usize - base;
                    HeaderValue::from_maybe_shared(head.slice(start..start + digits.len()))
                        .map_err(|_| HeadError::Header("invalid field value"))?
                } else {
                    HeaderValue::from(length)
                };
                headers.append(name, value);
                length_written = true;
            }
            continue;
        }
        if stays_on_hop(&name, &named_by_connection) {
            continue;
        }
        // The value is a slice of the copied head, so no header copies its bytes again.
        let start = field.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(head.slice(start..start + field.value.len()))
            .map_err(|_| HeadError::Header("invalid field value"))?;
        headers.append(name, value);
    }

    Ok(Parsed::Head(
        len,
        ResponseHead {
            status,
            headers,
            framing,
            keep_alive,
        },
    ))
}

/// Returns whether a response field named `name` stays on the backend's hop: a hop-by-hop
/// field, or one that the response's `Connection` names (`named_by_connection`).
// Always inlined: the final head's loop calls it for each field, and the interim path, the
// other caller, would otherwise keep it out of line.
#[inline(always)]
fn stays_on_hop(name: &HeaderName, named_by_connection: &[&str]) -> bool {
    // Most responses name nothing in `Connection`, and the length check keeps the search out
    // of their loop.
    is_hop_by_hop(name)
        || (!named_by_connection.is_empty()
            && named_by_connection
                .iter()
                .any(|named| name.as_str().eq_ignore_ascii_case(named)))
}

/// Reads the interim (1xx) response that `head` contains whole, as [`parse_response_head`]
/// found it, and returns its status and the fields that the client gets.
///
/// The fields are those of a final response head: hop-by-hop fields and the fields that
/// `Connection` names are left out. `Content-Length` is left out too, since a 1xx response has
/// no content, and so are the `Access-Control-*` fields. The values are copied, because interim responses are rare and short-lived.
///
/// # Errors
///
/// Returns [`HeadError`] for a head that is not a whole interim response, or a field name or
/// value that a header map does not take.
pub(crate) fn parse_interim_head(head: &[u8]) -> Result<(StatusCode, HeaderMap), HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let parsed = httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .parse_response(&mut response, head);
    match parsed {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Header("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::Header("too many fields")),
        Err(error) => return Err(HeadError::Syntax(error)),
    }
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(|status| status.is_informational() && *status != StatusCode::SWITCHING_PROTOCOLS)
        .ok_or(HeadError::Header("invalid status"))?;

    let mut named_by_connection: Vec<&str> = Vec::new();
    for field in response.headers.iter() {
        if field.name.eq_ignore_ascii_case("connection") {
            let value = std::str::from_utf8(field.value)
                .map_err(|_| HeadError::Header("Connection is not text"))?;
            named_by_connection.extend(value.split(',').map(str::trim).filter(|token| {
                !token.is_empty()
                    && !token.eq_ignore_ascii_case("close")
                    && !token.eq_ignore_ascii_case("keep-alive")
            }));
        }
    }
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = field_name::from_token(field.name.as_bytes())
            .map_err(|_| HeadError::Header("invalid field name"))?;
        // The `Access-Control-*` fields are left out too: the route's CORS policy sets them on
        // the final response only, and a backend's own would contradict it.
        if name == header::CONTENT_LENGTH
            || stays_on_hop(&name, &named_by_connection)
            || name.as_str().starts_with("access-control-")
        {
            continue;
        }
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| HeadError::Header("invalid field value"))?;
        headers.append(name, value);
    }
    Ok((status, headers))
}

fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    // A list of equal values is allowed (RFC 9110 section 8.6); each must be digits only.
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::ContentLength);
        }
        let parsed = digits
            .iter()
            .fold(0u64, |n, &digit| n * 10 + u64::from(digit - b'0'));
        if length.is_some_and(|earlier| earlier != parsed) {
            return Err(HeadError::ContentLength);
        }
        length = Some(parsed);
    }
    length.ok_or(HeadError::ContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: &Method) -> (usize, ResponseHead) {
        match parse_response_head(text.as_bytes(), method, &mut BytesMut::new()) {
            Ok(Parsed::Head(len, head)) => (len, head),
            other => panic!("expected a head, got {other:?}"),
        }
    }

    #[test]
    fn request_head_joins_prefix_and_frames_body() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("client.example"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let host = HeaderValue::from_static("10.0.0.1:8080");
        let mut out = Vec::new();
        let head = RequestHead {
            method: &Method::POST,
            prefix: Some("/v1"),
            target: "/users?id=7",
            headers: &headers,
            peer: Some("192.0.2.7".parse().unwrap()),
            host: Some(&host),
            framing: RequestFraming::Chunked,
            close: false,
        };
        head.encode(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/users?id=7 HTTP/1.1\r\nhost: 10.0.0.1:8080\r\nx-a: 1\r\nx-a: 2\r\n\
             x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: client.example\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn request_head_keeps_extension_method() {
        let headers = HeaderMap::new();
        for name in ["PURGE", "VERSION-CONTROL-X"] {
            let method = Method::from_bytes(name.as_bytes()).unwrap();
            let mut out = Vec::new();
            let head = RequestHead {
                method: &method,
                prefix: None,
                target: "/a",
                headers: &headers,
                peer: None,
                host: None,
                framing: RequestFraming::Empty,
                close: false,
            };
            head.encode(&mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.starts_with(&format!("{name} /a HTTP/1.1\r\n")),
                "{text}"
            );
        }
    }

    #[test]
    fn request_head_keeps_client_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("client.example"));
        let mut out = Vec::new();
        let head = RequestHead {
            method: &Method::GET,
            prefix: None,
            target: "/",
            headers: &headers,
            peer: None,
            host: None,
            framing: RequestFraming::Empty,
            close: false,
        };
        head.encode(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: client.example\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: client.example\r\n\r\n"
        );
    }

    #[test]
    fn content_length_response_keeps_connection() {
        let text = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-id: 9\r\n\r\nhello";
        let (len, head) = head(text, &Method::GET);
        assert_eq!(&text[len..], "hello");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert!(head.keep_alive);
        assert_eq!(head.headers["x-id"], "9");
        assert_eq!(head.headers[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn chunked_wins_over_content_length() {
        let text = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n";
        let (_, head) = head(text, &Method::GET);
        assert_eq!(head.framing, BodyFraming::Chunked);
        assert!(!head.keep_alive);
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
        assert!(!head.headers.contains_key(header::TRANSFER_ENCODING));
    }

    #[test]
    fn other_transfer_codings_are_rejected() {
        for value in ["gzip", "gzip, chunked", "chunked, identity", "identity"] {
            let text = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {value}\r\n\r\n");
            assert_eq!(
                parse_response_head(text.as_bytes(), &Method::GET, &mut BytesMut::new())
                    .unwrap_err(),
                HeadError::TransferCoding,
                "{value}"
            );
        }
        let twice =
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_response_head(twice.as_bytes(), &Method::GET, &mut BytesMut::new()).unwrap_err(),
            HeadError::TransferCoding
        );
    }

    #[test]
    fn http_10_chunked_response_ends_the_connection() {
        let (_, head) = head(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(head.framing, BodyFraming::Chunked);
        assert!(!head.keep_alive);
    }

    #[test]
    fn response_without_length_reads_until_close() {
        let (_, head) = head("HTTP/1.1 200 OK\r\n\r\n", &Method::GET);
        assert_eq!(head.framing, BodyFraming::UntilClose);
        assert!(!head.keep_alive);
    }

    #[test]
    fn head_204_and_304_have_no_body() {
        let (_, to_head) = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(to_head.framing, BodyFraming::Empty);
        assert_eq!(to_head.headers[header::CONTENT_LENGTH], "10");
        let (_, no_content) = head("HTTP/1.1 204 No Content\r\n\r\n", &Method::GET);
        assert_eq!(no_content.framing, BodyFraming::Empty);
        assert!(no_content.keep_alive);
        let (_, not_modified) = head(
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 3\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(not_modified.framing, BodyFraming::Empty);
    }

    #[test]
    fn connection_named_headers_are_removed() {
        let (_, head) = head(
            "HTTP/1.1 200 OK\r\nconnection: close, x-secret\r\nx-secret: 1\r\nkeep-alive: \
             timeout=5\r\nx-kept: 2\r\ncontent-length: 0\r\n\r\n",
            &Method::GET,
        );
        assert!(!head.keep_alive);
        assert!(!head.headers.contains_key("x-secret"));
        assert!(!head.headers.contains_key("keep-alive"));
        assert!(!head.headers.contains_key(header::CONNECTION));
        assert_eq!(head.headers["x-kept"], "2");
    }

    #[test]
    fn http_10_keep_alive_on_request() {
        let (_, plain) = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", &Method::GET);
        assert!(!plain.keep_alive);
        let (_, asked) = head(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            &Method::GET,
        );
        assert!(asked.keep_alive);
    }

    #[test]
    fn interim_found_and_101_rejected() {
        let text = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(
            parse_response_head(text, &Method::POST, &mut BytesMut::new()),
            Ok(Parsed::Interim(25, StatusCode::CONTINUE))
        ));
        let text = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n";
        assert!(matches!(
            parse_response_head(text, &Method::GET, &mut BytesMut::new()),
            Ok(Parsed::Interim(len, StatusCode::EARLY_HINTS)) if len == text.len()
        ));
        assert_eq!(
            parse_response_head(
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                &Method::GET,
                &mut BytesMut::new()
            )
            .unwrap_err(),
            HeadError::Upgrade
        );
    }

    #[test]
    fn interim_head_keeps_end_to_end_fields() {
        let text = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\
                    Connection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
                    Content-Length: 0\r\nLink : </b.js>; rel=preload\r\n\
                    Access-Control-Allow-Origin: *\r\n\r\n";
        let (status, headers) = parse_interim_head(text.as_bytes()).unwrap();
        assert_eq!(status, StatusCode::EARLY_HINTS);
        let links: Vec<_> = headers.get_all(header::LINK).iter().collect();
        assert_eq!(links, ["</a.css>; rel=preload", "</b.js>; rel=preload"]);
        assert_eq!(headers.len(), 2, "{headers:?}");
    }

    #[test]
    fn interim_head_with_unusable_status_rejected() {
        for text in [
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert_eq!(
                parse_interim_head(text.as_bytes()).unwrap_err(),
                HeadError::Header("invalid status"),
                "{text}"
            );
        }
        assert!(parse_interim_head(b"HTTP/1.1 103 Early Hints\r\n").is_err());
    }

    #[test]
    fn content_length_survives_connection_naming_it() {
        let (_, head) = head(
            "HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 5\r\n\
             content-length: 5\r\n\r\nhello",
            &Method::GET,
        );
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert_eq!(
            head.headers.get_all(header::CONTENT_LENGTH).iter().count(),
            1
        );
        assert_eq!(head.headers[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn statuses_beyond_599_are_rejected() {
        for code in ["600", "999"] {
            let text = format!("HTTP/1.1 {code} Odd\r\ncontent-length: 0\r\n\r\n");
            assert_eq!(
                parse_response_head(text.as_bytes(), &Method::GET, &mut BytesMut::new())
                    .unwrap_err(),
                HeadError::Header("invalid status"),
                "{code}"
            );
        }
        let (_, head) = head(
            "HTTP/1.1 599 Odd\r\ncontent-length: 0\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(head.status.as_u16(), 599);
    }

    #[test]
    fn request_length_is_the_gateways_own_header() {
        // The client's Connection names Content-Length, which drops the client's header; the
        // declared length must still frame the body on the way to the backend.
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("content-length"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("39"));
        for (framing, expected) in [
            (RequestFraming::Length(39), Some("39")),
            (RequestFraming::Length(0), Some("0")),
            (RequestFraming::Empty, None),
        ] {
            let mut out = Vec::new();
            RequestHead {
                method: &Method::POST,
                prefix: None,
                target: "/",
                headers: &headers,
                peer: None,
                host: None,
                framing,
                close: false,
            }
            .encode(&mut out);
            let text = String::from_utf8(out).unwrap();
            let lengths: Vec<&str> = text
                .split("\r\n")
                .filter_map(|line| line.strip_prefix("content-length: "))
                .collect();
            assert_eq!(lengths, expected.into_iter().collect::<Vec<_>>(), "{text}");
        }
    }

    #[test]
    fn decimal_lengths_are_written_whole() {
        for value in [0, 7, 10, 39, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            put_decimal(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        }
    }

    #[test]
    fn partial_and_oversized_heads() {
        assert!(matches!(
            parse_response_head(
                b"HTTP/1.1 200 OK\r\ncontent-le",
                &Method::GET,
                &mut BytesMut::new()
            ),
            Ok(Parsed::Partial)
        ));
        let mut huge = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(
            parse_response_head(&huge, &Method::GET, &mut BytesMut::new()).unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn bad_content_lengths_are_rejected() {
        for value in ["abc", "-1", "", "5, 6", "99999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {value}\r\n\r\n");
            assert_eq!(
                parse_response_head(text.as_bytes(), &Method::GET, &mut BytesMut::new())
                    .unwrap_err(),
                HeadError::ContentLength,
                "{value}"
            );
        }
        let twice = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n";
        assert_eq!(
            parse_response_head(twice.as_bytes(), &Method::GET, &mut BytesMut::new()).unwrap_err(),
            HeadError::ContentLength
        );
        let (_, same) = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(same.framing, BodyFraming::Length(5));
        // The client gets one value that any parser reads.
        assert_eq!(same.headers[header::CONTENT_LENGTH], "5");
        assert_eq!(
            same.headers.get_all(header::CONTENT_LENGTH).iter().count(),
            1
        );
    }

    #[test]
    fn content_length_sent_as_plain_number() {
        for (written, sent) in [("42", "42"), ("0", "0"), (" 7 ", "7"), ("007", "7")] {
            let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {written}\r\n\r\n");
            let (_, head) = head(&text, &Method::GET);
            assert_eq!(head.headers[header::CONTENT_LENGTH], sent, "{written:?}");
        }
    }

    #[test]
    fn copy_store_reuses_memory() {
        let mut store = BytesMut::new();
        let first = copy_to_store(&mut store, &[1; 600]);
        let start = first.as_ptr();

        // Room is left after the first copy, so the second one follows it.
        let second = copy_to_store(&mut store, &[2; 300]);
        assert_eq!(second.as_ptr(), start.wrapping_add(600));

        // The store is full. Once its copies are dropped, the next one starts over in the same
        // memory.
        drop((first, second));
        let third = copy_to_store(&mut store, &[3; 600]);
        assert_eq!(third.as_ptr(), start);

        // While a copy lives, a full store moves to new memory and leaves the copy intact.
        let fourth = copy_to_store(&mut store, &[4; 600]);
        assert_ne!(fourth.as_ptr(), start);
        assert_eq!(&third[..], &[3; 600][..]);
        assert_eq!(&fourth[..], &[4; 600][..]);
    }

    #[test]
    fn large_copy_leaves_store_alone() {
        let mut store = BytesMut::new();
        let small = copy_to_store(&mut store, &[1; 100]);
        let large = copy_to_store(&mut store, &[2; STORE_BYTES + 1]);
        assert_eq!(&large[..], &[2; STORE_BYTES + 1][..]);

        // The large copy went elsewhere, so the next small one follows the first.
        let next = copy_to_store(&mut store, &[3; 100]);
        assert_eq!(next.as_ptr(), small.as_ptr().wrapping_add(100));
        assert!(store.capacity() < STORE_BYTES);
    }

    #[test]
    fn heads_in_one_store_stay_intact() {
        let mut store = BytesMut::new();
        let heads: Vec<ResponseHead> = (0..100)
            .map(|i| {
                let text = format!("HTTP/1.1 200 OK\r\nx-id: {i}\r\ncontent-length: {i}\r\n\r\n");
                match parse_response_head(text.as_bytes(), &Method::GET, &mut store) {
                    Ok(Parsed::Head(_, head)) => head,
                    other => panic!("expected a head, got {other:?}"),
                }
            })
            .collect();
        for (i, head) in heads.iter().enumerate() {
            assert_eq!(head.headers["x-id"], i.to_string().as_str());
            assert_eq!(head.headers[header::CONTENT_LENGTH], i.to_string().as_str());
        }
    }

    #[test]
    fn space_before_colon_is_removed() {
        let text = "HTTP/1.1 200 OK\r\nX-A : b\r\nContent-Length\t: 2\r\n\r\n";
        let (_, head) = head(text, &Method::GET);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(head.headers[header::CONTENT_LENGTH], "2");
        assert_eq!(head.framing, BodyFraming::Length(2));
    }

    #[test]
    fn malformed_heads_are_errors() {
        assert!(matches!(
            parse_response_head(
                b"HTTP/2.0 200 OK\r\n\r\n",
                &Method::GET,
                &mut BytesMut::new()
            ),
            Err(HeadError::Syntax(_) | HeadError::Version)
        ));
        assert!(matches!(
            parse_response_head(b"garbage\r\n\r\n", &Method::GET, &mut BytesMut::new()),
            Err(HeadError::Syntax(_))
        ));
    }
}
