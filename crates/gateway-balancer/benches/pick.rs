//! The balancer's pick: smooth weighted round-robin over a pool.

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_balancer::{Backend, HealthPolicy, Pool};
use http::Uri;
use std::hint::black_box;
use std::sync::Arc;

fn pool(weights: &[u32]) -> Pool {
    Pool::new(
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                let url: Uri = format!("http://127.0.0.1:{}", 9001 + i)
                    .parse()
                    .expect("valid URL");
                (Arc::new(Backend::new(url, HealthPolicy::default())), weight)
            })
            .collect(),
    )
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    let two = pool(&[2, 1]);
    group.bench_function("weights 2:1", |b| b.iter(|| black_box(two.pick())));
    let five = pool(&[5, 3, 2, 1, 1]);
    group.bench_function("five backends", |b| b.iter(|| black_box(five.pick())));

    let degraded = pool(&[5, 3, 2, 1, 1]);
    if let Some((first, _)) = degraded.backends().next() {
        for _ in 0..3 {
            first.record_request_failure("connection refused");
        }
    }
    group.bench_function("five backends, heaviest down", |b| {
        b.iter(|| black_box(degraded.pick()))
    });

    // The heavy backend's turns are nearly the whole cycle, so almost every pick is a
    // replacement, and the next turn of a light backend is about 5000 turns away.
    let heavy_down = pool(&[10_000, 1, 1]);
    if let Some((first, _)) = heavy_down.backends().next() {
        for _ in 0..3 {
            first.record_request_failure("connection refused");
        }
    }
    group.bench_function("weights 10000:1:1, heaviest down", |b| {
        b.iter(|| black_box(heavy_down.pick()))
    });
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
