//! A walk through what a user checks first: the shipped config file with its two users
//! backends (weights 2 and 1) and one orders backend, then routing, headers, bodies, errors and
//! the access line, each against real processes.

use bytes::Bytes;
use gateway_tests::{
    GatewayProcess, MockProcess, RawConnection, admin_backends, free_port, get, request,
};
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// The three backends of the shipped config and a gateway in front of them.
struct Fleet {
    users_1: MockProcess,
    users_2: MockProcess,
    orders: MockProcess,
    gateway: GatewayProcess,
}

impl Fleet {
    /// Starts the mocks and a gateway that loads `config/gateway.yaml` as shipped, with only
    /// the listener and the backend URLs pointed at this test's loopback ports.
    fn start() -> Fleet {
        let users_1 = MockProcess::start("UserService-1");
        let users_2 = MockProcess::start("UserService-2");
        let orders = MockProcess::start("OrderService");

        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/gateway.yaml"
        ))
        .expect("read config/gateway.yaml");
        let config = shipped
            .replace("host: \"0.0.0.0\"", "host: \"127.0.0.1\"")
            .replace("port: 8080", "port: {port}")
            .replace("http://localhost:9001", &users_1.url)
            .replace("http://localhost:9002", &users_2.url)
            .replace("http://localhost:9003", &orders.url);
        for url in [&users_1.url, &users_2.url, &orders.url] {
            assert!(
                config.contains(url.as_str()),
                "config lacks {url}:\n{config}"
            );
        }
        assert!(
            config.contains("port: {port}"),
            "config lacks port:\n{config}"
        );

        let gateway = GatewayProcess::start(&config);
        Fleet {
            users_1,
            users_2,
            orders,
            gateway,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url)
    }
}

/// Starts a gateway with one route `/api/*rest` to `backend_url`. `route_extra` and
/// `top_extra` are YAML lines added to the route and to the top level.
fn single_route_gateway(backend_url: &str, route_extra: &str, top_extra: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
request_log:
  database: "{{dir}}/gateway.db"
routes:
  - path: "/api/*rest"
    backends:
      - url: "{backend_url}"
{route_extra}
{top_extra}
"#
    ))
}

fn is_hex_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn health_and_admin_describe_gateway() {
    let fleet = Fleet::start();

    let health = get(&fleet.url("/health")).await;
    assert_eq!(health.status, 200);
    assert!(
        health
            .header("content-type")
            .starts_with("application/json"),
        "content-type {:?}",
        health.header("content-type")
    );
    let body = health.json();
    assert_eq!(body["status"], "ok", "{body}");

    let backends = admin_backends(&fleet.gateway.url).await;
    assert_eq!(backends.len(), 3, "{backends:?}");
    let expected = [
        (&fleet.users_1.url, 2),
        (&fleet.users_2.url, 1),
        (&fleet.orders.url, 1),
    ];
    for (url, weight) in expected {
        let entry = backends
            .iter()
            .find(|entry| entry["url"] == url.as_str())
            .unwrap_or_else(|| panic!("{url} missing from {backends:?}"));
        assert_eq!(entry["weight"], weight, "{entry}");
        assert!(entry["healthy"].is_boolean(), "{entry}");
        assert!(entry["in_flight"].is_u64(), "{entry}");
        assert!(entry["total_requests"].is_u64(), "{entry}");
    }
}

#[tokio::test]
async fn users_split_two_to_one_in_smooth_order() {
    let fleet = Fleet::start();

    let mut servers = Vec::new();
    for i in 0..30 {
        let reply = get(&fleet.url(&format!("/api/users/{i}"))).await;
        assert_eq!(reply.status, 200, "request {i}: {:?}", reply.body);
        servers.push(reply.json()["server"].as_str().unwrap_or("").to_owned());
    }

    let first = servers.iter().filter(|s| *s == "UserService-1").count();
    let second = servers.iter().filter(|s| *s == "UserService-2").count();
    assert_eq!(first, 20, "{servers:?}");
    assert_eq!(second, 10, "{servers:?}");
    assert_eq!(
        servers[..3],
        ["UserService-1", "UserService-2", "UserService-1"],
        "{servers:?}"
    );

    let backends = admin_backends(&fleet.gateway.url).await;
    let total = |url: &str| {
        backends
            .iter()
            .find(|entry| entry["url"] == url)
            .map(|entry| entry["total_requests"].clone())
    };
    assert_eq!(total(&fleet.users_1.url), Some(20.into()));
    assert_eq!(total(&fleet.users_2.url), Some(10.into()));
}

