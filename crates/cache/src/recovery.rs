//! When recovery points are written: every `[snapshots] interval`, on demand (admin API), and on a
//! graceful stop; full or incremental (only what changed since the point before, found by
//! comparing each object's fingerprint with the last point's); restored once at start (or to a
//! chosen point through the admin API); verified in the background after each write; and the
//! recovery metrics.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use streamgate_config::Snapshots;
use streamgate_telemetry::Metrics;
use streamgate_telemetry::prometheus::{Gauge, IntCounter, IntGauge};
use thiserror::Error;
use tracing::{error, info, warn};

use crate::CacheRegistry;
use crate::snapshot::{
    self, ChainState, Kind, RecoveryPoint, Restored, Retention, SnapshotError, Thresholds, ToWrite,
};
use crate::store::Entry;

#[derive(Debug, Error)]
pub enum RecoveryError {
    #[error(
        "snapshots are not configured: add a [snapshots] section with dir = \"/var/lib/streamgate/snapshots\""
    )]
    NotConfigured,
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the snapshot task stopped: {0}")]
    Task(String),
    #[error(
        "{name} does not restore: {why}; nothing was changed (`streamgate snapshot list` shows which points are intact)"
    )]
    Unusable { name: String, why: String },
}

/// Runs file work on a blocking thread, off the runtime's workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, RecoveryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RecoveryError::Task(e.to_string()))?
        .map_err(RecoveryError::from)
}

/// How soon after an operator's purge a point is written, after the last one: a purged object
/// (a takedown, a leaked file) must not come back with a crash and a restore, which at the
/// interval's pace (5 min by default) it could for minutes. A point looks at every object, so
/// they are spaced at least ten times the last one's writing time apart: a stream of purges costs
/// the writer's thread at most a tenth of its time.
fn purge_gap(last_write: Duration) -> Duration {
    (last_write * 10).max(Duration::from_secs(5))
}

/// A point is dated when its objects are gathered from the caches; a purge journaled this
/// close before that date (clocks in milliseconds, a purge applied just before its line was
/// dated) is applied again after restoring the point and kept in the journal: applying one
/// twice only costs a miss. A clock stepped back further than this between a purge and the
/// next point is not covered (that point is dated after the newest one on disk).
const JOURNAL_MARGIN_MS: u64 = 1_000;

/// What the writer knows between points.
#[derive(Debug, Default)]
struct Writer {
    /// When the newest point was created (written or restored).
    newest: Option<SystemTime>,
    /// The chain this daemon writes increments on (`None`: the next point is full).
    chain: Option<ChainState>,
    /// A fingerprint of every object as of the newest point: what an increment compares with.
    seen: Seen,
}

type Seen = HashMap<(Arc<str>, Arc<str>), u64>;

/// Tells a stored object's versions apart: a new insert (a refresh, a new variant) makes a new
/// entry list; the variants' response times and sizes guard against an address reused.
fn fingerprint(entry: &Entry) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (Arc::as_ptr(entry) as usize).hash(&mut h);
    for v in entry.iter() {
        (Arc::as_ptr(v) as usize).hash(&mut h);
        v.timing.response_time.hash(&mut h);
        v.size.hash(&mut h);
    }
    h.finish()
}

/// Runs `work` on a thread of its own at the lowest CPU priority (nice 19): writing or re-reading
/// a point then takes only the CPU the proxy leaves. Measured with one worker on one core (the
/// writer pinned with it, 1 GiB points written back to back, hits of a 1 KiB object, 16
/// connections): at normal priority hit p99 went from 1.0-3.8 ms to 8.3-8.5 ms and throughput
/// fell by 40%; see docs/benchmarks.md for the figures at nice 19.
async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, RecoveryError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("streamgate-snapshot".into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        })
        .map_err(|e| RecoveryError::Task(e.to_string()))?;
    rx.await
        .map_err(|e| RecoveryError::Task(e.to_string()))?
        .map_err(RecoveryError::from)
}

