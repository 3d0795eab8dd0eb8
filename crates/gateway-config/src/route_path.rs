//! Route path syntax: literal segments, `:name` for one segment and a final `*name` for the rest.
//!
//! The syntax is Gin's, so configuration written for Gin-style routers loads unchanged. It is
//! translated here into the patterns of the `matchit` radix-tree router that the proxy compiles.
//! [`is_admin_path`] names the paths the gateway serves itself, which no route can receive.

/// One router pattern produced from a route path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    /// The pattern in `matchit` syntax: `{name}` and `{*name}`.
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
            pattern.push_str(segment);
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

fn needs_encoding(byte: u8) -> bool {
    byte == b' ' || byte.is_ascii_control() || !byte.is_ascii()
}

/// Percent-encodes the bytes of `path` that [`needs_encoding`] selects, as UTF-8, so that
/// `ü` becomes `%C3%BC`.
fn percent_encode(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len() * 3);
    for byte in path.bytes() {
        if needs_encoding(byte) {
            encoded.push_str(&format!("%{byte:02X}"));
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
