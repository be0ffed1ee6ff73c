//! streamgate-cache: the edge cache.
//!
//! [`directives`] parses Cache-Control and the targeted fields of RFC 9213, [`policy`] holds the
//! RFC 9111 rules (what is stored, freshness, age, stale serving), [`key`] the cache keys,
//! [`entry`] a stored response, [`store`] the byte-bounded W-TinyLFU store of one service with
//! purge, [`fill`] request coalescing, [`record`] recording a response while it streams,
//! [`ask`] what a client's range and conditions get, [`decide`] what a request does with the
//! stored copy, [`put`] what an origin's answer does to it, [`range`] byte ranges, [`snapshot`]
//! recovery points on disk and [`recovery`] when they are written and restored.
//! [`CacheRegistry`] holds every service's cache across reloads.

pub mod ask;
pub mod decide;
pub mod directives;
pub mod entry;
pub mod fill;
#[doc(hidden)]
pub mod fuzzing;
pub mod key;
pub mod policy;
pub mod put;
pub mod range;
pub mod record;
pub mod recovery;
pub mod snapshot;
pub mod store;
pub mod tinylfu;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use streamgate_config::CacheSpec;
use streamgate_telemetry::Metrics;

pub use entry::Variant;
pub use store::ServiceCache;

use streamgate_telemetry::prometheus::{Histogram, IntCounter, IntGauge};
use streamgate_telemetry::{CODE_CLASSES, DataType};

/// The region label of responses the edge served itself.
pub const EDGE: &str = "edge";

/// Metric handles for responses served from a service's cache, resolved once.
#[derive(Debug, Clone)]
pub struct EdgeMetrics {
    /// `global_load_balancer_requests_total{service,region="edge",code_class}`
    pub requests: [IntCounter; 5],
    /// `data_locality_requests_total{region="edge",data_type}`
    pub locality: [IntCounter; 4],
    pub locality_latency: [Histogram; 4],
    /// `cache_served_bytes_total{source="cache"}`
    pub served: IntCounter,
    /// `cache_fills_dropped_total{reason}`, indexed by [`record::Dropped`].
    pub fills_dropped: [IntCounter; 4],
    /// `cache_variant_evictions_total`
    pub variant_evictions: IntCounter,
    /// `cache_fill_bytes`
    pub fill_bytes: IntGauge,
}

impl EdgeMetrics {
    /// Handles labelled for a service named "bench" (benchmarks that drive a store directly).
    pub fn for_bench(m: &Metrics) -> EdgeMetrics {
        EdgeMetrics::new(m, "bench")
    }

    fn new(m: &Metrics, service: &str) -> EdgeMetrics {
        EdgeMetrics {
            requests: CODE_CLASSES.map(|c| m.requests.with_label_values(&[service, EDGE, c])),
            locality: DataType::ALL
                .map(|d| m.locality_requests.with_label_values(&[EDGE, d.as_str()])),
            locality_latency: DataType::ALL
                .map(|d| m.locality_latency.with_label_values(&[EDGE, d.as_str()])),
            served: m.cache_served_bytes.with_label_values(&["cache"]),
            fills_dropped: record::Dropped::ALL
                .map(|d| m.cache_fills_dropped.with_label_values(&[d.as_str()])),
            variant_evictions: m.cache_variant_evictions.clone(),
            fill_bytes: m.cache_fill_bytes.clone(),
        }
    }
}

/// The cache of `service` in the registry's list.
fn find<'a>(
    caches: &'a [(String, Arc<ServiceCache>)],
    service: &str,
) -> Option<&'a Arc<ServiceCache>> {
    caches
        .iter()
        .find(|(name, _)| name == service)
        .map(|(_, c)| c)
}

/// What a purge's answer says when the purge journal did not take it.
pub const NOT_JOURNALED: &str = "purged in memory, but the purge journal cannot be written (see the log); a crash before the next recovery point would bring the objects back";

/// What to invalidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// One URL key (`host/path?query`), every variant.
    Url(String),
    /// Every URL key starting with this.
    Prefix(String),
    /// Everything tagged so (Surrogate-Key, Cache-Tag).
    Tag(String),
    All,
}

