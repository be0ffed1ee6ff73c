//! Hit ratio under skewed popularity: a Zipf(0.9) trace of 1 million requests over 100 000
//! equal-sized objects, through StreamGate's cache store (W-TinyLFU) and through a plain
//! LRU of the same capacity (10% of the objects).
//!
//! Run: `cargo run --release -p streamgate-bench --bin streamgate-hitratio`
#![allow(clippy::print_stdout)]

use std::num::NonZeroUsize;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, StatusCode};
use streamgate_cache::policy::{Freshness, Timing};
use streamgate_cache::{ServiceCache, Variant};
use streamgate_config::{CacheSpec, KeyQuery};
use streamgate_telemetry::prometheus::IntCounter;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    requests: usize,
    #[arg(long, default_value_t = 100_000)]
    objects: usize,
    #[arg(long, default_value_t = 0.9)]
    zipf: f64,
    /// Cache capacity as a share of the objects.
    #[arg(long, default_value_t = 0.10)]
    cache_share: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Ranks 0..n drawn with probability proportional to 1 / (rank + 1)^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        for x in &mut cdf {
            *x /= sum;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let u = rng.f64();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

fn main() {
    let args = Args::parse();
    let zipf = Zipf::new(args.objects, args.zipf);
    let mut rng = fastrand::Rng::with_seed(args.seed);
    // Popularity ranks are shuffled onto object ids so that ids carry no order.
    let mut ids: Vec<usize> = (0..args.objects).collect();
    rng.shuffle(&mut ids);
    let trace: Vec<usize> = (0..args.requests)
        .map(|_| ids[zipf.sample(&mut rng)])
        .collect();

    let capacity = ((args.objects as f64) * args.cache_share) as usize;
    let now = SystemTime::now();
    let freshness = Freshness {
        lifetime: Duration::from_secs(86_400),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        must_revalidate: false,
        always_revalidate: false,
    };
    let body = Bytes::from(vec![0u8; 1024]);
    let variant = Variant::new(
        StatusCode::OK,
        HeaderMap::new(),
        body,
        Timing::of(&HeaderMap::new(), now, now),
        freshness,
        vec![],
    );
    let size = variant.size;
    let spec = CacheSpec {
        max_size: size * capacity as u64,
        max_object_size: size,
        default_ttl: Duration::ZERO,
        heuristic_freshness: false,
        key_query: KeyQuery::All,
        key_headers: vec![],
        purge_from: vec![],
        status_header: "x-cache".into(),
        lock_timeout: Duration::from_secs(1),
        max_variants: 32,
        max_fill_bytes: 64 << 20,
        targeted_fields: vec!["cdn-cache-control".into()],
    };
    // The store wants metric handles; nothing reads them here.
    let metrics = streamgate_telemetry::Metrics::new();
    let edge = streamgate_cache::EdgeMetrics::for_bench(&metrics);
    let store = ServiceCache::new(spec, IntCounter::new("e", "e").expect("metric"), edge);
    let empty = HeaderMap::new();
    let keys: Vec<String> = (0..args.objects)
        .map(|i| format!("cdn.example.com/o/{i}"))
        .collect();

    let started = Instant::now();
    let mut hits = 0usize;
    for &id in &trace {
        if store.lookup(&keys[id], &empty).is_some() {
            hits += 1;
        } else {
            store.insert(&keys[id], variant.clone());
        }
    }
    let sg_time = started.elapsed();
    store.settle();
    let sg_ratio = hits as f64 / args.requests as f64;

    let mut lru = lru::LruCache::new(NonZeroUsize::new(capacity).expect("capacity"));
    let mut lru_hits = 0usize;
    for &id in &trace {
        if lru.get(&id).is_some() {
            lru_hits += 1;
        } else {
            lru.put(id, ());
        }
    }
    let lru_ratio = lru_hits as f64 / args.requests as f64;
    // The best any cache of this size could do without knowing the future: the most popular
    // objects pinned.
    let mut counts = vec![0usize; args.objects];
    for &id in &trace {
        counts[id] += 1;
    }
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let ideal = counts[..capacity].iter().sum::<usize>() as f64 / args.requests as f64;

    println!(
        "\n## Hit ratio: Zipf({}) trace, {} requests over {} objects, cache holds {} ({:.0}%)\n",
        args.zipf,
        args.requests,
        args.objects,
        capacity,
        args.cache_share * 100.0
    );
    println!("| cache | hit ratio |");
    println!("|---|---:|");
    println!(
        "| StreamGate (W-TinyLFU, byte-bounded) | {:.2}% |",
        sg_ratio * 100.0
    );
    println!("| plain LRU | {:.2}% |", lru_ratio * 100.0);
    println!(
        "| static top-{} (upper bound for a frequency policy) | {:.2}% |",
        capacity,
        ideal * 100.0
    );
    println!(
        "\nStreamGate - LRU: {:+.2} points. ({} lookups+inserts in {:.2} s, {:.0} ns each)",
        (sg_ratio - lru_ratio) * 100.0,
        args.requests,
        sg_time.as_secs_f64(),
        sg_time.as_nanos() as f64 / args.requests as f64
    );
}
