//! Header rules of a proxy (RFC 9110, section 7.6): hop-by-hop headers stay on their hop, and
//! forwarding headers tell the backend who sent the request.
//!
//! The rules are applied while the request head is written for the backend, in one pass over
//! the client's headers, so the client's header map is never modified.

use crate::short_copy;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::io::Write;
use std::net::IpAddr;

/// `X-Forwarded-For`: the chain of client addresses.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the `Host` the client sent.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `X-Request-Id`: the id the gateway gave the request, or kept from the client.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Returns whether `name` describes one connection rather than the message (RFC 9110 section
/// 7.6.1), so that it is never forwarded. `Trailer` is not one of them: it announces the
/// trailer fields, and a server sends only the trailers it announces.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// Returns whether a trailer field named `name` is passed on. A field needed before the
/// content, one that describes framing, routing, authentication, request modifiers, response
/// controls or the content's format, cannot be processed as a trailer (RFC 9110 section
/// 6.5.1). A recipient that merged one into the header section could be misled, so these and
/// the hop-by-hop fields are dropped from trailers.
pub fn is_allowed_in_trailers(name: &HeaderName) -> bool {
    const NEEDED_BEFORE_CONTENT: [HeaderName; 15] = [
        header::CONTENT_LENGTH,
        header::HOST,
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::COOKIE,
        header::SET_COOKIE,
        header::CACHE_CONTROL,
        header::MAX_FORWARDS,
        header::EXPECT,
        header::RANGE,
        header::CONTENT_ENCODING,
        header::CONTENT_TYPE,
        header::CONTENT_RANGE,
        header::TRAILER,
        header::LOCATION,
    ];
    !is_hop_by_hop(name) && !NEEDED_BEFORE_CONTENT.contains(name) && !is_forwarding_field(name)
}

/// Returns whether `name` is a field that the gateway sets, replaces or vouches for in the
/// request head, or one it leaves out of it (see [`is_unforwarded_client_field`]). A client's
/// trailer of that name could otherwise reach a backend that merges trailers into the header
/// section, after the gateway's own value.
fn is_forwarding_field(name: &HeaderName) -> bool {
    *name == header::FORWARDED
        || *name == X_FORWARDED_FOR
        || *name == X_FORWARDED_PROTO
        || *name == X_FORWARDED_HOST
        || *name == X_REQUEST_ID
        || is_unforwarded_client_field(name)
}