/// Every service's cache, by service name. A cache survives reloads as long as its service keeps
/// the same `max_size` and `max_object_size`; other settings apply to its objects at once.
#[derive(Debug)]
pub struct CacheRegistry {
    /// By service name. Services are few and every request looks its cache up: a short scan
    /// costs less than hashing the name.
    caches: ArcSwap<Vec<(String, Arc<ServiceCache>)>>,
    write: Mutex<()>,
    metrics: Arc<Metrics>,
    /// An operator's purge went since the last recovery point: the next one is written soon
    /// (see `recovery`), so a crash does not bring purged objects back.
    purged: std::sync::atomic::AtomicBool,
    /// The snapshots directory, where each purge is journaled until a point holds it
    /// (`snapshot::journal`); `None` without `[snapshots]`.
    journal: arc_swap::ArcSwapOption<std::path::PathBuf>,
    /// The journal's thread, started with the first purge journaled.
    journal_writer: std::sync::OnceLock<Option<snapshot::journal::Writer>>,
}

impl CacheRegistry {
    pub fn new(metrics: Arc<Metrics>) -> Arc<CacheRegistry> {
        Arc::new(CacheRegistry {
            caches: ArcSwap::default(),
            write: Mutex::new(()),
            metrics,
            purged: std::sync::atomic::AtomicBool::new(false),
            journal: arc_swap::ArcSwapOption::empty(),
            journal_writer: std::sync::OnceLock::new(),
        })
    }

    /// Where purges are journaled from now on (the snapshots directory), or nowhere.
    pub fn journal_to(&self, dir: Option<std::path::PathBuf>) {
        self.journal.store(dir.map(Arc::new));
    }

    fn journal_writer(&self) -> Option<&snapshot::journal::Writer> {
        self.journal_writer
            .get_or_init(|| {
                snapshot::journal::Writer::start()
                    .inspect_err(|e| tracing::error!(error = %e, "cannot start the purge journal's thread; purges are not journaled"))
                    .ok()
            })
            .as_ref()
    }

    /// Queues an operator's purge for the journal (see `snapshot::journal`), so that a crash
    /// before the next recovery point does not bring the purged objects back; whoever answers
    /// the purge waits for [`CacheRegistry::purges_on_disk`] first. Without `[snapshots]` there
    /// is nothing to bring them back and nothing is written.
    pub fn journal_purge(&self, what: &Purge, service: Option<&str>) {
        let Some(dir) = self.journal.load_full() else {
            return;
        };
        let Some(w) = self.journal_writer() else {
            return;
        };
        w.append(
            dir,
            snapshot::journal::Journaled {
                at_ms: snapshot::unix_ms(std::time::SystemTime::now()),
                service: service.map(str::to_string),
                what: what.clone(),
            },
        );
    }

    /// Resolves once every purge journaled so far is on disk: `false` if one journaled since
    /// `mark` ([`CacheRegistry::journal_mark`]) could not be written (logged), `true` too
    /// without `[snapshots]`.
    pub async fn purges_on_disk(&self, mark: u64) -> bool {
        if self.journal.load().is_none() {
            return true;
        }
        match self.journal_writer() {
            Some(w) => w.on_disk(mark).await,
            None => false,
        }
    }

    /// Drops the journaled purges in `dir` made before `from_ms`, in order with the appends.
    pub(crate) fn trim_journal(&self, dir: std::path::PathBuf, from_ms: u64) {
        if let Some(w) = self.journal_writer() {
            w.trim(Arc::new(dir), from_ms);
        }
    }

    /// The purges for `dir` whose journal lines are not known to be on disk (queued behind a
    /// slow disk, or their write failed): a restore applies them too.
    pub(crate) fn unwritten_purges(
        &self,
        dir: &std::path::Path,
    ) -> Vec<snapshot::journal::Journaled> {
        match self.journal_writer.get() {
            Some(Some(w)) => w.unwritten(dir),
            _ => Vec::new(),
        }
    }

    /// Where the journal's sequence stands: pass it to [`CacheRegistry::purges_on_disk`] to
    /// hear about the purges journaled after it.
    pub fn journal_mark(&self) -> u64 {
        if self.journal.load().is_none() {
            return 0;
        }
        self.journal_writer()
            .map_or(0, snapshot::journal::Writer::mark)
    }

