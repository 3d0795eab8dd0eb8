//! Checks of `cors.allowed_origins` entries against the `Origin` values that browsers send.

use std::net::Ipv6Addr;

/// The serialization of an opaque origin (RFC 6454 section 6.2), which browsers send from
/// sandboxed iframes, `file:` pages and some redirects.
pub(crate) const OPAQUE_ORIGIN: &str = "null";

/// Checks that `origin` can equal an `Origin` field that a browser sends: `null`, or a scheme,
/// `://`, a host and a port other than the scheme's default, and nothing else (RFC 6454
/// section 6.1). Returns the problem and its fix otherwise.
pub(crate) fn check_origin(origin: &str) -> Result<(), String> {
    if origin == OPAQUE_ORIGIN {
        return Ok(());
    }
    if origin.eq_ignore_ascii_case(OPAQUE_ORIGIN) {
        return Err(format!(
            "origin {origin:?} would match no request, because browsers write the opaque \
             origin in lowercase: write \"{OPAQUE_ORIGIN}\""
        ));
    }

    let invalid = |reason: &str| {
        format!(
            "invalid origin {origin:?}: {reason}; write scheme and host, like \
             https://app.example.com, or \"*\""
        )
    };

    if let Some(reason) = unsent_scheme(origin) {
        return Err(format!("invalid origin {origin:?}: {reason}"));
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        if origin.contains(':') {
            return Err(invalid("it has no \"//\" and host after its scheme"));
        }
        return Err(invalid("it has no scheme"));
    };

    // Only http and https have a default port here. Every other scheme that a browser sends
    // in an origin, such as capacitor or chrome-extension, has none.
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else {
        check_scheme(origin, scheme)?;
        None
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
        // A Firefox add-on ID often has the form of an e-mail address.
        if scheme.eq_ignore_ascii_case("moz-extension") {
            return Err(format!("invalid origin {origin:?}: {MOZ_EXTENSION_FIX}"));
        }
        return Err(invalid("an origin has no user information"));
    }

    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let Some((address, rest)) = bracketed.split_once(']') else {
                return Err(invalid("the IPv6 address has no closing bracket"));
            };
            if address.parse::<Ipv6Addr>().is_err() {
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

    // Other schemes get the generic message below, because the URL standard percent-encodes
    // a host outside ASCII there rather than convert it with IDNA.
    if !host.is_ascii() && default_port.is_some() {
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

    let Some(default_port) = default_port else {
        return check_app_origin(origin, scheme, host, port);
    };

    // Browsers send the host and port as the URL standard writes them. An IPv6 address is in
    // its shortest form, and a host that ends in a number is a dotted-decimal IPv4 address.
    // A port has no leading zeros, and the scheme's default is left out.
    let host = if let Ok(address) = host.parse::<Ipv6Addr>() {
        url_ipv6(address)
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
    let default_port = Some(default_port);
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

/// Returns `address` in brackets as the URL standard writes an IPv6 host: in its shortest form,
/// with an IPv4-mapped address in hexadecimal too.
fn url_ipv6(address: Ipv6Addr) -> String {
    let shortest = match address.to_ipv4_mapped() {
        Some(_) => {
            let segments = address.segments();
            format!("::ffff:{:x}:{:x}", segments[6], segments[7])
        }
        None => address.to_string(),
    };
    format!("[{shortest}]")
}

/// Checks a scheme other than http and https: its syntax (RFC 3986 section 3.1), and that
/// browsers can send an origin with it. Returns the problem and its fix otherwise.
fn check_scheme(origin: &str, scheme: &str) -> Result<(), String> {
    let mut bytes = scheme.bytes();
    let valid = bytes.next().is_some_and(|byte| byte.is_ascii_alphabetic())
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.'));
    if !valid {
        return Err(format!(
            "invalid origin {origin:?}: a scheme is a letter followed by letters, digits, '+', \
             '-' or '.'; write scheme and host, like https://app.example.com or \
             capacitor://localhost"
        ));
    }

    Ok(())
}

/// Returns why no browser sends `origin`, whose scheme the URL standard treats specially,
/// with what to write instead, or `None` for any other scheme.
fn unsent_scheme(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once(':').unwrap_or(("", ""));
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "blob" || scheme == "filesystem" {
        return Some(inner_origin_advice(rest));
    }
    let reason = match scheme.as_str() {
        "file" => {
            "browsers send \"null\" as the origin of a file: page, so write \"null\" to \
             allow such pages, which allows every page with an opaque origin too"
        }
        "data" | "about" | "javascript" => {
            "such pages have an opaque origin, which browsers send as \"null\", so write \
             \"null\" to allow them, which allows every page with an opaque origin too"
        }
        "ws" | "wss" => {
            "a WebSocket handshake carries the origin of the page that opened it, so write \
             that page's origin, like https://app.example.com"
        }
        "ftp" => {
            "current browsers load no pages over ftp (Chrome 95 and Firefox 90 removed it), \
             so no request carries an ftp: origin"
        }
        _ => return None,
    };
    Some(reason.to_owned())
}

/// Returns the advice for a `blob:` or `filesystem:` URL, whose origin is that of the URL
/// inside it, `inner`: write that origin, or `null` for an opaque one.
fn inner_origin_advice(inner: &str) -> String {
    let lead = "a blob: or filesystem: URL has the origin of the page that made it";
    let inner_origin = inner.split_once("://").and_then(|(scheme, rest)| {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
        (http && !host.is_empty()).then(|| format!("{}://{host}", scheme.to_ascii_lowercase()))
    });
    match inner_origin {
        Some(origin) => format!("{lead}, so write {origin:?}"),
        None if inner.starts_with("null") || inner.to_ascii_lowercase().starts_with("file:") => {
            format!("{lead}, which is opaque here, so write \"null\"")
        }
        None => format!("{lead}, so write that page's origin, like https://app.example.com"),
    }
}

/// Checks the host and port of an origin whose scheme is neither http nor https, such as
/// `capacitor://localhost` or `chrome-extension://<id>`, once both are valid.
///
/// The URL standard keeps the host of such a URL as written (an opaque host), apart from an
/// IPv6 address, so the gateway compares these origins exactly. Browsers write the scheme in
/// lowercase, and there is no default port to leave out.
fn check_app_origin(
    origin: &str,
    scheme: &str,
    host: &str,
    port: Option<u16>,
) -> Result<(), String> {
    let lowercase_scheme = scheme.to_ascii_lowercase();
    let written_host = match host.parse::<Ipv6Addr>() {
        Ok(address) => url_ipv6(address),
        Err(_) => extension_host(origin, &lowercase_scheme, host, port)?,
    };
    let written = match port {
        Some(port) => format!("{lowercase_scheme}://{written_host}:{port}"),
        None => format!("{lowercase_scheme}://{written_host}"),
    };
    if written == origin {
        return Ok(());
    }

    let reason = if scheme != lowercase_scheme {
        "browsers write the scheme in lowercase"
    } else if written_host.eq_ignore_ascii_case(host) && written_host != host {
        "browsers write the extension ID in lowercase"
    } else {
        "browsers write it otherwise"
    };
    Err(format!(
        "origin {origin:?} would match no request, because {reason}: write {written:?}"
    ))
}

/// Returns the host that a browser writes for an extension's origin, which is the extension's
/// ID in lowercase, or the problem when `host` cannot be such an ID. Returns `host` unchanged
/// for a scheme that is no extension scheme.
///
/// Chromium-based browsers, Chrome and Edge among them, use `chrome-extension://` with an ID
/// of 32 letters from a to p. Firefox uses `moz-extension://` with a UUID that it chooses for
/// each installation.
fn extension_host(
    origin: &str,
    scheme: &str,
    host: &str,
    port: Option<u16>,
) -> Result<String, String> {
    let (valid, fix) = match scheme {
        "chrome-extension" => (
            host.len() == 32
                && host
                    .bytes()
                    .all(|byte| (b'a'..=b'p').contains(&byte.to_ascii_lowercase())),
            "an extension ID is 32 letters from a to p, as chrome://extensions shows it",
        ),
        "moz-extension" => (is_uuid(host), MOZ_EXTENSION_FIX),
        _ => return Ok(host.to_owned()),
    };
    if !valid {
        return Err(format!("invalid origin {origin:?}: {fix}"));
    }
    if port.is_some() {
        return Err(format!(
            "invalid origin {origin:?}: an extension's origin has no port: remove it"
        ));
    }
    Ok(host.to_ascii_lowercase())
}

/// The problem with a `moz-extension://` origin whose host is no UUID.
const MOZ_EXTENSION_FIX: &str = "Firefox sends the internal UUID that it gives each \
    installation, not the add-on ID, as about:debugging shows it, like \
    moz-extension://0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// Returns whether `text` is a UUID in the 8-4-4-4-12 form of hexadecimal digits.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths = groups.iter().map(|group| group.len());
    groups.len() == 5
        && lengths.eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|group| group.bytes().all(|byte| byte.is_ascii_hexdigit()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_and_opaque_origins_accepted() {
        let origins = [
            "null",
            "capacitor://localhost",
            "ionic://localhost",
            "tauri://localhost",
            "app://localhost",
            "app://.",
            "chrome-extension://abcdefghijklmnopabcdefghijklmnop",
            "moz-extension://0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            "safari-web-extension://0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D",
            "my-app+v2.test://Local_Host~1:8080",
            "app://127.1",
            "app://[::1]:3000",
        ];
        for origin in origins {
            assert_eq!(check_origin(origin), Ok(()), "{origin}");
        }
    }

    /// Each case is an origin and a part of its message. The http and https forms are covered
    /// by the loading tests.
    #[test]
    fn app_origin_problems_named() {
        let cases = [
            ("NULL", "write \"null\""),
            ("Null", "browsers write the opaque origin in lowercase"),
            (
                "Capacitor://localhost",
                "because browsers write the scheme in lowercase: write \"capacitor://localhost\"",
            ),
            ("TAURI://localhost", "write \"tauri://localhost\""),
            ("capacitor://localhost/", "an origin has no path"),
            ("capacitor://localhost/index.html", "an origin has no path"),
            ("app://localhost?x=1", "an origin has no query"),
            ("app://localhost#top", "an origin has no fragment"),
            ("app://user@localhost", "an origin has no user information"),
            ("app://", "the host is missing or not valid"),
            ("app://local host", "the host is missing or not valid"),
            ("app://bücher", "the host is missing or not valid"),
            (
                "app://localhost:0",
                "the port must be a number from 1 to 65535",
            ),
            (
                "app://localhost:65536",
                "the port must be a number from 1 to 65535",
            ),
            (
                "app://localhost:",
                "browsers write it otherwise: write \"app://localhost\"",
            ),
            ("app://localhost:08080", "write \"app://localhost:8080\""),
            ("app://[0:0::1]", "write \"app://[::1]\""),
            ("app://[::1", "the IPv6 address has no closing bracket"),
            (
                "1app://localhost",
                "a scheme is a letter followed by letters",
            ),
            (
                "my_app://localhost",
                "a scheme is a letter followed by letters",
            ),
            ("://localhost", "a scheme is a letter followed by letters"),
            (
                "file:///home/user/index.html",
                "write \"null\" to allow such pages",
            ),
            ("wss://app.example.com", "write that page's origin"),
            ("WS://app.example.com", "write that page's origin"),
            ("ftp://a.example", "no request carries an ftp: origin"),
            (
                "chrome-extension://ABCDEFGHIJKLMNOPABCDEFGHIJKLMNOP",
                "browsers write the extension ID in lowercase: write \
                 \"chrome-extension://abcdefghijklmnopabcdefghijklmnop\"",
            ),
            (
                "chrome-extension://abcdefghijklmnopqrstuvwxyzabcdef",
                "an extension ID is 32 letters from a to p",
            ),
            (
                "chrome-extension://abcdefghijklmnop",
                "an extension ID is 32 letters from a to p",
            ),
            (
                "chrome-extension://abcdefghijklmnopabcdefghijklmnop:443",
                "an extension's origin has no port",
            ),
            (
                "moz-extension://0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D",
                "write \"moz-extension://0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\"",
            ),
            (
                "moz-extension://my-extension@example.com",
                "not the add-on ID",
            ),
            (
                "moz-extension://0a1b2c3d4e5f4a6b8c7d9e0f1a2b3c4d",
                "Firefox sends the internal UUID",
            ),
        ];
        for (origin, expected) in cases {
            let message = check_origin(origin).expect_err(origin);
            assert!(
                message.contains(expected),
                "{origin}: expected {expected:?} in {message:?}"
            );
            assert!(
                message.contains(&format!("{origin:?}")),
                "{origin}: the message does not quote the origin: {message:?}"
            );
        }
    }

    /// The checks of http and https origins are unchanged: they still take any ASCII case,
    /// and still read a numeric host as an IPv4 address.
    #[test]
    fn http_origins_keep_their_rules() {
        assert_eq!(check_origin("HTTPS://App.Example.com"), Ok(()));
        assert_eq!(check_origin("http://[::1]:8080"), Ok(()));
        let numeric = check_origin("http://127.1").expect_err("http://127.1");
        assert!(numeric.contains("write \"http://127.0.0.1\""), "{numeric}");
    }
}