/// Nice 19 for the calling thread (on Linux setpriority with a thread id changes that thread
/// only); a failure only costs latency, so it is ignored. rustix: the syscalls without unsafe.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
}

/// Writes and restores recovery points for one daemon.
#[derive(Debug)]
pub struct Snapshotter {
    caches: Arc<CacheRegistry>,
    settings: ArcSwapOption<Snapshots>,
    /// One writer at a time.
    writer: tokio::sync::Mutex<Writer>,
    started: SystemTime,
    metrics: RecoveryMetrics,
}

/// The recovery metrics, resolved once.
#[derive(Debug, Clone)]
struct RecoveryMetrics {
    age: Gauge,
    restore_seconds: Gauge,
    verified_ok: IntGauge,
    verified_damaged: IntGauge,
    damaged: IntCounter,
}

pub use crate::snapshot::RESTORE_TO;

impl Snapshotter {
    pub fn new(
        caches: Arc<CacheRegistry>,
        metrics: &Metrics,
        settings: Option<Snapshots>,
    ) -> Arc<Snapshotter> {
        let verified = |r| metrics.recovery_point_verified.with_label_values(&[r]);
        caches.journal_to(settings.as_ref().map(|s| s.dir.clone()));
        Arc::new(Snapshotter {
            caches,
            settings: ArcSwapOption::new(settings.map(Arc::new)),
            writer: tokio::sync::Mutex::new(Writer::default()),
            started: SystemTime::now(),
            metrics: RecoveryMetrics {
                age: metrics.recovery_point_age.clone(),
                restore_seconds: metrics.recovery_restore_seconds.clone(),
                verified_ok: verified("ok"),
                verified_damaged: verified("damaged"),
                damaged: metrics.recovery_points_damaged.clone(),
            },
        })
    }

    pub fn settings(&self) -> Option<Arc<Snapshots>> {
        self.settings.load_full()
    }

    /// New settings from a reload; the next point follows them.
    pub fn configure(&self, settings: Option<Snapshots>) {
        self.caches
            .journal_to(settings.as_ref().map(|s| s.dir.clone()));
        self.settings.store(settings.map(Arc::new));
    }

    fn require(&self) -> Result<Arc<Snapshots>, RecoveryError> {
        self.settings().ok_or(RecoveryError::NotConfigured)
    }

    /// At start: removes temporary files a crash left, then puts back the point named in
    /// [`RESTORE_TO`] (if an operator asked for one; the request is then consumed) or else the
    /// newest usable one. Damaged points are logged, counted and skipped.
    pub async fn restore(&self) -> Result<Option<Restored>, RecoveryError> {
        let settings = self.require()?;
        let dir = settings.dir.clone();
        let asked = blocking({
            let dir = dir.clone();
            move || {
                let cleaned = snapshot::clean_temporary(&dir)?;
                if cleaned > 0 {
                    info!(dir = %dir.display(), files = cleaned, "removed temporary files left by an interrupted write");
                }
                Ok(std::fs::read_to_string(dir.join(RESTORE_TO))
                    .ok()
                    .map(|s| s.trim().to_string()))
            }
        })
        .await?;
        let restored = match self.restore_point(asked.as_deref(), false).await {
            Err(
                e @ (RecoveryError::Snapshot(SnapshotError::NotFound { .. })
                | RecoveryError::Unusable { .. }),
            ) => {
                error!(error = %e, "the recovery point asked for with `streamgate snapshot restore --to` cannot be restored; restoring the newest instead");
                self.restore_point(None, false).await
            }
            other => other,
        };
        if asked.is_some() {
            let _ = std::fs::remove_file(dir.join(RESTORE_TO));
        }
        if let Ok(None) = &restored {
            info!(dir = %dir.display(), "no recovery point to restore; the cache starts empty");
        }
        restored
    }

