//! `streamgate snapshot …`: list, verify, restore, create and drill recovery points.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use http::{Method, StatusCode};
use streamgate_cache::CacheRegistry;
use streamgate_cache::recovery::RESTORE_TO;
use streamgate_cache::snapshot::{self, RecoveryPoint, SnapshotError};
use streamgate_config::Config;
use streamgate_telemetry::Metrics;

use crate::admin_client;

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// The recovery points, newest first: kind, the chain each belongs to, size, age, and
    /// whether it restores (every file of its chain read whole).
    List {
        #[command(flatten)]
        at: Where,
    },
    /// Read recovery points whole and check every checksum and chain: one file, or every
    /// point in a directory. Exit 0 if all are intact, 1 otherwise.
    Verify {
        /// A point's file or a directory of points (or give --config).
        path: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Go back to a recovery point: the daemon restores it at its next start, or at once with
    /// --now (through the running daemon's admin API; the cache is replaced by the point).
    Restore {
        /// The point: its file name (see `snapshot list`) or its creation time in unix ms.
        #[arg(long)]
        to: String,
        /// Ask the running daemon to restore it now.
        #[arg(long)]
        now: bool,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask the running daemon to write a recovery point now (through its admin API).
    Create {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// A recovery drill: restore the newest chain into a throw-away cache built from the
    /// config, report what it holds and how long it took; exit 1 on any damage.
    Drill {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Where the points are: the config's [snapshots] dir, or a directory.
#[derive(Debug, clap::Args)]
pub struct Where {
    #[arg(long, short, conflicts_with = "dir", required_unless_present = "dir")]
    config: Option<PathBuf>,
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(command: SnapshotCommand) -> ExitCode {
    let result = match command {
        SnapshotCommand::List { at } => dir_of(at.config.as_deref(), at.dir).and_then(|d| list(&d)),
        SnapshotCommand::Verify { path, config } => match (path, config) {
            (Some(p), _) => verify(&p),
            (None, Some(c)) => dir_of(Some(&c), None).and_then(|d| verify(&d)),
            (None, None) => Err(anyhow::anyhow!(
                "give a file or directory, or --config FILE"
            )),
        },
        SnapshotCommand::Restore { to, now, config } => restore(&config, &to, now),
        SnapshotCommand::Create { config } => create(&config),
        SnapshotCommand::Drill { config } => drill(&config),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("streamgate snapshot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: &Path) -> Result<Config> {
    Ok(streamgate_config::load(config)?)
}

fn dir_of(config: Option<&Path>, dir: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let Some(path) = config else {
        bail!("give --config FILE or --dir DIR");
    };
    match load(path)?.snapshots {
        Some(s) => Ok(s.dir),
        None => bail!(
            "{}: no [snapshots] section, so no recovery points (add dir = \"…\")",
            path.display()
        ),
    }
}

/// What one point's file holds, read whole.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    urls: u64,
    variants: u64,
    removed: u64,
}

fn inspect(path: &Path) -> Result<(RecoveryPoint, Counts), SnapshotError> {
    let mut c = Counts::default();
    let point = snapshot::read_each(path, |change| match change {
        snapshot::Change::Put(r) => {
            c.urls += 1;
            c.variants += r.variants.len() as u64;
        }
        snapshot::Change::Remove { .. } => c.removed += 1,
        snapshot::Change::KeyRules { .. } => {}
    })?;
    Ok((point, c))
}

fn describe(p: &RecoveryPoint, c: Counts) -> String {
    match p.parent {
        None => format!(
            "OK ({} URLs, {} objects, {} bytes, full)",
            c.urls, c.variants, p.bytes
        ),
        Some(_) => format!(
            "OK ({} URLs, {} objects, {} removed, {} bytes, increment; {} URLs in its chain)",
            c.urls, c.variants, c.removed, p.bytes, p.objects
        ),
    }
}

/// Each point with whether its whole chain reads back (files read once each).
fn check_all(points: &[RecoveryPoint]) -> Vec<Result<Counts, String>> {
    let mut file_ok: std::collections::HashMap<&Path, Result<Counts, String>> = Default::default();
    points
        .iter()
        .map(|p| {
            let chain = snapshot::chain_of(points, p)?;
            let mut own = Counts::default();
            for c in chain {
                let r = file_ok.entry(c.path.as_path()).or_insert_with(|| {
                    inspect(&c.path)
                        .map(|(_, counts)| counts)
                        .map_err(|e| e.to_string())
                });
                match r {
                    Err(e) if c.path == p.path => return Err(e.clone()),
                    Err(e) => return Err(format!("its chain is damaged at {}: {e}", c.name())),
                    Ok(counts) => own = *counts,
                }
            }
            Ok(own)
        })
        .collect()
}

fn age(p: &RecoveryPoint) -> String {
    let s = SystemTime::now()
        .duration_since(p.created)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn size(b: u64) -> String {
    match b {
        0..10_240 => format!("{b} B"),
        10_240..10_485_760 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    }
}

#[allow(clippy::print_stdout)]
fn list(dir: &Path) -> Result<bool> {
    let points = snapshot::list(dir)?;
    if points.is_empty() {
        println!("{}: no recovery points", dir.display());
        return Ok(true);
    }
    eprintln!("reading {} points whole...", points.len());
    let checked = check_all(&points);
    println!(
        "{:<36} {:<9} {:<32} {:>8} {:>10} {:>5}  state",
        "point", "kind", "chain (its full point)", "records", "size", "age"
    );
    let mut all_ok = true;
    for (p, ok) in points.iter().zip(&checked) {
        let base = points
            .iter()
            .find(|b| b.created == p.base && b.parent.is_none())
            .map_or_else(|| "(missing)".to_string(), RecoveryPoint::name);
        let state = match ok {
            Ok(_) => "intact".to_string(),
            Err(e) => {
                all_ok = false;
                format!("DAMAGED: {e}")
            }
        };
        println!(
            "{:<36} {:<9} {:<32} {:>8} {:>10} {:>5}  {state}",
            p.name(),
            p.kind().as_str(),
            base,
            p.records,
            size(p.bytes),
            age(p)
        );
    }
    Ok(all_ok)
}

#[allow(clippy::print_stdout)]
fn verify(path: &Path) -> Result<bool> {
    if !path.is_dir() {
        let (p, c) = inspect(path)?;
        println!("{}: {}", path.display(), describe(&p, c));
        return Ok(true);
    }
    let files = snapshot::files(path)?;
    if files.is_empty() {
        bail!(
            "{}: no recovery points (streamgate-*.snap) here",
            path.display()
        );
    }
    // Files whose header is damaged are not in `list`: report them too.
    let mut ok = true;
    let mut damaged_headers = Vec::new();
    let points = scan_reporting(path, &mut damaged_headers)?;
    for e in damaged_headers {
        ok = false;
        eprintln!("{e}");
    }
    for (p, r) in points.iter().zip(check_all(&points)) {
        match r {
            Ok(c) => println!("{}: {}", p.path.display(), describe(p, c)),
            Err(e) => {
                ok = false;
                eprintln!("{}: {e}", p.path.display());
            }
        }
    }
    Ok(ok)
}

fn scan_reporting(dir: &Path, damaged: &mut Vec<String>) -> Result<Vec<RecoveryPoint>> {
    let listed = snapshot::list(dir)?;
    for f in snapshot::files(dir)? {
        if !listed.iter().any(|p| p.path == f)
            && let Err(e) = snapshot::verify(&f)
        {
            damaged.push(e.to_string());
        }
    }
    Ok(listed)
}

#[allow(clippy::print_stdout)]
fn restore(config_path: &Path, to: &str, now: bool) -> Result<bool> {
    let config = load(config_path)?;
    let Some(s) = &config.snapshots else {
        bail!("{}: no [snapshots] section", config_path.display());
    };
    if now {
        let (status, body) = admin_client::call(
            &config,
            Method::POST,
            "/snapshots/restore",
            Some(serde_json::json!({ "point": to })),
        )?;
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(status.is_success());
    }
    let points = snapshot::list(&s.dir)?;
    let Some(p) = points.iter().find(|p| p.is_named(to)) else {
        return Err(SnapshotError::NotFound {
            dir: s.dir.clone(),
            name: to.to_string(),
        }
        .into());
    };
    for c in snapshot::chain_of(&points, p).map_err(|e| anyhow::anyhow!("{}: {e}", p.name()))? {
        snapshot::verify(&c.path)?;
    }
    let marker = s.dir.join(RESTORE_TO);
    snapshot::replace_file(&marker, |out| {
        use std::io::Write;
        writeln!(out, "{}", p.name())
    })
    .with_context(|| format!("cannot write {}", marker.display()))?;
    println!(
        "{} will be restored when the daemon next starts (asked in {}); \
         `--now` restores it in a running daemon instead",
        p.name(),
        marker.display()
    );
    Ok(true)
}

#[allow(clippy::print_stdout)]
fn create(config_path: &Path) -> Result<bool> {
    let config = load(config_path)?;
    let (status, body) = admin_client::call(&config, Method::POST, "/snapshots", None)?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(status == StatusCode::CREATED)
}

#[allow(clippy::print_stdout)]
fn drill(config_path: &Path) -> Result<bool> {
    let config = load(config_path)?;
    let Some(s) = &config.snapshots else {
        bail!("{}: no [snapshots] section", config_path.display());
    };
    let caches = CacheRegistry::new(Arc::new(Metrics::new()));
    for svc in &config.services {
        if let Some(spec) = &svc.cache {
            caches.for_service(&svc.name, spec);
        }
    }
    eprintln!(
        "restoring the newest chain in {} into a throw-away cache...",
        s.dir.display()
    );
    let started = Instant::now();
    let mut damage = Vec::new();
    let restored = snapshot::restore(&caches, &s.dir, None, |e| damage.push(e.to_string()))?;
    let took = started.elapsed();
    for d in &damage {
        eprintln!("DAMAGED: {d}");
    }
    let Some(r) = restored else {
        println!(
            "drill FAILED: no recovery point restores from {}",
            s.dir.display()
        );
        return Ok(false);
    };
    let (objects, bytes) = caches
        .services()
        .iter()
        .fold((0, 0), |(o, b), (_, c)| (o + c.objects(), b + c.bytes()));
    println!(
        "restored {} (a chain of {} file{}) in {:.3} s: {} objects, {} in the cache, {} read; \
         {} expired since it was written, {} left out (services that no longer cache, other \
         key rules, answers the cache would not store)",
        r.point.name(),
        r.chain,
        if r.chain == 1 { "" } else { "s" },
        took.as_secs_f64(),
        objects,
        size(bytes),
        size(r.bytes),
        r.expired,
        r.unclaimed
    );
    if damage.is_empty() {
        println!("drill passed");
        Ok(true)
    } else {
        println!("drill FAILED: {} damaged point(s)", damage.len());
        Ok(false)
    }
}
