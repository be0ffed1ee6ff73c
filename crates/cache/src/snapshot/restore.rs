//! Putting a recovery point back into the caches: the newest point whose chain is intact (or the
//! point an operator named), its full point first, then each increment in order. Every file of
//! the chain is verified whole before any of it is applied, and applied streaming (memory: one
//! record at a time, the cache's own size in total, never the file's). A damaged increment ends
//! the chain at the point before it; a damaged full point sends us to an older chain.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::{Change, RecoveryPoint, SnapshotError, chain_of, corrupt, read_each, scan, verify};
use crate::CacheRegistry;
use crate::entry::Variant;

/// What a restore put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The point the caches now reflect.
    pub point: RecoveryPoint,
    /// Files read: the full point and the increments applied on it.
    pub chain: usize,
    /// URLs now in the cache again.
    pub restored: u64,
    /// URLs whose every variant expired while the daemon was down.
    pub expired: u64,
    /// URLs of services that no longer exist or no longer cache, keyed under other query
    /// rules, or with nothing the cache would store.
    pub unclaimed: u64,
    /// Points skipped as damaged or unusable (each also reported through `on_damaged`).
    pub damaged: u64,
    /// Bytes read from disk.
    pub bytes: u64,
    /// How long reading and applying took.
    pub took: Duration,
}

/// The files a restore reads, in order, all verified whole.
#[derive(Debug, Clone)]
pub struct Plan {
    pub chain: Vec<RecoveryPoint>,
    /// Points skipped as damaged or unusable (each reported through `on_damaged`).
    pub damaged: u64,
}

impl Plan {
    /// The point the caches reflect once the plan is applied.
    pub fn point(&self) -> &RecoveryPoint {
        &self.chain[self.chain.len() - 1]
    }
}

/// Finds what a restore of the point named `target` (see [`RecoveryPoint::is_named`]), else of
/// the newest usable point, would read: every file of its chain verified whole, up to the first
/// damaged increment. Damaged points are reported through `on_damaged`. `None`: nothing usable.
pub fn plan(
    dir: &Path,
    target: Option<&str>,
    mut on_damaged: impl FnMut(&SnapshotError),
) -> Result<Option<Plan>, SnapshotError> {
    let mut damaged = 0u64;
    let points = scan(dir, |e| {
        damaged += 1;
        on_damaged(e);
    })?;
    let candidates: Vec<&RecoveryPoint> = match target {
        Some(name) => {
            let p = points.iter().find(|p| p.is_named(name));
            vec![p.ok_or_else(|| SnapshotError::NotFound {
                dir: dir.to_path_buf(),
                name: name.to_string(),
            })?]
        }
        None => points.iter().collect(),
    };
    // Verified whole already (a point shared by several candidates' chains is read once).
    let mut good: HashSet<&Path> = HashSet::new();
    let mut bad: HashSet<&Path> = HashSet::new();
    for candidate in candidates {
        let mut chain = match chain_of(&points, candidate) {
            Ok(c) => c,
            Err(why) => {
                damaged += 1;
                on_damaged(&corrupt(&candidate.path, why));
                continue;
            }
        };
        // The intact prefix of the chain.
        for i in 0..chain.len() {
            let p = chain[i].path.as_path();
            if bad.contains(p) {
                chain.truncate(i);
                break;
            }
            if good.contains(p) {
                continue;
            }
            match verify(p) {
                Ok(_) => {
                    good.insert(p);
                }
                Err(e) => {
                    damaged += 1;
                    on_damaged(&e);
                    bad.insert(p);
                    chain.truncate(i);
                    break;
                }
            }
        }
        if chain.is_empty() {
            continue;
        }
        return Ok(Some(Plan {
            chain: chain.into_iter().cloned().collect(),
            damaged,
        }));
    }
    Ok(None)
}