    /// Puts the point named `target` (else the newest usable one) back into the caches, which
    /// are emptied first when `replace` (a running daemon going back to a point).
    pub async fn restore_point(
        &self,
        target: Option<&str>,
        replace: bool,
    ) -> Result<Option<Restored>, RecoveryError> {
        let settings = self.require()?;
        let caches = self.caches.clone();
        let dir = settings.dir.clone();
        let target = target.map(str::to_string);
        let mut writer = self.writer.lock().await;
        // Purges still queued for the journal are in it before it is read; those its disk has
        // not taken (a hung mount answers nothing in `ON_DISK_WAIT`, a full one fails) are
        // applied from memory (see below).
        self.caches.purges_on_disk(0).await;
        let damaged = self.metrics.damaged.clone();
        let restored = blocking(move || {
            let report = |e: &SnapshotError| {
                damaged.inc();
                warn!(error = %e, "skipping a damaged recovery point; trying an older one");
            };
            let plan = match snapshot::plan(&dir, target.as_deref(), report) {
                Err(e) => return Ok(Err(RecoveryError::Snapshot(e))),
                Ok(p) => p,
            };
            // A named point restores as itself or not at all, and the caches are only touched
            // once the whole chain has been read back.
            if let Some(name) = &target {
                let why = match &plan {
                    None => Some("its chain is damaged".to_string()),
                    Some(p) if !p.point().is_named(name) => {
                        Some(format!("its chain is damaged after {}", p.point().name()))
                    }
                    Some(_) => None,
                };
                if let Some(why) = why {
                    return Ok(Err(RecoveryError::Unusable {
                        name: name.clone(),
                        why,
                    }));
                }
            }
            let Some(plan) = plan else {
                return Ok(Ok(None));
            };
            if replace {
                caches.apply_purge(&crate::Purge::All, None);
            }
            let restored = snapshot::apply_plan(&caches, &plan)?;
            // Purges the point may not hold (made after it began, or not written since):
            // applied again, which also brings the next point soon. Those not on disk are taken
            // from memory first, then the file: a purge made while the point was read back is
            // in one or the other (a write between the two reads moves it from memory into the
            // file), and one made after this is applied to the restored caches directly.
            let unwritten = caches.unwritten_purges(&dir);
            let mut journaled = snapshot::journal::read(&dir).unwrap_or_else(|e| {
                error!(dir = %dir.display(), error = %e, "cannot read the purge journal: purges journaled before this run were not applied again");
                Vec::new()
            });
            journaled.extend(unwritten);
            let (created, now) = (
                snapshot::unix_ms(restored.point.created),
                snapshot::unix_ms(SystemTime::now()),
            );
            let journaled: Vec<_> = journaled
                .into_iter()
                .filter(|j| {
                    let plausible = snapshot::journal::plausible(j.at_ms, now);
                    if !plausible {
                        warn!(at_ms = j.at_ms, "a journaled purge dated in the future is ignored");
                    }
                    plausible && j.at_ms.saturating_add(JOURNAL_MARGIN_MS) >= created
                })
                .collect();
            for j in &journaled {
                caches.apply_purge(&j.what, j.service.as_deref());
            }
            if !journaled.is_empty() {
                info!(purges = journaled.len(), "purges made since the recovery point applied again");
            }
            Ok(Ok(Some(restored)))
        })
        .await??;
        if let Some(r) = &restored {
            writer.newest = Some(r.point.created);
            // The next point is full: what expired during the restore is not in `seen`.
            writer.chain = None;
            writer.seen.clear();
            self.metrics.restore_seconds.set(r.took.as_secs_f64());
            info!(
                point = %r.point.name(),
                chain = r.chain,
                objects = r.restored,
                expired = r.expired,
                unclaimed = r.unclaimed,
                damaged = r.damaged,
                bytes = r.bytes,
                took_ms = r.took.as_millis() as u64,
                "cache restored from a recovery point"
            );
        }
        drop(writer);
        self.refresh_age().await;
        Ok(restored)
    }

