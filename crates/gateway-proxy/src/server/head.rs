//! Reading a client's request head (RFC 9112 sections 2 to 6): the request line, the header
//! fields and the body framing they declare.

use crate::{field_name, header_pool};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Uri, Version};
use std::mem::MaybeUninit;

/// Maximum header fields in a request head. A head with more gets 431.
pub(crate) const MAX_HEADERS: usize = 100;

/// Header fields that the small position table in [`parse_head`] has room for. A head with
/// more uses a table of [`MAX_HEADERS`].
const FEW_HEADERS: usize = 16;

/// Maximum length of a request's method, the same as of a method a route lists. A longer one
/// gets 501 (RFC 9112 section 3 advises it for a method longer than any the server
/// implements), and its method reaches neither a backend nor the logs.
// NOTE: a request line over the head limit gets 414 before its method is read, so a method of
// about 64 KiB or more gets 414 rather than 501.
pub(crate) const MAX_METHOD_BYTES: usize = 32;

/// The framing of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body.
    Empty,
    /// A body of this many bytes.
    Length(u64),
    /// A chunked body.
    Chunked,
}

/// The facts a head states about the connection and the body, beside the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadFacts {
    pub(crate) framing: BodyFraming,
    /// Whether the client allows another request on the connection after this one.
    pub(crate) keep_alive: bool,
    /// Whether the client waits for `100 Continue` before it sends the body.
    pub(crate) expects_continue: bool,
    /// Whether the client accepts trailer fields (`TE: trailers`).
    pub(crate) trailers: bool,
}

/// The reason a request head was rejected. Each maps to the status the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    /// The head is not valid HTTP/1.x.
    #[error("malformed request head")]
    Malformed,
    /// The head has more header fields than the gateway accepts.
    #[error("too many header fields")]
    TooManyHeaders,
    /// The head is longer than the gateway accepts.
    #[error("request head too large")]
    TooLarge,
    /// The request target is longer than `http::Uri` holds, as written or once its unsafe
    /// characters are percent-encoded.
    #[error("request target too long")]
    TargetTooLong,
    /// `Content-Length` is not a number, or two of them differ.
    #[error("invalid Content-Length")]
    ContentLength,
    /// `Transfer-Encoding` comes with `Content-Length`, or comes in an HTTP/1.0 request.
    #[error("invalid Transfer-Encoding")]
    TransferEncoding,
    /// The last coding of `Transfer-Encoding` is not `chunked`, so the body's end is unknown.
    #[error("Transfer-Encoding does not end in chunked")]
    UnsupportedTransferCoding,
    /// The method is longer than [`MAX_METHOD_BYTES`].
    #[error("method too long")]
    MethodTooLong,
    /// The request line names an HTTP version other than 1.x, such as `HTTP/2.0` (the HTTP/2
    /// connection preface starts with one).
    #[error("unsupported HTTP version")]
    Version,
}

/// Returns whether the request line at the start of `head` ends in a well-formed version of
/// another major number than 1, `HTTP/<digit>.<digit>` or `HTTP/<digit>`, for which RFC 9110
/// (section 15.6.6) has the status 505.
fn names_other_version(head: &[u8]) -> bool {
    let line_end = head.iter().position(|&byte| byte == b'\r' || byte == b'\n');
    let line = &head[..line_end.unwrap_or(head.len())];
    let version = line.rsplit(|&byte| byte == b' ').next().unwrap_or_default();
    match version {
        [b'H', b'T', b'T', b'P', b'/', major]
        | [b'H', b'T', b'T', b'P', b'/', major, b'.', b'0'..=b'9'] => {
            major.is_ascii_digit() && *major != b'1'
        }
        _ => false,
    }
}