#[tokio::test]
async fn shared_backend_counts_requests_per_route() {
    let heavy_a = MockProcess::start("HeavyOnA");
    let heavy_b = MockProcess::start("HeavyOnB");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
health_check: {{enabled: false}}
request_log:
  enabled: false
routes:
  - path: "/a"
    backends:
      - url: "{a}"
        weight: 5
      - url: "{b}"
        weight: 1
  - path: "/b"
    backends:
      - url: "{a}"
        weight: 1
      - url: "{b}"
        weight: 5
"#,
        a = heavy_a.url,
        b = heavy_b.url,
    ));

    for path in ["/a", "/b"] {
        for i in 0..60 {
            let reply = get(&format!("{}{path}", gateway.url)).await;
            assert_eq!(reply.status, 200, "{path} request {i}: {:?}", reply.body);
        }
    }

    let body = get(&format!("{}/admin/backends", gateway.url)).await.json();
    let requests = |route: usize, url: &str| {
        body["routes"][route]["backends"]
            .as_array()
            .and_then(|backends| backends.iter().find(|entry| entry["url"] == url))
            .map(|entry| entry["total_requests"].clone())
    };
    assert_eq!(requests(0, &heavy_a.url), Some(50.into()), "{body}");
    assert_eq!(requests(0, &heavy_b.url), Some(10.into()), "{body}");
    assert_eq!(requests(1, &heavy_a.url), Some(10.into()), "{body}");
    assert_eq!(requests(1, &heavy_b.url), Some(50.into()), "{body}");
}

#[tokio::test]
async fn routes_match_path_and_method() {
    let fleet = Fleet::start();

    let orders = get(&fleet.url("/api/orders/1")).await;
    assert_eq!(orders.status, 200);
    assert_eq!(orders.json()["server"], "OrderService");
    assert_eq!(orders.json()["path"], "/api/orders/1");

    let bare = get(&fleet.url("/api/users")).await;
    assert_eq!(bare.status, 200, "{:?}", bare.body);
    let server = bare.json()["server"].as_str().unwrap_or("").to_owned();
    assert!(
        server.starts_with("UserService"),
        "bare /api/users went to {server}"
    );

    let unknown = get(&fleet.url("/api/usersX")).await;
    assert_eq!(unknown.status, 404);
    let body = unknown.json();
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(body["status"], 404, "{body}");

    let patch = request(Method::PATCH, &fleet.url("/api/users/1"), &[], Bytes::new())
        .await
        .expect("PATCH");
    assert_eq!(patch.status, 405);
    assert_eq!(patch.header("allow"), "GET, HEAD, POST, PUT, DELETE");
    assert_eq!(patch.json()["status"], 405);
}

#[tokio::test]
async fn large_post_body_arrives_whole() {
    let fleet = Fleet::start();
    let body = vec![b'a'; 1024 * 1024];

    let reply = request(Method::POST, &fleet.url("/api/users/upload"), &[], body)
        .await
        .expect("POST");
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_length"], 1024 * 1024);
}

