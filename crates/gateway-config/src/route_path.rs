//! Route path syntax: literal segments, `:name` for one segment and a final `*name` for the rest.
//!
//! The syntax is Gin's, so configuration written for Gin-style routers loads unchanged. It is
//! translated here into the patterns of the `matchit` radix-tree router that the proxy compiles.
//! [`is_admin_path`] names the paths the gateway serves itself, which no route can receive.
//! Paths that no request can match, such as those with a `..` segment, are rejected here.

use std::borrow::Cow;

/// One router pattern produced from a route path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    /// The pattern in `matchit` syntax, `{name}` and `{*name}`, with literal segments in the
    /// form that request paths are matched in: a percent-encoded letter, digit or `-._~`
    /// decoded, and other percent-encodings in upper-case hex (`/api/%6cogin/%c3%bc` is
    /// `/api/login/%C3%BC`).
    pub pattern: String,
    /// True for the extra patterns a catch-all adds, `/api/users` and `/api/users/` for
    /// `/api/users/*rest`; an explicit route with the same path takes precedence over them.
    pub implicit: bool,
}

/// Translates a route path into router patterns.
///
/// A path ending in a catch-all (`/api/users/*rest`) also matches its bare prefix with and
/// without the final slash (`/api/users`, `/api/users/`), because clients expect the collection
/// URL to reach the same service.
///
/// # Errors
///
/// Returns a message saying what is wrong with the path and how to write it instead.
pub fn route_patterns(path: &str) -> Result<Vec<RoutePattern>, String> {
    if !path.starts_with('/') {
        return Err(format!("must start with '/', got {path:?}"));
    }
    if path.contains(['{', '}']) {
        return Err(format!(
            "braces are not allowed in {path:?}: write ':name' for one segment or '*name' for the rest"
        ));
    }
    if path.contains(['?', '#']) {
        return Err(format!(
            "{path:?} must be a path without a query or fragment"
        ));
    }
    if let Some(found) = path
        .chars()
        .find(|c| !c.is_ascii() || needs_encoding(*c as u8))
    {
        // Requests are matched on the raw path, in which clients percent-encode these
        // characters, so a route that contains them literally could never match.
        let found = match found {
            ' ' => "a space".to_owned(),
            c if c.is_ascii_control() => format!("the control character U+{:04X}", c as u32),
            c => format!("the non-ASCII character '{c}'"),
        };
        return Err(format!(
            "{path:?} contains {found}, which clients send percent-encoded, so no request would match: write the path percent-encoded as clients send it, like {:?}",
            percent_encode(path)
        ));
    }

    check_reachable(path)?;

    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut pattern = String::with_capacity(path.len() + 8);
    let mut names: Vec<&str> = Vec::new();
    let mut catch_all_prefix = None;

    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        pattern.push('/');

        if let Some(name) = segment.strip_prefix(':') {
            check_name(path, name, ':', &mut names)?;
            pattern.push('{');
            pattern.push_str(name);
            pattern.push('}');
        } else if let Some(name) = segment.strip_prefix('*') {
            if !last {
                return Err(format!(
                    "'*{name}' in {path:?} must be the last segment, because it matches the rest of the path"
                ));
            }
            check_name(path, name, '*', &mut names)?;
            catch_all_prefix = Some(pattern.clone());
            pattern.push_str("{*");
            pattern.push_str(name);
            pattern.push('}');
        } else if segment.contains([':', '*']) {
            return Err(format!(
                "segment {segment:?} of {path:?} mixes text with ':' or '*': a parameter must be a whole segment"
            ));
        } else {
            pattern.push_str(&match_form(segment));
        }
    }

    let mut patterns = vec![RoutePattern {
        pattern,
        implicit: false,
    }];
    if let Some(with_slash) = catch_all_prefix {
        let bare = with_slash.trim_end_matches('/');
        if !bare.is_empty() {
            patterns.push(RoutePattern {
                pattern: bare.to_owned(),
                implicit: true,
            });
        }
        patterns.push(RoutePattern {
            pattern: with_slash,
            implicit: true,
        });
    }
    Ok(patterns)
}

/// Returns whether the gateway serves `path` itself: `/health`, `/admin` and every path under
/// `/admin/`. The gateway handles these before routing, so a route never receives them.
///
/// Given a valid route path, it returns whether every request the route matches is such a
/// path, because `:name` and `*name` stand for whole segments. `/*rest` only loses these paths
/// and stays reachable.
pub fn is_admin_path(path: &str) -> bool {
    path == "/health" || path == "/admin" || path.starts_with("/admin/")
}