/// Parses the request head at the start of `buffer`. Returns `Ok(None)` while the head is
/// incomplete, and [`HeadError::TooLarge`] for a complete head longer than `max_length`
/// bytes. A complete head is split off `buffer`, and the request's target and header values
/// share its storage instead of being copied. On an error, `buffer` still starts with the
/// head, so that the caller can report what it can read of it.
pub(crate) fn parse_head(
    buffer: &mut BytesMut,
    max_length: usize,
) -> Result<Option<(Request<()>, HeadFacts)>, HeadError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(buffer, &mut fields) {
        Ok(httparse::Status::Complete(length)) if length <= max_length => length,
        Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) if names_other_version(buffer) => {
            return Err(HeadError::Version);
        }
        Err(_) => return Err(HeadError::Malformed),
    };
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HeadError::Malformed);
    };
    // The parsed pieces borrow `buffer`, so their positions are kept for after the split
    // below.
    let base = buffer.as_ptr() as usize;
    // Heads are far below 4 GiB, so positions fit in 32 bits and the table stays small.
    let span = |piece: &[u8]| {
        let start = piece.as_ptr() as usize - base;
        [start as u32, (start + piece.len()) as u32]
    };
    if method.len() > MAX_METHOD_BYTES {
        return Err(HeadError::MethodTooLong);
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed)?;
    let [target_start, target_end] = span(target.as_bytes());
    // Most heads have a few fields, and a table for them costs less to zero than one for the
    // most a head may have.
    let count = parsed.headers.len();
    let mut few = [[0u32; 4]; FEW_HEADERS];
    let mut many;
    let spans: &mut [[u32; 4]] = if count <= FEW_HEADERS {
        &mut few[..count]
    } else {
        many = [[0u32; 4]; MAX_HEADERS];
        &mut many[..count]
    };
    for (slot, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        let [name_start, name_end] = span(field.name.as_bytes());
        let [value_start, value_end] = span(field.value);
        *slot = [name_start, name_end, value_start, value_end];
    }
    let head = buffer.split_to(length).freeze();
    let mut rejected = |error: HeadError| restore(buffer, &head, error);

    let target = head.slice(target_start as usize..target_end as usize);
    // RFC 9112 section 3.2.4: an absolute-form OPTIONS target with an empty path requests
    // information about the server, as `*` does. `Uri` would report its path as `/`, which
    // names a resource.
    let uri = if method == Method::OPTIONS && is_bare_authority(&target) {
        Uri::from_static("*")
    } else {
        match Uri::from_maybe_shared(target.clone()) {
            Ok(uri) => uri,
            Err(_) => {
                let encoded = encode_unsafe_characters(&target);
                let length = encoded.as_ref().map_or(target.len(), Bytes::len);
                match encoded.map(Uri::from_maybe_shared) {
                    Some(Ok(uri)) => uri,
                    _ if length > MAX_TARGET_BYTES => {
                        return Err(rejected(HeadError::TargetTooLong));
                    }
                    _ => return Err(rejected(HeadError::Malformed)),
                }
            }
        }
    };
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Room for a header the gateway adds, such as X-Request-Id, so that adding it does not
    // grow the map, which costs two allocations and a rehash of every entry.
    let mut headers = header_pool::take(count + 2);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expects_continue = false;
    let mut trailers = false;
    for &[name_start, name_end, value_start, value_end] in spans.iter() {
        let name = field_name::from_token(&head[name_start as usize..name_end as usize])
            .map_err(|_| rejected(HeadError::Malformed))?;
        let value = value_start as usize..value_end as usize;
        let raw = &head[value.clone()];
        if name == header::CONTENT_LENGTH {
            let declared = parse_length(raw).map_err(&mut rejected)?;
            if length.is_some_and(|earlier| earlier != declared) {
                return Err(rejected(HeadError::ContentLength));
            }
            length = Some(declared);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding decides; a later field can add one after `chunked`.
            chunked = last_token(raw).is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in raw.split(|&byte| byte == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == header::TE {
            trailers |= raw
                .split(|&byte| byte == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        } else if name == header::EXPECT {
            expects_continue = raw.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        let value = HeaderValue::from_maybe_shared(head.slice(value))
            .map_err(|_| rejected(HeadError::Malformed))?;
        headers.append(name, value);
    }

    let framing = if transfer_encoding {
        // A request with both is how smuggling starts (RFC 9112 section 6.3), and HTTP/1.0 has
        // no transfer codings: both are rejected rather than guessed at.
        if length.is_some() || version == Version::HTTP_10 {
            return Err(rejected(HeadError::TransferEncoding));
        }
        if !chunked {
            return Err(rejected(HeadError::UnsupportedTransferCoding));
        }
        BodyFraming::Chunked
    } else {
        match length {
            None | Some(0) => BodyFraming::Empty,
            Some(length) => BodyFraming::Length(length),
        }
    };
    let keep_alive = match version {
        Version::HTTP_10 => keep_alive_token && !close,
        _ => !close,
    };
    let facts = HeadFacts {
        framing,
        keep_alive,
        expects_continue: expects_continue
            && version == Version::HTTP_11
            && framing != BodyFraming::Empty,
        trailers,
    };

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    *request.extensions_mut() = header_pool::take_extensions();
    Ok(Some((request, facts)))
}

/// Puts the rejected `head` back in front of `buffer` and returns `error`.
#[cold]
fn restore(buffer: &mut BytesMut, head: &[u8], error: HeadError) -> HeadError {
    let mut restored = BytesMut::with_capacity(head.len() + buffer.len());
    restored.extend_from_slice(head);
    restored.extend_from_slice(buffer);
    *buffer = restored;
    error
}

/// Parses a `Content-Length` value: digits only, at most 19 of them.
fn parse_length(value: &[u8]) -> Result<u64, HeadError> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::ContentLength);
    }
    Ok(value
        .iter()
        .fold(0u64, |total, digit| total * 10 + u64::from(digit - b'0')))
}

