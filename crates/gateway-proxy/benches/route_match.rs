//! Route matching: one lookup in the compiled route table.

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_config::Config;
use gateway_proxy::RouteTable;
use http::Method;
use std::hint::black_box;

const CONFIG: &str = r#"
health_check: {enabled: false}
routes:
  - path: "/api/users/*filepath"
    backends: [{url: "http://127.0.0.1:9001", weight: 2}, {url: "http://127.0.0.1:9002"}]
    methods: [GET, POST, PUT, DELETE]
  - path: "/api/orders/*filepath"
    backends: [{url: "http://127.0.0.1:9003"}]
  - path: "/api/products/:id/reviews/:review"
    backends: [{url: "http://127.0.0.1:9004"}]
  - path: "/api/search"
    backends: [{url: "http://127.0.0.1:9005"}]
  - path: "/static/*file"
    backends: [{url: "http://127.0.0.1:9006"}]
"#;

fn route_match(c: &mut Criterion) {
    let config = Config::from_yaml(CONFIG, "bench.yaml").expect("valid benchmark config");
    let table = RouteTable::new(&config).expect("route table");
    let mut group = c.benchmark_group("route_match");
    for path in [
        "/api/users/42/orders",
        "/api/products/7/reviews/99",
        "/api/search",
        "/not/routed",
    ] {
        group.bench_function(path, |b| {
            b.iter(|| black_box(table.find(&Method::GET, black_box(path))))
        });
    }
    group.finish();
}

criterion_group!(benches, route_match);
criterion_main!(benches);