/// Applies a plan to the caches of the services that still cache (their caches must exist),
/// streaming its files in order.
pub fn apply_plan(caches: &CacheRegistry, plan: &Plan) -> Result<Restored, SnapshotError> {
    let started = Instant::now();
    let mut done = Restored {
        point: plan.point().clone(),
        chain: plan.chain.len(),
        restored: 0,
        expired: 0,
        unclaimed: 0,
        damaged: plan.damaged,
        bytes: 0,
        took: Duration::ZERO,
    };
    let now = SystemTime::now();
    let mut live: HashSet<(String, String)> = HashSet::new();
    for p in &plan.chain {
        // Each file says which key rules its puts were keyed by.
        let mut rules: HashMap<String, String> = HashMap::new();
        read_each(&p.path, |change| {
            apply(caches, change, now, &mut live, &mut done, &mut rules)
        })?;
        done.bytes += p.bytes;
    }
    done.restored = live.len() as u64;
    done.took = started.elapsed();
    caches.refresh_gauges();
    Ok(done)
}

/// [`plan`] then [`apply_plan`]: puts a recovery point in `dir` back into the caches. `None`: no
/// usable point.
pub fn restore(
    caches: &CacheRegistry,
    dir: &Path,
    target: Option<&str>,
    on_damaged: impl FnMut(&SnapshotError),
) -> Result<Option<Restored>, SnapshotError> {
    let started = Instant::now();
    let Some(p) = plan(dir, target, on_damaged)? else {
        return Ok(None);
    };
    let mut done = apply_plan(caches, &p)?;
    done.took = started.elapsed();
    Ok(Some(done))
}

fn apply(
    caches: &CacheRegistry,
    change: Change,
    now: SystemTime,
    live: &mut HashSet<(String, String)>,
    done: &mut Restored,
    rules: &mut HashMap<String, String>,
) {
    match change {
        Change::KeyRules { service, rules: r } => {
            rules.insert(service, r);
        }
        Change::Put(r) => {
            // Points written before keys carried the scheme and port (`host/path`) name objects
            // no request looks up now, and would be served to whichever port asked: left out.
            let current_key = r.key.starts_with("http://") || r.key.starts_with("https://");
            let Some(cache) = caches.get(&r.service).filter(|_| current_key) else {
                done.unclaimed += 1;
                return;
            };
            // Keyed under other query rules (changed while the daemon was down): its key
            // names other requests now, so neither it nor an older copy stands (a reload that
            // changes them likewise starts the store empty). Points from before rules were
            // recorded say nothing and are taken as they are.
            if rules
                .get(&r.service)
                .is_some_and(|keyed| *keyed != cache.key_rules())
            {
                cache.purge_url(&r.key);
                live.remove(&(r.service, r.key));
                done.unclaimed += 1;
                return;
            }
            // Held to what the live cache stores, times clamped to now before the store's
            // deadline is reckoned from them.
            let variants: Vec<Variant> = r
                .variants
                .into_iter()
                .filter_map(|v| cache.restorable(v, now))
                .collect();
            if variants.is_empty() {
                cache.purge_url(&r.key);
                live.remove(&(r.service, r.key));
                done.unclaimed += 1;
                return;
            }
            let keep_until = variants.iter().map(Variant::keep_until).max();
            let id = (r.service, r.key);
            match keep_until.and_then(|t| t.duration_since(now).ok()) {
                Some(left) if !left.is_zero() => {
                    if cache.restore(&id.1, variants, left) {
                        live.insert(id);
                    } else {
                        // Refused (over today's max_object_size): an older copy from earlier in
                        // the chain must not stand in for it.
                        cache.purge_url(&id.1);
                        live.remove(&id);
                    }
                }
                _ => {
                    // An older copy from earlier in the chain must not stay either.
                    cache.purge_url(&id.1);
                    live.remove(&id);
                    done.expired += 1;
                }
            }
        }
        Change::Remove { service, key } => {
            if let Some(cache) = caches.get(&service) {
                cache.purge_url(&key);
            }
            live.remove(&(service, key));
        }
    }
}
