//! CORS end to end: preflights that the real gateway handles itself, and CORS headers on
//! responses proxied from a real mock backend.

use bytes::Bytes;
use gateway_tests::{GatewayProcess, MockProcess, Reply, binary, get, request};
use http::Method;
use std::process::Command;

const ORIGIN: &str = "https://app.example.com";

/// The CORS policy under test, as a YAML flow value.
const POLICY: &str = r#"{enabled: true, allowed_origins: ["https://app.example.com"], allowed_methods: [GET, POST], allowed_headers: [Content-Type, X-Token], exposed_headers: [X-Total], allow_credentials: true, max_age: 10m}"#;

/// The CORS response headers that must be absent when the gateway denies or skips CORS.
const CORS_HEADERS: [&str; 6] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
];

/// Builds a quiet gateway configuration with `cors` as the top-level policy and one route,
/// `/api/*rest`, to `backend`, with the optional YAML lines `route_extra`.
fn gateway_config(backend: &str, cors: &str, route_extra: &str) -> String {
    format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
health_check:
  enabled: false
request_log:
  enabled: false
logging:
  access_log: false
cors: {cors}
routes:
  - path: "/api/*rest"
    backends:
      - url: "{backend}"
{route_extra}
"#
    )
}

/// Starts a mock backend and a gateway with the policy under test in front of it.
fn start(name: &str) -> (MockProcess, GatewayProcess) {
    let mock = MockProcess::start(name);
    let gateway = GatewayProcess::start(&gateway_config(&mock.url, POLICY, ""));
    (mock, gateway)
}

/// Sends a request with `headers` and no body, panicking when the exchange fails.
async fn send(method: Method, url: &str, headers: &[(&str, &str)]) -> Reply {
    request(method.clone(), url, headers, Bytes::new())
        .await
        .unwrap_or_else(|error| panic!("{method} {url} failed: {error:?}"))
}

/// Sends a preflight for `method` with the requested `headers` (none when empty).
async fn preflight(url: &str, origin: &str, method: &str, headers: &str) -> Reply {
    let mut fields = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if !headers.is_empty() {
        fields.push(("access-control-request-headers", headers));
    }
    send(Method::OPTIONS, url, &fields).await
}

/// Reads the number of requests the mock backend has echoed.
async fn backend_requests(mock: &MockProcess) -> u64 {
    let reply = get(&format!("{}/_mock/stats", mock.url)).await;
    assert_eq!(reply.status, 200, "mock stats status");
    reply.json()["requests"]
        .as_u64()
        .expect("requests is a number")
}

/// Splits a comma-separated header value into lowercase items.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

/// Returns whether any `Vary` field of `reply` names `Origin`.
fn varies_by_origin(reply: &Reply) -> bool {
    reply
        .headers
        .get_all("vary")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(list)
        .any(|name| name == "origin")
}

fn assert_no_cors_headers(reply: &Reply, case: &str) {
    for name in CORS_HEADERS {
        assert!(
            !reply.headers.contains_key(name),
            "{case}: unexpected {name}: {:?}",
            reply.header(name)
        );
    }
}

#[tokio::test]
async fn allowed_preflight_is_answered_by_gateway() {
    let (mock, gateway) = start("Preflight");
    let before = backend_requests(&mock).await;

    let reply = preflight(&format!("{}/api/x", gateway.url), ORIGIN, "POST", "x-token").await;

    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("access-control-allow-origin"), ORIGIN);
    assert_eq!(
        list(reply.header("access-control-allow-methods")),
        ["get", "post"]
    );
    assert_eq!(
        list(reply.header("access-control-allow-headers")),
        ["content-type", "x-token"]
    );
    assert_eq!(reply.header("access-control-max-age"), "600");
    assert_eq!(reply.header("access-control-allow-credentials"), "true");
    assert!(
        varies_by_origin(&reply),
        "Vary is {:?}",
        reply.header("vary")
    );
    assert!(reply.body.is_empty(), "a 204 has no body");
    assert_eq!(
        backend_requests(&mock).await,
        before,
        "the preflight reached the backend"
    );
}