/// Checks an ASCII route path for spellings that no request path can match, or that match
/// other paths than they show. The error message names the path to write instead.
fn check_reachable(path: &str) -> Result<(), String> {
    if path.contains('\\') {
        let fixed = merge_slashes(&path.replace('\\', "/"));
        return Err(format!(
            "{path:?} contains '\\', which RFC 3986 does not allow in a path and browsers send as \
             '/', so their requests would not match: write {fixed:?}, or %5C for a literal \
             backslash"
        ));
    }
    if let Some(at) = invalid_percent_encoding(path) {
        let text: String = path[at..].chars().take(3).collect();
        return Err(format!(
            "{path:?} contains {text:?}, which is not a percent-encoding ('%' and two hex \
             digits), so no valid request path matches it: write '%' as %25, like {:?}",
            format!("{}%25{}", &path[..at], &path[at + 1..])
        ));
    }
    if let Some(segment) = dot_segment(path) {
        // The path it resolves to is offered only when it would load itself: with its
        // slashes merged, and outside the gateway's own endpoints.
        let fix = match resolve_dot_segments(path).map(|resolved| merge_slashes(&resolved)) {
            Some(resolved) if !is_admin_path(&match_form(&resolved)) => {
                format!("write the path it resolves to, {resolved:?}")
            }
            _ => "remove that segment".to_owned(),
        };
        return Err(format!(
            "segment {segment:?} of {path:?} is a '.' or '..' segment, and the gateway responds \
             400 to every request whose path has one, so no request can match: {fix}"
        ));
    }
    // A path that is the gateway's own with its slashes merged gets that problem instead.
    if path.contains("//") && !is_admin_path(&match_form(path)) {
        let merged = merge_slashes(path);
        return Err(format!(
            "{path:?} has an empty segment ('//'), but repeated slashes count as one when \
             routes are matched, so it matches only what {merged:?} matches: write {merged:?}"
        ));
    }
    Ok(())
}

/// Returns `path` in the form that routes match. Percent-encoded unreserved characters are
/// decoded (`%6C` is `l`), and other percent-encodings get upper-case hex digits. Bytes
/// outside ASCII and the ASCII characters that RFC 3986 leaves out of URIs (`"`, `<`, `>`,
/// `^`, `` ` ``, `{`, `|`, `}`) are percent-encoded, and a `%` that starts no
/// percent-encoding becomes `%25`. A `\` is read as `/`, and repeated slashes are merged
/// into one.
///
/// RFC 3986 section 6.2.2 makes the percent-encodings equivalent spellings of one path, and
/// NGINX merges slashes before it picks a location. Without this, `/api/%6Cogin` or
/// `/api//login` would reach the backend of a `/*rest` route without the methods, rate limit
/// and CORS policy of an `/api/login` route. The request is still forwarded as sent. A path
/// without `%`, `\`, `//` or a byte to encode, the usual case, is returned without a copy.
pub fn match_form(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let first = (0..bytes.len()).find(|&at| {
        let byte = bytes[at];
        MATCH_FORM_SPECIAL[usize::from(byte)] || (byte == b'/' && bytes.get(at + 1) == Some(&b'/'))
    });
    let Some(first) = first else {
        return Cow::Borrowed(path);
    };

    let mut normal = String::with_capacity(bytes.len() + 8);
    normal.push_str(&path[..first]);
    let mut at = first;
    while let Some(&byte) = bytes.get(at) {
        let mut consumed = 1;
        match byte {
            b'%' => match (bytes.get(at + 1), bytes.get(at + 2)) {
                (Some(&high), Some(&low))
                    if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() =>
                {
                    let value = hex_value(high) << 4 | hex_value(low);
                    if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                        normal.push(char::from(value));
                    } else {
                        push_encoded(&mut normal, value);
                    }
                    consumed = 3;
                }
                // A `%` that starts no percent-encoding is a literal `%`. Written as `%25`,
                // it cannot join decoded digits after it into a new one (`%%32%34` is not
                // `%24`).
                _ => normal.push_str("%25"),
            },
            // Browsers send `\` as `/`, and some servers read it so.
            b'/' | b'\\' if normal.ends_with('/') => {}
            b'\\' => normal.push('/'),
            // A character that clients should percent-encode is matched as its
            // percent-encoding.
            _ if !byte.is_ascii() || is_unsafe_ascii(byte) => push_encoded(&mut normal, byte),
            _ => normal.push(char::from(byte)),
        }
        at += consumed;
    }
    Cow::Owned(normal)
}