    /// Writes a recovery point now: an increment on the chain this daemon writes, or a full
    /// point when there is none or it has grown past the thresholds; reads it back whole and,
    /// only if it is sound, applies retention. A point that does not read back is the error:
    /// the older points stay, and the next point is a full one.
    pub async fn take(&self) -> Result<RecoveryPoint, RecoveryError> {
        let settings = self.require()?;
        let mut writer = self.writer.lock().await;
        let caches = self.caches.clone();
        // Purges from here on are after this point's look at the cache.
        let purged = caches.take_purge();
        let started = Instant::now();
        // Taken: after a failure the next point starts a chain afresh.
        let chain = writer.chain.take();
        let seen = std::mem::take(&mut writer.seen);
        let s = settings.clone();
        let written = in_background(move || write_point(&caches, &s, chain, seen)).await;
        let settled = written.and_then(|(w, settled)| match settled {
            Ok(retention) => Ok((w, retention)),
            Err(e) => Err(self.damaged(&w.point, e)),
        });
        let (w, retention) = match settled {
            Ok(done) => done,
            Err(e) => {
                drop(writer);
                // The purge is not on disk yet: the next point is due soon again.
                if purged {
                    self.caches.note_purge();
                }
                return Err(e);
            }
        };
        self.metrics.verified_ok.set(1);
        self.metrics.verified_damaged.set(0);
        writer.newest = Some(w.point.created);
        writer.chain = Some(w.chain);
        writer.seen = w.seen;
        drop(writer);
        let point = w.point;
        // The journal keeps what any point left to restore from may not hold: the purges from
        // JOURNAL_MARGIN before the oldest one on.
        let dir = settings.dir.clone();
        if let Ok(points) = blocking(move || snapshot::list(&dir)).await
            && let Some(oldest) = points.iter().map(|p| snapshot::unix_ms(p.created)).min()
        {
            self.caches.trim_journal(
                settings.dir.clone(),
                oldest.saturating_sub(JOURNAL_MARGIN_MS),
            );
        }
        for e in &retention.failed {
            warn!(error = %e, "cannot delete an old recovery point (the new one is written); check the directory's permissions");
        }
        info!(
            file = %point.path.display(),
            kind = point.kind().as_str(),
            records = point.records,
            bytes = point.bytes,
            deleted = retention.removed.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "recovery point written"
        );
        self.refresh_age().await;
        Ok(point)
    }

    /// A point just written that does not read back (`recovery_point_verified{result}`). A
    /// damaged one is deleted: no restore uses it, and a disk that damages every write would
    /// otherwise fill up with them while retention waits for a sound point. One that could not
    /// be read at all (out of descriptors) may be whole, and stays; neither costs an older point.
    fn damaged(&self, point: &RecoveryPoint, e: SnapshotError) -> RecoveryError {
        self.metrics.verified_ok.set(0);
        self.metrics.verified_damaged.set(1);
        if matches!(e, SnapshotError::Corrupt { .. }) {
            self.metrics.damaged.inc();
            let _ = std::fs::remove_file(&point.path);
            error!(file = %point.path.display(), error = %e, "a recovery point just written does not read back; it is deleted and the older points are kept; check the disk");
        } else {
            error!(file = %point.path.display(), error = %e, "cannot re-read a recovery point just written; the older points are kept");
        }
        RecoveryError::Snapshot(e)
    }

    /// The recovery points on disk, newest first.
    pub async fn list(&self) -> Result<(Arc<Snapshots>, Vec<RecoveryPoint>), RecoveryError> {
        let settings = self.require()?;
        let dir: PathBuf = settings.dir.clone();
        let points = blocking(move || snapshot::list(&dir)).await?;
        Ok((settings, points))
    }

    /// `recovery_point_age_seconds`: since the newest point this daemon wrote or restored (since
    /// it started, before any); 0 without snapshots.
    async fn refresh_age(&self) {
        let age = match self.settings() {
            None => Duration::ZERO,
            Some(_) => {
                let since = self.writer.lock().await.newest.unwrap_or(self.started);
                SystemTime::now()
                    .duration_since(since)
                    .unwrap_or(Duration::ZERO)
            }
        };
        self.metrics.age.set(age.as_secs_f64());
    }