#[tokio::test]
async fn denied_preflights_are_not_forwarded() {
    let (mock, gateway) = start("Denied");
    let url = format!("{}/api/x", gateway.url);

    // (case, origin, requested method, requested headers)
    let cases = [
        ("other origin", "https://evil.example.com", "POST", ""),
        (
            "origin with another port",
            "https://app.example.com:8443",
            "GET",
            "",
        ),
        ("disallowed method", ORIGIN, "DELETE", ""),
        ("disallowed header", ORIGIN, "POST", "x-token, x-secret"),
    ];
    for (case, origin, method, headers) in cases {
        let reply = preflight(&url, origin, method, headers).await;

        assert_eq!(reply.status, 204, "{case}");
        assert_no_cors_headers(&reply, case);
    }
    assert_eq!(
        backend_requests(&mock).await,
        0,
        "a denied preflight reached the backend"
    );
}

#[tokio::test]
async fn allowed_origin_gets_cors_headers() {
    let (mock, gateway) = start("Actual");

    let reply = send(
        Method::GET,
        &format!("{}/api/items?page=2", gateway.url),
        &[("origin", ORIGIN)],
    )
    .await;

    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["server"], "Actual");
    assert_eq!(body["path"], "/api/items");
    assert_eq!(
        body["headers"]["origin"], ORIGIN,
        "Origin reaches the backend"
    );
    assert_eq!(reply.header("access-control-allow-origin"), ORIGIN);
    assert_eq!(
        list(reply.header("access-control-expose-headers")),
        ["x-total"]
    );
    assert_eq!(reply.header("access-control-allow-credentials"), "true");
    assert!(
        varies_by_origin(&reply),
        "Vary is {:?}",
        reply.header("vary")
    );
    assert_eq!(backend_requests(&mock).await, 1);
}

#[tokio::test]
async fn disallowed_origin_gets_no_allow_origin() {
    let (mock, gateway) = start("Other");

    let reply = send(
        Method::GET,
        &format!("{}/api/items", gateway.url),
        &[("origin", "https://evil.example.com")],
    )
    .await;

    // The request is still proxied: CORS protects what a browser lets a script read, and the
    // browser enforces it when the allow headers are missing.
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["server"], "Other");
    assert_no_cors_headers(&reply, "disallowed origin");
    assert!(
        varies_by_origin(&reply),
        "Vary is {:?}",
        reply.header("vary")
    );
    assert_eq!(backend_requests(&mock).await, 1);
}

#[tokio::test]
async fn request_without_origin_has_no_cors_headers() {
    let (_mock, gateway) = start("NoOrigin");

    let reply = get(&format!("{}/api/items", gateway.url)).await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["server"], "NoOrigin");
    assert_no_cors_headers(&reply, "no Origin");
}

#[tokio::test]
async fn response_without_origin_varies_by_origin() {
    let (_mock, gateway) = start("CacheKey");

    let reply = get(&format!("{}/api/items", gateway.url)).await;

    // With listed origins the CORS headers depend on Origin. The Fetch standard (section "CORS
    // protocol and HTTP caches") then calls for Vary: Origin on responses to non-CORS requests
    // too, so that a cache does not reuse a response without CORS headers for a CORS request.
    assert!(
        varies_by_origin(&reply),
        "Vary is {:?}",
        reply.header("vary")
    );
}

