//! Warnings for valid settings that have no effect.

use gateway_config::Config;

/// Loads `text`, which must be valid, and returns its warnings as `field: message` lines.
fn warnings(text: &str) -> Vec<String> {
    let config = match Config::from_yaml(text, "test.yaml") {
        Ok(config) => config,
        Err(error) => panic!("the file was rejected: {error}"),
    };
    config.warnings().iter().map(|w| w.to_string()).collect()
}

/// Returns a configuration of the top-level `sections` and a route to `/a/*rest` with the
/// `extra` YAML line added to it.
fn route_with(sections: &str, extra: &str) -> String {
    format!(
        "{sections}\nroutes:\n  - path: /a/*rest\n    backends: [{{url: \"http://127.0.0.1:9001\"}}]\n    {extra}\n"
    )
}

#[test]
fn route_rate_limit_without_enabled_warns() {
    let found = warnings(&route_with(
        "",
        "rate_limiting: {requests_per_second: 5, burst: 10}",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "routes[0].rate_limiting: requests_per_second and burst have no effect, because \
             rate_limiting.enabled is false at the top level"
        ),
        "{found:#?}"
    );
    assert!(found[0].contains("add enabled: true"), "{found:#?}");
}

#[test]
fn route_rate_limit_turned_off_warns() {
    for top_level in ["", "rate_limiting: {enabled: true}"] {
        let found = warnings(&route_with(
            top_level,
            "rate_limiting: {enabled: false, key: global}",
        ));
        assert_eq!(found.len(), 1, "{top_level}: {found:#?}");
        assert!(
            found[0].starts_with(
                "routes[0].rate_limiting: key has no effect, because this route sets enabled: false"
            ),
            "{top_level}: {found:#?}"
        );
        assert!(found[0].contains("remove it"), "{top_level}: {found:#?}");
    }
}

#[test]
fn effective_rate_limits_do_not_warn() {
    let cases = [
        ("", "rate_limiting: {enabled: true, burst: 10}"),
        (
            "rate_limiting: {enabled: true}",
            "rate_limiting: {burst: 10}",
        ),
        ("", "rate_limiting: {enabled: false}"),
        ("", "rate_limiting: {}"),
        (
            "rate_limiting: {enabled: false, burst: 10}",
            "methods: [GET]",
        ),
    ];
    for (top_level, route) in cases {
        let found = warnings(&route_with(top_level, route));
        assert!(found.is_empty(), "{top_level} {route}: {found:#?}");
    }
}

