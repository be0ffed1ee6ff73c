//! Nanoseconds and allocations per request for `[[services.rules]]` evaluation: 0, 5 and 20
//! rules that a request matches none of (the cost every proxied request pays), and 20 rules
//! where one redirect matches. The allocation count comes from a counting global allocator
//! and is printed beside criterion's figures; the policy crate's unit test holds the no-match
//! case at zero.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use streamgate_config::rules::{Rules, Scheme};

fn rules(extra: &str, n: usize) -> Rules {
    let text = format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[regions]]\nname = \"r\"\n\
         backends = [ {{ address = \"127.0.0.1:9\" }} ]\n[[services]]\nname = \"s\"\n\
         listeners = [\"web\"]\nregions = [\"r\"]\n{extra}{}",
        streamgate_bench::rules::unmatched(n)
    );
    streamgate_config::parse(Path::new("bench.toml"), &text)
        .unwrap()
        .services[0]
        .rules
        .clone()
}

fn bench(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", "wrk".parse().unwrap());
    headers.insert("accept", "*/*".parse().unwrap());
    let client: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let req = |path| streamgate_policy::Request {
        scheme: Scheme::Http,
        method: "GET",
        host: "bench.test",
        port: Some("8080"),
        path,
        query: None,
        headers: &headers,
        client,
        country: None,
        region: None,
        service: "s",
    };
    let mut g = c.benchmark_group("rules");
    for n in [0, 5, 20] {
        let r = rules("", n);
        let allocs = allocation_counter::measure(|| {
            for _ in 0..1000 {
                black_box(streamgate_policy::evaluate(&r, &req("/1k")));
            }
        });
        eprintln!(
            "rules/unmatched/{n}: {:.2} allocations per request",
            allocs.count_total as f64 / 1000.0
        );
        g.bench_with_input(BenchmarkId::new("unmatched", n), &r, |b, r| {
            b.iter(|| streamgate_policy::evaluate(r, black_box(&req("/1k"))))
        });
    }
    let first = "[[services.rules]]\nmatch = { path = \"/old\" }\nredirect = { path = \"/new\" }\n";
    let r = rules(first, 19);
    g.bench_function("redirect-of-20", |b| {
        b.iter(|| streamgate_policy::evaluate(&r, black_box(&req("/old"))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