/// `Keep-Alive` and `Proxy-Connection`, hop-by-hop headers that `http` has no constant for.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Writes the header fields of a request forwarded to a backend, one `name: value` line each.
///
/// Hop-by-hop headers are left out: the fixed list and every header that `Connection` names,
/// except `X-Request-Id`, which the gateway itself sets. A client's `X-Forwarded-For` that
/// `Connection` names is left out, and the gateway's starts with the peer. `Content-Length` is left out too: the
/// request head's framing writes its own (see `RequestHead::encode`). `Host` becomes `backend_host` unless it is `None`, which keeps the client's.
/// `X-Forwarded-For` gets `peer` appended (earlier values are joined into one line),
/// `X-Forwarded-Proto` becomes `http` and `X-Forwarded-Host` the client's `Host`. A field
/// that names one of these four or `X-Request-Id` with `_` for `-` is left out, and so is
/// `X-Real-IP`. A client's `Forwarded` gets an element for `peer` appended.
pub fn write_forwarded_headers(
    out: &mut Vec<u8>,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    backend_host: Option<&HeaderValue>,
) {
    // One pass finds the fields that the rules below look at. A head has a few fields, and
    // comparing each name costs less than a hashed lookup for each of the three.
    let mut client_host = None;
    let mut has_connection = false;
    let mut has_forwarded_for = false;
    let mut has_forwarded = false;
    for (name, value) in headers {
        if *name == header::HOST {
            client_host = client_host.or(Some(value));
        } else if *name == header::CONNECTION {
            has_connection = true;
        } else if *name == X_FORWARDED_FOR {
            has_forwarded_for = true;
        } else if *name == header::FORWARDED {
            has_forwarded = true;
        }
    }
    if let Some(host) = backend_host.or(client_host) {
        put(out, header::HOST.as_str(), host.as_bytes());
    }

    // Headers named by Connection are rare; a request without Connection allocates nothing.
    let named_by_connection: Vec<HeaderName> = if has_connection {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    for (name, value) in headers {
        let replaced = *name == header::HOST
            || *name == header::CONTENT_LENGTH
            || *name == X_FORWARDED_FOR
            || *name == X_FORWARDED_PROTO
            || *name == X_FORWARDED_HOST
            || *name == header::FORWARDED;
        if replaced {
            continue;
        }
        let dropped = is_hop_by_hop(name)
            || (named_by_connection.contains(name) && *name != X_REQUEST_ID)
            || is_unforwarded_client_field(name);
        if dropped {
            continue;
        }
        if *name == header::TRAILER {
            put_trailer(out, value);
            continue;
        }
        put(out, name.as_str(), value.as_bytes());
    }

    // A client's X-Forwarded-For named by Connection is removed like any other such header,
    // and the gateway's own starts a new list.
    let incoming_for = if !has_forwarded_for || named_by_connection.contains(&X_FORWARDED_FOR) {
        None
    } else {
        Some(headers.get_all(&X_FORWARDED_FOR))
    };
    match peer {
        Some(peer) => {
            out.extend_from_slice(b"x-forwarded-for: ");
            // A value with bytes outside ASCII is passed on too: the entries that proxies
            // appended after a client's bytes are in the same value.
            for value in incoming_for.into_iter().flatten() {
                let text = value.as_bytes().trim_ascii();
                if !text.is_empty() {
                    out.extend_from_slice(text);
                    out.extend_from_slice(b", ");
                }
            }
            match peer {
                IpAddr::V4(peer) => short_copy::append_ipv4(out, peer),
                // `io::Write` for a Vec only appends, so formatting returns no error.
                IpAddr::V6(peer) => {
                    let _ = write!(out, "{peer}");
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        None => {
            for value in incoming_for.into_iter().flatten() {
                put(out, X_FORWARDED_FOR.as_str(), value.as_bytes());
            }
        }
    }
    out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    if let Some(host) = client_host {
        put(out, X_FORWARDED_HOST.as_str(), host.as_bytes());
    }
    if has_forwarded && !named_by_connection.contains(&header::FORWARDED) {
        put_forwarded(out, headers, peer);
    }
}

/// Writes a client's `Forwarded` (RFC 7239) as one line, with an element for `peer` appended,
/// so that the last element is the one the gateway vouches for. A client that sends no
/// `Forwarded` gets none: the gateway's own record is `X-Forwarded-For`.
#[cold]
#[inline(never)]
fn put_forwarded(out: &mut Vec<u8>, headers: &HeaderMap, peer: Option<IpAddr>) {
    out.extend_from_slice(b"forwarded: ");
    let mut first = true;
    let values = headers.get_all(header::FORWARDED);
    // A value that breaks the syntax, such as an unclosed quote, could make a parser read the
    // gateway's element as part of the client's, or reject the field whole. Then the client's
    // elements are all left out.
    if values
        .iter()
        .all(|value| is_valid_forwarded(value.as_bytes()))
    {
        for value in values {
            let text = value.as_bytes().trim_ascii();
            if !text.is_empty() {
                if !first {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(text);
                first = false;
            }
        }
    }
    if let Some(peer) = peer {
        if !first {
            out.extend_from_slice(b", ");
        }
        // An IPv6 address is quoted in brackets, since its colons are not token characters.
        match peer {
            IpAddr::V4(peer) => {
                out.extend_from_slice(b"for=");
                short_copy::append_ipv4(out, peer);
            }
            IpAddr::V6(peer) => {
                let _ = write!(out, "for=\"[{peer}]\"");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Returns whether `text` is a `Forwarded` value in the syntax of RFC 7239 (sections 4 and 5).
/// The value is a list of elements, and each element has pairs `token=value` separated by `;`
/// without spaces. A value is a token or a quoted string, and no parameter occurs twice in one
/// element. Empty elements and pairs are allowed, as the list syntax allows them.
fn is_valid_forwarded(text: &[u8]) -> bool {
    let skip_spaces = |mut at: usize| {
        while text
            .get(at)
            .is_some_and(|&byte| byte == b' ' || byte == b'\t')
        {
            at += 1;
        }
        at
    };
    let skip_token = |mut at: usize| {
        while text.get(at).is_some_and(|&byte| is_token_byte(byte)) {
            at += 1;
        }
        at
    };
    // The parameter names of the element being read: none may occur twice in one element.
    let mut names: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    loop {
        // Elements are separated by commas with optional spaces around them, and the pairs of
        // an element by semicolons without spaces.
        at = skip_spaces(at);
        names.clear();
        loop {
            let name_end = skip_token(at);
            if name_end > at {
                let name = &text[at..name_end];
                if text.get(name_end) != Some(&b'=')
                    || names.iter().any(|seen| seen.eq_ignore_ascii_case(name))
                {
                    return false;
                }
                names.push(name);
                at = name_end + 1;
                at = match skip_value(text, at) {
                    Some(end) => end,
                    None => return false,
                };
            }
            if text.get(at) != Some(&b';') {
                break;
            }
            at += 1;
        }
        at = skip_spaces(at);
        match text.get(at) {
            None => return true,
            Some(b',') => at += 1,
            Some(_) => return false,
        }
    }
}

/// Returns the end of the `Forwarded` value that starts at `at`, a token or a quoted string,
/// or `None` when there is no valid value there.
fn skip_value(text: &[u8], mut at: usize) -> Option<usize> {
    if text.get(at) != Some(&b'"') {
        let start = at;
        while text.get(at).is_some_and(|&byte| is_token_byte(byte)) {
            at += 1;
        }
        return (at > start).then_some(at);
    }
    at += 1;
    loop {
        match text.get(at) {
            None => return None,
            Some(b'"') => return Some(at + 1),
            Some(b'\\') if at + 1 < text.len() => at += 2,
            Some(&byte) if byte == b'\t' || (byte >= 0x20 && byte != 0x7f && byte != b'\\') => {
                at += 1;
            }
            Some(_) => return None,
        }
    }
}

/// Returns whether `byte` may appear in a token (RFC 9110 section 5.6.2).
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Returns whether a client's field named `name` is left out because a backend could take it
/// for the gateway's word:
///
/// - `X-Real-IP` in either spelling: one address that the client chose, which backends set up
///   behind NGINX often read as the client's. The gateway's record of the client is in
///   `X-Forwarded-For`.
/// - A field that reads as one the gateway sets, or one that frames or routes the message,
///   once each `_` is read as `-` (`X_Forwarded_For`, `Transfer_Encoding`). CGI (RFC 3875
///   section 4.1.18) and the interfaces that follow it, such as WSGI and PSGI, name a field's
///   variable with each `-` replaced by `_`. Both spellings then become one variable, and a
///   backend could read a client's alias as the gateway's value, or as the framing of a body
///   that the gateway framed otherwise.
fn is_unforwarded_client_field(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    let reads_as = |set: &[u8]| {
        set.len() == name.len()
            && set
                .iter()
                .zip(name)
                .all(|(&expected, &byte)| byte == expected || (expected == b'-' && byte == b'_'))
    };
    if name.len() == X_REAL_IP.len() && reads_as(X_REAL_IP) {
        return true;
    }
    // Checked for every forwarded field, so the length and the first letter, which rule out
    // nearly every other field, are compared before the bytes.
    let first_letters = ALIASED_FIRST_LETTERS.get(name.len()).copied().unwrap_or(0);
    let first = name.first().map_or(0, |&byte| byte.wrapping_sub(b'a'));
    first < 26
        && first_letters & (1 << first) != 0
        && name.contains(&b'_')
        && UNDERSCORE_ALIASED.iter().any(|set| reads_as(set))
}

/// The fields whose `_` spellings are left out (see [`is_unforwarded_client_field`]).
const UNDERSCORE_ALIASED: [&[u8]; 13] = [
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
    b"forwarded",
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"upgrade",
    b"trailer",
];

/// For each length, the first letters of the names in [`UNDERSCORE_ALIASED`] of that length,
/// as bit 0 for `a` to bit 25 for `z`.
const ALIASED_FIRST_LETTERS: [u32; 18] = {
    let mut letters = [0; 18];
    let mut i = 0;
    while i < UNDERSCORE_ALIASED.len() {
        let name = UNDERSCORE_ALIASED[i];
        letters[name.len()] |= 1 << (name[0] - b'a');
        i += 1;
    }
    letters
};

/// `X-Real-IP`, which the gateway never forwards (see [`is_unforwarded_client_field`]).
const X_REAL_IP: &[u8] = b"x-real-ip";

/// Appends a `Trailer` field that announces only the names of `value` that trailers keep
/// (see [`is_allowed_in_trailers`]), or nothing when none is left. The chunked decoder drops
/// the others, so they would be announced and never sent.
pub(crate) fn put_trailer(out: &mut Vec<u8>, value: &HeaderValue) {
    let announced: Vec<&str> = value
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|token| {
            HeaderName::from_bytes(token.as_bytes()).is_ok_and(|name| is_allowed_in_trailers(&name))
        })
        .collect();
    if !announced.is_empty() {
        put(
            out,
            header::TRAILER.as_str(),
            announced.join(", ").as_bytes(),
        );
    }
}

fn put(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    short_copy::append(out, name.as_bytes());
    out.extend_from_slice(b": ");
    short_copy::append(out, value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    /// Writes the forwarded headers and returns them as `(name, value)` lines.
    fn forwarded(
        headers: &HeaderMap,
        peer: Option<&str>,
        backend_host: Option<&HeaderValue>,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let peer = peer.map(|text| text.parse().unwrap());
        write_forwarded_headers(&mut out, headers, peer, backend_host);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n"), "{text:?}");
        text.trim_end_matches("\r\n")
            .split("\r\n")
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    fn values<'a>(lines: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        lines
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let headers = map(&[
            ("connection", "keep-alive, x-private, Upgrade"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-private", "secret"),
            ("x-kept", "1"),
            ("content-type", "text/plain"),
        ]);
        let lines = forwarded(&headers, None, None);
        let names: Vec<&str> = lines.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["x-kept", "content-type", "x-forwarded-proto"]);
    }

    #[test]
    fn trailers_keep_only_fields_after_content() {
        for allowed in ["x-checksum", "server-timing", "digest", "grpc-status"] {
            let name = HeaderName::from_static(allowed);
            assert!(is_allowed_in_trailers(&name), "{allowed}");
        }
        for dropped in [
            "content-length",
            "transfer-encoding",
            "host",
            "set-cookie",
            "content-type",
            "trailer",
            "connection",
            "keep-alive",
        ] {
            let name = HeaderName::from_static(dropped);
            assert!(!is_allowed_in_trailers(&name), "{dropped}");
        }
    }

    #[test]
    fn trailer_announces_only_kept_fields() {
        let headers = map(&[(
            "trailer",
            "x-checksum, Content-Length, set-cookie, grpc-status",
        )]);
        let lines = forwarded(&headers, None, None);
        assert_eq!(values(&lines, "trailer"), ["x-checksum, grpc-status"]);

        let headers = map(&[("trailer", "content-length, host")]);
        let lines = forwarded(&headers, None, None);
        assert!(values(&lines, "trailer").is_empty(), "{lines:?}");
    }

    #[test]
    fn connection_cannot_drop_what_the_gateway_sets() {
        let headers = map(&[
            (
                "connection",
                "x-request-id, content-length, host, x-forwarded-for, x-other",
            ),
            ("x-request-id", "abc"),
            ("content-length", "5"),
            ("host", "gateway.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-other", "dropped"),
        ]);
        let lines = forwarded(&headers, Some("10.0.0.9"), None);
        assert_eq!(values(&lines, "x-request-id"), ["abc"]);
        assert_eq!(values(&lines, "host"), ["gateway.example"]);
        assert_eq!(values(&lines, "x-forwarded-for"), ["10.0.0.9"]);
        assert!(values(&lines, "x-other").is_empty());
        // The request head writes the length from its framing, never the client's header.
        assert!(values(&lines, "content-length").is_empty());
    }

    #[test]
    fn forwarded_for_is_appended() {
        let headers = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", " 2.2.2.2 "),
        ]);
        let lines = forwarded(&headers, Some("127.0.0.1"), None);
        assert_eq!(
            values(&lines, "x-forwarded-for"),
            ["1.1.1.1, 2.2.2.2, 127.0.0.1"]
        );
    }

    #[test]
    fn forwarded_for_keeps_bytes_outside_ascii() {
        // A client's byte outside ASCII, with the address its proxy appended after it.
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_bytes(b"\xe9, 198.51.100.7").unwrap();
        headers.append(X_FORWARDED_FOR.clone(), value);
        let mut out = Vec::new();
        write_forwarded_headers(&mut out, &headers, Some("127.0.0.1".parse().unwrap()), None);
        let line = b"x-forwarded-for: \xe9, 198.51.100.7, 127.0.0.1\r\n";
        assert!(
            out.windows(line.len()).any(|window| window == line),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn forwarded_for_starts_with_peer() {
        let lines = forwarded(&HeaderMap::new(), Some("::1"), None);
        assert_eq!(values(&lines, "x-forwarded-for"), ["::1"]);
        assert_eq!(values(&lines, "x-forwarded-proto"), ["http"]);
        assert!(values(&lines, "x-forwarded-host").is_empty());
    }

    #[test]
    fn client_forwarding_headers_are_replaced() {
        let headers = map(&[
            ("host", "gateway.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example"),
        ]);
        let lines = forwarded(&headers, Some("10.0.0.9"), None);
        assert_eq!(values(&lines, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&lines, "x-forwarded-host"), ["gateway.example"]);
    }

    #[test]
    fn underscore_aliases_of_set_fields_are_dropped() {
        let headers = map(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded_proto", "https"),
            ("x_forwarded_host", "spoofed.example"),
            ("x_request_id", "forged"),
            ("x_forwarded_port", "443"),
            ("x_custom_field", "kept"),
            ("transfer_encoding", "chunked"),
            ("content_length", "5"),
            ("host_", "kept"),
            ("connection_", "kept"),
            ("keep_alive", "timeout=5"),
            ("proxy_connection", "close"),
            ("forwarded_", "kept"),
        ]);
        let lines = forwarded(&headers, Some("10.0.0.9"), None);
        for alias in [
            "x_forwarded_for",
            "x-forwarded_proto",
            "x_forwarded_host",
            "x_request_id",
            "transfer_encoding",
            "content_length",
            "keep_alive",
            "proxy_connection",
        ] {
            assert!(values(&lines, alias).is_empty(), "{alias}: {lines:?}");
        }
        assert_eq!(values(&lines, "x_forwarded_port"), ["443"]);
        assert_eq!(values(&lines, "x_custom_field"), ["kept"]);
        for unaliased in ["host_", "connection_", "forwarded_"] {
            assert_eq!(
                values(&lines, unaliased),
                ["kept"],
                "{unaliased}: {lines:?}"
            );
        }
        assert_eq!(values(&lines, "x-forwarded-for"), ["10.0.0.9"]);
        assert_eq!(values(&lines, "x-forwarded-proto"), ["http"]);
    }

    #[test]
    fn forwarded_gets_peer_element() {
        let headers = map(&[
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("forwarded", " for=5.6.7.8 "),
        ]);
        let lines = forwarded(&headers, Some("10.0.0.9"), None);
        assert_eq!(
            values(&lines, "forwarded"),
            ["for=1.2.3.4;proto=https, for=5.6.7.8, for=10.0.0.9"]
        );
        let lines = forwarded(&map(&[("forwarded", "for=1.2.3.4")]), Some("::1"), None);
        assert_eq!(values(&lines, "forwarded"), ["for=1.2.3.4, for=\"[::1]\""]);
    }

    #[test]
    fn forwarded_syntax_is_checked() {
        for valid in [
            "for=1.2.3.4",
            "for=\"[2001:db8::1]:80\";proto=https, for=5.6.7.8",
            "for=\"a\\\"b\";by=x",
            " , for=1.2.3.4;; ",
            "for=a;by=b, for=c;by=d",
            "",
        ] {
            assert!(is_valid_forwarded(valid.as_bytes()), "{valid:?}");
        }
        for invalid in [
            "for=\"x",
            "for=\"\\",
            "for=1.1.1.1;by",
            "for=",
            "=x",
            "for=a b",
            "for=\"a\" b",
            "for=a ;by=b",
            "for=a; by=b",
            "for=a;For=b",
        ] {
            assert!(!is_valid_forwarded(invalid.as_bytes()), "{invalid:?}");
        }
    }

    #[test]
    fn forwarded_with_bad_syntax_is_replaced() {
        let headers = map(&[("forwarded", "for=1.2.3.4"), ("forwarded", "for=\"x")]);
        let lines = forwarded(&headers, Some("10.0.0.9"), None);
        assert_eq!(values(&lines, "forwarded"), ["for=10.0.0.9"]);
    }

    #[test]
    fn forwarding_fields_not_allowed_in_trailers() {
        for name in [
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-request-id",
            "x-real-ip",
            "x_forwarded_for",
        ] {
            let name = HeaderName::from_static(name);
            assert!(!is_allowed_in_trailers(&name), "{name}");
        }
        assert!(is_allowed_in_trailers(&HeaderName::from_static(
            "x-checksum"
        )));
    }

    #[test]
    fn forwarded_absent_stays_absent() {
        let lines = forwarded(&HeaderMap::new(), Some("10.0.0.9"), None);
        assert!(values(&lines, "forwarded").is_empty(), "{lines:?}");
    }

    #[test]
    fn client_real_ip_is_dropped() {
        let headers = map(&[
            ("x-real-ip", "9.9.9.9"),
            ("x_real_ip", "9.9.9.9"),
            ("x-real-ips", "kept"),
        ]);
        let lines = forwarded(&headers, Some("10.0.0.9"), None);
        assert!(values(&lines, "x-real-ip").is_empty(), "{lines:?}");
        assert!(values(&lines, "x_real_ip").is_empty(), "{lines:?}");
        assert_eq!(values(&lines, "x-real-ips"), ["kept"]);
    }

    #[test]
    fn host_is_rewritten_unless_preserved() {
        let backend = HeaderValue::from_static("127.0.0.1:9001");
        let headers = map(&[("host", "gateway.example:8080")]);
        let lines = forwarded(&headers, None, Some(&backend));
        assert_eq!(values(&lines, "host"), ["127.0.0.1:9001"]);
        assert_eq!(values(&lines, "x-forwarded-host"), ["gateway.example:8080"]);

        let lines = forwarded(&headers, None, None);
        assert_eq!(values(&lines, "host"), ["gateway.example:8080"]);
    }
}