    /// Writes a point every interval (the first one interval after start) while the
    /// snapshotter lives, and soon after an operator's purge; keeps the age gauge current.
    pub fn spawn(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last = Instant::now();
            let mut took = Duration::ZERO;
            let mut failing = false;
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { return };
                s.refresh_age().await;
                let Some(settings) = s.settings() else {
                    continue;
                };
                let since = last.elapsed();
                if since < settings.interval
                    && !(s.caches.purge_pending() && since >= purge_gap(took))
                {
                    continue;
                }
                last = Instant::now();
                let written = s.take().await;
                took = last.elapsed();
                match written {
                    Ok(_) => failing = false,
                    // Once per run of failures: a full disk should not flood the log.
                    Err(e) if !failing => {
                        failing = true;
                        warn!(error = %e, "cannot write a recovery point; retrying every interval");
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

/// Blocking: gathers every object, writes the next point, reads it back and, if it is sound,
/// applies retention: the point, and its re-read and retention (an error when it does not
/// read back).
fn write_point(
    caches: &CacheRegistry,
    settings: &Snapshots,
    chain: Option<ChainState>,
    seen: Seen,
) -> Result<(Written, Result<Retention, SnapshotError>), SnapshotError> {
    // The point holds the caches as of now: a purge journaled from here on may be missing.
    let looked = SystemTime::now();
    let mut objects: Vec<(Arc<str>, Arc<str>, Entry)> = Vec::new();
    let mut rules: Vec<(Arc<str>, String)> = Vec::new();
    for (service, cache) in caches.services() {
        let service: Arc<str> = service.into();
        rules.push((service.clone(), cache.key_rules()));
        for (key, entry) in cache.entries() {
            objects.push((service.clone(), key, entry));
        }
    }
    // A chain whose newest point is gone (deleted by hand, or by a retention an older daemon
    // applied) or in another directory (`dir` changed by a reload) cannot be extended.
    let chain =
        chain.filter(|c| c.last.path.exists() && c.last.path.parent() == Some(&settings.dir));
    let thresholds = Thresholds {
        max_increments: settings.max_increments,
        increment_share: settings.increment_share,
    };
    let kind = snapshot::next_kind(chain.as_ref(), thresholds);
    let mut now_seen: Seen = HashMap::with_capacity(objects.len());
    // First, what the puts below were keyed by: a restore under other rules leaves them out.
    let mut records: Vec<ToWrite<'_>> = rules
        .iter()
        .map(|(service, rules)| ToWrite::KeyRules {
            service,
            rules: rules.clone(),
        })
        .collect();
    for (service, key, entry) in &objects {
        let fp = fingerprint(entry);
        let id = (service.clone(), key.clone());
        if kind == Kind::Full || seen.get(&id) != Some(&fp) {
            records.push(ToWrite::Put {
                service,
                key,
                variants: entry.as_slice(),
            });
        }
        now_seen.insert(id, fp);
    }
    if kind == Kind::Increment {
        for (service, key) in seen.keys() {
            if !now_seen.contains_key(&(service.clone(), key.clone())) {
                records.push(ToWrite::Remove { service, key });
            }
        }
    }
    let parent = match kind {
        Kind::Full => None,
        Kind::Increment => chain.as_ref().map(|c| &c.last),
    };
    let point = snapshot::write_at(
        &settings.dir,
        parent,
        &records,
        objects.len() as u64,
        settings.write_rate,
        looked,
    )?;
    let chain = ChainState::after(chain.as_ref().filter(|_| kind == Kind::Increment), &point);
    // Read back before anything old goes: a point the disk damaged must not cost the points
    // that still restore.
    let settled = snapshot::settle(
        &settings.dir,
        &point,
        settings.keep.get(),
        settings.max_age,
        SystemTime::now(),
    );
    let written = Written {
        point,
        chain,
        seen: now_seen,
    };
    Ok((written, settled))
}

/// A point written by [`write_point`].
struct Written {
    point: RecoveryPoint,
    /// The chain it extends or starts.
    chain: ChainState,
    /// What it saw.
    seen: Seen,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::{Freshness, Timing};
    use crate::store::tests_support::spec;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    #[test]
    fn a_purge_is_on_disk_soon_at_a_tenth_of_the_writers_time() {
        let ms = Duration::from_millis;
        // (the last point's writing time, the least time from it to a purge's point)
        for (took, gap) in [
            (ms(0), ms(5000)),
            (ms(120), ms(5000)),
            (ms(500), ms(5000)),
            (ms(2000), ms(20_000)),
        ] {
            assert_eq!(purge_gap(took), gap, "{took:?}");
        }
    }
    use std::num::NonZeroUsize;
    use std::path::Path;

    fn settings(dir: &Path) -> Snapshots {
        Snapshots {
            dir: dir.to_path_buf(),
            interval: Duration::from_secs(3600),
            keep: NonZeroUsize::new(100).unwrap(),
            max_age: None,
            max_increments: 23,
            increment_share: 100.0,
            write_rate: None,
        }
    }

    fn snapshotter(dir: &Path) -> (Arc<Snapshotter>, Arc<CacheRegistry>) {
        let metrics = Metrics::new();
        let caches = CacheRegistry::new(Arc::new(metrics.clone()));
        caches.for_service("cdn", &spec(1 << 24));
        (
            Snapshotter::new(caches.clone(), &metrics, Some(settings(dir))),
            caches,
        )
    }

    fn put(caches: &CacheRegistry, key: &str) {
        let now = SystemTime::now();
        let f = Freshness {
            lifetime: Duration::from_secs(600),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            always_revalidate: false,
        };
        // As the live path stores it: framed by its length.
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(4));
        let v = crate::Variant::new(
            StatusCode::OK,
            h,
            Bytes::from_static(b"body"),
            Timing::of(&HeaderMap::new(), now, now),
            f,
            vec![],
        );
        caches.get("cdn").unwrap().insert(key, v);
    }

    fn has(caches: &CacheRegistry, key: &str) -> bool {
        caches
            .get("cdn")
            .unwrap()
            .lookup(key, &HeaderMap::new())
            .is_some()
    }

    #[tokio::test]
    async fn increments_hold_changes_and_a_new_dir_starts_a_new_chain() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (s, caches) = snapshotter(a.path());
        put(&caches, "http://h/1");
        put(&caches, "http://h/2");
        let full = s.take().await.unwrap();
        // Every point's first record is the service's key rules.
        assert_eq!((full.kind(), full.records), (Kind::Full, 1 + 2));
        put(&caches, "http://h/3");
        caches.get("cdn").unwrap().purge_url("http://h/1");
        let inc = s.take().await.unwrap();
        assert_eq!(
            (inc.kind(), inc.records, inc.objects),
            (Kind::Increment, 1 + 2, 2)
        );
        let idle = s.take().await.unwrap();
        assert_eq!((idle.kind(), idle.records), (Kind::Increment, 1));
        // A reload moves the directory: nothing there to build on.
        s.configure(Some(settings(b.path())));
        let moved = s.take().await.unwrap();
        assert_eq!((moved.kind(), moved.records), (Kind::Full, 1 + 2));
        assert!(moved.path.starts_with(b.path()));
    }

    #[tokio::test]
    async fn objects_keyed_under_other_query_rules_are_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let (s, caches) = snapshotter(dir.path());
        put(&caches, "http://h/p?id=1&lang=fr");
        s.take().await.unwrap();
        put(&caches, "http://h/q?id=2");
        assert_eq!(s.take().await.unwrap().kind(), Kind::Increment);
        // The config changed while the daemon was down.
        let restore_with = |key_query| {
            let caches = CacheRegistry::new(Arc::new(Metrics::new()));
            let mut keyed = spec(1 << 24);
            keyed.key_query = key_query;
            caches.for_service("cdn", &keyed);
            let done = snapshot::restore(&caches, dir.path(), None, |e| panic!("{e}"))
                .unwrap()
                .unwrap();
            (done.restored, done.unclaimed)
        };
        assert_eq!(restore_with(streamgate_config::KeyQuery::All), (2, 0));
        let only_id = streamgate_config::KeyQuery::Only(vec!["id".into()]);
        assert_eq!(restore_with(only_id), (0, 2));
    }

    #[tokio::test]
    async fn after_a_point_that_fails_the_next_one_starts_a_chain() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = dir.path().join("snaps");
        let (s, caches) = snapshotter(&snaps);
        put(&caches, "http://h/1");
        assert_eq!(s.take().await.unwrap().kind(), Kind::Full);
        put(&caches, "http://h/2");
        assert_eq!(s.take().await.unwrap().kind(), Kind::Increment);
        // The directory is out of reach for one write (a file stands at its name).
        let aside = dir.path().join("aside");
        std::fs::rename(&snaps, &aside).unwrap();
        std::fs::write(&snaps, b"not a directory").unwrap();
        put(&caches, "http://h/3");
        assert!(s.take().await.is_err());
        std::fs::remove_file(&snaps).unwrap();
        std::fs::rename(&aside, &snaps).unwrap();
        // Its chain's points are all back, but what the failed write saw is not on disk.
        let next = s.take().await.unwrap();
        assert_eq!((next.kind(), next.records), (Kind::Full, 1 + 3));
    }

