#![allow(clippy::unwrap_used)]

use super::*;
use crate::rate_limit::{RATELIMIT, RATELIMIT_POLICY, RateLimitLayer, RateLimiter};
use gateway_config::{RateLimitConfig, RateLimitKey};
use governor::clock::FakeRelativeClock;
use http_body_util::Full;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

const APP: &str = "https://app.example.com";

fn config(change: impl FnOnce(&mut CorsConfig)) -> CorsConfig {
    let mut config = CorsConfig {
        enabled: true,
        allowed_origins: vec![APP.to_owned()],
        max_age: Duration::from_secs(600),
        ..CorsConfig::default()
    };
    change(&mut config);
    config
}

fn request_headers(origin: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(origin) = origin {
        headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
    }
    headers
}

fn vary(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::VARY)
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect()
}

fn request(method: Method, headers: &[(HeaderName, &str)]) -> Request<()> {
    let mut builder = Request::builder().method(method).uri("/api/items");
    for (name, value) in headers {
        builder = builder.header(name, *value);
    }
    builder.body(()).unwrap()
}

#[test]
fn preflight_needs_options_origin_and_method() {
    let origin = (header::ORIGIN, APP);
    let method = (header::ACCESS_CONTROL_REQUEST_METHOD, "POST");

    // (case, request method, request headers, whether it is a preflight)
    let cases = [
        (
            "OPTIONS with both",
            Method::OPTIONS,
            vec![origin.clone(), method.clone()],
            true,
        ),
        (
            "no request method",
            Method::OPTIONS,
            vec![origin.clone()],
            false,
        ),
        ("no Origin", Method::OPTIONS, vec![method.clone()], false),
        ("GET with both", Method::GET, vec![origin, method], false),
    ];
    for (case, request_method, headers, expected) in cases {
        assert_eq!(
            is_preflight(&request(request_method, &headers)),
            expected,
            "{case}"
        );
    }
}

#[test]
fn exposed_headers_are_added_once() {
    let policy = CorsPolicy::new(&config(|config| {
        config.exposed_headers = vec!["X-Total".to_owned(), "RateLimit".to_owned()];
    }))
    .with_exposed_headers([header::RETRY_AFTER, RATELIMIT, RATELIMIT_POLICY]);
    let mut response = HeaderMap::new();

    policy.apply(&request_headers(Some(APP)), &mut response);

    assert_eq!(
        response[header::ACCESS_CONTROL_EXPOSE_HEADERS],
        "x-total, ratelimit, retry-after, ratelimit-policy"
    );
}

#[test]
fn exposed_headers_added_to_empty_list() {
    let policy = CorsPolicy::new(&config(|_| {})).with_exposed_headers([header::RETRY_AFTER]);
    let mut response = HeaderMap::new();

    policy.apply(&request_headers(Some(APP)), &mut response);

    assert_eq!(
        response[header::ACCESS_CONTROL_EXPOSE_HEADERS],
        "retry-after"
    );
}

#[test]
fn apply_without_origin_adds_only_vary() {
    let policy = CorsPolicy::new(&config(|_| {}));
    let mut response = HeaderMap::new();
    response.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );

    policy.apply(&request_headers(None), &mut response);

    assert_eq!(vary(&response), ["Origin"]);
    assert_eq!(
        response[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "*",
        "a response to a request without Origin keeps the backend's CORS headers"
    );
}

/// With `*` and no credentials, a request without `Origin` gets no CORS headers and no
/// `Vary`: adding them to every response would cost each request two header fields.
#[test]
fn any_origin_leaves_request_without_origin() {
    let any = CorsPolicy::new(&config(|config| {
        config.allowed_origins = vec!["*".to_owned()];
    }));
    let mut response = HeaderMap::new();
    any.apply(&request_headers(None), &mut response);
    assert!(response.is_empty(), "{response:?}");
}