#[tokio::test]
async fn plain_options_is_proxied() {
    let (mock, gateway) = start("Options");
    let url = format!("{}/api/x", gateway.url);

    let with_origin = send(Method::OPTIONS, &url, &[("origin", ORIGIN)]).await;
    let without_origin = send(Method::OPTIONS, &url, &[]).await;

    assert_eq!(with_origin.status, 200);
    assert_eq!(with_origin.json()["method"], "OPTIONS");
    assert_eq!(with_origin.json()["server"], "Options");
    assert_eq!(with_origin.header("access-control-allow-origin"), ORIGIN);
    assert_eq!(without_origin.status, 200);
    assert_eq!(without_origin.json()["method"], "OPTIONS");
    assert_eq!(backend_requests(&mock).await, 2);
}

#[tokio::test]
async fn preflight_works_on_route_with_methods() {
    let mock = MockProcess::start("Methods");
    let gateway = GatewayProcess::start(&gateway_config(
        &mock.url,
        POLICY,
        "    methods: [GET, POST]",
    ));

    let reply = preflight(&format!("{}/api/x", gateway.url), ORIGIN, "POST", "").await;

    assert_eq!(reply.status, 204, "body: {:?}", reply.body);
    assert_eq!(reply.header("access-control-allow-origin"), ORIGIN);
}

#[tokio::test]
async fn preflight_allows_only_route_methods() {
    let mock = MockProcess::start("RouteMethods");
    let policy = POLICY.replace(
        "allowed_methods: [GET, POST]",
        "allowed_methods: [GET, POST, PUT]",
    );
    assert!(policy.contains("PUT"), "{policy}");
    let gateway = GatewayProcess::start(&gateway_config(
        &mock.url,
        &policy,
        "    methods: [GET, POST]",
    ));
    let url = format!("{}/api/x", gateway.url);

    let post = preflight(&url, ORIGIN, "POST", "").await;
    let put = preflight(&url, ORIGIN, "PUT", "").await;

    assert_eq!(post.status, 204, "body: {:?}", post.body);
    assert_eq!(post.header("access-control-allow-origin"), ORIGIN);
    assert_eq!(
        list(post.header("access-control-allow-methods")),
        ["get", "post"]
    );
    assert_eq!(put.status, 204, "body: {:?}", put.body);
    assert_no_cors_headers(&put, "PUT on a route without PUT");
    assert_eq!(backend_requests(&mock).await, 0);
}

#[tokio::test]
async fn several_origins_are_not_allowed() {
    let (mock, gateway) = start("TwoOrigins");
    let url = format!("{}/api/x", gateway.url);
    let origins = [("origin", ORIGIN), ("origin", ORIGIN)];

    let mut fields = origins.to_vec();
    fields.push(("access-control-request-method", "POST"));
    let preflight = send(Method::OPTIONS, &url, &fields).await;
    let actual = send(Method::GET, &url, &origins).await;

    assert_eq!(preflight.status, 204, "body: {:?}", preflight.body);
    assert_no_cors_headers(&preflight, "preflight with two Origin fields");
    // The actual request is still forwarded, as it is without CORS. Only the headers that let
    // a browser's script read the response are withheld.
    assert_eq!(actual.status, 200);
    assert_eq!(actual.json()["server"], "TwoOrigins");
    assert_no_cors_headers(&actual, "request with two Origin fields");
    assert_eq!(backend_requests(&mock).await, 1);
}

#[tokio::test]
async fn rate_limited_response_carries_cors_headers() {
    let mock = MockProcess::start("Limited");
    let config = format!(
        "{}rate_limiting: {{enabled: true, requests_per_second: 1, burst: 1}}\n",
        gateway_config(&mock.url, POLICY, "")
    );
    let gateway = GatewayProcess::start(&config);
    let url = format!("{}/api/x", gateway.url);

    let first = send(Method::GET, &url, &[("origin", ORIGIN)]).await;
    let second = send(Method::GET, &url, &[("origin", ORIGIN)]).await;

    assert_eq!(first.status, 200);
    assert_eq!(second.status, 429);
    assert_eq!(second.header("access-control-allow-origin"), ORIGIN);
    assert!(
        list(second.header("access-control-expose-headers")).contains(&"x-total".to_owned()),
        "Expose-Headers is {:?}",
        second.header("access-control-expose-headers")
    );
}

