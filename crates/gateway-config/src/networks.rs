//! Lists of networks, such as `server.trusted_proxies` and `admin.allowed_clients`: each entry
//! a CIDR (`10.0.0.0/8`) or a single address.

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de::Error as _};
use std::net::IpAddr;

/// Examples quoted by every message about an invalid entry.
const EXAMPLES: &str = "10.0.0.0/8, 127.0.0.1/32 or ::1/128";

/// Reads the list as strings and parses every entry, so one error names each invalid entry
/// rather than only the first.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNet>, D::Error> {
    let entries = Vec::<String>::deserialize(deserializer)?;
    parse_all(&entries).map_err(D::Error::custom)
}

/// Parses every entry, or returns one message that lists each invalid entry with its index.
fn parse_all(entries: &[String]) -> Result<Vec<IpNet>, String> {
    let mut networks = Vec::with_capacity(entries.len());
    let mut invalid = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match parse(entry) {
            Ok(network) => networks.push(network),
            Err(reason) => invalid.push(format!("[{i}] {entry:?} {reason}")),
        }
    }
    if invalid.is_empty() {
        Ok(networks)
    } else {
        Err(format!(
            "{}: write each entry as a network like {EXAMPLES}, or as one IP address",
            invalid.join(", ")
        ))
    }
}

/// Parses a CIDR, or a bare address as the network of that one host (`/32` or `/128`).
fn parse(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    if let Ok(network) = entry.parse::<IpNet>() {
        return Ok(network);
    }
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Ok(IpNet::from(address));
    }

    // Name the part that is wrong.
    let Some((address, prefix)) = entry.split_once('/') else {
        return Err("is not an IP address or network".to_owned());
    };
    let Ok(address) = address.parse::<IpAddr>() else {
        return Err(format!("has an invalid IP address {address:?}"));
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    match prefix.parse::<u8>() {
        Ok(length) => Err(format!(
            "has prefix length {length}, above the maximum of {max}"
        )),
        Err(_) => Err(format!(
            "has an invalid prefix length {prefix:?}, which must be a number from 0 to {max}"
        )),
    }
}

/// Returns `network` as the gateway compares addresses: a network of IPv4-mapped IPv6
/// addresses (`::ffff:10.0.0.0/104`) as the IPv4 network it covers, since addresses are
/// compared in canonical form.
pub fn canonical(network: IpNet) -> IpNet {
    let IpNet::V6(v6) = network else {
        return network;
    };
    match v6.network().to_ipv4_mapped() {
        Some(v4) if v6.prefix_len() >= 96 => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
            .map(IpNet::V4)
            .unwrap_or(network),
        _ => network,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|entry| (*entry).to_owned()).collect()
    }

    #[test]
    fn bits_after_prefix_are_ignored() {
        let networks = parse_all(&strings(&["10.0.0.1/8"])).unwrap();
        let inside: IpAddr = "10.9.9.9".parse().unwrap();
        let outside: IpAddr = "11.0.0.1".parse().unwrap();
        assert!(networks[0].contains(&inside));
        assert!(!networks[0].contains(&outside));
    }

    #[test]
    fn bare_addresses_become_host_networks() {
        let networks = parse_all(&strings(&["10.1.2.3", "::1", "192.168.0.0/16"])).unwrap();
        let expected: Vec<IpNet> = ["10.1.2.3/32", "::1/128", "192.168.0.0/16"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        assert_eq!(networks, expected);
    }

    #[test]
    fn every_invalid_entry_is_named() {
        let message =
            parse_all(&strings(&["10.0.0.0/8", "abc", "10.0.0.0/33", "1.2.3/8"])).unwrap_err();
        assert!(
            message.contains(r#"[1] "abc" is not an IP address"#),
            "{message}"
        );
        assert!(message.contains(r#"[2] "10.0.0.0/33""#), "{message}");
        assert!(message.contains("maximum of 32"), "{message}");
        assert!(message.contains(r#"[3] "1.2.3/8""#), "{message}");
        assert!(!message.contains("[0]"), "{message}");
        assert!(message.contains(EXAMPLES), "{message}");
    }
}
