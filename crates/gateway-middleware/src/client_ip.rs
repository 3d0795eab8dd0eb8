//! The client's IP address, taken from the connection's peer or, behind trusted proxies, from
//! `X-Forwarded-For`.

use gateway_config::canonical_network;
use http::header::HeaderValue;
use http::{Extensions, HeaderMap};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// `X-Forwarded-For`, the de facto header in which each proxy appends the address it received
/// the request from.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's IP address, stored as a request extension.
///
/// The gateway computes it once per request with [`TrustedProxies::client_ip`], and adds it
/// only when a layer reads it, because each extension costs an allocation per request. An
/// IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) is stored as the IPv4 address. Without this
/// extension, [`ClientIp::of`] reads the address of a `SocketAddr` extension, the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// Returns the client's address of a request: its `ClientIp` extension, else the address of
    /// its `SocketAddr` extension. `None` when the request has neither.
    pub fn of(extensions: &Extensions) -> Option<IpAddr> {
        match extensions.get::<ClientIp>() {
            Some(ClientIp(ip)) => Some(*ip),
            None => extensions.get::<SocketAddr>().map(SocketAddr::ip),
        }
    }
}

/// The networks of the proxies whose `X-Forwarded-For` header is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: NetworkSet,
}

/// A set of networks that addresses are matched against in canonical form: an IPv4-mapped
/// IPv6 address matches the IPv4 networks, and a network written as IPv4-mapped IPv6 matches
/// IPv4 addresses.
#[derive(Debug, Clone, Default)]
pub struct NetworkSet {
    networks: Vec<IpNet>,
}

impl NetworkSet {
    /// Creates the set. An empty list contains no address.
    pub fn new(networks: Vec<IpNet>) -> Self {
        let networks = networks.into_iter().map(canonical_network).collect();
        NetworkSet { networks }
    }

    /// Returns true when `ip` lies in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|network| network.contains(&ip))
    }
}

impl TrustedProxies {
    /// Creates the set from the `server.trusted_proxies` CIDRs. An empty list trusts no peer, so
    /// the client is always the peer.
    pub fn new(networks: Vec<IpNet>) -> Self {
        TrustedProxies {
            networks: NetworkSet::new(networks),
        }
    }

    /// Returns true when `ip` lies in one of the trusted networks.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.networks.contains(ip)
    }

    /// Returns the client's address for a request from `peer` with these `headers`.
    ///
    /// An untrusted peer is the client, whatever its `X-Forwarded-For` contains. Behind a trusted
    /// peer, the entries of every `X-Forwarded-For` field, in order, are read from the right,
    /// and the first entry outside the trusted networks is the client. When every entry is
    /// trusted, the left-most one is the client. An entry that is not an address (`unknown`,
    /// a host name, garbage, bytes outside ASCII) stops the walk, and the last address read
    /// before it is returned: the proxy right of it wrote the bad entry, so nothing left of it
    /// can be believed.
    ///
    /// Entries may carry a port (`192.0.2.1:5678`, `[2001:db8::1]:80`) or brackets without a
    /// port (`[2001:db8::1]`), and empty list elements are skipped. Every returned address is
    /// canonical: an IPv4-mapped IPv6 address comes back as IPv4.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }

        // Each proxy appends to the right, so the right-most entries were written by the
        // proxies closest to us, and the walk goes right to left.
        let fields: Vec<&HeaderValue> = headers.get_all(X_FORWARDED_FOR).iter().collect();
        let mut last_read = peer;
        for field in fields.into_iter().rev() {
            // Split as bytes: a byte outside ASCII spoils only the entry it is in. The entries
            // right of it were written by the proxies, after the client's bytes.
            for entry in field.as_bytes().rsplit(|&byte| byte == b',') {
                let entry = entry.trim_ascii();
                if entry.is_empty() {
                    continue;
                }
                let Some(ip) = std::str::from_utf8(entry).ok().and_then(parse_entry) else {
                    return last_read;
                };
                if !self.is_trusted(ip) {
                    return ip;
                }
                last_read = ip;
            }
        }
        last_read
    }
}

