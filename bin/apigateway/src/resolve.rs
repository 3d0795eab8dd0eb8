//! A look-up of the backends' host names at start and in `--check`.
//!
//! A host name that does not resolve passes the file's checks, and every request and probe to
//! that backend then fails. The start does not fail for it, because the name may come to
//! resolve later (a service that is not up yet), but it warns, and `--check` prints the same
//! warning.

use gateway_config::Config;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Maximum time the look-ups take together. A name still unresolved then is reported as such,
/// so that an unreachable DNS server cannot hold up `--check`.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// A backend host name that did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The first backend field that names the host, such as `routes[0].backends[1].url`.
    pub field: String,
    /// The host name.
    pub host: String,
    /// The resolver's error, or a note that it did not return within the timeout.
    pub error: String,
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: host {:?} does not resolve ({}), so requests to this backend fail until it \
             does: check the name, or the resolver this machine uses",
            self.field, self.host, self.error
        )
    }
}

/// Looks up every distinct backend host name of `config` that is not an IP address, each on a
/// thread of its own, and returns those that failed or did not resolve within `timeout`.
pub fn unresolved_backends(config: &Config, timeout: Duration) -> Vec<Unresolved> {
    let mut names: Vec<(String, String, u16)> = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        for (j, backend) in route.backends.iter().enumerate() {
            let Ok(uri) = backend.url.parse::<http::Uri>() else {
                continue;
            };
            let Some(host) = uri.host() else {
                continue;
            };
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if bare.parse::<IpAddr>().is_ok() || names.iter().any(|(_, name, _)| name == host) {
                continue;
            }
            let field = format!("routes[{i}].backends[{j}].url");
            names.push((field, host.to_owned(), uri.port_u16().unwrap_or(80)));
        }
    }

    let (results, received) = mpsc::channel();
    for (index, (_, host, port)) in names.iter().enumerate() {
        let results = results.clone();
        let target = (host.clone(), *port);
        // A thread that the timeout leaves behind ends with its look-up, and nothing waits for
        // it.
        let _ = std::thread::Builder::new()
            .name("resolve".to_owned())
            .spawn(move || {
                let outcome = target
                    .to_socket_addrs()
                    .map(|mut addresses| addresses.next().is_some());
                let _ = results.send((index, outcome));
            });
    }
    drop(results);

    let mut answered: Vec<Option<Result<bool, std::io::Error>>> =
        names.iter().map(|_| None).collect();
    let deadline = Instant::now() + timeout;
    while answered.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok((index, outcome)) => answered[index] = Some(outcome),
            Err(_) => break,
        }
    }

    names
        .into_iter()
        .zip(answered)
        .filter_map(|((field, host, _), outcome)| {
            let error = match outcome {
                Some(Ok(true)) => return None,
                Some(Ok(false)) => "no addresses".to_owned(),
                Some(Err(error)) => error.to_string(),
                None => format!("no answer within {timeout:?}"),
            };
            Some(Unresolved { field, host, error })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config(urls: &[&str]) -> Config {
        let backends: String = urls
            .iter()
            .map(|url| format!("      - url: \"{url}\"\n"))
            .collect();
        let text = format!("routes:\n  - path: /a/*rest\n    backends:\n{backends}");
        Config::from_yaml(&text, "test.yaml").unwrap()
    }

    #[test]
    fn addresses_and_localhost_resolve() {
        let config = config(&[
            "http://127.0.0.1:9001",
            "http://[::1]:9002",
            "http://localhost:9003",
        ]);
        assert!(unresolved_backends(&config, LOOKUP_TIMEOUT).is_empty());
    }

    #[test]
    fn invalid_name_is_reported() {
        // `.invalid` is reserved never to resolve (RFC 2606).
        let config = config(&["http://127.0.0.1:9001", "http://backend.invalid:9002"]);
        let unresolved = unresolved_backends(&config, LOOKUP_TIMEOUT);
        assert_eq!(unresolved.len(), 1, "{unresolved:?}");
        assert_eq!(unresolved[0].field, "routes[0].backends[1].url");
        assert_eq!(unresolved[0].host, "backend.invalid");
        let message = unresolved[0].to_string();
        assert!(message.contains("does not resolve"), "{message}");
    }
}
