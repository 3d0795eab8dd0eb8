//! Rate limiting end to end: the real gateway in front of a real mock backend, driven over
//! loopback sockets.

use bytes::Bytes;
use gateway_tests::{GatewayProcess, MockProcess, Reply, get};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;

/// Upper bound on any single exchange, so a hung gateway fails the test instead of stalling it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

type KeepAliveClient = Client<HttpConnector, Full<Bytes>>;

/// Builds a gateway configuration with quiet logs, no request log and no health checks.
///
/// `trusted_proxies` and `rate_limiting` are YAML flow values, and `routes` is the block of
/// route items, each starting with `  - path:`.
fn gateway_config(trusted_proxies: &str, rate_limiting: &str, routes: &str) -> String {
    format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  trusted_proxies: {trusted_proxies}
health_check:
  enabled: false
request_log:
  enabled: false
logging:
  access_log: false
rate_limiting: {rate_limiting}
routes:
{routes}"#
    )
}

/// Starts a gateway that trusts `X-Forwarded-For` from loopback peers, with `rate_limiting`
/// (a YAML flow value) and one route `/api/*rest` to `mock`.
fn behind_loopback_proxy(mock: &MockProcess, rate_limiting: &str) -> GatewayProcess {
    GatewayProcess::start(&gateway_config(
        r#"["127.0.0.0/8"]"#,
        rate_limiting,
        &route("/api/*rest", &mock.url, ""),
    ))
}

/// Builds one route item for `path` with a single backend and optional extra YAML lines,
/// each indented by four spaces.
fn route(path: &str, backend: &str, extra: &str) -> String {
    format!(
        r#"  - path: "{path}"
    backends:
      - url: "{backend}"
{extra}
"#
    )
}

/// Builds a client that keeps connections alive between requests.
fn keep_alive_client() -> KeepAliveClient {
    Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>()
}