/// Parses one `X-Forwarded-For` entry leniently: a bare address, an address with a port, or a
/// bracketed IPv6 address, optionally in double quotes.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(entry);

    let ip = if let Ok(ip) = entry.parse::<IpAddr>() {
        ip
    } else if let Ok(socket) = entry.parse::<SocketAddr>() {
        socket.ip()
    } else {
        let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
        IpAddr::V6(inner.parse::<Ipv6Addr>().ok()?)
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn proxies(networks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(networks.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn client_of_extensions_falls_back_to_peer() {
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let mut extensions = Extensions::new();
        assert_eq!(ClientIp::of(&extensions), None);

        extensions.insert(peer);
        assert_eq!(ClientIp::of(&extensions), Some(peer.ip()));

        let forwarded: IpAddr = "203.0.113.9".parse().unwrap();
        extensions.insert(ClientIp(forwarded));
        assert_eq!(ClientIp::of(&extensions), Some(forwarded));
    }

    fn headers(fields: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for field in fields {
            map.append(X_FORWARDED_FOR, HeaderValue::from_str(field).unwrap());
        }
        map
    }

    #[test]
    fn client_ip_table() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]);

        // (case, peer, X-Forwarded-For fields, expected client)
        let cases: &[(&str, &str, &[&str], &str)] = &[
            (
                "untrusted peer, no header",
                "203.0.113.9",
                &[],
                "203.0.113.9",
            ),
            (
                "spoofed header from untrusted peer",
                "203.0.113.9",
                &["1.1.1.1"],
                "203.0.113.9",
            ),
            ("trusted peer, no header", "10.0.0.1", &[], "10.0.0.1"),
            (
                "trusted peer, one entry",
                "10.0.0.1",
                &["198.51.100.7"],
                "198.51.100.7",
            ),
            (
                "right-most untrusted wins over spoofed left entries",
                "10.0.0.1",
                &["6.6.6.6, 198.51.100.7, 10.0.0.2"],
                "198.51.100.7",
            ),
            (
                "chain of trusted proxies",
                "10.0.0.1",
                &["198.51.100.7, 10.1.1.1, 10.2.2.2"],
                "198.51.100.7",
            ),
            (
                "all trusted returns left-most",
                "10.0.0.1",
                &["10.3.3.3, 10.2.2.2"],
                "10.3.3.3",
            ),
            (
                "fields read in order",
                "10.0.0.1",
                &["6.6.6.6", "198.51.100.7, 10.0.0.2"],
                "198.51.100.7",
            ),
            (
                "later field is right of earlier one",
                "10.0.0.1",
                &["198.51.100.7", "10.9.9.9"],
                "198.51.100.7",
            ),
            (
                "ipv6 peer and entry",
                "fd00::1",
                &["2001:db8::5"],
                "2001:db8::5",
            ),
            (
                "untrusted ipv6 peer",
                "2001:db8::1",
                &["198.51.100.7"],
                "2001:db8::1",
            ),
            (
                "mapped ipv6 peer counts as ipv4",
                "::ffff:127.0.0.1",
                &["198.51.100.7"],
                "198.51.100.7",
            ),
            (
                "mapped ipv6 untrusted peer returned as ipv4",
                "::ffff:203.0.113.9",
                &["1.1.1.1"],
                "203.0.113.9",
            ),
            (
                "mapped ipv6 entry returned as ipv4",
                "10.0.0.1",
                &["::ffff:198.51.100.7"],
                "198.51.100.7",
            ),
            (
                "mapped ipv6 entry trusted",
                "10.0.0.1",
                &["198.51.100.7, ::ffff:10.0.0.9"],
                "198.51.100.7",
            ),
            (
                "ipv4 with port",
                "10.0.0.1",
                &["198.51.100.7:5678"],
                "198.51.100.7",
            ),
            (
                "bracketed ipv6 with port",
                "10.0.0.1",
                &["[2001:db8::5]:80"],
                "2001:db8::5",
            ),
            (
                "bracketed ipv6 without port",
                "10.0.0.1",
                &["[2001:db8::5]"],
                "2001:db8::5",
            ),
            (
                "quoted entry",
                "10.0.0.1",
                &["\"[2001:db8::5]:80\""],
                "2001:db8::5",
            ),
            (
                "empty elements skipped",
                "10.0.0.1",
                &["198.51.100.7, , 10.0.0.2,"],
                "198.51.100.7",
            ),
            (
                "malformed right-most returns peer",
                "10.0.0.1",
                &["198.51.100.7, garbage"],
                "10.0.0.1",
            ),
            (
                "malformed stops at last trusted",
                "10.0.0.1",
                &["198.51.100.7, unknown, 10.0.0.2"],
                "10.0.0.2",
            ),
            (
                "malformed left of client is ignored",
                "10.0.0.1",
                &["junk, 198.51.100.7"],
                "198.51.100.7",
            ),
            ("empty field", "10.0.0.1", &[""], "10.0.0.1"),
        ];

        for (case, peer, fields, expected) in cases {
            let peer: IpAddr = peer.parse().unwrap();
            let expected: IpAddr = expected.parse().unwrap();
            let got = trusted.client_ip(peer, &headers(fields));
            assert_eq!(got, expected, "{case}");
        }
    }

    /// A byte outside ASCII spoils only its own entry: the addresses that proxies appended
    /// right of it still decide the client, and the peer does not become the client.
    #[test]
    fn bytes_outside_ascii_spoil_one_entry() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1/32"]);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();

        // (case, field as bytes, expected client)
        let cases: &[(&str, &[u8], &str)] = &[
            (
                "client's byte left of its address",
                b"\xe9, 203.0.113.9",
                "203.0.113.9",
            ),
            (
                "byte inside a left entry",
                b"1.1.1\xff.1, 203.0.113.9",
                "203.0.113.9",
            ),
            (
                "byte behind a trusted proxy",
                b"\xe9, 203.0.113.9, 10.0.0.2",
                "203.0.113.9",
            ),
            (
                "byte in the right-most entry",
                b"203.0.113.9, 10.0.0.2\xe9",
                "127.0.0.1",
            ),
            (
                "byte right of a trusted proxy",
                b"203.0.113.9, \xe9, 10.0.0.2",
                "10.0.0.2",
            ),
        ];
        for (case, field, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.append(X_FORWARDED_FOR, HeaderValue::from_bytes(field).unwrap());
            let expected: IpAddr = expected.parse().unwrap();
            assert_eq!(trusted.client_ip(peer, &headers), expected, "{case}");
        }
    }

    #[test]
    fn non_ascii_field_stops_walk() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let mut map = headers(&["198.51.100.7"]);
        map.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff10.0.0.3").unwrap(),
        );
        map.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));

        let got = trusted.client_ip("10.0.0.1".parse().unwrap(), &map);

        assert_eq!(got, "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn mapped_network_trusts_ipv4_peer() {
        let trusted = proxies(&["::ffff:10.0.0.0/104"]);

        assert!(trusted.is_trusted("10.1.2.3".parse().unwrap()));
        assert!(trusted.is_trusted("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!trusted.is_trusted("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn empty_list_trusts_nobody() {
        let trusted = TrustedProxies::default();
        let map = headers(&["198.51.100.7"]);

        let got = trusted.client_ip("127.0.0.1".parse().unwrap(), &map);

        assert_eq!(got, "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
