//! Recovery points at size: fills a cache in this process with `--gib` of objects, writes a full
//! point and `--increments` increments (each replacing `--churn` of the objects), then restores
//! the chain in a child process of its own (so its peak RSS is the restore's alone) and prints
//! write MB/s, restore MB/s and the restore's RSS.
//!
//! `cargo run --release -p streamgate-bench --bin streamgate-recoverybench -- --gib 1`

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, StatusCode};
use streamgate_bench::procfs::status_kib;
use streamgate_cache::policy::{Freshness, Timing};
use streamgate_cache::recovery::Snapshotter;
use streamgate_cache::{CacheRegistry, Variant, snapshot};
use streamgate_config::{CacheSpec, KeyQuery, Snapshots};
use streamgate_telemetry::Metrics;

#[derive(Debug, Parser)]
struct Args {
    /// GiB of object bodies in the cache.
    #[arg(long, default_value_t = 1.0)]
    gib: f64,
    /// Size of each object in KiB.
    #[arg(long, default_value_t = 64)]
    object_kib: usize,
    /// Increments written after the full point.
    #[arg(long, default_value_t = 10)]
    increments: usize,
    /// Share of the objects each increment replaces.
    #[arg(long, default_value_t = 0.01)]
    churn: f64,
    /// Directory for the points (default: a temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Internal: restore the newest chain in DIR into a cache of this size and report.
    #[arg(long, hide = true)]
    restore_only: Option<PathBuf>,
}

fn spec(bytes: u64) -> CacheSpec {
    CacheSpec {
        max_size: bytes,
        max_object_size: 64 << 20,
        default_ttl: Duration::ZERO,
        heuristic_freshness: true,
        key_query: KeyQuery::All,
        key_headers: vec![],
        purge_from: vec![],
        status_header: "x-cache".into(),
        lock_timeout: Duration::from_secs(1),
        max_variants: 32,
        max_fill_bytes: 64 << 20,
        targeted_fields: vec![],
    }
}

fn object(kib: usize, seed: u64) -> Variant {
    let now = SystemTime::now();
    let mut headers = HeaderMap::new();
    headers.insert("cache-control", HeaderValue::from_static("max-age=86400"));
    headers.insert("content-type", HeaderValue::from_static("video/mp2t"));
    let mut body = vec![0u8; kib << 10];
    body[..8].copy_from_slice(&seed.to_le_bytes());
    Variant::new(
        StatusCode::OK,
        headers,
        Bytes::from(body),
        Timing::of(&HeaderMap::new(), now, now),
        Freshness {
            lifetime: Duration::from_secs(86400),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            always_revalidate: false,
        },
        vec![],
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn main() -> Result<()> {
    let args = Args::parse();
    let total = (args.gib * (1u64 << 30) as f64) as u64;
    let room = total + total / 4 + (256 << 20);
    if let Some(dir) = &args.restore_only {
        return restore_only(dir, room);
    }
    let tmp = tempfile::tempdir_in(args.dir.as_deref().unwrap_or(Path::new("/var/tmp")))?;
    let dir = tmp.path().to_path_buf();
    let objects = (total / ((args.object_kib as u64) << 10)).max(1);
    let metrics = Metrics::new();
    let caches = CacheRegistry::new(Arc::new(metrics.clone()));
    let cache = caches.for_service("video", &spec(room));
    eprintln!("filling {objects} objects of {} KiB...", args.object_kib);
    for i in 0..objects {
        cache.insert(
            &format!("http://video.test/seg/{i}.ts"),
            object(args.object_kib, i),
        );
    }
    cache.settle();
    println!(
        "cache: {} objects, {:.0} MiB (bodies {:.0} MiB)",
        cache.objects(),
        mib(cache.bytes()),
        mib(total)
    );
    let settings = Snapshots {
        dir: dir.clone(),
        interval: Duration::from_secs(3600),
        keep: NonZeroUsize::new(1000).unwrap_or(NonZeroUsize::MIN),
        max_age: None,
        max_increments: args.increments as u32,
        increment_share: 1000.0,
        // The disk's own speed: the daemon paces points at `write_rate` (256 MiB/s by default).
        write_rate: None,
    };
    let snapshots = Snapshotter::new(caches.clone(), &metrics, Some(settings));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let full = rt.block_on(snapshots.take())?;
    let took = started.elapsed();
    println!(
        "full point: {:.0} MiB in {:.2} s = {:.0} MiB/s",
        mib(full.bytes),
        took.as_secs_f64(),
        mib(full.bytes) / took.as_secs_f64()
    );
    let per = ((objects as f64 * args.churn) as u64).max(1);
    let mut next = objects;
    let (mut inc_bytes, mut inc_time) = (0u64, Duration::ZERO);
    for round in 0..args.increments {
        for j in 0..per {
            // Replace a spread of objects, plus one new object per round.
            let i = (round as u64 * per + j) * 7919 % objects;
            cache.insert(
                &format!("http://video.test/seg/{i}.ts"),
                object(args.object_kib, next),
            );
            next += 1;
        }
        let started = Instant::now();
        let inc = rt.block_on(snapshots.take())?;
        inc_time += started.elapsed();
        inc_bytes += inc.bytes;
        if inc.kind() != snapshot::Kind::Increment {
            bail!("point {round} was not an increment");
        }
    }
    if args.increments > 0 {
        println!(
            "{} increments of {} objects: {:.0} MiB in {:.2} s = {:.0} MiB/s ({:.2} s each, against {:.2} s for a full point)",
            args.increments,
            per,
            mib(inc_bytes),
            inc_time.as_secs_f64(),
            mib(inc_bytes) / inc_time.as_secs_f64(),
            inc_time.as_secs_f64() / args.increments as f64,
            took.as_secs_f64()
        );
    }
    drop(snapshots);
    drop(caches);
    drop(rt);
    let me = std::env::current_exe()?;
    let out = std::process::Command::new(me)
        .arg("--gib")
        .arg(args.gib.to_string())
        .arg("--restore-only")
        .arg(&dir)
        .output()
        .context("running the restore")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("restore failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Restores the newest chain in `dir` into a fresh cache of `room` bytes and reports.
#[allow(clippy::print_stdout)]
fn restore_only(dir: &Path, room: u64) -> Result<()> {
    let before = status_kib(std::process::id(), "VmRSS");
    let caches = CacheRegistry::new(Arc::new(Metrics::new()));
    caches.for_service("video", &spec(room));
    let started = Instant::now();
    let done = snapshot::restore(&caches, dir, None, |e| eprintln!("damaged: {e}"))?
        .context("nothing to restore")?;
    let took = started.elapsed();
    let peak = status_kib(std::process::id(), "VmHWM");
    let cache = caches.get("video").context("the service")?;
    println!(
        "restore of {} ({} files): {:.0} MiB read in {:.2} s = {:.0} MiB/s; {} objects, {:.0} MiB in the cache; RSS {:.0} MiB before, peak {:.0} MiB",
        done.point.name(),
        done.chain,
        mib(done.bytes),
        took.as_secs_f64(),
        mib(done.bytes) / took.as_secs_f64(),
        cache.objects(),
        mib(cache.bytes()),
        before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}
