//! The CORS layer driven with `oneshot`.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use gateway_config::CorsConfig;
use gateway_middleware::cors::{CorsLayer, CorsPolicy};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

const APP: &str = "https://app.example.com";

const ALLOW_HEADERS: [HeaderName; 5] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
];

/// Builds a policy that lists `APP`, with `change` applied on top.
fn policy(change: impl FnOnce(&mut CorsConfig)) -> Arc<CorsPolicy> {
    let mut config = CorsConfig {
        enabled: true,
        allowed_origins: vec![APP.to_owned()],
        max_age: Duration::from_secs(600),
        ..CorsConfig::default()
    };
    change(&mut config);
    Arc::new(CorsPolicy::new(&config))
}

/// An inner service that counts its calls and returns 200 with `Vary: Accept-Encoding`.
fn counting_service(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |_request: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async {
            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
            response
                .headers_mut()
                .insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            Ok::<_, Infallible>(response)
        }
    })
}

/// Sends one request through the layer and returns the response and the inner call count.
async fn send(policy: Arc<CorsPolicy>, request: Request<()>) -> (Response<Full<Bytes>>, usize) {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CorsLayer::new(policy).layer(counting_service(Arc::clone(&calls)));
    let response = service.oneshot(request).await.unwrap();
    (response, calls.load(Ordering::SeqCst))
}

fn preflight(origin: &str, method: &str, headers: Option<&str>) -> Request<()> {
    let mut builder = Request::builder()
        .method(Method::OPTIONS)
        .uri("/api/items")
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, method);
    if let Some(headers) = headers {
        builder = builder.header(header::ACCESS_CONTROL_REQUEST_HEADERS, headers);
    }
    builder.body(()).unwrap()
}

fn actual(method: Method, origin: Option<&str>) -> Request<()> {
    let mut builder = Request::builder().method(method).uri("/api/items");
    if let Some(origin) = origin {
        builder = builder.header(header::ORIGIN, origin);
    }
    builder.body(()).unwrap()
}

fn vary(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::VARY)
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect()
}

fn assert_no_allow_headers(headers: &HeaderMap, case: &str) {
    for name in ALLOW_HEADERS {
        assert!(headers.get(&name).is_none(), "{case}: unexpected {name}");
    }
}

#[tokio::test]
async fn preflight_allowed_not_forwarded() {
    let request = preflight(APP, "PUT", Some("content-type, authorization"));
    let (response, calls) = send(policy(|_| {}), request).await;

    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(calls, 0);
    let headers = response.headers();
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_METHODS],
        "GET, POST, PUT, DELETE"
    );
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_HEADERS],
        "content-type, authorization"
    );
    assert_eq!(headers[header::ACCESS_CONTROL_MAX_AGE], "600");
    assert!(
        headers
            .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_none()
    );
    assert_eq!(
        vary(headers),
        ["Origin, Access-Control-Request-Method, Access-Control-Request-Headers"]
    );
}

#[tokio::test]
async fn preflight_denied_gets_no_allow_headers() {
    let cases = [
        (
            "unlisted origin",
            preflight("https://evil.example.com", "GET", None),
        ),
        (
            "suffix of listed origin",
            preflight("https://app.example.com.evil.com", "GET", None),
        ),
        (
            "other scheme",
            preflight("http://app.example.com", "GET", None),
        ),
        (
            "other port",
            preflight("https://app.example.com:8443", "GET", None),
        ),
        ("null origin", preflight("null", "GET", None)),
        ("method not allowed", preflight(APP, "PATCH", None)),
        ("method case differs", preflight(APP, "put", None)),
        (
            "header not allowed",
            preflight(APP, "POST", Some("content-type, x-custom")),
        ),
        (
            "invalid header name",
            preflight(APP, "POST", Some("bad header")),
        ),
    ];

    for (case, request) in cases {
        let (response, calls) = send(policy(|_| {}), request).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{case}");
        assert_eq!(calls, 0, "{case}: preflight was forwarded");
        assert_no_allow_headers(response.headers(), case);
        assert!(
            response
                .headers()
                .get(header::ACCESS_CONTROL_MAX_AGE)
                .is_none(),
            "{case}"
        );
    }
}

#[tokio::test]
async fn preflight_origin_ignores_case() {
    let request = preflight("HTTPS://App.Example.COM", "GET", None);
    let (response, _calls) = send(policy(|_| {}), request).await;

    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "HTTPS://App.Example.COM"
    );
}

#[tokio::test]
async fn preflight_header_names_ignore_case() {
    let request = preflight(APP, "POST", Some("Content-Type,AUTHORIZATION"));
    let (response, _calls) = send(policy(|_| {}), request).await;

    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
        "content-type, authorization"
    );
}

#[tokio::test]
async fn preflight_wildcard_headers_echo_request() {
    let wildcard = policy(|config| config.allowed_headers = vec!["*".to_owned()]);

    let request = preflight(APP, "POST", Some("x-custom, authorization"));
    let (response, _calls) = send(Arc::clone(&wildcard), request).await;
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
        "x-custom, authorization"
    );

    let request = preflight(APP, "POST", None);
    let (response, _calls) = send(wildcard, request).await;
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    assert!(
        response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_HEADERS)
            .is_none()
    );
}