    /// An operator purged ([`CacheRegistry::purge`], or a PURGE request), whether or not
    /// anything in memory matched: the next recovery point is written soon rather than at the
    /// next interval.
    pub fn note_purge(&self) {
        self.purged
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a purge went since the last recovery point began.
    pub fn purge_pending(&self) -> bool {
        self.purged.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Clears [`CacheRegistry::purge_pending`] as a recovery point begins (one that fails sets it
    /// again).
    pub(crate) fn take_purge(&self) -> bool {
        self.purged
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The cache of `service`, created on first use (a lock-free lookup afterwards).
    pub fn for_service(&self, service: &str, spec: &CacheSpec) -> Arc<ServiceCache> {
        if let Some(c) = find(&self.caches.load(), service)
            && c.spec == *spec
        {
            return c.clone();
        }
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.caches.load_full();
        if let Some(c) = find(&current, service)
            && c.spec == *spec
        {
            return c.clone();
        }
        let cache = Arc::new(match find(&current, service) {
            // A reload that keeps the size keeps the objects.
            Some(c) if c.fits(spec) => c.with_spec(spec.clone()),
            _ => ServiceCache::new(
                spec.clone(),
                self.metrics.cache_evictions.clone(),
                EdgeMetrics::new(&self.metrics, service),
            ),
        });
        let mut next: Vec<_> = current
            .iter()
            .filter(|(name, _)| name != service)
            .cloned()
            .collect();
        next.push((service.to_string(), cache.clone()));
        self.caches.store(Arc::new(next));
        self.refresh_gauges();
        cache
    }

    /// The caches of the named services only (drops caches of removed services).
    pub fn retain(&self, services: &[&str]) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.caches.load_full();
        let next: Vec<_> = current
            .iter()
            .filter(|(k, _)| services.contains(&k.as_str()))
            .cloned()
            .collect();
        self.caches.store(Arc::new(next));
        self.refresh_gauges();
    }

    pub fn get(&self, service: &str) -> Option<Arc<ServiceCache>> {
        find(&self.caches.load(), service).cloned()
    }

    pub fn services(&self) -> Vec<(String, Arc<ServiceCache>)> {
        self.caches
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// An operator's purge across every service (or one): applied, then queued for the journal
    /// (see [`CacheRegistry::journal_purge`]). Returns how many objects went.
    pub fn purge(&self, what: &Purge, service: Option<&str>) -> usize {
        let n = self.apply_purge(what, service);
        self.journal_purge(what, service);
        n
    }

    /// Invalidates across every service (or one), without journaling (a restore applying the
    /// journal, or emptying the caches for an older point); returns how many objects went.
    pub(crate) fn apply_purge(&self, what: &Purge, service: Option<&str>) -> usize {
        let mut n = 0;
        for (name, c) in self.services() {
            if service.is_some_and(|s| s != name) {
                continue;
            }
            n += match what {
                Purge::Url(u) => c.purge_url(u),
                Purge::Prefix(p) => c.purge_prefix(p),
                Purge::Tag(t) => c.purge_tag(t),
                Purge::All => c.purge_all(),
            };
        }
        // Also when nothing in memory matched: an object evicted since the last point may
        // still be in it, and the next point (an increment records the eviction) is what
        // keeps a crash from bringing it back.
        self.note_purge();
        self.refresh_gauges();
        n
    }

    /// Keeps `cache_bytes` and `cache_objects` current (every second) while the registry lives.
    pub fn spawn_gauge_refresher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(r) = weak.upgrade() else { return };
                for (_, c) in r.services() {
                    c.settle();
                }
                r.refresh_gauges();
            }
        });
    }

    /// Sets `cache_bytes` and `cache_objects` from the stores.
    pub fn refresh_gauges(&self) {
        let (mut bytes, mut objects) = (0u64, 0u64);
        for (_, c) in self.caches.load().iter() {
            bytes += c.bytes();
            objects += c.objects();
        }
        self.metrics.cache_bytes.set(bytes as i64);
        self.metrics.cache_objects.set(objects as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_that_matches_nothing_in_memory_still_brings_the_next_point_forward() {
        let r = CacheRegistry::new(Arc::new(Metrics::new()));
        assert!(!r.purge_pending());
        let removed = r.purge(&Purge::Url("http://a.test/evicted".into()), None);
        assert_eq!(removed, 0);
        assert!(r.purge_pending(), "the recovery points may still hold it");
        assert!(r.take_purge());
        assert!(!r.purge_pending());
    }
}