#[tokio::test]
async fn query_string_passes_byte_exact() {
    let fleet = Fleet::start();
    let query = "name=a%20b&tag=x&tag=y&empty=&flag&plus=1+2&utf=%C3%A9";

    let reply = get(&fleet.url(&format!("/api/users/search?{query}"))).await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["query"], query);
    assert_eq!(echo["path"], "/api/users/search");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped() {
    let fleet = Fleet::start();
    let mut connection = RawConnection::open(fleet.gateway.addr).expect("connect");

    let reply = connection
        .exchange(
            b"GET /api/users/hop HTTP/1.1\r\n\
              Host: gateway.test\r\n\
              Connection: keep-alive, X-Private\r\n\
              X-Private: 1\r\n\
              Keep-Alive: timeout=5\r\n\
              TE: trailers\r\n\
              Upgrade: foo\r\n\
              X-Custom: kept\r\n\
              \r\n",
        )
        .expect("exchange");
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    let headers = echo["headers"]
        .as_object()
        .unwrap_or_else(|| panic!("no headers in {echo}"));
    for name in ["x-private", "keep-alive", "te", "upgrade"] {
        assert!(
            !headers.contains_key(name),
            "{name} reached the backend: {headers:?}"
        );
    }
    // The gateway may open its own keep-alive connection to the backend, but the client's
    // Connection tokens must not pass through.
    let connection_header = headers
        .get("connection")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    assert!(
        !connection_header.to_ascii_lowercase().contains("x-private"),
        "connection header forwarded: {connection_header}"
    );
    assert_eq!(headers["x-custom"], "kept");
}

#[tokio::test]
async fn forwarding_headers_are_set() {
    let fleet = Fleet::start();
    let gateway_host = fleet.gateway.addr.to_string();

    let reply = request(
        Method::GET,
        &fleet.url("/api/users/who"),
        &[("x-forwarded-for", "10.1.2.3")],
        Bytes::new(),
    )
    .await
    .expect("GET");
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    let headers = &echo["headers"];
    assert_eq!(headers["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], gateway_host.as_str());

    let server = echo["server"].as_str().unwrap_or("");
    let backend = if server == "UserService-1" {
        &fleet.users_1
    } else {
        &fleet.users_2
    };
    assert_eq!(headers["host"], backend.addr.to_string().as_str());

    let first_hop = get(&fleet.url("/api/users/first")).await.json();
    assert_eq!(first_hop["headers"]["x-forwarded-for"], "127.0.0.1");
}

/// A listener on an IPv6 address accepts an IPv4 client as `::ffff:127.0.0.1`. The backend gets
/// `127.0.0.1`, the address that the access line and the request log show.
#[tokio::test]
async fn ipv4_mapped_peer_forwarded_as_ipv4() {
    // Binding the IPv4-mapped loopback address keeps the listener on this machine. Without
    // IPv6 sockets there is nothing to check.
    if let Err(error) = std::net::TcpListener::bind("[::ffff:127.0.0.1]:0") {
        eprintln!("skipped: cannot bind [::ffff:127.0.0.1]: {error}");
        return;
    }
    let mock = MockProcess::start("Mapped");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: "::ffff:127.0.0.1"
  port: {{port}}
request_log:
  database: "{{dir}}/gateway.db"
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    ));

    let first_hop = get(&format!("{}/api/mapped", gateway.url)).await;
    assert_eq!(first_hop.status, 200);
    assert_eq!(first_hop.json()["headers"]["x-forwarded-for"], "127.0.0.1");

    let reply = request(
        Method::GET,
        &format!("{}/api/mapped", gateway.url),
        &[("x-forwarded-for", "10.1.2.3")],
        Bytes::new(),
    )
    .await
    .expect("GET");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["headers"]["x-forwarded-for"],
        "10.1.2.3, 127.0.0.1"
    );
}