#[tokio::test]
async fn preflight_wildcard_origin_sends_star() {
    let any = policy(|config| config.allowed_origins = vec!["*".to_owned()]);
    let request = preflight("https://anywhere.example.net", "GET", None);
    let (response, calls) = send(any, request).await;

    assert_eq!(calls, 0);
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
}

#[tokio::test]
async fn preflight_with_credentials() {
    let credentials = policy(|config| config.allow_credentials = true);
    let request = preflight(APP, "DELETE", Some("authorization"));
    let (response, _calls) = send(credentials, request).await;

    let headers = response.headers();
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
}

#[tokio::test]
async fn credentials_with_wildcard_echo_origin() {
    let policy = policy(|config| {
        config.allowed_origins = vec!["*".to_owned()];
        config.allow_credentials = true;
    });
    let origin = "https://anywhere.example.net";

    let (response, _calls) = send(Arc::clone(&policy), preflight(origin, "GET", None)).await;
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        origin
    );

    let (response, _calls) = send(policy, actual(Method::GET, Some(origin))).await;
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        origin
    );
    assert_eq!(vary(response.headers()), ["Accept-Encoding", "Origin"]);
}

#[tokio::test]
async fn plain_options_is_forwarded() {
    let (response, calls) = send(policy(|_| {}), actual(Method::OPTIONS, Some(APP))).await;

    assert_eq!(calls, 1);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
}

#[tokio::test]
async fn request_without_origin_gets_only_vary() {
    for method in [Method::GET, Method::OPTIONS] {
        let (response, calls) = send(policy(|_| {}), actual(method.clone(), None)).await;

        assert_eq!(calls, 1, "{method}");
        assert_no_allow_headers(response.headers(), method.as_str());
        assert_eq!(
            vary(response.headers()),
            ["Accept-Encoding", "Origin"],
            "{method}"
        );
    }
}

#[tokio::test]
async fn request_without_origin_to_wildcard_is_untouched() {
    let any = policy(|config| config.allowed_origins = vec!["*".to_owned()]);
    let (response, calls) = send(any, actual(Method::GET, None)).await;

    assert_eq!(calls, 1);
    assert_no_allow_headers(response.headers(), "wildcard");
    assert_eq!(vary(response.headers()), ["Accept-Encoding"]);
}

#[tokio::test]
async fn actual_request_gets_cors_headers() {
    let policy = policy(|config| {
        config.allow_credentials = true;
        config.exposed_headers = vec!["X-Request-Id".to_owned(), "RateLimit".to_owned()];
    });
    let (response, calls) = send(policy, actual(Method::POST, Some(APP))).await;

    assert_eq!(calls, 1);
    let headers = response.headers();
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(
        headers[header::ACCESS_CONTROL_EXPOSE_HEADERS],
        "x-request-id, ratelimit"
    );
    assert_eq!(vary(headers), ["Accept-Encoding", "Origin"]);
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_METHODS).is_none());
}

#[tokio::test]
async fn actual_request_with_wildcard_has_no_vary() {
    let any = policy(|config| config.allowed_origins = vec!["*".to_owned()]);
    let (response, _calls) = send(any, actual(Method::GET, Some(APP))).await;

    let headers = response.headers();
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(
        headers
            .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_none()
    );
    assert!(headers.get(header::ACCESS_CONTROL_EXPOSE_HEADERS).is_none());
    assert_eq!(vary(headers), ["Accept-Encoding"]);
}

#[tokio::test]
async fn disallowed_origin_gets_no_allow_origin() {
    let backend_cors = tower::service_fn(|_request: Request<()>| async {
        let mut response = Response::new(Full::new(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        Ok::<_, Infallible>(response)
    });
    let service = CorsLayer::new(policy(|_| {})).layer(backend_cors);

    let request = actual(Method::GET, Some("https://evil.example.com"));
    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_no_allow_headers(response.headers(), "disallowed origin");
    assert_eq!(vary(response.headers()), ["Origin"]);
}

#[tokio::test]
async fn existing_vary_origin_is_not_repeated() {
    let backend = tower::service_fn(|_request: Request<()>| async {
        let mut response = Response::new(Full::new(Bytes::new()));
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("accept, origin"));
        Ok::<_, Infallible>(response)
    });
    let service = CorsLayer::new(policy(|_| {})).layer(backend);

    let response = service
        .oneshot(actual(Method::GET, Some(APP)))
        .await
        .unwrap();

    assert_eq!(vary(response.headers()), ["accept, origin"]);
}

#[tokio::test]
async fn disabled_policy_passes_through() {
    let disabled = policy(|config| config.enabled = false);
    let (response, calls) = send(disabled, preflight(APP, "GET", None)).await;

    assert_eq!(calls, 1);
    assert_eq!(response.status(), StatusCode::OK);
    assert_no_allow_headers(response.headers(), "disabled");
}