    #[tokio::test]
    async fn a_point_that_does_not_read_back_is_counted_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (s, caches) = snapshotter(dir.path());
        put(&caches, "http://h/1");
        let older = s.take().await.unwrap();
        put(&caches, "http://h/2");
        let point = s.take().await.unwrap();
        assert_eq!(s.metrics.verified_ok.get(), 1);
        // What the re-read finds when the disk returns other bytes than written.
        let mut raw = std::fs::read(&point.path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&point.path, raw).unwrap();
        let e = snapshot::verify(&point.path).unwrap_err();
        let reported = s.damaged(&point, e);
        assert!(reported.to_string().contains("checksum"), "{reported}");
        assert_eq!(
            (
                s.metrics.verified_ok.get(),
                s.metrics.verified_damaged.get()
            ),
            (0, 1)
        );
        assert_eq!(s.metrics.damaged.get(), 1);
        assert!(!point.path.exists(), "the damaged point is deleted");
        assert!(older.path.exists(), "the older point stays");
        // A point that could not be read at all may be whole: kept, and not counted.
        let missing = RecoveryPoint {
            path: dir.path().join("streamgate-0000000000000001.snap"),
            ..older.clone()
        };
        let e = snapshot::verify(&missing.path).unwrap_err();
        let _ = s.damaged(&older, e);
        assert_eq!(s.metrics.damaged.get(), 1);
        assert!(older.path.exists());
    }

    #[tokio::test]
    async fn a_named_point_with_a_damaged_chain_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (s, caches) = snapshotter(dir.path());
        put(&caches, "http://h/1");
        let full = s.take().await.unwrap();
        put(&caches, "http://h/2");
        let inc = s.take().await.unwrap();
        std::fs::write(&full.path, b"damaged").unwrap();
        put(&caches, "http://h/3");
        let e = s.restore_point(Some(&inc.name()), true).await.unwrap_err();
        assert!(matches!(e, RecoveryError::Unusable { .. }), "{e}");
        assert!(has(&caches, "http://h/3"), "the cache was not emptied");
        // A name that is not there: nothing changes either.
        let e = s
            .restore_point(Some("streamgate-1.snap"), true)
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            RecoveryError::Snapshot(SnapshotError::NotFound { .. })
        ));
        assert!(has(&caches, "http://h/3"));
    }
}
