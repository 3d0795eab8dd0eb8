//! The methods that `routes[].methods` and CORS `allowed_methods` accept, reject and warn about.

use gateway_config::{Config, ConfigError};

/// Returns a configuration with `methods` as the route's methods and as the allowed methods
/// of the top-level CORS policy and of the route's own. The route's policy differs from the
/// top level's in `max_age`, so that both are checked.
fn listing(methods: &str) -> String {
    format!(
        r#"
cors: {{enabled: true, allowed_origins: ["*"], allowed_methods: {methods}}}
routes:
  - path: /dav/*rest
    backends: [{{url: "http://127.0.0.1:9001"}}]
    methods: {methods}
    cors: {{allowed_methods: {methods}, max_age: 5m}}
"#
    )
}

/// Loads `text` and returns its problems as `field: message` lines, or none when it loads.
fn problems(text: &str) -> Vec<String> {
    match Config::from_yaml(text, "test.yaml") {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("expected validation problems, got {other}"),
    }
}

/// Loads `text`, which must be valid, and returns its warnings as `field: message` lines.
fn warnings(text: &str) -> Vec<String> {
    match Config::from_yaml(text, "test.yaml") {
        Ok(config) => config.warnings().iter().map(ToString::to_string).collect(),
        Err(error) => panic!("the file was rejected: {error}"),
    }
}

#[test]
fn extension_methods_load() {
    let methods = "[GET, PURGE, PROPFIND, PROPPATCH, MKCOL, COPY, MOVE, LOCK, UNLOCK, REPORT, \
                   QUERY, X-CUSTOM_1.0, \"!#$%&'*+-.^_`|~\"]";
    let text = listing(methods);
    assert_eq!(problems(&text), Vec::<String>::new());
    assert_eq!(warnings(&text), Vec::<String>::new());

    let config = Config::from_yaml(&text, "test.yaml").unwrap();
    let listed = config.routes[0].methods.as_deref().unwrap();
    assert_eq!(listed[1], "PURGE");
    assert_eq!(listed[12], "!#$%&'*+-.^_`|~");
    assert_eq!(config.cors.allowed_methods[2], "PROPFIND");
}

#[test]
fn longest_method_loads() {
    let longest = "A".repeat(32);
    assert_eq!(
        problems(&listing(&format!("[{longest}]"))),
        Vec::<String>::new()
    );
}

#[test]
fn method_outside_token_rejected() {
    let cases = [
        ("\"PUR GE\"", "\"PUR GE\""),
        ("\"GET/1\"", "\"GET/1\""),
        ("\"PURGE:\"", "\"PURGE:\""),
        ("\"(PURGE)\"", "\"(PURGE)\""),
        ("\"P\\u00dcRGE\"", "\"P\u{dc}RGE\""),
    ];
    for (written, quoted) in cases {
        let found = problems(&listing(&format!("[{written}]")));
        let message = format!(
            "invalid HTTP method {quoted}: a method is one token of letters, digits and the \
             characters !#$%&'*+-.^_`|~, with no spaces, like GET or PURGE"
        );
        let expected = [
            format!("routes[0].methods[0]: {message}"),
            format!("routes[0].cors.allowed_methods[0]: {message}"),
            format!("cors.allowed_methods[0]: {message}"),
        ];
        assert_eq!(found, expected, "{written}");
    }
}

#[test]
fn empty_method_rejected() {
    let found = problems(&listing("[GET, \"\"]"));
    assert_eq!(
        found[0],
        "routes[0].methods[1]: the method is empty: write a method name, like GET or PURGE"
    );
    assert_eq!(found.len(), 3, "{found:#?}");
}

#[test]
fn methods_in_one_item_get_list() {
    let cases = [
        ("\"GET, POST\"", "[GET, POST]"),
        ("\"GET POST\"", "[GET, POST]"),
        ("\"GET,POST\"", "[GET, POST]"),
        ("\"PURGE, BAN\"", "[PURGE, BAN]"),
    ];
    for (written, list) in cases {
        let found = problems(&listing(&format!("[{written}]")));
        assert!(
            found[0].starts_with("routes[0].methods[0]: invalid HTTP method"),
            "{found:#?}"
        );
        assert!(
            found[0].ends_with(&format!(
                "list each method as an item of its own, like {list}"
            )),
            "{found:#?}"
        );
    }
}

#[test]
fn overlong_method_rejected() {
    let overlong = "A".repeat(33);
    let found = problems(&listing(&format!("[{overlong}]")));
    assert_eq!(
        found[0],
        format!(
            "routes[0].methods[0]: invalid HTTP method \"{overlong}\": it is 33 bytes long, and \
             a method may have at most 32 bytes: write the method name alone, like PURGE"
        )
    );
    assert_eq!(found.len(), 3, "{found:#?}");
}

#[test]
fn standard_method_in_lowercase_rejected() {
    for (written, capitals) in [("get", "GET"), ("Post", "POST"), ("dElEtE", "DELETE")] {
        let found = problems(&listing(&format!("[{written}]")));
        let message = format!(
            "\"{written}\" matches no request, because methods are case-sensitive and clients \
             send {capitals} in capitals: write it in capitals: \"{capitals}\""
        );
        assert_eq!(found[0], format!("routes[0].methods[0]: {message}"));
        assert_eq!(
            found[1],
            format!("routes[0].cors.allowed_methods[0]: {message}")
        );
        assert_eq!(found[2], format!("cors.allowed_methods[0]: {message}"));
        assert_eq!(found.len(), 3, "{found:#?}");
    }
}

#[test]
fn extension_method_in_lowercase_warns() {
    let found = warnings(&listing("[GET, Purge, propfind]"));
    let message = |written: &str, capitals: &str| {
        format!(
            "\"{written}\" has lowercase letters, but methods are case-sensitive and clients \
             nearly always send them in capitals, so a {capitals} request would not match it: \
             write \"{capitals}\", unless clients send \"{written}\" as written"
        )
    };
    let expected = [
        format!("cors.allowed_methods[1]: {}", message("Purge", "PURGE")),
        format!(
            "cors.allowed_methods[2]: {}",
            message("propfind", "PROPFIND")
        ),
        format!("routes[0].methods[1]: {}", message("Purge", "PURGE")),
        format!("routes[0].methods[2]: {}", message("propfind", "PROPFIND")),
        format!(
            "routes[0].cors.allowed_methods[1]: {}",
            message("Purge", "PURGE")
        ),
        format!(
            "routes[0].cors.allowed_methods[2]: {}",
            message("propfind", "PROPFIND")
        ),
    ];
    assert_eq!(found, expected);
}

#[test]
fn connect_still_warns() {
    let found = warnings(&listing("[GET, CONNECT]"));
    let connect: Vec<&String> = found
        .iter()
        .filter(|warning| warning.contains("responds to every CONNECT with 501"))
        .collect();
    assert_eq!(connect.len(), 3, "{found:#?}");
}