/// Returns whether `byte` is one of the printable ASCII characters that RFC 3986 (appendix A)
/// allows in no part of a URI, other than the space and `\`. Clients should send them
/// percent-encoded, and some send them as they are.
const fn is_unsafe_ascii(byte: u8) -> bool {
    matches!(byte, b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}')
}

/// The bytes after which [`match_form`] must copy a path: `%`, `\`, bytes outside ASCII and
/// those of [`is_unsafe_ascii`]. A table, because the scan of every request's path tests each
/// byte.
static MATCH_FORM_SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let value = byte as u8;
        table[byte] = value == b'%' || value == b'\\' || value >= 0x80 || is_unsafe_ascii(value);
        byte += 1;
    }
    table
};

/// Appends `byte` percent-encoded, with upper-case hex digits.
pub(crate) fn push_encoded(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xF)]));
}

/// Returns the value of the hexadecimal digit `digit`.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Returns `path` with each run of slashes replaced by one.
pub(crate) fn merge_slashes(path: &str) -> String {
    let mut merged = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    merged
}

/// Returns the byte index of the first `%` in `path` that two hex digits do not follow.
pub(crate) fn invalid_percent_encoding(path: &str) -> Option<usize> {
    let bytes = path.as_bytes();
    (0..bytes.len()).find(|&at| {
        bytes[at] == b'%'
            && !(bytes.get(at + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(at + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Returns the first segment of `path` that the gateway reads as `.` or `..` in a
/// request path, and so rejects with 400.
///
/// The apigateway binary's router rejects requests with this check, so that routes and
/// requests read paths alike. Backends decode paths differently, so `%2e` counts as a dot, `\`,
/// `%2f` and `%5c` end a segment as `/` does, and what follows a `;` or `%3b` in a segment
/// (its parameters) is ignored.
pub fn dot_segment(path: &str) -> Option<&str> {
    let bytes = path.as_bytes();
    let mut start = 0;
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let separator = if rest[0] == b'/' || rest[0] == b'\\' {
            1
        } else if starts_with_encoded(rest, b"2f") || starts_with_encoded(rest, b"5c") {
            3
        } else {
            at += 1;
            continue;
        };
        if dot_count(&path[start..at]).is_some() {
            return Some(&path[start..at]);
        }
        at += separator;
        start = at;
    }
    let last = &path[start..];
    dot_count(last).map(|_| last)
}

/// Returns 1 or 2 when `segment` is a `.` or `..` segment as [`dot_segment`] reads it.
fn dot_count(segment: &str) -> Option<usize> {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while let Some(&byte) = rest.first() {
        if byte == b';' || starts_with_encoded(rest, b"3b") {
            break;
        }
        if byte == b'.' {
            rest = &rest[1..];
        } else if starts_with_encoded(rest, b"2e") {
            rest = &rest[3..];
        } else {
            return None;
        }
        dots += 1;
    }
    (1..=2).contains(&dots).then_some(dots)
}

/// Returns whether `bytes` starts with `%` and the two hex digits `hex`, in either case.
fn starts_with_encoded(bytes: &[u8], hex: &[u8; 2]) -> bool {
    bytes.len() >= 3 && bytes[0] == b'%' && bytes[1..3].eq_ignore_ascii_case(hex)
}

/// Returns `path` with its `.` and `..` segments resolved as RFC 3986 section 5.2.4 resolves
/// them, or `None` when a segment also ends at `\`, `%2f` or `%5c`, where backends disagree
/// on the result.
pub(crate) fn resolve_dot_segments(path: &str) -> Option<String> {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut resolved: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let inner_separator = segment.contains('\\')
            || (0..segment.len()).any(|at| {
                let rest = &segment.as_bytes()[at..];
                starts_with_encoded(rest, b"2f") || starts_with_encoded(rest, b"5c")
            });
        if inner_separator && dot_segment(segment).is_some() {
            return None;
        }
        match dot_count(segment) {
            Some(dots) => {
                if dots == 2 {
                    resolved.pop();
                }
                // A dot segment at the end leaves the slash before it.
                if i + 1 == segments.len() {
                    resolved.push("");
                }
            }
            None => resolved.push(segment),
        }
    }
    Some(format!("/{}", resolved.join("/")))
}

fn needs_encoding(byte: u8) -> bool {
    byte == b' ' || byte.is_ascii_control() || !byte.is_ascii()
}

/// Percent-encodes the bytes of `path` that [`needs_encoding`] selects, as UTF-8, so that
/// `ü` becomes `%C3%BC`.
fn percent_encode(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len() * 3);
    for byte in path.bytes() {
        if needs_encoding(byte) {
            push_encoded(&mut encoded, byte);
        } else {
            encoded.push(char::from(byte));
        }
    }
    encoded
}

fn check_name<'a>(
    path: &str,
    name: &'a str,
    sigil: char,
    names: &mut Vec<&'a str>,
) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "{path:?} has a '{sigil}' without a name: write '{sigil}name'"
        ));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "parameter name {name:?} in {path:?} may contain only letters, digits and '_'"
        ));
    }
    if names.contains(&name) {
        return Err(format!("parameter name {name:?} appears twice in {path:?}"));
    }
    names.push(name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(path: &str) -> Vec<(String, bool)> {
        route_patterns(path)
            .unwrap()
            .into_iter()
            .map(|p| (p.pattern, p.implicit))
            .collect()
    }

    #[test]
    fn catch_all_adds_bare_prefix() {
        assert_eq!(
            patterns("/api/users/*filepath"),
            vec![
                ("/api/users/{*filepath}".to_owned(), false),
                ("/api/users".to_owned(), true),
                ("/api/users/".to_owned(), true),
            ]
        );
    }

    #[test]
    fn root_catch_all_adds_only_slash() {
        assert_eq!(
            patterns("/*rest"),
            vec![("/{*rest}".to_owned(), false), ("/".to_owned(), true)]
        );
    }

    #[test]
    fn named_segment_translates() {
        assert_eq!(
            patterns("/api/users/:id/orders"),
            vec![("/api/users/{id}/orders".to_owned(), false)]
        );
    }

    #[test]
    fn invalid_paths_are_rejected() {
        for path in [
            "api/users",
            "/api/*rest/more",
            "/api/:",
            "/api/*",
            "/api/a:b",
            "/api/{id}",
            "/api/:id/:id",
            "/api?x=1",
        ] {
            assert!(route_patterns(path).is_err(), "{path} was accepted");
        }
    }

    #[test]
    fn unencoded_characters_are_rejected_with_encoding() {
        for (path, encoded) in [
            ("/api/ünï/*rest", "/api/%C3%BCn%C3%AF/*rest"),
            ("/api/a b", "/api/a%20b"),
            ("/api/a\tb", "/api/a%09b"),
            ("/api/\u{7f}", "/api/%7F"),
        ] {
            let error = route_patterns(path).unwrap_err();
            assert!(error.contains("percent-encoded"), "{path}: {error}");
            assert!(error.contains(encoded), "{path}: {error}");
        }
    }

    #[test]
    fn match_form_normalizes_only_what_is_equivalent() {
        let cases = [
            ("/", "/"),
            ("/plain/path", "/plain/path"),
            ("/%41%7a%2D%2e%5F%7E%30", "/Az-._~0"),
            ("/%2f%3b%c3%bc", "/%2F%3B%C3%BC"),
            ("/a//b///c/", "/a/b/c/"),
            ("/%zz/%4/%", "/%25zz/%254/%25"),
            ("/%25", "/%25"),
            // Decoded digits after a stray `%` make no new percent-encoding.
            ("/a/%%32%34", "/a/%2524"),
            ("/a/%2%34", "/a/%2524"),
            ("/api/\u{fc}/1", "/api/%C3%BC/1"),
            ("/api\\login", "/api/login"),
            ("/a\\\\b/\\c", "/a/b/c"),
            // Characters that a URI must not hold match their percent-encodings.
            ("/x\"y/<a>/^`{|}", "/x%22y/%3Ca%3E/%5E%60%7B%7C%7D"),
            ("/x%22y", "/x%22y"),
        ];
        for (path, expected) in cases {
            assert_eq!(match_form(path), expected, "{path}");
        }
        assert!(matches!(match_form("/plain/path"), Cow::Borrowed(_)));
    }

    #[test]
    fn pattern_uses_match_form() {
        assert_eq!(
            patterns("/api/%6cogin/%c3%bc/%2f%7E/:id"),
            vec![("/api/login/%C3%BC/%2F~/{id}".to_owned(), false)]
        );
    }

    #[test]
    fn percent_encoded_path_is_accepted() {
        assert_eq!(
            patterns("/api/%C3%BC/:id"),
            vec![("/api/%C3%BC/{id}".to_owned(), false)]
        );
    }

    #[test]
    fn admin_paths_are_health_and_admin() {
        for path in [
            "/health",
            "/admin",
            "/admin/",
            "/admin/stats",
            "/admin/*rest",
        ] {
            assert!(is_admin_path(path), "{path}");
        }
        for path in [
            "/",
            "/*rest",
            "/:name",
            "/health/",
            "/healthz",
            "/administrator",
            "/api/admin",
        ] {
            assert!(!is_admin_path(path), "{path}");
        }
    }
}
