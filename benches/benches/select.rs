//! Nanoseconds per pick: each backend policy at 3, 100 and 10 000 backends, through the same
//! two-level `Service::pick` the data plane calls (region order, then backend).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use streamgate_balance::{ClientFacts, Lease, RoutingTable};
use streamgate_telemetry::Metrics;

fn table(policy: &str, backends: usize) -> RoutingTable {
    let list: Vec<String> = (0..backends)
        .map(|i| {
            format!(
                "{{ address = \"10.{}.{}.{}:8080\", weight = {} }}",
                i >> 16 & 255,
                i >> 8 & 255,
                i & 255,
                1 + i % 3
            )
        })
        .collect();
    let text = format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[regions]]\nname = \"r\"\nbackends = [ {} ]\n\
         [[services]]\nname = \"s\"\nlisteners = [\"web\"]\nregions = [\"r\"]\nbackend_policy = \"{policy}\"\n",
        list.join(", ")
    );
    let config = streamgate_config::parse(Path::new("bench.toml"), &text).unwrap();
    RoutingTable::build(Arc::new(config), None, &Metrics::new())
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for policy in ["round_robin", "least_conn", "latency", "random"] {
        for n in [3usize, 100, 10_000] {
            let t = table(policy, n);
            let service = &t.services[0];
            // Some load so least_conn and latency have something to compare.
            let _held: Vec<Lease> = service.regions[0]
                .backends
                .iter()
                .step_by(3)
                .map(|b| Lease::new(b.state.clone()))
                .collect();
            let facts = ClientFacts::default();
            group.bench_with_input(BenchmarkId::new(policy, n), &n, |b, _| {
                b.iter(|| black_box(service.pick(black_box(&facts), &[])).map(|p| p.backend_index))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
