//! The rate-limit check: one bucket lookup and update per request.

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_config::{RateLimitConfig, RateLimitKey};
use gateway_middleware::rate_limit::RateLimiter;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

fn limiter(key: RateLimitKey) -> RateLimiter {
    // A limit no benchmark loop reaches, so every check takes the allowed path.
    RateLimiter::new(&RateLimitConfig {
        enabled: true,
        requests_per_second: 1e9,
        burst: 1_000_000_000,
        key,
        ipv6_prefix: 64,
    })
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit_check");

    let global = limiter(RateLimitKey::Global);
    let client = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    group.bench_function("global key", |b| b.iter(|| black_box(global.check(client))));

    let per_client = limiter(RateLimitKey::ClientIp);
    group.bench_function("client key, one client", |b| {
        b.iter(|| black_box(per_client.check(client)))
    });

    let clients: Vec<IpAddr> = (0..10_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let mut next = 0;
    group.bench_function("client key, 10,000 clients", |b| {
        b.iter(|| {
            next = (next + 1) % clients.len();
            black_box(per_client.check(clients[next]))
        })
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