#[tokio::test]
async fn method_not_allowed_carries_cors_headers() {
    let mock = MockProcess::start("NotAllowed");
    let gateway = GatewayProcess::start(&gateway_config(&mock.url, POLICY, "    methods: [GET]"));
    let url = format!("{}/api/x", gateway.url);

    let cross_origin = send(Method::POST, &url, &[("origin", ORIGIN)]).await;
    let same_origin = send(Method::POST, &url, &[]).await;

    // Without CORS headers a browser hides the 405 from the script behind a network error.
    assert_eq!(cross_origin.status, 405);
    assert_eq!(cross_origin.header("allow"), "GET, HEAD");
    assert_eq!(cross_origin.header("access-control-allow-origin"), ORIGIN);
    assert!(
        varies_by_origin(&cross_origin),
        "Vary is {:?}",
        cross_origin.header("vary")
    );
    assert_eq!(same_origin.status, 405);
    assert_no_cors_headers(&same_origin, "405 without Origin");
    assert!(
        varies_by_origin(&same_origin),
        "Vary is {:?}",
        same_origin.header("vary")
    );
    assert_eq!(backend_requests(&mock).await, 0);
}

#[tokio::test]
async fn preflight_takes_no_rate_limit_token() {
    let mock = MockProcess::start("FreePreflight");
    let config = format!(
        "{}rate_limiting: {{enabled: true, requests_per_second: 1, burst: 1}}\n",
        gateway_config(&mock.url, POLICY, "")
    );
    let gateway = GatewayProcess::start(&config);
    let url = format!("{}/api/x", gateway.url);

    for attempt in 0..3 {
        let reply = preflight(&url, ORIGIN, "POST", "").await;
        assert_eq!(reply.status, 204, "preflight {attempt}");
        assert_eq!(reply.header("ratelimit"), "", "preflight {attempt}");
    }
    let actual = send(Method::GET, &url, &[("origin", ORIGIN)]).await;

    assert_eq!(actual.status, 200, "the preflights used up the bucket");
    assert_eq!(backend_requests(&mock).await, 1);
}

#[tokio::test]
async fn app_and_null_origins_are_echoed() {
    let mock = MockProcess::start("AppOrigins");
    let policy = r#"{enabled: true, allowed_origins: ["capacitor://localhost", "null"], allowed_methods: [GET, POST]}"#;
    // A second route allows credentials for the app's origin, which validation rejects for
    // "null".
    let credentials_route = format!(
        "  - path: \"/app/*rest\"\n    backends:\n      - url: \"{}\"\n    cors: \
         {{allowed_origins: [\"capacitor://localhost\"], allow_credentials: true}}\n",
        mock.url
    );
    let config = gateway_config(&mock.url, policy, "") + &credentials_route;
    let gateway = GatewayProcess::start(&config);
    let api = format!("{}/api/x", gateway.url);

    for origin in ["capacitor://localhost", "null"] {
        let preflight = preflight(&api, origin, "POST", "").await;
        let actual = send(Method::GET, &api, &[("origin", origin)]).await;

        assert_eq!(preflight.status, 204, "{origin}: body {:?}", preflight.body);
        assert_eq!(preflight.header("access-control-allow-origin"), origin);
        assert_eq!(preflight.header("access-control-allow-credentials"), "");
        assert!(
            varies_by_origin(&preflight),
            "{origin}: preflight Vary is {:?}",
            preflight.header("vary")
        );
        assert_eq!(actual.status, 200, "{origin}");
        assert_eq!(
            actual.json()["headers"]["origin"],
            origin,
            "Origin reaches the backend"
        );
        assert_eq!(actual.header("access-control-allow-origin"), origin);
        assert!(
            varies_by_origin(&actual),
            "{origin}: Vary is {:?}",
            actual.header("vary")
        );
    }

    // Browsers send the scheme in lowercase and keep the case of such a host, so these
    // come from other clients and are not allowed.
    for origin in ["Capacitor://localhost", "capacitor://LOCALHOST", "NULL"] {
        let preflight = preflight(&api, origin, "POST", "").await;
        let actual = send(Method::GET, &api, &[("origin", origin)]).await;

        assert_eq!(preflight.status, 204, "{origin}");
        assert_no_cors_headers(&preflight, origin);
        assert_eq!(actual.status, 200, "{origin}");
        assert_no_cors_headers(&actual, origin);
    }

    let app = format!("{}/app/x", gateway.url);
    let preflight = preflight(&app, "capacitor://localhost", "POST", "").await;
    let actual = send(Method::GET, &app, &[("origin", "capacitor://localhost")]).await;
    let null = send(Method::GET, &app, &[("origin", "null")]).await;

    assert_eq!(
        preflight.header("access-control-allow-origin"),
        "capacitor://localhost"
    );
    assert_eq!(preflight.header("access-control-allow-credentials"), "true");
    assert_eq!(
        actual.header("access-control-allow-origin"),
        "capacitor://localhost"
    );
    assert_eq!(actual.header("access-control-allow-credentials"), "true");
    assert!(
        varies_by_origin(&actual),
        "Vary is {:?}",
        actual.header("vary")
    );
    assert_eq!(null.status, 200);
    assert_no_cors_headers(&null, "null on the route with credentials");
}