#[tokio::test]
async fn underscore_forwarding_aliases_do_not_reach_backend() {
    let fleet = Fleet::start();

    let reply = request(
        Method::GET,
        &fleet.url("/api/users/alias"),
        &[
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded_proto", "https"),
            ("x_forwarded_host", "spoofed.example"),
            ("x_request_id", "forged"),
            ("x_custom", "kept"),
        ],
        Bytes::new(),
    )
    .await
    .expect("GET");
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    let headers = echo["headers"]
        .as_object()
        .unwrap_or_else(|| panic!("no headers in {echo}"));
    for alias in [
        "x_forwarded_for",
        "x-forwarded_proto",
        "x_forwarded_host",
        "x_request_id",
    ] {
        assert!(
            !headers.contains_key(alias),
            "{alias} reached the backend: {headers:?}"
        );
    }
    assert_eq!(headers["x_custom"], "kept");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn preserve_host_keeps_client_host() {
    let mock = MockProcess::start("Kept");
    let gateway = single_route_gateway(&mock.url, "    preserve_host: true", "");

    let reply = request(
        Method::GET,
        &format!("{}/api/host", gateway.url),
        &[("host", "public.example:8443")],
        Bytes::new(),
    )
    .await
    .expect("GET");
    assert_eq!(reply.status, 200);
    let headers = &reply.json()["headers"];
    assert_eq!(headers["host"], "public.example:8443");
    assert_eq!(headers["x-forwarded-host"], "public.example:8443");
}

/// An HTTP/1.0 request may come without `Host`. On a `preserve_host` route there is then no
/// client value to keep, and the backend gets its own authority, as every HTTP/1.1 request
/// must carry a `Host`.
#[tokio::test]
async fn preserve_host_without_client_host() {
    let mock = MockProcess::start("Kept");
    let gateway = single_route_gateway(&mock.url, "    preserve_host: true", "");

    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    let response = connection
        .exchange(b"GET /api/host HTTP/1.0\r\n\r\n")
        .expect("HTTP/1.0 exchange");
    assert_eq!(response.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON body");
    let authority = mock.url.trim_start_matches("http://");
    assert_eq!(body["headers"]["host"], authority, "{body}");
}

#[tokio::test]
async fn request_id_is_kept_or_generated() {
    let fleet = Fleet::start();

    let kept = request(
        Method::GET,
        &fleet.url("/api/users/id"),
        &[("x-request-id", "client-id-42")],
        Bytes::new(),
    )
    .await
    .expect("GET");
    assert_eq!(kept.status, 200);
    assert_eq!(kept.header("x-request-id"), "client-id-42");
    assert_eq!(kept.json()["headers"]["x-request-id"], "client-id-42");

    let generated = get(&fleet.url("/api/users/id")).await;
    assert_eq!(generated.status, 200);
    let id = generated.header("x-request-id").to_owned();
    assert!(is_hex_id(&id), "generated id {id:?} is not 32 hex digits");
    assert_eq!(generated.json()["headers"]["x-request-id"], id.as_str());

    let other = get(&fleet.url("/api/users/id")).await;
    assert_ne!(other.header("x-request-id"), id, "ids repeat");

    let error = get(&fleet.url("/api/nothing-here")).await;
    assert_eq!(error.status, 404);
    assert!(
        is_hex_id(error.header("x-request-id")),
        "404 lacks a request id: {:?}",
        error.headers
    );
}

#[tokio::test]
async fn backend_path_prefix_is_prepended() {
    let mock = MockProcess::start("Prefixed");
    let gateway = single_route_gateway(&format!("{}/v1", mock.url), "", "");

    let reply = get(&format!("{}/api/items/7?full=1", gateway.url)).await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["path"], "/v1/api/items/7");
    assert_eq!(echo["query"], "full=1");
}

#[tokio::test]
async fn dead_backend_gives_502() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gateway = single_route_gateway(&dead, "", "health_check:\n  enabled: false");

    let reply = get(&format!("{}/api/x", gateway.url)).await;
    assert_eq!(reply.status, 502);
    let body = reply.json();
    assert_eq!(body["status"], 502, "{body}");
    assert!(body["error"].is_string(), "{body}");
}

