//! Route conflicts: pairs of routes that the router cannot order, found as the proxy's router
//! finds them, and described with a path that both match.
//!
//! Two routes may match the same path only where, at the first segment in which they differ,
//! one has a literal segment and the other a parameter: the literal segment wins. Routes that
//! differ only in parameter names, or that have `:name` where the other has `*name` after the
//! same segments, conflict.

use crate::model::RouteConfig;

/// The explicit patterns of the routes checked so far, in a router like the proxy's.
pub(crate) struct RouteSet {
    router: matchit::Router<usize>,
    patterns: Vec<(String, usize)>,
}

/// A pattern that conflicts with one already in a [`RouteSet`].
pub(crate) struct Conflict {
    pattern: String,
    /// The pattern it conflicts with and that pattern's route index, when found.
    other: Option<(String, usize)>,
}

impl RouteSet {
    pub(crate) fn new() -> RouteSet {
        RouteSet {
            router: matchit::Router::new(),
            patterns: Vec::new(),
        }
    }

    /// Inserts `pattern`, in `matchit` syntax, for the route at `index`.
    ///
    /// # Errors
    ///
    /// Returns the [`Conflict`] when the router cannot tell `pattern` apart from a pattern
    /// inserted before.
    pub(crate) fn insert(&mut self, pattern: &str, index: usize) -> Result<(), Conflict> {
        if self.router.insert(pattern, index).is_ok() {
            self.patterns.push((pattern.to_owned(), index));
            return Ok(());
        }

        // The router names the conflicting pattern only as far as its tree shows it, so each
        // earlier pattern is tried against this one alone.
        let other = self
            .patterns
            .iter()
            .find(|(other, _)| {
                let mut pair = matchit::Router::new();
                pair.insert(other.as_str(), ()).is_ok() && pair.insert(pattern, ()).is_err()
            })
            .cloned();
        Err(Conflict {
            pattern: pattern.to_owned(),
            other,
        })
    }
}

impl Conflict {
    /// Returns the error message for the route path `path`, as the file writes it, given the
    /// file's `routes`.
    pub(crate) fn message(&self, path: &str, routes: &[RouteConfig]) -> String {
        let Some((other, index)) = &self.other else {
            return format!(
                "{path:?} conflicts with another route: both match the same paths, so give \
                 each route a distinct path"
            );
        };
        let other_path = &routes[*index].path;
        if shape(&self.pattern) == shape(other) {
            return format!(
                "{path:?} conflicts with routes[{index}].path {other_path:?}: both match the same \
                 paths, so give each route a distinct path"
            );
        }
        let shared = match shared_path(&self.pattern, other) {
            Some(shared) => shared,
            None => "some paths".to_owned(),
        };
        format!(
            "{path:?} conflicts with routes[{index}].path {other_path:?}: both match {shared}, \
             but two routes may match the same path only where one has a literal segment and \
             the other a parameter: change one of the two paths"
        )
    }
}

/// Returns `pattern` with its parameter names left out, since the router distinguishes
/// parameters only by kind: `/a/{}/{*}` for `/a/{id}/{*rest}`.
fn shape(pattern: &str) -> String {
    let mut shape = String::with_capacity(pattern.len());
    let mut in_name = false;
    for c in pattern.chars() {
        match c {
            '{' => {
                in_name = true;
                shape.push('{');
            }
            '}' => {
                in_name = false;
                shape.push('}');
            }
            '*' if in_name => shape.push('*'),
            _ if in_name => {}
            _ => shape.push(c),
        }
    }
    shape
}

/// Returns a path that both `matchit` patterns match, or `None` when none is found. A parameter
/// takes a literal segment of the other pattern where there is one, else `1`.
fn shared_path(first: &str, second: &str) -> Option<String> {
    let first_segments: Vec<&str> = first.strip_prefix('/')?.split('/').collect();
    let second_segments: Vec<&str> = second.strip_prefix('/')?.split('/').collect();
    let mut path = String::new();
    for i in 0..first_segments.len().max(second_segments.len()) {
        let (segment, other) = match (first_segments.get(i), second_segments.get(i)) {
            (Some(segment), Some(other)) => (*segment, *other),
            _ => return None,
        };
        path.push('/');
        if is_catch_all(segment) || is_catch_all(other) {
            // A catch-all takes the rest of the other pattern, and at least one character.
            let rest = if is_catch_all(segment) {
                &second_segments[i..]
            } else {
                &first_segments[i..]
            };
            let rest: Vec<&str> = rest.iter().map(|s| sample_segment(s)).collect();
            path.push_str(&rest.join("/"));
            break;
        }
        match (is_parameter(segment), is_parameter(other)) {
            (false, false) if segment != other => return None,
            (false, _) => path.push_str(segment),
            (true, false) => path.push_str(other),
            (true, true) => path.push('1'),
        }
    }

    // Checked with the router, so that the message never names a path that one of the two
    // does not match.
    let matches = |pattern: &str| {
        let mut router = matchit::Router::new();
        router.insert(pattern, ()).is_ok() && router.at(&path).is_ok()
    };
    (matches(first) && matches(second)).then_some(path)
}

fn is_parameter(segment: &str) -> bool {
    segment.starts_with('{')
}

fn is_catch_all(segment: &str) -> bool {
    segment.starts_with("{*")
}

/// Returns `segment` as a request path spells it, with `1` for a parameter.
fn sample_segment(segment: &str) -> &str {
    if is_parameter(segment) { "1" } else { segment }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_drops_parameter_names() {
        assert_eq!(shape("/a/{id}/{*rest}"), "/a/{}/{*}");
        assert_eq!(shape("/a/b"), "/a/b");
    }

    #[test]
    fn shared_path_is_matched_by_both() {
        let cases = [
            ("/a/{id}", "/a/{*rest}", "/a/1"),
            ("/a/{*rest}", "/a/{id}/b", "/a/1/b"),
            ("/a/{x}/{*r}", "/a/{*r}", "/a/1/1"),
            ("/{x}/b", "/a/{y}", "/a/b"),
        ];
        for (first, second, shared) in cases {
            assert_eq!(
                shared_path(first, second).as_deref(),
                Some(shared),
                "{first} {second}"
            );
        }
        assert_eq!(shared_path("/a/b", "/a/c"), None);
        assert_eq!(shared_path("/a/{x}", "/a/{x}/b"), None);
    }
}
