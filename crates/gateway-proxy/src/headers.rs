//! Header rules of a proxy (RFC 9110, section 7.6): hop-by-hop headers stay on their hop, and
//! forwarding headers tell the backend who asked.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

/// Headers that describe one connection rather than the message, never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `X-Forwarded-For`: the chain of client addresses.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the `Host` the client sent.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers: the fixed list and every header that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by Connection are removed first, while Connection is still there.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// Sets the forwarding headers of a request about to go to a backend.
///
/// `X-Forwarded-For` gets `peer` appended (earlier values are joined into one header),
/// `X-Forwarded-Proto` becomes `http` and `X-Forwarded-Host` the client's `Host`. `Host` becomes
/// `backend_host` unless it is `None`, which keeps the client's.
pub fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: Option<IpAddr>,
    backend_host: Option<&HeaderValue>,
) {
    if let Some(peer) = peer {
        append_forwarded_for(headers, peer);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(&X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    if let Some(host) = backend_host {
        headers.insert(header::HOST, host.clone());
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let mut chain = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(text) = value.to_str() {
            let text = text.trim();
            if !text.is_empty() {
                chain.push_str(text);
                chain.push_str(", ");
            }
        }
    }
    chain.push_str(&peer.to_string());
    if let Ok(value) = HeaderValue::from_str(&chain) {
        headers.insert(&X_FORWARDED_FOR, value);
    }
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

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-private, Upgrade"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-private", "secret"),
            ("x-kept", "1"),
            ("content-type", "text/plain"),
        ]);
        remove_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept", "content-type"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        set_forwarding_headers(&mut headers, Some("127.0.0.1".parse().unwrap()), None);
        assert_eq!(headers["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn forwarded_for_starts_with_peer() {
        let mut headers = HeaderMap::new();
        set_forwarding_headers(&mut headers, Some("::1".parse().unwrap()), None);
        assert_eq!(headers["x-forwarded-for"], "::1");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn host_is_rewritten_unless_preserved() {
        let backend = HeaderValue::from_static("127.0.0.1:9001");
        let mut headers = map(&[("host", "gateway.example:8080")]);
        set_forwarding_headers(&mut headers, None, Some(&backend));
        assert_eq!(headers["host"], "127.0.0.1:9001");
        assert_eq!(headers["x-forwarded-host"], "gateway.example:8080");

        let mut headers = map(&[("host", "gateway.example:8080")]);
        set_forwarding_headers(&mut headers, None, None);
        assert_eq!(headers["host"], "gateway.example:8080");
    }
}