/// With health checks off, no probe can bring a backend back once passive failures mark it
/// unhealthy. So the gateway must keep trying it: every request to a dead backend is a 502
/// (not a 503), and the backend serves again as soon as it is up.
#[tokio::test]
async fn backend_without_health_check_stays_in_rotation() {
    let port = free_port();
    let dead = format!("http://127.0.0.1:{port}");
    let gateway = single_route_gateway(&dead, "", "health_check:\n  enabled: false");

    for i in 0..5 {
        let reply = get(&format!("{}/api/x", gateway.url)).await;
        assert_eq!(reply.status, 502, "request {i}: {:?}", reply.body);
    }

    let _revived = MockProcess::start_on("Revived", port);
    let reply = get(&format!("{}/api/x", gateway.url)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["server"], "Revived");
}

#[tokio::test]
async fn slow_backend_gives_504() {
    let mock = MockProcess::start("Slow");
    let gateway = single_route_gateway(&mock.url, "", "proxy:\n  response_timeout: 500ms");

    let reply = get(&format!("{}/api/slow?delay=2000", gateway.url)).await;
    assert_eq!(reply.status, 504);
    let body = reply.json();
    assert_eq!(body["status"], 504, "{body}");

    let fast = get(&format!("{}/api/fast", gateway.url)).await;
    assert_eq!(fast.status, 200);
}

#[tokio::test]
async fn access_line_describes_request() {
    let fleet = Fleet::start();

    let reply = get(&fleet.url("/api/orders/access-line-check")).await;
    assert_eq!(reply.status, 200);

    let line = fleet
        .gateway
        .wait_for_line(&["/api/orders/access-line-check"], Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "no access line; gateway output:\n{}",
                fleet.gateway.lines().join("\n")
            )
        });
    for part in [
        "method=GET",
        "status=200",
        "latency_ms=",
        fleet.orders.url.as_str(),
    ] {
        assert!(line.contains(part), "access line lacks {part:?}: {line}");
    }
    let latency = line
        .split("latency_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|value| value.trim_matches('"'))
        .and_then(|value| value.parse::<f64>().ok());
    assert!(
        latency.is_some_and(|ms| ms >= 0.0),
        "latency_ms is not a number: {line}"
    );
}

#[tokio::test]
async fn large_download_streams_whole() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let fleet = Fleet::start();

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = fleet
        .url(&format!("/api/orders/download?size={SIZE}"))
        .parse()
        .expect("uri");
    let download = async {
        let response = client.get(uri).await.expect("response head");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("body frame");
            if let Some(data) = frame.data_ref() {
                received += data.len() as u64;
            }
        }
        received
    };
    let received = tokio::time::timeout(Duration::from_secs(120), download)
        .await
        .expect("download finished within 120 s");
    assert_eq!(received, SIZE);
}

#[tokio::test]
async fn backend_error_status_passes_through() {
    let fleet = Fleet::start();

    for status in [404u16, 500, 503] {
        let reply = get(&fleet.url(&format!("/api/orders/fail?status={status}"))).await;
        assert_eq!(reply.status, status, "backend status {status}");
        assert_eq!(reply.json()["server"], "OrderService", "status {status}");
    }

    // A response, even a 5xx one, is not a failure to reach the backend.
    let entry = gateway_tests::backend_state(&fleet.gateway.url, &fleet.orders.url).await;
    assert_eq!(entry["healthy"], true, "{entry}");
}

#[tokio::test]
async fn chunked_response_arrives_whole() {
    let fleet = Fleet::start();

    let reply = get(&fleet.url("/api/orders/feed?chunks=5&chunk_delay=20")).await;
    assert_eq!(reply.status, 200);
    let expected: String = (0..5).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&reply.body), expected);
}

#[tokio::test]
async fn chunked_upload_arrives_whole() {
    let fleet = Fleet::start();
    let mut connection = RawConnection::open(fleet.gateway.addr).expect("connect");

    let reply = connection
        .exchange(
            b"POST /api/orders/upload HTTP/1.1\r\n\
              Host: gateway.test\r\n\
              Transfer-Encoding: chunked\r\n\
              \r\n\
              5\r\nhello\r\n\
              6\r\n world\r\n\
              0\r\n\r\n",
        )
        .expect("exchange");
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_length"], 11);
}
