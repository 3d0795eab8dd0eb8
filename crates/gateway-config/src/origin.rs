//! The `Origin` forms that `cors.allowed_origins` accepts: those a browser sends.

/// Checks that `origin` can equal an `Origin` field that a browser sends: a scheme, `://`,
/// a host and a port other than the scheme's default, and nothing else (RFC 6454 section
/// 6.1). Returns the problem and its fix otherwise.
pub(crate) fn check_origin(origin: &str) -> Result<(), String> {
    let invalid = |reason: &str| {
        format!(
            "invalid origin {origin:?}: {reason}; write scheme and host, like \
             https://app.example.com, or \"*\""
        )
    };

    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err(invalid("it has no scheme"));
    };

    let default_port = if scheme.eq_ignore_ascii_case("https") {
        "443"
    } else if scheme.eq_ignore_ascii_case("http") {
        "80"
    } else {
        return Err(invalid("the scheme must be http or https"));
    };

    if let Some(extra) = authority.find(['/', '?', '#']) {
        let reason = match authority.as_bytes()[extra] {
            b'/' => "an origin has no path",
            b'?' => "an origin has no query",
            _ => "an origin has no fragment",
        };
        return Err(invalid(reason));
    }

    if authority.contains('@') {
        return Err(invalid("an origin has no user information"));
    }

    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let Some((address, rest)) = bracketed.split_once(']') else {
                return Err(invalid("the IPv6 address has no closing bracket"));
            };
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid("the IPv6 address is not valid"));
            }
            match rest.strip_prefix(':') {
                Some(port) => (address, Some(port)),
                None if rest.is_empty() => (address, None),
                None => return Err(invalid("only a port may follow the host")),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };

    if !host.is_ascii() {
        return Err(format!(
            "invalid origin {origin:?}: browsers send a host name outside ASCII in its ASCII \
             form (IDNA, with xn-- labels), so write that form"
        ));
    }

    let host_valid = !host.is_empty()
        && host.bytes().all(|byte| {
            byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':')
        });
    if !host_valid {
        return Err(invalid("the host is missing or not valid"));
    }

    // The port first, so that a form to write is offered only with a valid port. Browsers
    // leave out an empty port, as they leave out the default one.
    let port = match port {
        None | Some("") => None,
        Some(port) => {
            let number = port
                .bytes()
                .all(|byte| byte.is_ascii_digit())
                .then(|| port.parse::<u16>().ok())
                .flatten()
                .filter(|&number| number > 0);
            let Some(number) = number else {
                return Err(invalid("the port must be a number from 1 to 65535"));
            };
            Some(number)
        }
    };

    // Browsers send the host and port as the URL standard writes them. An IPv6 address is in
    // its shortest form, and a host that ends in a number is a dotted-decimal IPv4 address.
    // A port has no leading zeros, and the scheme's default is left out.
    let host = if let Ok(address) = host.parse::<std::net::Ipv6Addr>() {
        let shortest = match address.to_ipv4_mapped() {
            // The URL standard writes the last 32 bits in hexadecimal too.
            Some(_) => {
                let segments = address.segments();
                format!("::ffff:{:x}:{:x}", segments[6], segments[7])
            }
            None => address.to_string(),
        };
        format!("[{shortest}]")
    } else if ends_in_number(host) {
        let Some(address) = url_ipv4(host) else {
            return Err(format!(
                "invalid origin {origin:?}: browsers reject a host that ends in a number \
                 unless it is an IPv4 address, so write an address like 127.0.0.1 or a name"
            ));
        };
        address.to_string()
    } else {
        host.to_owned()
    };
    let default_port = default_port.parse::<u16>().ok();
    let written = match port.filter(|&port| Some(port) != default_port) {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    };
    if !written.eq_ignore_ascii_case(origin) {
        let reason = if port.is_some() && port == default_port {
            "browsers leave out the default port"
        } else {
            "browsers write it otherwise"
        };
        return Err(format!(
            "origin {origin:?} would match no request, because {reason}: write {written:?}"
        ));
    }
    Ok(())
}

/// Reads `host`, which ends in a number, as the URL standard reads an IPv4 address: up to four
/// dot-separated numbers in decimal, octal (a leading `0`) or hexadecimal (`0x`), the last
/// filling the remaining bytes. Returns `None` where browsers reject the host.
fn url_ipv4(host: &str) -> Option<std::net::Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        let number = match digits {
            "" if radix == 16 => 0,
            "" => return None,
            digits => u64::from_str_radix(digits, radix).ok()?,
        };
        numbers.push(number);
    }
    let last = numbers.pop()?;
    if numbers.iter().any(|&number| number > 255) {
        return None;
    }
    let free_bytes = 4 - numbers.len() as u32;
    if last >= 256u64.pow(free_bytes) {
        return None;
    }
    let leading = numbers
        .iter()
        .enumerate()
        .map(|(i, &number)| number << (8 * (3 - i as u32)))
        .sum::<u64>();
    u32::try_from(leading + last)
        .ok()
        .map(std::net::Ipv4Addr::from)
}

/// Returns whether the last label of `host` is a number (decimal, or hexadecimal after `0x`),
/// which makes the URL standard read the host as an IPv4 address.
fn ends_in_number(host: &str) -> bool {
    let last = host.strip_suffix('.').unwrap_or(host);
    let last = last.rsplit('.').next().unwrap_or(last);
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}
