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

/// Three regions of `per_region` backends each, with a region policy.
fn global_table(region_policy: &str, backend_policy: &str, per_region: usize) -> RoutingTable {
    let db = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/geo/streamgate-synthetic-city.mmdb"
    );
    let region = |name: &str, lat: f64, lon: f64, octet: usize| {
        let list: Vec<String> = (0..per_region)
            .map(|i| {
                format!(
                    "{{ address = \"10.{octet}.{}.{}:8080\" }}",
                    i >> 8 & 255,
                    i & 255
                )
            })
            .collect();
        format!(
            "[[regions]]\nname = \"{name}\"\nlocation = {{ lat = {lat}, lon = {lon} }}\nbackends = [ {} ]\n",
            list.join(", ")
        )
    };
    let text = format!(
        "[geo]\ndatabase = \"{db}\"\ndefault_region = \"us\"\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n{}{}{}\
         [[services]]\nname = \"s\"\nlisteners = [\"web\"]\nregions = [\"us\", \"eu\", \"ap\"]\nregion_policy = \"{region_policy}\"\n\
         backend_policy = \"{backend_policy}\"\n",
        region("us", 39.0, -77.5, 1),
        region("eu", 50.1, 8.7, 2),
        region("ap", 35.7, 139.7, 3),
    );
    let config = streamgate_config::parse(Path::new("bench.toml"), &text).unwrap();
    RoutingTable::build(Arc::new(config), None, &Metrics::new())
}

/// What the data plane does per request of a geo service: look the client up in the MaxMind
/// database, order regions by distance, pick a backend. And the latency region policy.
fn global_picks(c: &mut Criterion) {
    let db = streamgate_balance::GeoDb::open(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/geo/streamgate-synthetic-city.mmdb"
    )))
    .unwrap();
    let mut group = c.benchmark_group("global_pick");
    for n in [3usize, 100] {
        let t = global_table("geo", "latency", n);
        let service = &t.services[0];
        let client: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        group.bench_with_input(
            BenchmarkId::new("geo_lookup+latency_backend", n * 3),
            &n,
            |b, _| {
                b.iter(|| {
                    let facts = ClientFacts {
                        ip: Some(client),
                        geo: db.lookup(black_box(client)),
                        ..ClientFacts::default()
                    };
                    black_box(service.pick(&facts, &[])).map(|p| p.backend_index)
                })
            },
        );
        let t = global_table("latency", "latency", n);
        let service = &t.services[0];
        for (i, r) in service.regions.iter().enumerate() {
            r.health.set_latency_nanos(1_000_000 * (i as u64 + 1));
        }
        let facts = ClientFacts::default();
        group.bench_with_input(
            BenchmarkId::new("latency_region+latency_backend", n * 3),
            &n,
            |b, _| {
                b.iter(|| black_box(service.pick(black_box(&facts), &[])).map(|p| p.backend_index))
            },
        );
    }
    group.bench_function("geo_lookup_only", |b| {
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        b.iter(|| black_box(db.lookup(black_box(ip))))
    });
    group.finish();
}

criterion_group!(global, global_picks);
criterion_main!(benches, global);
