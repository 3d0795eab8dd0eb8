//! The rate-limit layer driven with `oneshot`, on governor's fake clock.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use gateway_config::{RateLimitConfig, RateLimitKey};
use gateway_middleware::client_ip::ClientIp;
use gateway_middleware::rate_limit::{RATELIMIT, RATELIMIT_POLICY, RateLimitLayer, RateLimiter};
use governor::clock::FakeRelativeClock;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

type Limiter = RateLimiter<FakeRelativeClock>;

fn config(requests_per_second: f64, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        enabled: true,
        requests_per_second,
        burst,
        key: RateLimitKey::ClientIp,
        ipv6_prefix: 64,
    }
}

fn limiter(config: &RateLimitConfig) -> (Arc<Limiter>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    (
        Arc::new(RateLimiter::with_clock(config, clock.clone())),
        clock,
    )
}

/// An inner service that counts its calls and returns 200 with a backend `RateLimit` field.
fn counting_service(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |_request: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async {
            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
            response
                .headers_mut()
                .insert(RATELIMIT, HeaderValue::from_static("\"backend\";r=9"));
            Ok::<_, Infallible>(response)
        }
    })
}

fn request_from(client: Option<IpAddr>, peer: Option<SocketAddr>) -> Request<()> {
    let mut request = Request::new(());
    if let Some(client) = client {
        request.extensions_mut().insert(ClientIp(client));
    }
    if let Some(peer) = peer {
        request.extensions_mut().insert(peer);
    }
    request
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn layer_answers_429_without_calling_inner() {
    let (limiter, _clock) = limiter(&config(1.0, 2));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RateLimitLayer::new(limiter).layer(counting_service(Arc::clone(&calls)));
    let client = Some(ip("198.51.100.7"));

    // Two allowed requests: the backend's field stays and ours is appended.
    for expected in ["\"gateway\";r=1;t=1", "\"gateway\";r=0;t=2"] {
        let response = service
            .clone()
            .oneshot(request_from(client, None))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let fields: Vec<_> = response.headers().get_all(RATELIMIT).iter().collect();
        assert_eq!(fields, ["\"backend\";r=9", expected]);
        assert!(response.headers().get(RATELIMIT_POLICY).is_none());
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    let response = service
        .clone()
        .oneshot(request_from(client, None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = response.headers();
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(headers[RATELIMIT_POLICY], "\"gateway\";q=2;w=2");
    // The bucket of 2 is full one second after the next token, matching the `t` of the last
    // allowed response.
    assert_eq!(headers[RATELIMIT], "\"gateway\";r=0;t=2");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, r#"{"error":"rate limit exceeded","status":429}"#);

    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn layer_allows_again_after_refill() {
    let (limiter, clock) = limiter(&config(1.0, 1));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RateLimitLayer::new(limiter).layer(counting_service(Arc::clone(&calls)));
    let client = Some(ip("198.51.100.7"));

    let first = service
        .clone()
        .oneshot(request_from(client, None))
        .await
        .unwrap();
    let second = service
        .clone()
        .oneshot(request_from(client, None))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1));
    let third = service
        .clone()
        .oneshot(request_from(client, None))
        .await
        .unwrap();

    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn client_ip_extension_wins_over_peer() {
    let (limiter, _clock) = limiter(&config(1.0, 1));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RateLimitLayer::new(Arc::clone(&limiter)).layer(counting_service(calls));
    let proxy: SocketAddr = "10.0.0.1:40000".parse().unwrap();

    // Two clients behind one proxy get a bucket each.
    for client in ["198.51.100.7", "198.51.100.8"] {
        let request = request_from(Some(ip(client)), Some(proxy));
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{client}");
    }
    assert_eq!(limiter.tracked_keys(), 2);
}

#[tokio::test]
async fn peer_address_keys_without_client_ip() {
    let (limiter, _clock) = limiter(&config(1.0, 1));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RateLimitLayer::new(Arc::clone(&limiter)).layer(counting_service(calls));

    let first_port: SocketAddr = "203.0.113.9:1000".parse().unwrap();
    let second_port: SocketAddr = "203.0.113.9:2000".parse().unwrap();
    let other_peer: SocketAddr = "203.0.113.10:1000".parse().unwrap();

    let first = service
        .clone()
        .oneshot(request_from(None, Some(first_port)))
        .await
        .unwrap();
    let same_ip = service
        .clone()
        .oneshot(request_from(None, Some(second_port)))
        .await
        .unwrap();
    let other = service
        .clone()
        .oneshot(request_from(None, Some(other_peer)))
        .await
        .unwrap();

    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(same_ip.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(limiter.tracked_keys(), 2);
}

#[tokio::test]
async fn request_without_address_uses_unspecified() {
    let (limiter, _clock) = limiter(&config(1.0, 1));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RateLimitLayer::new(Arc::clone(&limiter)).layer(counting_service(calls));

    let first = service
        .clone()
        .oneshot(request_from(None, None))
        .await
        .unwrap();
    let second = service
        .clone()
        .oneshot(request_from(None, None))
        .await
        .unwrap();
    let unspecified = service
        .clone()
        .oneshot(request_from(Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), None))
        .await
        .unwrap();

    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(unspecified.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limiter.tracked_keys(), 1);
}

#[tokio::test]
async fn disabled_limiter_passes_through() {
    let mut config = config(1.0, 1);
    config.enabled = false;
    let (limiter, _clock) = limiter(&config);
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RateLimitLayer::new(limiter).layer(counting_service(Arc::clone(&calls)));

    for _ in 0..10 {
        let request = request_from(Some(ip("198.51.100.7")), None);
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let fields: Vec<_> = response.headers().get_all(RATELIMIT).iter().collect();
        assert_eq!(fields, ["\"backend\";r=9"]);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[test]
fn idle_buckets_are_evicted() {
    let (limiter, clock) = limiter(&config(100.0, 50));

    for n in 0..100_000u32 {
        let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
        limiter.check(client);
    }
    assert_eq!(limiter.tracked_keys(), 100_000);

    // A bucket that took one token is full after 10 ms; governor keeps it one more
    // replenish interval. Right before that it must still be there.
    clock.advance(Duration::from_millis(19));
    limiter.evict_idle();
    assert_eq!(limiter.tracked_keys(), 100_000);

    clock.advance(Duration::from_millis(500));
    limiter.evict_idle();
    assert_eq!(limiter.tracked_keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn eviction_task_runs_until_shutdown() {
    let (limiter, clock) = limiter(&config(100.0, 50));
    for n in 0..1000u32 {
        limiter.check(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)));
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let task = limiter.spawn_eviction(Duration::from_secs(1), shutdown_rx);

    // Before the first tick nothing is evicted, even though every bucket is idle.
    clock.advance(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(limiter.tracked_keys(), 1000);

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(limiter.tracked_keys(), 0);

    shutdown_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("eviction task did not stop after shutdown")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn eviction_task_ends_with_limiter() {
    let (limiter, _clock) = limiter(&config(100.0, 50));
    let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let task = limiter.spawn_eviction(Duration::from_secs(1), shutdown_rx);

    drop(limiter);

    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("eviction task outlived its limiter")
        .unwrap();
}