#[test]
fn apply_with_origin_sets_allow_origin() {
    let policy = CorsPolicy::new(&config(|_| {}));

    let mut allowed = HeaderMap::new();
    policy.apply(&request_headers(Some(APP)), &mut allowed);
    let mut denied = HeaderMap::new();
    policy.apply(
        &request_headers(Some("https://evil.example.com")),
        &mut denied,
    );

    assert_eq!(allowed[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    assert_eq!(vary(&allowed), ["Origin"]);
    assert!(denied.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert_eq!(vary(&denied), ["Origin"]);
}

/// Origins of hybrid apps and extensions, and the opaque origin, as browsers send them.
const APP_ORIGINS: [&str; 4] = [
    "capacitor://localhost",
    "null",
    "chrome-extension://abcdefghijklmnopabcdefghijklmnop",
    "app://MyHost:8080",
];

/// Builds the request headers of a preflight from `origin` for `POST`.
fn preflight_headers(origin: &str) -> HeaderMap {
    let mut headers = request_headers(Some(origin));
    headers.insert(
        header::ACCESS_CONTROL_REQUEST_METHOD,
        HeaderValue::from_static("POST"),
    );
    headers
}

#[test]
fn app_and_null_origins_are_echoed() {
    for allow_credentials in [false, true] {
        let policy = CorsPolicy::new(&config(|config| {
            config.allowed_origins = APP_ORIGINS.map(String::from).to_vec();
            config.allow_credentials = allow_credentials;
        }));
        for origin in APP_ORIGINS {
            let case = format!("{origin}, allow_credentials: {allow_credentials}");

            let preflight = policy.preflight::<Full<Bytes>>(&preflight_headers(origin));
            let mut actual = HeaderMap::new();
            policy.apply(&request_headers(Some(origin)), &mut actual);

            assert_eq!(preflight.status(), StatusCode::NO_CONTENT, "{case}");
            assert_eq!(
                preflight.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
                origin,
                "{case}"
            );
            assert_eq!(preflight.headers()[header::VARY], PREFLIGHT_VARY, "{case}");
            assert_eq!(
                actual[header::ACCESS_CONTROL_ALLOW_ORIGIN],
                origin,
                "{case}"
            );
            assert_eq!(vary(&actual), ["Origin"], "{case}");
            assert_eq!(
                actual
                    .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
                    .is_some(),
                allow_credentials,
                "{case}"
            );
        }
    }
}

#[test]
fn any_origin_with_credentials_echoes_null() {
    let policy = CorsPolicy::new(&config(|config| {
        config.allowed_origins = vec!["*".to_owned()];
        config.allow_credentials = true;
    }));

    let preflight = policy.preflight::<Full<Bytes>>(&preflight_headers("null"));
    let mut actual = HeaderMap::new();
    policy.apply(&request_headers(Some("null")), &mut actual);

    assert_eq!(
        preflight.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "null"
    );
    assert_eq!(actual[header::ACCESS_CONTROL_ALLOW_ORIGIN], "null");
    assert_eq!(actual[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(vary(&actual), ["Origin"]);
}

#[test]
fn app_origins_match_exactly() {
    let policy = CorsPolicy::new(&config(|config| {
        config.allowed_origins = APP_ORIGINS.map(String::from).to_vec();
        config
            .allowed_origins
            .push("HTTPS://App.Example.com".to_owned());
    }));

    // Only http and https origins match ignoring case. Browsers send other schemes in
    // lowercase and keep the host of such an origin as written.
    let denied = [
        "Capacitor://localhost",
        "CAPACITOR://localhost",
        "capacitor://LOCALHOST",
        "capacitor://localhost:80",
        "capacitor://localhost/",
        "capacitor://localhost.evil.example",
        "NULL",
        "Null",
        "null://",
        "CHROME-EXTENSION://abcdefghijklmnopabcdefghijklmnop",
        "app://myhost:8080",
        "app://MyHost",
    ];
    for origin in denied {
        let preflight = policy.preflight::<Full<Bytes>>(&preflight_headers(origin));
        let mut actual = HeaderMap::new();
        policy.apply(&request_headers(Some(origin)), &mut actual);

        assert!(
            preflight
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none(),
            "preflight from {origin}"
        );
        assert!(
            actual.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
            "request from {origin}"
        );
        assert_eq!(vary(&actual), ["Origin"], "request from {origin}");
    }

    for origin in [APP, "HTTPS://APP.EXAMPLE.COM"] {
        let mut actual = HeaderMap::new();
        policy.apply(&request_headers(Some(origin)), &mut actual);

        assert_eq!(actual[header::ACCESS_CONTROL_ALLOW_ORIGIN], origin);
    }
}

#[test]
fn safelisted_methods_pass_preflight_unlisted() {
    let policy = CorsPolicy::new(&config(|config| {
        config.allowed_methods = vec!["PUT".to_owned()];
    }));
    let preflight = |method: &str| {
        let mut headers = request_headers(Some(APP));
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_str(method).unwrap(),
        );
        policy.preflight::<Full<Bytes>>(&headers)
    };
    for method in ["GET", "HEAD", "POST", "PUT"] {
        let response = preflight(method);
        assert_eq!(
            response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            APP,
            "{method}"
        );
    }
    let delete = preflight("DELETE");
    assert!(
        delete
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );

    // On a route that takes only DELETE, a POST preflight is rejected: the route would
    // respond to the POST with 405.
    let delete_only = CorsPolicy::new(&config(|config| {
        config.allowed_methods = vec!["DELETE".to_owned()];
    }))
    .with_methods_limited_to(|method| *method == Method::DELETE);
    let mut headers = request_headers(Some(APP));
    headers.insert(
        header::ACCESS_CONTROL_REQUEST_METHOD,
        HeaderValue::from_static("POST"),
    );
    let post = delete_only.preflight::<Full<Bytes>>(&headers);
    assert!(
        post.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
}

#[test]
fn preflight_allows_only_route_methods() {
    let policy = CorsPolicy::new(&config(|config| {
        config.allowed_methods = ["GET", "POST", "PUT"].map(String::from).to_vec();
    }))
    .with_methods_limited_to(|method| *method == Method::GET || *method == Method::POST);
    let preflight = |method: &str| {
        let mut headers = request_headers(Some(APP));
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_str(method).unwrap(),
        );
        policy.preflight::<Full<Bytes>>(&headers)
    };

    let post = preflight("POST");
    let put = preflight("PUT");

    assert_eq!(post.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    assert_eq!(
        post.headers()[header::ACCESS_CONTROL_ALLOW_METHODS],
        "GET, POST"
    );
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    assert!(
        put.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
    assert!(
        put.headers()
            .get(header::ACCESS_CONTROL_ALLOW_METHODS)
            .is_none()
    );
}

#[test]
fn extension_methods_follow_allowed_methods() {
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let propfind = Method::from_bytes(b"PROPFIND").unwrap();
    let policy = CorsPolicy::new(&config(|config| {
        config.allowed_methods = ["GET", "PURGE", "MKCOL"].map(String::from).to_vec();
    }))
    .with_methods_limited_to(|method| {
        *method == Method::GET || *method == purge || *method == propfind
    });
    let preflight = |method: &str| {
        let mut headers = request_headers(Some(APP));
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_str(method).unwrap(),
        );
        policy.preflight::<Full<Bytes>>(&headers)
    };

    let allowed = preflight("PURGE");
    assert_eq!(allowed.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    assert_eq!(
        allowed.headers()[header::ACCESS_CONTROL_ALLOW_METHODS],
        "GET, PURGE"
    );

    // PROPFIND is the route's but not listed, MKCOL listed but not the route's, and a
    // method is case-sensitive, so `purge` is not PURGE.
    for method in ["PROPFIND", "MKCOL", "purge"] {
        let refused = preflight(method);
        assert_eq!(refused.status(), StatusCode::NO_CONTENT, "{method}");
        assert!(
            refused
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none(),
            "{method}"
        );
    }
}

#[test]
fn several_origins_are_not_allowed() {
    for origins in [vec![APP], vec!["*"]] {
        let policy = CorsPolicy::new(&config(|config| {
            config.allowed_origins = origins.iter().map(|o| (*o).to_owned()).collect();
        }));
        let mut request = request_headers(Some(APP));
        request.append(header::ORIGIN, HeaderValue::from_static(APP));

        let mut response = HeaderMap::new();
        response.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        policy.apply(&request, &mut response);
        request.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("GET"),
        );
        let preflight = policy.preflight::<Full<Bytes>>(&request);

        let case = format!("allowed origins {origins:?}");
        assert!(
            response.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
            "{case}"
        );
        assert_eq!(preflight.status(), StatusCode::NO_CONTENT, "{case}");
        assert!(
            preflight
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none(),
            "{case}"
        );
    }
}

#[test]
fn several_requested_methods_are_not_allowed() {
    let policy = CorsPolicy::new(&config(|_| {}));
    let mut request = request_headers(Some(APP));
    request.insert(
        header::ACCESS_CONTROL_REQUEST_METHOD,
        HeaderValue::from_static("GET"),
    );
    let single = policy.preflight::<Full<Bytes>>(&request);
    request.append(
        header::ACCESS_CONTROL_REQUEST_METHOD,
        HeaderValue::from_static("GET"),
    );
    let repeated = policy.preflight::<Full<Bytes>>(&request);

    assert_eq!(single.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    assert_eq!(repeated.status(), StatusCode::NO_CONTENT);
    assert!(
        repeated
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
}

#[test]
fn apply_with_disabled_policy_changes_nothing() {
    let policy = CorsPolicy::new(&config(|config| config.enabled = false));
    let mut response = HeaderMap::new();

    policy.apply(&request_headers(Some(APP)), &mut response);
    policy.apply(&request_headers(None), &mut response);

    assert!(response.is_empty(), "headers: {response:?}");
}

#[test]
fn vary_origin_follows_policy() {
    // (case, policy, whether responses vary by Origin)
    let cases = [
        ("listed origins", config(|_| {}), true),
        (
            "any origin",
            config(|config| config.allowed_origins = vec!["*".to_owned()]),
            false,
        ),
        (
            "any origin with credentials",
            config(|config| {
                config.allowed_origins = vec!["*".to_owned()];
                config.allow_credentials = true;
            }),
            true,
        ),
    ];

    for (case, config, expected) in cases {
        let policy = CorsPolicy::new(&config);
        let mut response = HeaderMap::new();

        policy.add_vary_origin(&mut response);

        let expected_vary: &[&str] = if expected { &["Origin"] } else { &[] };
        assert_eq!(vary(&response), expected_vary, "{case}");
    }
}

#[test]
fn vary_origin_is_not_repeated() {
    let policy = CorsPolicy::new(&config(|_| {}));

    // (case, the response's Vary fields)
    let cases: [(&str, &[&str]); 3] = [
        ("named in a list", &["Accept-Encoding, origin"]),
        ("in a second field", &["Accept-Encoding", "Origin"]),
        ("star", &["*"]),
    ];
    for (case, fields) in cases {
        let mut response = HeaderMap::new();
        for field in fields {
            response.append(header::VARY, HeaderValue::from_str(field).unwrap());
        }

        policy.add_vary_origin(&mut response);

        assert_eq!(vary(&response), fields, "{case}");
    }
}

/// CORS outside a rate limit of burst 1, over a service that returns 200.
fn limited_service()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> {
    let limit = RateLimitConfig {
        enabled: true,
        requests_per_second: 1.0,
        burst: 1,
        key: RateLimitKey::Global,
        ipv6_prefix: 64,
    };
    let clock = FakeRelativeClock::default();
    let limiter = Arc::new(RateLimiter::with_clock(&limit, clock));
    let policy = CorsPolicy::new(&config(|_| {})).with_exposed_headers([
        header::RETRY_AFTER,
        RATELIMIT,
        RATELIMIT_POLICY,
    ]);
    let backend = tower::service_fn(|_request: Request<()>| async {
        Ok(Response::new(Full::new(Bytes::new())))
    });
    CorsLayer::new(Arc::new(policy)).layer(RateLimitLayer::new(limiter).layer(backend))
}

#[tokio::test]
async fn preflight_outside_rate_limit_takes_no_token() {
    let mut service = limited_service();
    let preflight = [
        (header::ORIGIN, APP),
        (header::ACCESS_CONTROL_REQUEST_METHOD, "GET"),
    ];

    for attempt in 0..3 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request(Method::OPTIONS, &preflight))
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NO_CONTENT,
            "preflight {attempt}"
        );
    }
    let actual = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::GET, &[(header::ORIGIN, APP)]))
        .await
        .unwrap();

    assert_eq!(actual.status(), StatusCode::OK, "preflights took the token");
}

#[tokio::test]
async fn rate_limited_response_gets_cors_headers() {
    let mut service = limited_service();
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..2 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request(Method::GET, &[(header::ORIGIN, APP)]))
            .await
            .unwrap();
        statuses.push(response.status());
        last = Some(response);
    }
    let rejected = last.unwrap();

    assert_eq!(statuses, [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    let headers = rejected.headers();
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    assert_eq!(
        headers[header::ACCESS_CONTROL_EXPOSE_HEADERS],
        "retry-after, ratelimit, ratelimit-policy"
    );
    assert_eq!(vary(headers), ["Origin"]);
    assert!(headers.contains_key(header::RETRY_AFTER));
}
