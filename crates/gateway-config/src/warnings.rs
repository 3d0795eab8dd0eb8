//! Checks for valid settings that do nothing useful or that expose more than they seem to,
//! reported as warnings rather than errors.

use crate::Problem;
use crate::method::{check_method, yaml_list};
use crate::model::{Config, DEFAULT_IPV6_PREFIX, RateLimitKey};
use crate::networks::canonical;
use crate::origin::OPAQUE_ORIGIN;
use ipnet::IpNet;

/// An example of an `allowed_origins` entry, quoted by the warning for an empty list.
const ORIGIN_EXAMPLE: &str = "https://app.example.com";

impl Config {
    /// Returns the settings that are valid but have no effect or are risky, each with the fix,
    /// or none.
    /// The gateway prints them at start and in `--check`, and serves all the same.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings = Vec::new();
        self.warn_repeated_methods(&mut warnings);
        self.warn_connect(&mut warnings);
        self.warn_method_case(&mut warnings);
        self.warn_rate_limits(&mut warnings);
        self.warn_ipv6_prefix(&mut warnings);
        self.warn_route_cors(&mut warnings);
        self.warn_cors(&mut warnings);
        self.warn_cors_methods(&mut warnings);
        self.warn_cors_max_age(&mut warnings);
        self.warn_opaque_origin(&mut warnings);
        self.warn_networks(&mut warnings);
        warnings
    }

    /// Warns about `null` in an enabled CORS policy's `allowed_origins`. The top-level list is
    /// reported once, when some route uses it unchanged, and a route's own or inherited list
    /// where the top-level one is not reported. With `allow_credentials`, validation rejects
    /// `null` before this runs.
    fn warn_opaque_origin(&self, warnings: &mut Vec<Problem>) {
        let risk = "allows every page with an opaque origin, not only yours, because \
                    browsers send Origin: null from sandboxed iframes, file: pages and some \
                    redirects, and any website can run its script in a sandboxed iframe: list \
                    the page's own origin instead where it has one, like capacitor://localhost, \
                    or keep \"null\" only if any website may read these responses";
        let opaque = |origins: &[String]| -> Vec<usize> {
            origins
                .iter()
                .enumerate()
                .filter_map(|(i, origin)| (origin == OPAQUE_ORIGIN).then_some(i))
                .collect()
        };

        let top_level = &self.cors;
        let top_level_used = self
            .routes
            .iter()
            .any(|route| route.effective_cors(top_level) == *top_level);
        let top_level_warned = top_level_used && top_level.enabled;
        if top_level_warned {
            for j in opaque(&top_level.allowed_origins) {
                warnings.push(Problem {
                    field: format!("cors.allowed_origins[{j}]"),
                    message: format!("\"null\" {risk}"),
                });
            }
        }

        for (i, route) in self.routes.iter().enumerate() {
            let cors = route.effective_cors(top_level);
            if cors == *top_level || !cors.enabled {
                continue;
            }
            if route.cors.allowed_origins.is_some() {
                for j in opaque(&cors.allowed_origins) {
                    warnings.push(Problem {
                        field: format!("routes[{i}].cors.allowed_origins[{j}]"),
                        message: format!("\"null\" {risk}"),
                    });
                }
            } else if !top_level_warned && !opaque(&cors.allowed_origins).is_empty() {
                warnings.push(Problem {
                    field: format!("routes[{i}].cors.allowed_origins"),
                    message: format!("\"null\", inherited from cors.allowed_origins, {risk}"),
                });
            }
        }
    }

    /// Warns about address lists with an entry that matches no peer, the unspecified address
    /// (`0.0.0.0` or `::` alone), and about trusting every peer as a proxy.
    fn warn_networks(&self, warnings: &mut Vec<Problem>) {
        let lists = [
            (
                "admin.allowed_clients",
                &self.admin.allowed_clients,
                "client",
            ),
            (
                "server.trusted_proxies",
                &self.server.trusted_proxies,
                "proxy",
            ),
        ];
        for (field, list, peer) in lists {
            for (i, network) in list.iter().enumerate() {
                let network = canonical(*network);
                if network.addr().is_unspecified()
                    && network.prefix_len() == network.max_prefix_len()
                {
                    warnings.push(Problem {
                        field: format!("{field}[{i}]"),
                        message: format!(
                            "{} is never a peer's address, so it matches no {peer}: list \
                             addresses or networks, like 10.0.0.0/8, or write 0.0.0.0/0 and \
                             ::/0 for every address",
                            network.addr()
                        ),
                    });
                }
            }
        }
        for (i, written) in self.server.trusted_proxies.iter().enumerate() {
            let network = canonical(*written);
            if network.prefix_len() == 0 {
                let peers = match (written, network) {
                    (IpNet::V6(_), IpNet::V4(_)) => "IPv4 peer",
                    _ => "peer",
                };
                warnings.push(Problem {
                    field: format!("server.trusted_proxies[{i}]"),
                    message: format!(
                        "{written} trusts every {peers} as a proxy, so any client can choose its \
                         own address with X-Forwarded-For, for admin access and for its rate \
                         limit: list only the addresses of your proxies"
                    ),
                });
            }
        }
    }

    /// Warns about CONNECT in a route's `methods` or in a CORS `allowed_methods`: the gateway
    /// opens no tunnels and responds to every CONNECT with 501, whatever the route allows.
    fn warn_connect(&self, warnings: &mut Vec<Problem>) {
        let lists_connect = |methods: &[String]| methods.iter().any(|method| method == "CONNECT");
        let message = "CONNECT is listed, but the gateway opens no tunnels and responds to \
                       every CONNECT with 501: remove it";
        if lists_connect(&self.cors.allowed_methods) {
            warnings.push(Problem {
                field: "cors.allowed_methods".to_owned(),
                message: message.to_owned(),
            });
        }
        for (i, route) in self.routes.iter().enumerate() {
            if route.methods.as_deref().is_some_and(lists_connect) {
                warnings.push(Problem {
                    field: format!("routes[{i}].methods"),
                    message: message.to_owned(),
                });
            }
            if route
                .cors
                .allowed_methods
                .as_deref()
                .is_some_and(lists_connect)
            {
                warnings.push(Problem {
                    field: format!("routes[{i}].cors.allowed_methods"),
                    message: message.to_owned(),
                });
            }
        }
    }

    /// Warns about an extension method with lowercase letters (`Purge`) in a route's
    /// `methods` or in a CORS `allowed_methods`. Methods are case-sensitive and clients nearly
    /// always send them in capitals, so such an entry likely matches no request, and where the
    /// list has the capitals too, it is redundant for requests that send those. It stays
    /// valid, because a client may send exactly that spelling. A standard method in another
    /// case is an error instead.
    fn warn_method_case(&self, warnings: &mut Vec<Problem>) {
        let mut lists: Vec<(String, &[String])> = vec![(
            "cors.allowed_methods".to_owned(),
            &self.cors.allowed_methods,
        )];
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(methods) = &route.methods {
                lists.push((format!("routes[{i}].methods"), methods));
            }
            if let Some(methods) = &route.cors.allowed_methods {
                lists.push((format!("routes[{i}].cors.allowed_methods"), methods));
            }
        }
        for (field, methods) in lists {
            for (j, method) in methods.iter().enumerate() {
                let capitals = method.to_ascii_uppercase();
                // Skips what validation rejects, such as a standard method in another case.
                if capitals == *method || check_method(method).is_err() {
                    continue;
                }
                let message = match methods.iter().position(|other| *other == capitals) {
                    Some(k) => format!(
                        "{method:?} is redundant for {capitals} requests, which match \
                         {field}[{k}], and because methods are case-sensitive, it matches only \
                         requests that send {method:?} as written: remove it unless clients \
                         send that spelling"
                    ),
                    None => format!(
                        "{method:?} has lowercase letters, but methods are case-sensitive and \
                         clients nearly always send them in capitals, so {capitals} requests \
                         would not match it: write {capitals:?}, unless clients send \
                         {method:?} as written"
                    ),
                };
                warnings.push(Problem {
                    field: format!("{field}[{j}]"),
                    message,
                });
            }
        }
    }

    /// Warns about a method that a route's `methods` lists more than once. The route accepts
    /// each listed method, so a repeat changes nothing, but it may hide a typo for another
    /// method.
    fn warn_repeated_methods(&self, warnings: &mut Vec<Problem>) {
        for (i, route) in self.routes.iter().enumerate() {
            let Some(methods) = route.methods.as_deref() else {
                continue;
            };
            let mut unique: Vec<&str> = Vec::with_capacity(methods.len());
            let mut repeated: Vec<&str> = Vec::new();
            for method in methods {
                if !unique.contains(&method.as_str()) {
                    unique.push(method);
                } else if !repeated.contains(&method.as_str()) {
                    repeated.push(method);
                }
            }
            let (names, verb) = match repeated.as_slice() {
                [] => continue,
                [method] => ((*method).to_owned(), "is"),
                [first @ .., last] => (format!("{} and {last}", first.join(", ")), "are"),
            };
            warnings.push(Problem {
                field: format!("routes[{i}].methods"),
                message: format!(
                    "{names} {verb} listed more than once, which has no effect: list each method \
                     once, like {}",
                    yaml_list(unique)
                ),
            });
        }
    }

    /// Warns about a route's `rate_limiting` fields when the route's rate limit is off. A route
    /// that leaves out `enabled` inherits the top-level one, and a route with `enabled: true`
    /// is limited even when the top level is not.
    fn warn_rate_limits(&self, warnings: &mut Vec<Problem>) {
        for (i, route) in self.routes.iter().enumerate() {
            let limit = &route.rate_limiting;
            if limit.enabled.unwrap_or(self.rate_limiting.enabled) {
                continue;
            }
            let set: Vec<&str> = [
                ("requests_per_second", limit.requests_per_second.is_some()),
                ("burst", limit.burst.is_some()),
                ("key", limit.key.is_some()),
                ("ipv6_prefix", limit.ipv6_prefix.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, is_set)| is_set.then_some(name))
            .collect();
            let Some((names, verb, pronoun)) = join_field_names(&set) else {
                continue;
            };
            let reason = if limit.enabled.is_some() {
                format!(
                    "this route sets enabled: false, so it is not rate limited: remove \
                     {pronoun}, or set enabled: true to limit the route"
                )
            } else {
                format!(
                    "rate_limiting.enabled is false at the top level and this route does not \
                     set enabled, so it is not rate limited: add enabled: true to this route's \
                     rate_limiting to limit it, or remove {pronoun}"
                )
            };
            warnings.push(Problem {
                field: format!("routes[{i}].rate_limiting"),
                message: format!("{names} {verb} no effect, because {reason}"),
            });
        }
    }

    /// Warns about a route's `cors` fields when CORS is off for the route. A route that leaves
    /// out `enabled` inherits the top-level one, and a route with `enabled: true` has CORS on
    /// even when the top level does not.
    fn warn_route_cors(&self, warnings: &mut Vec<Problem>) {
        for (i, route) in self.routes.iter().enumerate() {
            let cors = &route.cors;
            if cors.enabled.unwrap_or(self.cors.enabled) {
                continue;
            }
            let set: Vec<&str> = [
                "allowed_origins",
                "allowed_methods",
                "allowed_headers",
                "exposed_headers",
                "allow_credentials",
                "max_age",
            ]
            .into_iter()
            .filter(|name| cors.sets(name))
            .collect();
            let Some((names, verb, pronoun)) = join_field_names(&set) else {
                continue;
            };
            let reason = if cors.enabled.is_some() {
                format!(
                    "this route sets enabled: false, so CORS is off for this route: remove \
                     {pronoun}, or set enabled: true to turn CORS on for the route"
                )
            } else {
                format!(
                    "cors.enabled is false at the top level and this route does not set \
                     enabled, so CORS is off for this route: add enabled: true to this route's \
                     cors to turn it on, or remove {pronoun}"
                )
            };
            warnings.push(Problem {
                field: format!("routes[{i}].cors"),
                message: format!("{names} {verb} no effect, because {reason}"),
            });
        }
    }

    /// Warns about an `ipv6_prefix` set with the `global` key, where every client shares one
    /// bucket whatever its address. The top level counts as set when it is not the default,
    /// and is not warned about while a route that sets `key: client_ip` inherits its prefix.
    /// A route whose limit is off gets the warning for that instead.
    fn warn_ipv6_prefix(&self, warnings: &mut Vec<Problem>) {
        let message = "has no effect with key: global, where every client shares one bucket: \
                       remove it, or set key: client_ip for a bucket per client";
        let top_level = &self.rate_limiting;
        let inherited_by_client_key = self.routes.iter().any(|route| {
            let limit = route.effective_rate_limit(top_level);
            limit.enabled
                && limit.key == RateLimitKey::ClientIp
                && route.rate_limiting.ipv6_prefix.is_none()
        });
        if top_level.key == RateLimitKey::Global
            && top_level.ipv6_prefix != DEFAULT_IPV6_PREFIX
            && !inherited_by_client_key
        {
            warnings.push(Problem {
                field: "rate_limiting.ipv6_prefix".to_owned(),
                message: message.to_owned(),
            });
        }
        for (i, route) in self.routes.iter().enumerate() {
            let limit = route.effective_rate_limit(top_level);
            if limit.enabled
                && limit.key == RateLimitKey::Global
                && route.rate_limiting.ipv6_prefix.is_some()
            {
                warnings.push(Problem {
                    field: format!("routes[{i}].rate_limiting.ipv6_prefix"),
                    message: message.to_owned(),
                });
            }
        }
    }

    /// Warns about an enabled CORS policy with an empty `allowed_origins`, which allows no
    /// origin. The top-level policy is reported once, when some route uses it unchanged.
    fn warn_cors(&self, warnings: &mut Vec<Problem>) {
        let allows_none = |enabled: bool, origins: &[String]| enabled && origins.is_empty();
        let top_level = &self.cors;
        let top_level_used = self
            .routes
            .iter()
            .any(|route| route.effective_cors(top_level) == *top_level);
        if top_level_used && allows_none(top_level.enabled, &top_level.allowed_origins) {
            warnings.push(Problem {
                field: "cors.allowed_origins".to_owned(),
                message: format!(
                    "is empty while cors.enabled is true, so no origin is allowed and no \
                     cross-origin script can read a response: list the allowed origins, like \
                     {ORIGIN_EXAMPLE}, or \"*\" for any, or set enabled: false"
                ),
            });
        }

        for (i, route) in self.routes.iter().enumerate() {
            let cors = route.effective_cors(top_level);
            if cors == *top_level || !allows_none(cors.enabled, &cors.allowed_origins) {
                continue;
            }
            let inherited = if route.cors.allowed_origins.is_none() {
                " (inherited from cors.allowed_origins)"
            } else {
                ""
            };
            warnings.push(Problem {
                field: format!("routes[{i}].cors.allowed_origins"),
                message: format!(
                    "is empty{inherited} while CORS is enabled for this route, so no origin is \
                     allowed and no cross-origin script can read a response: list the allowed \
                     origins, like {ORIGIN_EXAMPLE}, or \"*\" for any, or set enabled: false"
                ),
            });
        }
    }

    /// Warns about an enabled CORS policy whose `max_age` is longer than any browser keeps a
    /// preflight's result: Firefox keeps it for at most 24 hours and Chromium for 2 (MDN's
    /// `Access-Control-Max-Age` page). The top level is reported when CORS is on there, and a
    /// route where it sets its own.
    fn warn_cors_max_age(&self, warnings: &mut Vec<Problem>) {
        const BROWSER_LIMIT: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);
        let message = "is longer than browsers keep a preflight's result (Firefox at most 24h, \
                       Chromium 2h), so they send preflights as often as with 24h: write 24h \
                       or less, like 2h";
        if self.cors.enabled && self.cors.max_age > BROWSER_LIMIT {
            warnings.push(Problem {
                field: "cors.max_age".to_owned(),
                message: message.to_owned(),
            });
        }
        for (i, route) in self.routes.iter().enumerate() {
            let cors = route.effective_cors(&self.cors);
            if cors.enabled && route.cors.max_age.is_some_and(|age| age > BROWSER_LIMIT) {
                warnings.push(Problem {
                    field: format!("routes[{i}].cors.max_age"),
                    message: message.to_owned(),
                });
            }
        }
    }

    /// Warns about a route with CORS on whose `methods` and effective `allowed_methods` share
    /// no method, so that every preflight on it is refused. A route that lists `GET` also
    /// takes `HEAD`.
    fn warn_cors_methods(&self, warnings: &mut Vec<Problem>) {
        for (i, route) in self.routes.iter().enumerate() {
            let cors = route.effective_cors(&self.cors);
            let Some(methods) = route.methods.as_deref() else {
                continue;
            };
            if !cors.enabled || methods.is_empty() {
                continue;
            }
            let takes = |method: &str| {
                methods.iter().any(|listed| {
                    listed.as_str() == method || (listed.as_str() == "GET" && method == "HEAD")
                })
            };
            // GET, HEAD and POST pass a preflight unlisted where the route takes them.
            let safelisted = ["GET", "HEAD", "POST"];
            if cors.allowed_methods.iter().any(|method| takes(method))
                || safelisted.iter().any(|method| takes(method))
            {
                continue;
            }
            let field = if route.cors.allowed_methods.is_some() {
                format!("routes[{i}].cors.allowed_methods")
            } else {
                format!("routes[{i}].methods")
            };
            let list = if route.cors.allowed_methods.is_some() {
                format!("routes[{i}].cors.allowed_methods")
            } else {
                "cors.allowed_methods".to_owned()
            };
            warnings.push(Problem {
                field,
                message: format!(
                    "the route takes {} and CORS allows {} in preflights, so every preflight on \
                     this route is refused (requests that need none still get the CORS \
                     headers): add the route's methods to {list}",
                    methods.join(", "),
                    if cors.allowed_methods.is_empty() {
                        "none".to_owned()
                    } else {
                        cors.allowed_methods.join(", ")
                    }
                ),
            });
        }
    }
}

/// Joins the names of the fields that a warning is about into a phrase ("a, b and c"), with
/// the verb and pronoun that agree with it, or returns `None` when there are none.
fn join_field_names(names: &[&str]) -> Option<(String, &'static str, &'static str)> {
    match names {
        [] => None,
        [name] => Some(((*name).to_owned(), "has", "it")),
        [first @ .., last] => Some((format!("{} and {last}", first.join(", ")), "have", "them")),
    }
}