/// Returns whether `target` is an absolute URI with an empty path and no query, such as
/// `http://example.com:8080`.
fn is_bare_authority(target: &[u8]) -> bool {
    let Some(start) = target.windows(3).position(|window| window == b"://") else {
        return false;
    };
    // The `://` must end a scheme (RFC 3986 section 3.1), not sit in an origin-form query.
    let scheme = &target[..start];
    let is_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.'));
    if !is_scheme {
        return false;
    }
    let authority = &target[start + 3..];
    !authority.is_empty()
        && !authority
            .iter()
            .any(|byte| matches!(byte, b'/' | b'?' | b'#'))
}

/// Returns the last comma-separated token of a field value, trimmed.
fn last_token(value: &[u8]) -> Option<&[u8]> {
    value
        .rsplit(|&byte| byte == b',')
        .map(<[u8]>::trim_ascii)
        .find(|token| !token.is_empty())
}

/// Characters that `http::Uri` rejects in a path, though clients such as curl send them as
/// they are. RFC 3986 allows them in no part of a URI.
const UNSAFE_PATH_CHARACTERS: &[u8] = b"<>`";

/// Characters that `http::Uri` rejects in a query, as in curl's `?q="a"`.
const UNSAFE_QUERY_CHARACTERS: &[u8] = b"\"<>";

/// Returns `target` with [`UNSAFE_PATH_CHARACTERS`] before its `?` and
/// [`UNSAFE_QUERY_CHARACTERS`] after it percent-encoded, as a browser sends them, or `None`
/// when it has none. Such a target is forwarded encoded (NGINX forwards it as it came) rather
/// than rejected with a 400 that names nothing. Characters that `Uri` takes, such as a `"` in a
/// path, stay as they came, so that a path is forwarded the same whatever its query holds.
fn encode_unsafe_characters(target: &[u8]) -> Option<Bytes> {
    let query_at = target
        .iter()
        .position(|&byte| byte == b'?')
        .unwrap_or(target.len());
    let mut encoded = Vec::with_capacity(target.len() + 16);
    let mut changed = false;
    for (at, &byte) in target.iter().enumerate() {
        let unsafe_here = if at < query_at {
            UNSAFE_PATH_CHARACTERS
        } else {
            UNSAFE_QUERY_CHARACTERS
        };
        if unsafe_here.contains(&byte) {
            changed = true;
            encoded.extend_from_slice(&[
                b'%',
                HEX_DIGITS[usize::from(byte >> 4)],
                HEX_DIGITS[usize::from(byte & 0xf)],
            ]);
        } else {
            encoded.push(byte);
        }
    }
    changed.then(|| Bytes::from(encoded))
}

/// Maximum length of a request target that `http::Uri` parses.
const MAX_TARGET_BYTES: usize = u16::MAX as usize - 1;

