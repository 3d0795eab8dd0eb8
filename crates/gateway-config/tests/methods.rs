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
                   QUERY, VERSION-CONTROL, M-SEARCH, BASELINE-CONTROL, MKCALENDAR, LINK, \
                   X_CUSTOM_1]";
    let text = listing(methods);
    assert_eq!(problems(&text), Vec::<String>::new());
    assert_eq!(warnings(&text), Vec::<String>::new());

    let config = Config::from_yaml(&text, "test.yaml").unwrap();
    let listed = config.routes[0].methods.as_deref().unwrap();
    assert_eq!(listed[1], "PURGE");
    assert_eq!(listed[12], "M-SEARCH");
    assert_eq!(listed[16], "X_CUSTOM_1");
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

/// Asserts that `written`, as the only method of [`listing`], gets `message` in each of the
/// three lists.
fn assert_rejected(written: &str, message: &str) {
    let found = problems(&listing(&format!("[{written}]")));
    let expected = [
        format!("routes[0].methods[0]: {message}"),
        format!("routes[0].cors.allowed_methods[0]: {message}"),
        format!("cors.allowed_methods[0]: {message}"),
    ];
    assert_eq!(found, expected, "{written}");
}

#[test]
fn method_outside_token_rejected() {
    let cases = [
        ("\"PUR GE\"", "\"PUR GE\"", "' '"),
        ("\"GET/1\"", "\"GET/1\"", "'/'"),
        ("\"PURGE:\"", "\"PURGE:\"", "':'"),
        ("\"(PURGE)\"", "\"(PURGE)\"", "'('"),
        ("\"P\\u00dcRGE\"", "\"P\u{dc}RGE\"", "'\u{dc}'"),
        ("\"PURGE\\t\"", "\"PURGE\\t\"", "'\\t'"),
    ];
    for (written, quoted, character) in cases {
        let message = format!(
            "invalid HTTP method {quoted}: {character} cannot appear in any HTTP method, and a \
             method must start with a letter and contain only letters, digits, '-' and '_', \
             like GET, PURGE or VERSION-CONTROL"
        );
        assert_rejected(written, &message);
    }
}

#[test]
fn token_outside_method_form_rejected() {
    // YAML numbers reach the field as the text written, and RFC 9110 allows each of these
    // as a token, but no method in use looks like them.
    let cases = [
        ("12", "\"12\""),
        ("0x10", "\"0x10\""),
        ("0o17", "\"0o17\""),
        ("1e3", "\"1e3\""),
        ("1.5", "\"1.5\""),
        ("+12", "\"+12\""),
        (".inf", "\".inf\""),
        ("-.inf", "\"-.inf\""),
        (".nan", "\".nan\""),
        ("\"12\"", "\"12\""),
        ("-PURGE", "\"-PURGE\""),
        ("_PURGE", "\"_PURGE\""),
        ("X.Y", "\"X.Y\""),
        ("PURGE~", "\"PURGE~\""),
        ("\"!#$%&'*+-.^_`|~\"", "\"!#$%&'*+-.^_`|~\""),
    ];
    for (written, quoted) in cases {
        let message = format!(
            "invalid HTTP method {quoted}: a method must start with a letter and contain only \
             letters, digits, '-' and '_', like GET, PURGE or VERSION-CONTROL"
        );
        assert_rejected(written, &message);
    }
}

#[test]
fn yaml_null_and_booleans_rejected() {
    let cases = [
        ("~", "\"~\"", "YAML reads ~ as a null value"),
        ("'~'", "\"~\"", "YAML reads ~ as a null value"),
        (
            "null",
            "\"null\"",
            "YAML reads the word null as a null value",
        ),
        (
            "Null",
            "\"Null\"",
            "YAML reads the word null as a null value",
        ),
        (
            "NULL",
            "\"NULL\"",
            "YAML reads the word null as a null value",
        ),
        ("true", "\"true\"", "YAML reads the word true as a boolean"),
        ("True", "\"True\"", "YAML reads the word true as a boolean"),
        (
            "FALSE",
            "\"FALSE\"",
            "YAML reads the word false as a boolean",
        ),
        ("yes", "\"yes\"", "YAML 1.1 reads the word yes as a boolean"),
        (
            "\"no\"",
            "\"no\"",
            "YAML 1.1 reads the word no as a boolean",
        ),
        ("ON", "\"ON\"", "YAML 1.1 reads the word on as a boolean"),
        ("off", "\"off\"", "YAML 1.1 reads the word off as a boolean"),
        ("Y", "\"Y\"", "YAML 1.1 reads the word y as a boolean"),
        ("n", "\"n\"", "YAML 1.1 reads the word n as a boolean"),
    ];
    for (written, quoted, reading) in cases {
        let message = format!(
            "invalid HTTP method {quoted}: {reading}, and no HTTP method has that name: remove \
             it, or write the method you meant, like GET or PURGE"
        );
        assert_rejected(written, &message);
    }
}

