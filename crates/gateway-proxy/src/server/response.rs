//! Writing a response head to the client (RFC 9112 sections 4 and 6): the status line, the
//! header fields, and the framing the body gets.

use crate::codec::put_decimal;
use crate::headers::put_trailer;
use crate::short_copy;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// The framing of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body is sent: a response to HEAD, or a status that has none.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// The body ends when the connection closes: an HTTP/1.0 client and a body of unknown
    /// length.
    Close,
}

/// The request and connection that a response head is written for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange<'a> {
    pub(crate) method: &'a Method,
    pub(crate) version: Version,
    /// Whether the connection may serve another request after this response.
    pub(crate) keep_alive: bool,
    /// Whether the client accepts trailer fields (`TE: trailers`).
    pub(crate) trailers: bool,
}

/// Appends the response head to `out` and returns the body's framing and whether the
/// connection stays open after the response.
///
/// The gateway writes `Content-Length`, `Transfer-Encoding` and `Connection` itself. The
/// service's own values of the first two are replaced by the framing chosen here. Its
/// `Content-Length` is kept only for a body of unknown length, or a response without a body.
/// A `Connection: close` from the service closes the connection after the response.
pub(crate) fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    length: Option<u64>,
    exchange: Exchange<'_>,
) -> (Framing, bool) {
    let mut keep_alive = exchange.keep_alive;
    let declared = || {
        headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok())
    };
    let bodyless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodyless_status || *exchange.method == Method::HEAD {
        Framing::None
    } else if let Some(length) = length.or_else(declared) {
        Framing::Length(length)
    } else if exchange.version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::Close
    };

    put_status_line(out, status);
    // A bodyless response keeps the length it declares: to HEAD, it is the length a GET
    // would get.
    let keep_length = framing == Framing::None && status != StatusCode::NO_CONTENT;
    // `Connection` and `Date` are looked for in the pass that writes the fields, not with a
    // hashed lookup each: a response has a few fields, and comparing names costs less.
    let mut has_date = false;
    let mut length_kept = false;
    for (name, value) in headers {
        if *name == header::CONNECTION {
            let close = value
                .as_bytes()
                .split(|&byte| byte == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            keep_alive &= !close;
            continue;
        }
        // `Trailer` announces fields that go out only on a chunked body to a client that
        // accepts them.
        let unsent_trailers =
            *name == header::TRAILER && !(exchange.trailers && framing == Framing::Chunked);
        if *name == header::TRANSFER_ENCODING
            || (*name == header::CONTENT_LENGTH && !keep_length)
            || unsent_trailers
        {
            continue;
        }
        if *name == header::TRAILER {
            put_trailer(out, value);
            continue;
        }
        has_date |= *name == header::DATE;
        length_kept |= *name == header::CONTENT_LENGTH;
        short_copy::append(out, name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        short_copy::append(out, value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(length) => {
            out.extend_from_slice(b"content-length: ");
            put_decimal(out, length);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A response to HEAD states the length a GET would get, which the gateway's own
        // responses carry as their body. An empty body states no length, because a backend's
        // response to HEAD has an empty body whatever the resource's length.
        Framing::None if *exchange.method == Method::HEAD && !bodyless_status && !length_kept => {
            if let Some(length) = length.filter(|&length| length > 0) {
                out.extend_from_slice(b"content-length: ");
                put_decimal(out, length);
                out.extend_from_slice(b"\r\n");
            }
        }
        Framing::None | Framing::Close => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if exchange.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        write_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// Appends an interim (1xx) response head with the fields of `headers`.
///
/// The fields that [`encode_head`] leaves out or writes itself for a final response are left
/// out: `Connection`, `Transfer-Encoding` and `Content-Length`, which a 1xx response must not
/// carry because it has no content (RFC 9110 section 8.6, RFC 9112 section 6.1), and `Trailer`,
/// since no trailer section follows. The caller has removed the hop-by-hop fields. No `Date`
/// is added, since RFC 9110 (section 6.6.1) requires it only on 2xx, 3xx and 4xx responses.
pub(crate) fn encode_interim(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap) {
    put_status_line(out, status);
    for (name, value) in headers {
        let left_out = *name == header::CONNECTION
            || *name == header::TRANSFER_ENCODING
            || *name == header::CONTENT_LENGTH
            || *name == header::TRAILER;
        if left_out {
            continue;
        }
        short_copy::append(out, name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        short_copy::append(out, value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the status line for `status`, with its standard reason phrase, or none for a code
/// that has no standard phrase.
// Always inlined into the final head's encoder, for the reason `stays_on_hop` in the codec
// is.
#[inline(always)]
fn put_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    short_copy::append(out, status.as_str().as_bytes());
    out.push(b' ');
    short_copy::append(out, status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a bodyless response with `status` that closes the connection, for a request the
/// gateway could not read.
pub(crate) fn encode_rejection(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    short_copy::append(out, status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\ndate: ");
    write_date(out);
    out.extend_from_slice(b"\r\n\r\n");
}

thread_local! {
    // The current second and its HTTP date, rebuilt when the second changes.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends the current time as an HTTP date (RFC 9110 section 5.6.7).
fn write_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn encode(
        status: u16,
        headers: &[(&str, &str)],
        length: Option<u64>,
        method: Method,
        version: Version,
    ) -> (String, Framing, bool) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let mut out = Vec::new();
        let exchange = Exchange {
            method: &method,
            version,
            keep_alive: true,
            trailers: true,
        };
        let status = StatusCode::from_u16(status).unwrap();
        let (framing, keep_alive) = encode_head(&mut out, status, &map, length, exchange);
        (String::from_utf8(out).unwrap(), framing, keep_alive)
    }

    #[test]
    fn known_length_is_written_by_the_gateway() {
        let (head, framing, keep_alive) = encode(
            200,
            &[("content-type", "text/plain"), ("content-length", "99")],
            Some(5),
            Method::GET,
            Version::HTTP_11,
        );
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"),
            "{head}"
        );
        assert!(head.contains("content-length: 5\r\n"), "{head}");
        assert!(!head.contains("99"), "{head}");
        assert!(
            head.contains("\r\ndate: ") && head.ends_with("GMT\r\n\r\n"),
            "{head}"
        );
        assert_eq!((framing, keep_alive), (Framing::Length(5), true));
    }

    #[test]
    fn unknown_length_framing_by_version() {
        let (head, framing, keep_alive) = encode(200, &[], None, Method::GET, Version::HTTP_11);
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert_eq!((framing, keep_alive), (Framing::Chunked, true));

        let (head, framing, keep_alive) = encode(200, &[], None, Method::GET, Version::HTTP_10);
        assert!(head.contains("connection: close\r\n"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert_eq!((framing, keep_alive), (Framing::Close, false));
    }

    #[test]
    fn http_10_keep_alive_is_confirmed() {
        let (head, _, keep_alive) = encode(200, &[], Some(0), Method::GET, Version::HTTP_10);
        assert!(head.contains("connection: keep-alive\r\n"), "{head}");
        assert!(keep_alive);
    }

    #[test]
    fn head_and_bodyless_statuses_send_no_body() {
        let (head, framing, _) = encode(
            200,
            &[("content-length", "1234")],
            Some(0),
            Method::HEAD,
            Version::HTTP_11,
        );
        assert!(head.contains("content-length: 1234\r\n"), "{head}");
        assert_eq!(framing, Framing::None);
        let (head, framing, _) = encode(
            204,
            &[("content-length", "0")],
            Some(0),
            Method::GET,
            Version::HTTP_11,
        );
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(framing, Framing::None);
        let (_, framing, _) = encode(304, &[], None, Method::GET, Version::HTTP_11);
        assert_eq!(framing, Framing::None);
        // The gateway's own response to HEAD states its body's length, as to GET.
        let (head, framing, _) = encode(404, &[], Some(50), Method::HEAD, Version::HTTP_11);
        assert!(head.contains("content-length: 50\r\n"), "{head}");
        assert_eq!(framing, Framing::None);
        let (head, _, _) = encode(200, &[], Some(0), Method::HEAD, Version::HTTP_11);
        assert!(!head.contains("content-length"), "{head}");
    }

    #[test]
    fn connection_close_from_the_service_closes() {
        let (head, _, keep_alive) = encode(
            503,
            &[("connection", "close"), ("retry-after", "1")],
            Some(0),
            Method::GET,
            Version::HTTP_11,
        );
        assert!(!keep_alive);
        assert_eq!(head.matches("connection: close").count(), 1, "{head}");
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
    }

    #[test]
    fn trailer_is_announced_only_when_sent() {
        let announced = [("trailer", "x-sum")];
        let (head, framing, _) = encode(200, &announced, None, Method::GET, Version::HTTP_11);
        assert_eq!(framing, Framing::Chunked);
        assert!(head.contains("trailer: x-sum\r\n"), "{head}");

        // A body of known length and an HTTP/1.0 client's body have no trailer section.
        let (head, _, _) = encode(200, &announced, Some(3), Method::GET, Version::HTTP_11);
        assert!(!head.contains("trailer"), "{head}");
        // Fields that trailers drop are not announced.
        let mixed = [("trailer", "x-sum, content-length")];
        let (head, _, _) = encode(200, &mixed, None, Method::GET, Version::HTTP_11);
        assert!(head.contains("trailer: x-sum\r\n"), "{head}");
        let (head, _, _) = encode(200, &announced, None, Method::GET, Version::HTTP_10);
        assert!(!head.contains("trailer"), "{head}");

        // Nor does a chunked body to a client that did not send `TE: trailers`.
        let mut map = HeaderMap::new();
        map.insert(header::TRAILER, HeaderValue::from_static("x-sum"));
        let exchange = Exchange {
            method: &Method::GET,
            version: Version::HTTP_11,
            keep_alive: true,
            trailers: false,
        };
        let mut out = Vec::new();
        let (framing, _) = encode_head(&mut out, StatusCode::OK, &map, None, exchange);
        assert_eq!(framing, Framing::Chunked);
        assert!(!String::from_utf8(out).unwrap().contains("trailer"));
    }

    #[test]
    fn interim_head_leaves_out_framing_fields() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("link", "</a.css>; rel=preload"),
            ("content-length", "0"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("trailer", "x-sum"),
            ("link", "</b.js>; rel=preload"),
        ] {
            headers.append(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut out = Vec::new();
        encode_interim(&mut out, StatusCode::EARLY_HINTS, &headers);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\
             link: </b.js>; rel=preload\r\n\r\n"
        );

        // A code without a standard reason phrase keeps the space before the empty phrase.
        let mut out = Vec::new();
        encode_interim(
            &mut out,
            StatusCode::from_u16(199).unwrap(),
            &HeaderMap::new(),
        );
        assert_eq!(String::from_utf8(out).unwrap(), "HTTP/1.1 199 \r\n\r\n");
    }

    #[test]
    fn rejection_closes_connection() {
        let mut out = Vec::new();
        encode_rejection(&mut out, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("content-length: 0\r\nconnection: close\r\n"));
    }

    #[test]
    fn write_date_formats_http_date() {
        let mut out = Vec::new();
        write_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }
}