/// Runs `apigateway --check` on `config` and returns its exit success and combined output.
fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, config).expect("write config");

    let output = Command::new(binary("apigateway"))
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run apigateway --check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn credentials_with_any_origin_fail_check() {
    let any_origin = r#"{enabled: true, allowed_origins: ["*"], allow_credentials: true}"#;
    let cases = [
        (
            "top level",
            gateway_config("http://127.0.0.1:9", any_origin, ""),
            "cors.allow_credentials",
        ),
        (
            "route override",
            gateway_config(
                "http://127.0.0.1:9",
                r#"{enabled: true, allowed_origins: ["*"]}"#,
                "    cors: {allow_credentials: true}",
            ),
            "routes[0].cors.allow_credentials",
        ),
    ];

    for (case, config, field) in cases {
        let (ok, output) = check(&config.replace("{port}", "8080"));

        assert!(!ok, "{case}: --check accepted the config: {output}");
        assert!(
            output.contains(field),
            "{case}: {field} not named in {output}"
        );
        assert!(
            output.contains("list the allowed origins"),
            "{case}: no advice to list the origins in {output}"
        );
    }

    let listed = gateway_config("http://127.0.0.1:9", POLICY, "");
    let (ok, output) = check(&listed.replace("{port}", "8080"));
    assert!(
        ok,
        "listed origins with credentials were rejected: {output}"
    );
}

/// A path that no route serves, and a request rejected before routing, get the top-level
/// policy's headers, so a script of an allowed origin reads the 404 or 400 instead of a
/// network failure.
#[tokio::test]
async fn unrouted_errors_carry_top_level_headers() {
    let (_mock, gateway) = start("Unrouted");
    let origin = [("origin", ORIGIN)];

    let missing = send(Method::GET, &format!("{}/nothing", gateway.url), &origin).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("access-control-allow-origin"), ORIGIN);
    assert_eq!(missing.header("vary"), "Origin");

    let dot_segment = send(
        Method::GET,
        &format!("{}/api/a/%2e%2e/b", gateway.url),
        &origin,
    )
    .await;
    assert_eq!(dot_segment.status, 400);
    assert_eq!(dot_segment.header("access-control-allow-origin"), ORIGIN);

    let other = [("origin", "https://evil.example")];
    let denied = send(Method::GET, &format!("{}/nothing", gateway.url), &other).await;
    assert_eq!(denied.status, 404);
    assert!(denied.headers.get("access-control-allow-origin").is_none());
}