#[test]
fn yaml_null_among_methods_rejected() {
    let text = r#"
routes:
  - path: /cache/*rest
    backends: [{url: "http://127.0.0.1:9001"}]
    methods: [PURGE, ~, null]
"#;
    let found = problems(text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("routes[0].methods[1]: invalid HTTP method \"~\": YAML reads ~"),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with(
            "routes[0].methods[2]: invalid HTTP method \"null\": YAML reads the word null"
        ),
        "{found:#?}"
    );
}

#[test]
fn words_that_contain_yaml_words_load() {
    let text = listing("[NOTIFY, ONLINE, YES-NO, NULLIFY, TRUE_UP, OFFSET]");
    assert_eq!(problems(&text), Vec::<String>::new());
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
        ("\"GET, POST\"", r#"["GET", "POST"]"#),
        ("\"GET POST\"", r#"["GET", "POST"]"#),
        ("\"GET,POST\"", r#"["GET", "POST"]"#),
        ("\"get, post\"", r#"["GET", "POST"]"#),
        ("\"PURGE, BAN\"", r#"["PURGE", "BAN"]"#),
        ("\"PURGE, M-SEARCH\"", r#"["PURGE", "M-SEARCH"]"#),
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
        let suggested: Vec<String> = serde_yaml_ng::from_str(list).unwrap();
        let config = Config::from_yaml(&listing(list), "test.yaml").unwrap();
        assert_eq!(config.routes[0].methods, Some(suggested), "{written}");
    }
}

#[test]
fn list_of_invalid_methods_gets_no_list() {
    // A list hint would suggest items that fail in turn, so the character is named instead.
    for (written, character) in [("\"GET, ~\"", "','"), ("\"PURGE X.Y\"", "' '")] {
        let found = problems(&listing(&format!("[{written}]")));
        assert!(
            found[0].contains(&format!("{character} cannot appear in any HTTP method")),
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
    for (written, capitals) in [
        ("get", "GET"),
        ("Post", "POST"),
        ("dElEtE", "DELETE"),
        ("trace", "TRACE"),
    ] {
        let message = format!(
            "\"{written}\" is not {capitals}, because methods are case-sensitive, and clients \
             send the standard methods in capitals, so \"{written}\" would match only requests \
             that send it as written: write it in capitals, \"{capitals}\""
        );
        assert_rejected(written, &message);
    }
}

#[test]
fn patch_in_lowercase_names_browsers() {
    for written in ["patch", "Patch"] {
        let message = format!(
            "\"{written}\" is not PATCH, because methods are case-sensitive. Clients send the \
             standard methods in capitals, except browsers, which send PATCH in the case the \
             page wrote it, because fetch() and XMLHttpRequest put only DELETE, GET, HEAD, \
             OPTIONS, POST and PUT in capitals: write it in capitals, \"PATCH\", and change a \
             page that sends \"{written}\" to send \"PATCH\""
        );
        assert_rejected(written, &message);
    }
}

#[test]
fn extension_method_in_lowercase_warns() {
    let found = warnings(&listing("[GET, Purge, propfind]"));
    let message = |written: &str, capitals: &str| {
        format!(
            "\"{written}\" has lowercase letters, but methods are case-sensitive and clients \
             nearly always send them in capitals, so {capitals} requests would not match it: \
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
fn lowercase_beside_capitals_warns_redundant() {
    let found = warnings(&listing("[Purge, PURGE, m-search]"));
    let redundant = |list: &str| {
        format!(
            "{list}[0]: \"Purge\" is redundant for PURGE requests, which match {list}[1], and \
             because methods are case-sensitive, it matches only requests that send \"Purge\" \
             as written: remove it unless clients send that spelling"
        )
    };
    let lowercase = |list: &str| {
        format!(
            "{list}[2]: \"m-search\" has lowercase letters, but methods are case-sensitive and \
             clients nearly always send them in capitals, so M-SEARCH requests would not match \
             it: write \"M-SEARCH\", unless clients send \"m-search\" as written"
        )
    };
    let expected = [
        redundant("cors.allowed_methods"),
        lowercase("cors.allowed_methods"),
        redundant("routes[0].methods"),
        lowercase("routes[0].methods"),
        redundant("routes[0].cors.allowed_methods"),
        lowercase("routes[0].cors.allowed_methods"),
    ];
    assert_eq!(found, expected);
}

#[test]
fn repeated_method_list_quoted() {
    let text = listing("[PURGE, GET, PURGE]");
    let found = warnings(&text);
    let repeated = found
        .iter()
        .find(|warning| warning.starts_with("routes[0].methods: "))
        .expect("a warning for routes[0].methods");
    let (_, list) = repeated
        .split_once("list each method once, like ")
        .expect("a suggested list");
    assert_eq!(list, r#"["PURGE", "GET"]"#);
    let suggested: Vec<String> = serde_yaml_ng::from_str(list).unwrap();
    assert_eq!(suggested, ["PURGE", "GET"]);
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

/// A method list written without a value is rejected rather than read as the default, which
/// for a route accepts every method.
#[test]
fn method_list_without_value_rejected() {
    for value in ["~", "null", ""] {
        for (route_methods, route_cors) in [(value, "[GET]"), ("[GET]", value)] {
            let text = format!(
                r#"
routes:
  - path: /a/*rest
    backends: [{{url: "http://127.0.0.1:9001"}}]
    methods: {route_methods}
    cors:
      allowed_methods: {route_cors}
"#
            );
            let error = Config::from_yaml(&text, "test.yaml")
                .unwrap_err()
                .to_string();
            assert!(error.contains("test.yaml"), "{error}");
            assert!(error.contains("the method list has no value"), "{error}");
            let field = if route_methods == value {
                "methods"
            } else {
                "allowed_methods"
            };
            assert!(error.contains(field), "{error}");
        }
    }
}