#[test]
fn repeated_method_warns() {
    let found = warnings(&route_with("", "methods: [GET, POST, GET]"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        found[0],
        "routes[0].methods: GET is listed more than once, which has no effect: list each method \
         once, like [\"GET\", \"POST\"]"
    );

    let found = warnings(&route_with(
        "",
        "methods: [PUT, GET, PUT, DELETE, GET, PUT]",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].methods: PUT and GET are listed more than once"),
        "{found:#?}"
    );
    assert!(
        found[0].ends_with(r#"like ["PUT", "GET", "DELETE"]"#),
        "{found:#?}"
    );
}

#[test]
fn connect_in_methods_warns() {
    let found = warnings(&route_with(
        "cors: {enabled: true, allowed_methods: [GET, CONNECT]}",
        "methods: [CONNECT, GET]\n    cors: {allowed_methods: [CONNECT]}",
    ));
    let fields: Vec<&str> = found
        .iter()
        .filter(|warning| warning.contains("responds to every CONNECT with 501"))
        .map(|warning| warning.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        fields,
        [
            "cors.allowed_methods",
            "routes[0].methods",
            "routes[0].cors.allowed_methods"
        ],
        "{found:#?}"
    );
}

#[test]
fn distinct_methods_do_not_warn() {
    // GET takes HEAD as well, but listing both is no repeat.
    for methods in ["[GET]", "[GET, HEAD]", "[GET, POST, PUT, DELETE]"] {
        let found = warnings(&route_with("", &format!("methods: {methods}")));
        assert!(found.is_empty(), "{methods}: {found:#?}");
    }
}

#[test]
fn route_cors_without_enabled_warns() {
    let found = warnings(&route_with(
        "",
        "cors: {allowed_origins: [\"https://app.example.com\"]}",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "routes[0].cors: allowed_origins has no effect, because cors.enabled is false at \
             the top level and this route does not set enabled"
        ),
        "{found:#?}"
    );
    assert!(found[0].contains("add enabled: true"), "{found:#?}");

    let found = warnings(&route_with(
        "cors: {enabled: false}",
        "cors: {allowed_methods: [GET], allowed_headers: [X-Token], max_age: 1m}",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "routes[0].cors: allowed_methods, allowed_headers and max_age have no effect"
        ),
        "{found:#?}"
    );
    assert!(found[0].contains("or remove them"), "{found:#?}");
}

#[test]
fn route_cors_turned_off_warns() {
    for top_level in ["", "cors: {enabled: true}"] {
        let found = warnings(&route_with(
            top_level,
            "cors: {enabled: false, exposed_headers: [X-Id]}",
        ));
        assert_eq!(found.len(), 1, "{top_level}: {found:#?}");
        assert!(
            found[0].starts_with(
                "routes[0].cors: exposed_headers has no effect, because this route sets \
                 enabled: false"
            ),
            "{top_level}: {found:#?}"
        );
        assert!(found[0].contains("remove it"), "{top_level}: {found:#?}");
    }
}

#[test]
fn effective_route_cors_does_not_warn() {
    let cases = [
        ("", "cors: {enabled: true, exposed_headers: [X-Id]}"),
        ("cors: {enabled: true}", "cors: {exposed_headers: [X-Id]}"),
        ("", "cors: {enabled: false}"),
        ("", "cors: {}"),
        ("cors: {enabled: false, max_age: 1m}", "methods: [GET]"),
    ];
    for (top_level, route) in cases {
        let found = warnings(&route_with(top_level, route));
        assert!(found.is_empty(), "{top_level} {route}: {found:#?}");
    }
}

#[test]
fn cors_without_origins_warns() {
    let found = warnings(&route_with(
        "cors: {enabled: true, allowed_origins: []}",
        "methods: [GET]",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("cors.allowed_origins: is empty while cors.enabled is true"),
        "{found:#?}"
    );
    assert!(found[0].contains("https://app.example.com"), "{found:#?}");

    let found = warnings(&route_with(
        "",
        "cors: {enabled: true, allowed_origins: []}",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].cors.allowed_origins: is empty while CORS is enabled"),
        "{found:#?}"
    );

    // The route turns CORS on and keeps the top-level list, which is empty.
    let found = warnings(&route_with(
        "cors: {allowed_origins: []}",
        "cors: {enabled: true}",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "routes[0].cors.allowed_origins: is empty (inherited from cors.allowed_origins)"
        ),
        "{found:#?}"
    );
}

#[test]
fn unused_or_disabled_empty_origins_do_not_warn() {
    let cases = [
        ("cors: {allowed_origins: []}", "methods: [GET]"),
        (
            "cors: {enabled: true, allowed_origins: []}",
            "cors: {allowed_origins: [\"*\"]}",
        ),
        (
            "cors: {enabled: true, allowed_origins: []}",
            "cors: {enabled: false}",
        ),
        ("cors: {enabled: true}", "methods: [GET]"),
    ];
    for (top_level, route) in cases {
        let found = warnings(&route_with(top_level, route));
        assert!(found.is_empty(), "{top_level} {route}: {found:#?}");
    }
}

#[test]
fn null_origin_warns() {
    let found = warnings(&route_with(
        "cors: {enabled: true, allowed_origins: [\"capacitor://localhost\", \"null\"]}",
        "methods: [GET]",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "cors.allowed_origins[1]: \"null\" allows every page with an opaque origin"
        ),
        "{found:#?}"
    );
    assert!(
        found[0].contains("any website can run its script in a sandboxed iframe"),
        "{found:#?}"
    );

    let found = warnings(&route_with(
        "cors: {enabled: true}",
        "cors: {allowed_origins: [\"null\"]}",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].cors.allowed_origins[0]: \"null\" allows"),
        "{found:#?}"
    );

    // The route turns CORS on and keeps the top-level list, which contains "null".
    let found = warnings(&route_with(
        "cors: {allowed_origins: [\"null\"]}",
        "cors: {enabled: true}",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "routes[0].cors.allowed_origins: \"null\", inherited from cors.allowed_origins, \
             allows"
        ),
        "{found:#?}"
    );
}

#[test]
fn disabled_null_origin_does_not_warn() {
    let cases = [
        ("cors: {allowed_origins: [\"null\"]}", "methods: [GET]"),
        (
            "cors: {enabled: true, allowed_origins: [\"null\"]}",
            "cors: {enabled: false}",
        ),
    ];
    for (top_level, route) in cases {
        let found = warnings(&route_with(top_level, route));
        assert!(found.is_empty(), "{top_level} {route}: {found:#?}");
    }

    // The route's list has no effect, which is the only warning it gets.
    let found = warnings(&route_with(
        "cors: {enabled: true}",
        "cors: {enabled: false, allowed_origins: [\"null\"]}",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].cors: allowed_origins has no effect"),
        "{found:#?}"
    );
}

#[test]
fn committed_config_files_have_no_warnings() {
    for name in ["gateway.yaml", "gateway.example.yaml"] {
        let path = format!("{}/../../config/{name}", env!("CARGO_MANIFEST_DIR"));
        let config = match Config::load(std::path::Path::new(&path)) {
            Ok(config) => config,
            Err(error) => panic!("{name}: {error}"),
        };
        assert!(
            config.warnings().is_empty(),
            "{name}: {:#?}",
            config.warnings()
        );
    }
}

#[test]
fn ipv6_prefix_with_global_key_warns() {
    let found = warnings(&route_with(
        "rate_limiting: {enabled: true, key: global, ipv6_prefix: 48}",
        "rate_limiting: {ipv6_prefix: 56}",
    ));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("rate_limiting.ipv6_prefix: has no effect with key: global"),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("routes[0].rate_limiting.ipv6_prefix: has no effect"),
        "{found:#?}"
    );
}

#[test]
fn ipv6_prefix_with_client_key_does_not_warn() {
    let found = warnings(&route_with(
        "rate_limiting: {enabled: true, ipv6_prefix: 48}",
        "rate_limiting: {ipv6_prefix: 128}",
    ));
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn inherited_ipv6_prefix_does_not_warn() {
    // The route keys clients by the top-level /48, so removing it would change the buckets.
    let found = warnings(&route_with(
        "rate_limiting: {enabled: true, key: global, ipv6_prefix: 48}",
        "rate_limiting: {key: client_ip}",
    ));
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn cors_methods_disjoint_from_route_warns() {
    let found = warnings(&route_with(
        "cors: {enabled: true}",
        "methods: [PATCH]\n    cors: {allowed_methods: [GET]}",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "routes[0].cors.allowed_methods: the route takes PATCH and CORS allows GET in \
             preflights, so every preflight on this route is refused"
        ),
        "{found:#?}"
    );

    assert!(
        found[0].ends_with("add the route's methods to routes[0].cors.allowed_methods"),
        "{found:#?}"
    );

    // The top-level list (GET, POST, PUT, DELETE) shares none with PATCH either.
    let found = warnings(&route_with("cors: {enabled: true}", "methods: [PATCH]"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with("routes[0].methods: "), "{found:#?}");
    assert!(
        found[0].ends_with("add the route's methods to cors.allowed_methods"),
        "{found:#?}"
    );

    // GET takes HEAD, so a HEAD-only policy shares a method with it.
    let found = warnings(&route_with(
        "cors: {enabled: true}",
        "methods: [GET]\n    cors: {allowed_methods: [HEAD]}",
    ));
    assert!(found.is_empty(), "{found:#?}");
    let found = warnings(&route_with("cors: {enabled: false}", "methods: [PATCH]"));
    assert!(found.is_empty(), "{found:#?}");

    // GET, HEAD and POST pass a preflight unlisted, so a route that takes one of them gets
    // some preflights through whatever the policy lists.
    for methods in ["[GET]", "[HEAD]", "[POST]", "[GET, POST]"] {
        let found = warnings(&route_with(
            "cors: {enabled: true}",
            &format!("methods: {methods}\n    cors: {{allowed_methods: [PUT]}}"),
        ));
        assert!(found.is_empty(), "{methods}: {found:#?}");
    }
}

#[test]
fn unmatched_or_open_networks_warned() {
    let found = warnings(
        r#"
server:
  trusted_proxies: ["0.0.0.0/0", "::"]
admin:
  allowed_clients: ["0.0.0.0", "127.0.0.1"]
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
"#,
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].starts_with(
            "admin.allowed_clients[0]: 0.0.0.0 is never a peer's address, so it matches no client"
        ),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with(
            "server.trusted_proxies[1]: :: is never a peer's address, so it matches no proxy"
        ),
        "{found:#?}"
    );
    assert!(
        found[2].starts_with("server.trusted_proxies[0]: 0.0.0.0/0 trusts every peer as a proxy"),
        "{found:#?}"
    );
}

/// The gateway compares IPv4-mapped IPv6 addresses as IPv4, so the warnings do too.
#[test]
fn mapped_networks_warned_as_ipv4() {
    let found = warnings(
        r#"
server:
  trusted_proxies: ["::ffff:0.0.0.0/96", "::ffff:0.0.0.0"]
routes:
  - path: "/a"
    backends: [{url: "http://127.0.0.1:1"}]
"#,
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("server.trusted_proxies[1]: 0.0.0.0 is never a peer's address"),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with(
            "server.trusted_proxies[0]: ::ffff:0.0.0.0/96 trusts every IPv4 peer as a proxy"
        ),
        "{found:#?}"
    );
}

#[test]
fn cors_max_age_past_browser_limit_warns() {
    let found = warnings(&route_with(
        "cors: {enabled: true, max_age: 30d}",
        "cors: {max_age: 25h}",
    ));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("cors.max_age: is longer than"),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("routes[0].cors.max_age: is longer than"),
        "{found:#?}"
    );
    assert!(found[0].contains("24h"), "{found:#?}");

    let within = warnings(&route_with("cors: {enabled: true, max_age: 24h}", ""));
    assert!(within.is_empty(), "{within:#?}");
    let disabled = warnings(&route_with("cors: {enabled: false, max_age: 30d}", ""));
    assert!(disabled.is_empty(), "{disabled:#?}");
}