/// Upper-case hexadecimal digits, as RFC 3986 (section 2.1) recommends for percent-encoding.
const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Request<()>, HeadFacts), HeadError> {
        let mut buffer = BytesMut::from(text.as_bytes());
        let parsed = parse_head(&mut buffer, 1024).map(|head| head.expect("a complete head"));
        if parsed.is_ok() {
            assert!(buffer.is_empty(), "{text:?}");
        }
        parsed
    }

    #[test]
    fn incomplete_head_asks_for_more() {
        let mut buffer = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n"[..]);
        assert!(matches!(parse_head(&mut buffer, 1024), Ok(None)));
        assert_eq!(buffer.len(), 25);
        assert!(matches!(parse_head(&mut BytesMut::new(), 1024), Ok(None)));
    }

    #[test]
    fn header_map_room_for_added_header() {
        for count in 0..20 {
            let mut text = String::from("GET / HTTP/1.1\r\n");
            for field in 0..count {
                text.push_str(&format!("x-f{field}: v\r\n"));
            }
            text.push_str("\r\n");
            let (mut request, _) = parse(&text).unwrap();
            let capacity = request.headers().capacity();
            request
                .headers_mut()
                .insert("x-request-id", HeaderValue::from_static("1"));
            assert_eq!(request.headers().capacity(), capacity, "{count} fields");
        }
    }

    #[test]
    fn parse_head_leaves_body_in_buffer() {
        let mut buffer = BytesMut::from(&b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET"[..]);
        let (_, facts) = parse_head(&mut buffer, 1024).unwrap().unwrap();
        assert_eq!(facts.framing, BodyFraming::Length(3));
        assert_eq!(&buffer[..], b"abcGET");
    }

    #[test]
    fn request_line_and_fields_are_kept() {
        let (request, facts) =
            parse("GET /a/b?c=d HTTP/1.1\r\nHost: example\r\nX-Two: 1\r\nx-two: 2\r\n\r\n")
                .unwrap();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/a/b?c=d");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "example");
        assert_eq!(request.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(
            facts,
            HeadFacts {
                framing: BodyFraming::Empty,
                keep_alive: true,
                expects_continue: false,
                trailers: false,
            }
        );
    }

    #[test]
    fn over_long_method_rejected() {
        let longest = "M".repeat(MAX_METHOD_BYTES);
        let (request, _) = parse(&format!("{longest} /a HTTP/1.1\r\n\r\n")).unwrap();
        assert_eq!(request.method().as_str(), longest);
        let longer = "M".repeat(MAX_METHOD_BYTES + 1);
        assert_eq!(
            parse(&format!("{longer} /a HTTP/1.1\r\n\r\n")).unwrap_err(),
            HeadError::MethodTooLong
        );
    }

    #[test]
    fn extension_methods_are_kept() {
        for name in [
            "PURGE",
            "PROPFIND",
            "MKCOL",
            "M-SEARCH",
            "VERSION-CONTROL-X",
            "purge",
            "!#$%&'*+-.^_`|~09",
        ] {
            let (request, _) = parse(&format!("{name} /a HTTP/1.1\r\nHost: gw\r\n\r\n"))
                .unwrap_or_else(|error| panic!("{name}: {error:?}"));
            assert_eq!(request.method().as_str(), name);
            assert_eq!(request.uri(), "/a", "{name}");
        }
        // A method is a token, so a separator in it makes the request line malformed.
        for line in [
            "PUR\"GE /a HTTP/1.1",
            "PUR(GE /a HTTP/1.1",
            "PURGE: /a HTTP/1.1",
        ] {
            let head = format!("{line}\r\nHost: gw\r\n\r\n");
            assert_eq!(parse(&head).unwrap_err(), HeadError::Malformed, "{line}");
        }
    }

    #[test]
    fn unsafe_target_characters_are_encoded() {
        let target = |text: &str| parse(text).unwrap().0.uri().clone();
        assert_eq!(
            target("GET /a<b>?q=\"x\"&r=`y` HTTP/1.1\r\n\r\n"),
            "/a%3Cb%3E?q=%22x%22&r=`y`"
        );
        // A `"` in a path is left as it came, whatever the query holds, so that the path is
        // forwarded the same either way.
        assert_eq!(target("GET /a`b\"c HTTP/1.1\r\n\r\n"), "/a%60b\"c");
        assert_eq!(target("GET /a\"b?q=< HTTP/1.1\r\n\r\n"), "/a\"b?q=%3C");
        // Targets that `Uri` takes as they are stay unchanged.
        assert_eq!(target("GET /a\"b{c}|^ HTTP/1.1\r\n\r\n"), "/a\"b{c}|^");
        // A target that encoding makes too long for `Uri` is named as such.
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "<".repeat(30_000));
        let mut buffer = BytesMut::from(long.as_bytes());
        assert_eq!(
            parse_head(&mut buffer, 128 * 1024).unwrap_err(),
            HeadError::TargetTooLong
        );
        // Other characters that a target may not hold are still rejected.
        assert_eq!(
            parse("GET /a\x01b HTTP/1.1\r\n\r\n").unwrap_err(),
            HeadError::Malformed
        );
    }

    #[test]
    fn options_without_path_targets_server() {
        let target = |text: &str| parse(text).unwrap().0.uri().clone();
        assert_eq!(target("OPTIONS http://example.com HTTP/1.1\r\n\r\n"), "*");
        assert_eq!(
            target("OPTIONS https://example.com:8443 HTTP/1.1\r\n\r\n"),
            "*"
        );
        assert_eq!(
            target("OPTIONS http://example.com/ HTTP/1.1\r\n\r\n"),
            "http://example.com/"
        );
        assert_eq!(
            target("OPTIONS http://example.com?x HTTP/1.1\r\n\r\n").path(),
            "/"
        );
        assert_eq!(
            target("OPTIONS /a?next=http://example.com HTTP/1.1\r\n\r\n"),
            "/a?next=http://example.com"
        );
        assert_eq!(
            target("GET http://example.com HTTP/1.1\r\n\r\n"),
            "http://example.com/"
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        let keep = |text: &str| parse(text).unwrap().1.keep_alive;
        assert!(keep("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!keep(
            "GET / HTTP/1.1\r\nConnection: x-private, close\r\n\r\n"
        ));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn body_framing_is_read_from_the_head() {
        let framing = |text: &str| parse(text).map(|(_, facts)| facts.framing);
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(BodyFraming::Length(12))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Ok(BodyFraming::Empty)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
    }

    #[test]
    fn ambiguous_framing_rejected() {
        let error = |text: &str| parse(text).unwrap_err();
        for text in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(error(text), HeadError::ContentLength, "{text:?}");
        }
        for text in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(error(text), HeadError::TransferEncoding, "{text:?}");
        }
        for text in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert_eq!(
                error(text),
                HeadError::UnsupportedTransferCoding,
                "{text:?}"
            );
        }
    }

    #[test]
    fn rejected_head_stays_in_buffer() {
        for text in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabc",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
            "GET http://[::1/ HTTP/1.1\r\n\r\nabc",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\nabc",
        ] {
            let mut buffer = BytesMut::from(text.as_bytes());
            assert!(parse_head(&mut buffer, 1024).is_err(), "{text:?}");
            assert_eq!(&buffer[..], text.as_bytes());
        }
    }

    #[test]
    fn continue_is_expected_only_before_a_body() {
        let expects = |text: &str| parse(text).unwrap().1.expects_continue;
        assert!(expects(
            "PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n"
        ));
        assert!(!expects("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"));
        assert!(!expects(
            "PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        ));
    }

    #[test]
    fn malformed_heads_rejected() {
        let head = |text: &str| parse_head(&mut BytesMut::from(text.as_bytes()), 8192).map(|_| ());
        assert_eq!(
            head("GET / HTTP/1.1\r\nNoColon\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(head("GET / HTTP/2.0\r\n\r\n"), Err(HeadError::Version));
        assert_eq!(
            head("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(HeadError::Version)
        );
        assert_eq!(head("GET / HTTP/3\r\n\r\n"), Err(HeadError::Version));
        assert_eq!(head("GET / HTTP/1.x\r\n\r\n"), Err(HeadError::Malformed));
        assert_eq!(head("GET / HTTPS/2.0\r\n\r\n"), Err(HeadError::Malformed));
        assert_eq!(head("GET / HTTP/22.0\r\n\r\n"), Err(HeadError::Malformed));
        let long = format!("GET / HTTP/1.1\r\nx-long: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(head(&long), Err(HeadError::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|n| format!("x-{n}: 1\r\n")).collect();
        assert_eq!(
            head(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(HeadError::TooManyHeaders)
        );
    }
}