/// Sends one request on `client` and reads the whole response.
async fn send(client: &KeepAliveClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::builder().method(Method::GET).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .expect("valid test request");

    let exchange = async {
        let response = client
            .request(request)
            .await
            .unwrap_or_else(|error| panic!("GET {url} failed: {error:?}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|error| panic!("reading the body of GET {url} failed: {error:?}"))
            .to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {url} timed out after {EXCHANGE_TIMEOUT:?}"))
}

/// Sends a GET for `path` to `gateway` from a socket bound to the local address `source`, which
/// the gateway then takes as the peer address.
async fn get_from(source: Ipv4Addr, gateway: SocketAddr, path: &str) -> StatusCode {
    let exchange = async {
        let socket = TcpSocket::new_v4().expect("create socket");
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .unwrap_or_else(|error| panic!("bind {source}: {error}"));
        let stream = socket.connect(gateway).await.expect("connect to gateway");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);

        let request = Request::get(path)
            .header(http::header::HOST, gateway.to_string())
            .body(Full::new(Bytes::new()))
            .expect("valid test request");
        let response = sender.send_request(request).await.expect("send request");
        let status = response.status();
        let _ = response.into_body().collect().await;
        status
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} from {source} timed out"))
}

/// Reads the number of requests the mock backend has echoed.
async fn backend_requests(mock: &MockProcess) -> u64 {
    let reply = get(&format!("{}/_mock/stats", mock.url)).await;
    assert_eq!(reply.status, 200, "mock stats status");
    reply.json()["requests"]
        .as_u64()
        .expect("requests is a number")
}

/// Sends `count` GETs in sequence, each with `forwarded_for` as `X-Forwarded-For` when given,
/// and returns their statuses.
async fn statuses(
    client: &KeepAliveClient,
    url: &str,
    forwarded_for: Option<&str>,
    count: usize,
) -> Vec<u16> {
    let headers: Vec<(&str, &str)> = forwarded_for
        .map(|ip| vec![("x-forwarded-for", ip)])
        .unwrap_or_default();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(send(client, url, &headers).await.status.as_u16());
    }
    out
}

/// Counts and response problems recorded by one load task.
#[derive(Default)]
struct LoadTally {
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
    accepted: u64,
    rejected: u64,
    other: Vec<u16>,
    problems: Vec<String>,
}

/// Checks the headers and body of one rate-limited response, recording what is wrong.
fn check_rejection(reply: &Reply, problems: &mut Vec<String>) {
    let body: serde_json::Value = match serde_json::from_slice(&reply.body) {
        Ok(body) => body,
        Err(error) => {
            problems.push(format!("429 body is not JSON: {error}"));
            return;
        }
    };
    if body["status"] != 429 || body["error"] != "rate limit exceeded" {
        problems.push(format!("unexpected 429 body {body}"));
    }

    match reply.header("retry-after").parse::<u64>() {
        Ok(seconds) if seconds >= 1 => {
            // The test's bucket of 50 at 100 per second is full again 0.49 s after the next
            // token, which rounds up to the same whole second here.
            let expected = format!("\"gateway\";r=0;t={seconds}");
            if reply.header("ratelimit") != expected {
                problems.push(format!(
                    "429 RateLimit is {:?}, expected {expected:?}",
                    reply.header("ratelimit")
                ));
            }
        }
        _ => problems.push(format!(
            "429 Retry-After is {:?}, expected an integer of at least 1",
            reply.header("retry-after")
        )),
    }
    if reply.header("ratelimit-policy") != "\"gateway\";q=100;w=1" {
        problems.push(format!(
            "429 RateLimit-Policy is {:?}",
            reply.header("ratelimit-policy")
        ));
    }
}

/// Sends GETs on `client` back to back until `deadline`.
async fn load(client: KeepAliveClient, url: String, deadline: Instant) -> LoadTally {
    let mut tally = LoadTally::default();
    loop {
        let sent = Instant::now();
        if sent >= deadline {
            break;
        }
        tally.first_sent.get_or_insert(sent);
        tally.last_sent = Some(sent);

        let reply = send(&client, &url, &[]).await;
        match reply.status {
            StatusCode::OK => {
                tally.accepted += 1;
                if !reply.header("ratelimit").starts_with("\"gateway\";r=") {
                    tally
                        .problems
                        .push(format!("200 RateLimit is {:?}", reply.header("ratelimit")));
                }
            }
            StatusCode::TOO_MANY_REQUESTS => {
                tally.rejected += 1;
                check_rejection(&reply, &mut tally.problems);
            }
            other => tally.other.push(other.as_u16()),
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_count_matches_bucket() {
    let mock = MockProcess::start("Limited");
    let gateway = GatewayProcess::start(&gateway_config(
        "[]",
        "{enabled: true, requests_per_second: 100, burst: 50, key: client_ip}",
        &route("/api/*rest", &mock.url, ""),
    ));
    let url = format!("{}/api/load", gateway.url);
    let client = keep_alive_client();

    // Four keep-alive connections from one client address share one bucket.
    let deadline = Instant::now() + Duration::from_secs(3);
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(load(client.clone(), url.clone(), deadline)))
        .collect();
    let mut tallies = Vec::new();
    for task in tasks {
        tallies.push(task.await.expect("load task"));
    }

    let first = tallies.iter().filter_map(|t| t.first_sent).min();
    let last = tallies.iter().filter_map(|t| t.last_sent).max();
    let elapsed = last.expect("a request was sent") - first.expect("a request was sent");
    let accepted: u64 = tallies.iter().map(|t| t.accepted).sum();
    let rejected: u64 = tallies.iter().map(|t| t.rejected).sum();
    let other: Vec<u16> = tallies.iter().flat_map(|t| t.other.clone()).collect();
    let problems: Vec<String> = tallies.iter().flat_map(|t| t.problems.clone()).collect();

    let promised = 50.0 + 100.0 * elapsed.as_secs_f64();
    let error = (accepted as f64 - promised).abs() / promised;
    println!(
        "accepted {accepted}, rejected {rejected} in {elapsed:?}; bucket promises {promised:.1}"
    );
    assert!(
        error <= 0.05,
        "accepted {accepted} in {elapsed:?}, bucket promises {promised:.0} (off by {:.1} %)",
        error * 100.0
    );
    assert!(rejected > 0, "no request was rejected");
    assert!(other.is_empty(), "unexpected statuses {other:?}");
    assert!(
        problems.is_empty(),
        "{} bad responses, the first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert_eq!(
        backend_requests(&mock).await,
        accepted,
        "the backend should see exactly the accepted requests"
    );
}

#[tokio::test]
async fn retry_after_is_long_enough() {
    let mock = MockProcess::start("Retry");
    let gateway = GatewayProcess::start(&gateway_config(
        "[]",
        "{enabled: true, requests_per_second: 1, burst: 1, key: client_ip}",
        &route("/api/*rest", &mock.url, ""),
    ));
    let url = format!("{}/api/retry", gateway.url);
    let client = keep_alive_client();

    let first = send(&client, &url, &[]).await;
    let rejected = send(&client, &url, &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(rejected.status, 429);
    let seconds: u64 = rejected
        .header("retry-after")
        .parse()
        .expect("Retry-After is an integer");
    assert_eq!(seconds, 1, "one token per second arrives within a second");

    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let retried = send(&client, &url, &[]).await;
    assert_eq!(
        retried.status, 200,
        "the retry after Retry-After was rejected"
    );
}

#[tokio::test]
async fn decimal_rate_limits_and_reports() {
    let mock = MockProcess::start("Decimal");
    let gateway = GatewayProcess::start(&gateway_config(
        "[]",
        "{enabled: true, requests_per_second: 0.2, burst: 2, key: client_ip}",
        &route("/api/*rest", &mock.url, ""),
    ));
    let url = format!("{}/api/login", gateway.url);
    let client = keep_alive_client();

    // One token every 5 s, so each missing token adds 5 s until the bucket is full.
    let first = send(&client, &url, &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit"), "\"gateway\";r=1;t=5");
    let second = send(&client, &url, &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("ratelimit"), "\"gateway\";r=0;t=10");

    // The next token is under 5 s away, so both fields round up to whole seconds.
    let rejected = send(&client, &url, &[]).await;
    assert_eq!(rejected.status, 429);
    assert_eq!(rejected.header("retry-after"), "5");
    assert_eq!(rejected.header("ratelimit"), "\"gateway\";r=0;t=10");
    assert_eq!(rejected.header("ratelimit-policy"), "\"gateway\";q=2;w=10");
    assert_eq!(backend_requests(&mock).await, 2);
}

#[tokio::test]
async fn forwarded_clients_get_own_budgets() {
    let mock = MockProcess::start("PerClient");
    let gateway = behind_loopback_proxy(
        &mock,
        "{enabled: true, requests_per_second: 1, burst: 5, key: client_ip}",
    );
    let url = format!("{}/api/budget", gateway.url);
    let client = keep_alive_client();

    let first = statuses(&client, &url, Some("203.0.113.1"), 6).await;
    let second = statuses(&client, &url, Some("203.0.113.2"), 6).await;

    assert_eq!(first, [200, 200, 200, 200, 200, 429], "203.0.113.1");
    assert_eq!(second, [200, 200, 200, 200, 200, 429], "203.0.113.2");
    assert_eq!(backend_requests(&mock).await, 10);
}

#[tokio::test]
async fn ipv6_clients_share_their_block_budget() {
    let mock = MockProcess::start("Ipv6Blocks");
    let gateway = behind_loopback_proxy(
        &mock,
        "{enabled: true, requests_per_second: 1, burst: 3, key: client_ip}",
    );
    let url = format!("{}/api/budget", gateway.url);
    let client = keep_alive_client();

    let first = statuses(&client, &url, Some("2001:db8:1:2::1"), 2).await;
    let same_block = statuses(&client, &url, Some("2001:db8:1:2::abcd"), 2).await;
    let next_block = statuses(&client, &url, Some("2001:db8:1:3::1"), 3).await;

    assert_eq!(first, [200, 200], "2001:db8:1:2::1");
    assert_eq!(
        same_block,
        [200, 429],
        "another address of the same /64 got a budget of its own"
    );
    assert_eq!(next_block, [200, 200, 200], "2001:db8:1:3::1");
    assert_eq!(backend_requests(&mock).await, 6);
}

#[tokio::test]
async fn ipv6_prefix_128_budgets_each_address() {
    let mock = MockProcess::start("Ipv6Addresses");
    let gateway = behind_loopback_proxy(
        &mock,
        "{enabled: true, requests_per_second: 1, burst: 2, key: client_ip, ipv6_prefix: 128}",
    );
    let url = format!("{}/api/budget", gateway.url);
    let client = keep_alive_client();

    let first = statuses(&client, &url, Some("2001:db8:1:2::1"), 3).await;
    let neighbour = statuses(&client, &url, Some("2001:db8:1:2::2"), 3).await;

    assert_eq!(first, [200, 200, 429], "2001:db8:1:2::1");
    assert_eq!(neighbour, [200, 200, 429], "2001:db8:1:2::2");
}

#[tokio::test]
async fn untrusted_forwarded_for_is_ignored() {
    let mock = MockProcess::start("Spoofed");
    let gateway = GatewayProcess::start(&gateway_config(
        "[]",
        "{enabled: true, requests_per_second: 1, burst: 5, key: client_ip}",
        &route("/api/*rest", &mock.url, ""),
    ));
    let url = format!("{}/api/budget", gateway.url);
    let client = keep_alive_client();

    let first = statuses(&client, &url, Some("203.0.113.1"), 5).await;
    let spoofed = statuses(&client, &url, Some("203.0.113.2"), 3).await;
    let bare = statuses(&client, &url, None, 1).await;

    assert_eq!(first, [200; 5]);
    assert_eq!(spoofed, [429; 3], "a new X-Forwarded-For gave a new budget");
    assert_eq!(bare, [429]);
}

#[tokio::test]
async fn peer_addresses_get_own_budgets() {
    let mock = MockProcess::start("Peers");
    let gateway = GatewayProcess::start(&gateway_config(
        "[]",
        "{enabled: true, requests_per_second: 1, burst: 3, key: client_ip}",
        &route("/api/*rest", &mock.url, ""),
    ));

    // Linux routes all of 127.0.0.0/8 to the loopback interface, so a socket bound to
    // 127.0.0.2 reaches the gateway as a second client.
    let mut results = Vec::new();
    for source in [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)] {
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(get_from(source, gateway.addr, "/api/peer").await.as_u16());
        }
        results.push((source, seen));
    }

    for (source, seen) in results {
        assert_eq!(seen, [200, 200, 200, 429], "client {source}");
    }
}

#[tokio::test]
async fn global_key_shares_one_bucket() {
    let mock = MockProcess::start("Global");
    let gateway = behind_loopback_proxy(
        &mock,
        "{enabled: true, requests_per_second: 1, burst: 5, key: global}",
    );
    let url = format!("{}/api/shared", gateway.url);
    let client = keep_alive_client();

    let first = statuses(&client, &url, Some("203.0.113.1"), 3).await;
    let second = statuses(&client, &url, Some("203.0.113.2"), 3).await;
    let peer = get_from(Ipv4Addr::new(127, 0, 0, 3), gateway.addr, "/api/shared").await;

    assert_eq!(first, [200, 200, 200], "203.0.113.1");
    assert_eq!(
        second,
        [200, 200, 429],
        "203.0.113.2 should get what is left"
    );
    assert_eq!(peer, 429, "a third address should find the bucket empty");
    assert_eq!(backend_requests(&mock).await, 5);
}

#[tokio::test]
async fn route_override_limits_one_route() {
    let mock = MockProcess::start("Routes");
    let routes = [
        route(
            "/limited/*rest",
            &mock.url,
            "    rate_limiting: {burst: 3, requests_per_second: 1}",
        ),
        route(
            "/open/*rest",
            &mock.url,
            "    rate_limiting: {enabled: false}",
        ),
    ]
    .concat();
    let gateway = GatewayProcess::start(&gateway_config(
        "[]",
        "{enabled: true, requests_per_second: 1, burst: 1, key: client_ip}",
        &routes,
    ));
    let client = keep_alive_client();

    let limited = statuses(&client, &format!("{}/limited/a", gateway.url), None, 5).await;
    let open = statuses(&client, &format!("{}/open/b", gateway.url), None, 100).await;

    assert_eq!(limited, [200, 200, 200, 429, 429]);
    assert!(
        open.iter().all(|status| *status == 200),
        "the unlimited route returned {:?}",
        open.iter()
            .filter(|status| **status != 200)
            .collect::<Vec<_>>()
    );
    let open_reply = send(&client, &format!("{}/open/c", gateway.url), &[]).await;
    assert_eq!(
        open_reply.header("ratelimit"),
        "",
        "an unlimited route should not report a quota"
    );
}

#[tokio::test]
async fn route_limit_covers_other_spellings() {
    let mock = MockProcess::start("Spellings");
    let routes = [
        route(
            "/limited/login",
            &mock.url,
            "    rate_limiting: {burst: 2, requests_per_second: 1}",
        ),
        route("/*rest", &mock.url, "    rate_limiting: {enabled: false}"),
    ]
    .concat();
    let gateway = GatewayProcess::start(&gateway_config(
        "[]",
        "{enabled: true, requests_per_second: 1, burst: 1, key: client_ip}",
        &routes,
    ));
    let client = keep_alive_client();

    let mut seen = Vec::new();
    for path in [
        "/limited/login",
        "/limited/%6Cogin",
        "/limited//login",
        "/%6cimited/login",
    ] {
        let reply = send(&client, &format!("{}{path}", gateway.url), &[]).await;
        seen.push((path, reply.status.as_u16()));
    }
    assert_eq!(
        seen,
        [
            ("/limited/login", 200),
            ("/limited/%6Cogin", 200),
            ("/limited//login", 429),
            ("/%6cimited/login", 429),
        ]
    );
    // The catch-all still serves paths that differ in more than spelling.
    let other = statuses(&client, &format!("{}/limited/Login", gateway.url), None, 5).await;
    assert_eq!(other, [200; 5]);
}

#[tokio::test]
async fn admin_paths_are_never_limited() {
    let mock = MockProcess::start("Admin");
    let gateway = GatewayProcess::start(&gateway_config(
        "[]",
        "{enabled: true, requests_per_second: 1, burst: 1, key: client_ip}",
        &route("/api/*rest", &mock.url, ""),
    ));
    let client = keep_alive_client();

    // The route's bucket is empty from here on, so the limit is live while admin paths run.
    let route_statuses = statuses(&client, &format!("{}/api/x", gateway.url), None, 2).await;
    assert_eq!(route_statuses, [200, 429]);

    for path in ["/health", "/admin/backends"] {
        let seen = statuses(&client, &format!("{}{path}", gateway.url), None, 200).await;
        let failures: Vec<_> = seen.iter().filter(|status| **status != 200).collect();
        assert!(failures.is_empty(), "{path} returned {failures:?}");
    }
}

#[tokio::test]
async fn inherited_limit_spans_routes() {
    let mock = MockProcess::start("Spans");
    let routes = [
        route("/a/*rest", &mock.url, ""),
        route("/b/*rest", &mock.url, ""),
    ]
    .concat();
    let gateway = GatewayProcess::start(&gateway_config(
        "[]",
        "{enabled: true, requests_per_second: 1, burst: 3, key: global}",
        &routes,
    ));
    let client = keep_alive_client();

    let first_route = statuses(&client, &format!("{}/a/x", gateway.url), None, 3).await;
    let second_route = statuses(&client, &format!("{}/b/x", gateway.url), None, 3).await;

    assert_eq!(first_route, [200, 200, 200]);
    assert_eq!(
        second_route,
        [429, 429, 429],
        "key: global promises one bucket for all clients, but route /b has its own"
    );
}
