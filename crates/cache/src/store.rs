//! The cache of one service: a byte-bounded moka cache (W-TinyLFU admission and eviction, per-
//! entry expiry) of URL keys to their stored variants, with purge by URL, prefix, tag or all.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use streamgate_config::{CacheSpec, KeyQuery};
use streamgate_telemetry::prometheus::IntCounter;

use crate::entry::Variant;
use crate::fill::FillBudget;
use crate::fill::Fills;
use crate::policy::{Directives, Rules};
use crate::tinylfu::{Removal, TinyLfu};

/// The variants stored under one URL.
pub type Entry = Arc<Vec<Arc<Variant>>>;

/// The cache of one service.
#[derive(Debug)]
pub struct ServiceCache {
    pub spec: CacheSpec,
    /// `spec.status_header` parsed once (`None` if it is not a valid field name).
    pub status_header: Option<HeaderName>,
    /// `spec.targeted_fields` parsed once, in precedence order.
    pub targets: Vec<HeaderName>,
    /// `spec.key_headers` parsed once: a stored variant answers only if it was selected by
    /// every one of them.
    pub key_names: Vec<HeaderName>,
    /// Shared with the cache this one replaced on a reload that kept the size.
    entries: Arc<TinyLfu<Entry>>,
    pub fills: Arc<Fills>,
    pub fill_budget: Arc<FillBudget>,
    pub metrics: crate::EdgeMetrics,
}

/// The configured cache-status header's name (`None` if it is not a valid field name).
fn status_header_of(spec: &CacheSpec) -> Option<HeaderName> {
    HeaderName::from_bytes(spec.status_header.as_bytes()).ok()
}

fn names_of(fields: &[String]) -> Vec<HeaderName> {
    fields
        .iter()
        .filter_map(|f| HeaderName::from_bytes(f.as_bytes()).ok())
        .collect()
}

/// How long the store keeps an entry: as long as its most useful variant.
fn keep_for(entry: &Entry) -> Duration {
    let now = SystemTime::now();
    entry
        .iter()
        .map(|v| v.keep_for(now))
        .max()
        .unwrap_or(Duration::from_secs(1))
}

/// What an entry under `key` counts against the byte bound: its variants, and the key, which
/// the store's node holds once. A URL may be as long as a request head (max_header_bytes,
/// 64 KiB by default): uncounted, entries of tiny bodies held 25 times the bound.
fn weight(key: &str, entry: &Entry) -> u64 {
    entry
        .iter()
        .map(|v| v.size)
        .sum::<u64>()
        .saturating_add(key.len() as u64)
}

impl ServiceCache {
    pub fn new(
        spec: CacheSpec,
        evictions: IntCounter,
        metrics: crate::EdgeMetrics,
    ) -> ServiceCache {
        // Large caches are sharded to spread lock contention; a shard must still hold the
        // largest object.
        let shards = (spec.max_size / spec.max_object_size.max(1) / 4).clamp(1, 16) as usize;
        let entries = TinyLfu::new(spec.max_size, shards, move |cause| {
            if matches!(cause, Removal::Size | Removal::Expired) {
                evictions.inc();
            }
        });
        ServiceCache {
            status_header: status_header_of(&spec),
            targets: names_of(&spec.targeted_fields),
            key_names: names_of(&spec.key_headers),
            spec,
            entries: Arc::new(entries),
            fills: Arc::default(),
            fill_budget: Arc::new(FillBudget::new(metrics.fill_bytes.clone())),
            metrics,
        }
    }

    /// Whether `spec` can take over this store: the same byte bound and object size limit (which
    /// shape the store), and the same `key_query`. A URL key made under other query rules names
    /// another set of requests: with `key_query = ["id"]`, `/p?id=1&lang=fr` is stored as
    /// `/p?id=1`, which a request for `/p?id=1` would be served once `lang` is keyed too (nginx
    /// and Varnish objects likewise become unreachable when their key changes). Added key
    /// headers are handled at lookup instead ([`ServiceCache::lookup_at`]), so a restored point
    /// is held to them too. Every other setting can change under stored objects.
    pub fn fits(&self, spec: &CacheSpec) -> bool {
        self.spec.max_size == spec.max_size
            && self.spec.max_object_size == spec.max_object_size
            && self.spec.key_query == spec.key_query
    }

    /// The rules that shape this cache's URL keys (`key_query`), in one canonical spelling:
    /// recorded in recovery points, so that objects keyed under other rules are not restored
    /// (as a reload that changes them starts the store empty, see [`ServiceCache::fits`]).
    pub fn key_rules(&self) -> String {
        match &self.spec.key_query {
            KeyQuery::All => "query=all".to_string(),
            KeyQuery::Ignore => "query=ignore".to_string(),
            KeyQuery::Only(names) => {
                let mut names = names.clone();
                names.sort();
                format!("query=only:{}", names.join(","))
            }
        }
    }

    /// The same store, its objects and its misses in flight, under new settings (a reload).
    pub fn with_spec(&self, spec: CacheSpec) -> ServiceCache {
        ServiceCache {
            status_header: status_header_of(&spec),
            targets: names_of(&spec.targeted_fields),
            key_names: names_of(&spec.key_headers),
            spec,
            entries: self.entries.clone(),
            fills: self.fills.clone(),
            fill_budget: self.fill_budget.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The freshness rules the service's settings add to RFC 9111.
    pub fn rules(&self) -> Rules {
        Rules {
            default_ttl: self.spec.default_ttl,
            heuristic: self.spec.heuristic_freshness,
        }
    }

    /// A response's directives for this cache: its targeted field if it has one, else its
    /// Cache-Control.
    pub fn directives(&self, resp: &HeaderMap) -> Directives {
        Directives::of_response(resp, &self.targets)
    }

    /// The stored variant for this URL that matches the request's selecting headers.
    pub fn lookup(&self, key: &str, req: &HeaderMap) -> Option<Arc<Variant>> {
        self.lookup_at(key, req, Instant::now())
    }

    /// `lookup` with the current time already read. The newest matching variant wins (RFC
    /// 9111 §4.1); each selecting header of the request is read once, however many variants.
    /// A variant stored before a key header was configured (a reload, or a recovery point
    /// written under older settings) was not selected by it and answers no one: it was one
    /// tenant's copy, say, before `x-tenant` was keyed.
    pub fn lookup_at(&self, key: &str, req: &HeaderMap, now: Instant) -> Option<Arc<Variant>> {
        let entry = self.entries.get(key, now)?;
        if let [only] = &entry[..]
            && only.selectors.is_empty()
            && self.key_names.is_empty()
        {
            return Some(only.clone());
        }
        let mut seen: Vec<(&HeaderName, Option<HeaderValue>)> = Vec::new();
        entry
            .iter()
            .rev()
            .find(|v| {
                let keyed = |k: &HeaderName| v.selectors.iter().any(|(name, _)| name == k);
                self.key_names.iter().all(keyed)
                    && v.selectors.iter().all(|(name, want)| {
                        let got = match seen.iter().find(|(n, _)| *n == name) {
                            Some((_, got)) => got.clone(),
                            None => {
                                let got = crate::key::selector_value(req, name);
                                seen.push((name, got.clone()));
                                got
                            }
                        };
                        got.as_ref() == want.as_ref()
                    })
            })
            .cloned()
    }

    /// Stores a variant, replacing the one with the same selector values; a URL that already
    /// has `max_variants` loses its oldest. Objects over `max_object_size` are not stored.
    pub fn insert(&self, key: &str, variant: Variant) -> bool {
        if variant.size > self.spec.max_object_size {
            return false;
        }
        let variant = Arc::new(variant);
        let mut list: Vec<Arc<Variant>> = self
            .entries
            .get(key, Instant::now())
            .map(|e| {
                // Variants selected by other headers (the origin changed its Vary) are from
                // another negotiation: they go.
                let names = |v: &Variant| {
                    v.selectors
                        .iter()
                        .map(|(n, _)| n.clone())
                        .collect::<Vec<_>>()
                };
                let ours = names(&variant);
                e.iter()
                    .filter(|v| v.selectors != variant.selectors && names(v) == ours)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let max = self.spec.max_variants.max(1);
        if list.len() >= max {
            let over = list.len() + 1 - max;
            list.drain(..over);
            self.metrics.variant_evictions.inc_by(over as u64);
        }
        list.push(variant);
        self.put(key, Arc::new(list))
    }

    /// Removes the variant stored for these selector values (one that may no longer be
    /// stored); true if there was one.
    pub fn remove_variant(&self, key: &str, v: &Variant) -> bool {
        let Some(e) = self.entries.get(key, Instant::now()) else {
            return false;
        };
        let keep: Vec<Arc<Variant>> = e
            .iter()
            .filter(|x| x.selectors != v.selectors)
            .cloned()
            .collect();
        if keep.len() == e.len() {
            return false;
        }
        self.entries.remove(key);
        if !keep.is_empty() {
            self.put(key, Arc::new(keep));
        }
        true
    }

    fn put(&self, key: &str, entry: Entry) -> bool {
        let now = Instant::now();
        let expires = now.checked_add(keep_for(&entry)).unwrap_or(now);
        let w = weight(key, &entry);
        self.entries.insert(key, entry, w, expires)
    }

    /// Every URL with its variants (for a recovery point).
    pub fn entries(&self) -> Vec<(Arc<str>, Entry)> {
        self.entries.entries()
    }

    /// Puts back variants read from a recovery point (each passed by
    /// [`ServiceCache::restorable`]), kept for `keep` from now. Variants over `max_object_size`
    /// (the setting may have shrunk) are left out, and all but the newest `max_variants`.
    pub fn restore(&self, key: &str, variants: Vec<Variant>, keep: Duration) -> bool {
        let mut list: Vec<Arc<Variant>> = variants
            .into_iter()
            .filter(|v| v.size <= self.spec.max_object_size)
            .map(Arc::new)
            .collect();
        // The newest are last (see `lookup_at`).
        let over = list.len().saturating_sub(self.spec.max_variants.max(1));
        list.drain(..over);
        if list.is_empty() {
            return false;
        }
        let entry: Entry = Arc::new(list);
        let w = weight(key, &entry);
        let now = Instant::now();
        self.entries
            .insert(key, entry, w, now.checked_add(keep).unwrap_or(now))
    }

    /// A variant read from a recovery point, if this cache could have stored it. A point is a
    /// file, as trustworthy as whoever can write its directory, or the clock of the host that
    /// wrote it: what the live path never stores (a Set-Cookie, `private`, `no-store`, a 206
    /// or a 304) is left out, times ahead of now are now (a response time in the future would
    /// keep a copy at age 0, fresh, until then), and lifetimes are held to what a live store
    /// computes at most.
    pub fn restorable(&self, mut v: Variant, now: SystemTime) -> Option<Variant> {
        let dirs = self.directives(&v.headers);
        let rules = self.rules();
        let storable = crate::policy::storable(
            &http::Method::GET,
            &HeaderMap::new(),
            v.status,
            &v.headers,
            &dirs,
            rules,
            now,
        );
        // The stored freshness stands (it may come from a default_ttl since changed), for an
        // answer that one could have given it: a success, a status heuristics may store, or
        // one said public. A 500 or a 302 without freshness the live path never stores.
        match storable {
            Ok(_) => {}
            Err(crate::policy::NotStored::NoFreshness)
                if v.status.is_success()
                    || crate::policy::heuristically_cacheable(v.status)
                    || dirs.public => {}
            Err(_) => return None,
        }
        // What the live path writes: a Content-Length that is the body's (a hit's HTTP/1.1
        // answer is framed by it), and a selector for every field the answer varies on (one
        // without, a `Vary: Cookie` object, would be everyone's).
        let length = v.headers.get(http::header::CONTENT_LENGTH);
        let framed = length
            .and_then(|l| l.to_str().ok()?.parse::<usize>().ok())
            .is_some_and(|n| n == v.body.len());
        let varies = v.headers.get_all(http::header::VARY);
        let selected = varies.iter().all(|f| f.to_str().is_ok())
            && crate::key::vary_names(&v.headers)
                .iter()
                .all(|n| v.selectors.iter().any(|(s, _)| s == n));
        if !framed || !selected {
            return None;
        }
        let t = &mut v.timing;
        t.request_time = t.request_time.min(now);
        t.response_time = t.response_time.min(now);
        let most = Duration::from_secs(crate::directives::DELTA_MAX);
        let f = &mut v.freshness;
        f.lifetime = f.lifetime.min(most);
        f.stale_while_revalidate = f.stale_while_revalidate.min(most);
        f.stale_if_error = f.stale_if_error.min(most);
        Some(v)
    }

    /// Removes every variant of one URL; returns how many objects went.
    pub fn purge_url(&self, key: &str) -> usize {
        self.entries.remove(key).map_or(0, |e| e.len())
    }

    /// Removes every URL starting with `prefix` (`host/path...`).
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.entries
            .remove_where(|k, _| k.starts_with(prefix))
            .iter()
            .map(|(_, e)| e.len())
            .sum()
    }

    /// Removes every variant tagged `tag` (Surrogate-Key or Cache-Tag).
    pub fn purge_tag(&self, tag: &str) -> usize {
        let tagged = |v: &Arc<Variant>| v.tags.iter().any(|t| &**t == tag);
        let removed = self.entries.remove_where(|_, e| e.iter().any(tagged));
        let mut n = 0;
        for (k, e) in removed {
            let keep: Vec<Arc<Variant>> = e.iter().filter(|v| !tagged(v)).cloned().collect();
            n += e.len() - keep.len();
            if !keep.is_empty() {
                self.put(&k, Arc::new(keep));
            }
        }
        n
    }

    pub fn purge_all(&self) -> usize {
        self.entries
            .remove_where(|_, _| true)
            .iter()
            .map(|(_, e)| e.len())
            .sum()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.entries.bytes()
    }

    /// Stored URLs (each with one or more variants).
    pub fn objects(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Drops expired entries now (they also go when looked up, and every second).
    pub fn settle(&self) {
        self.entries.sweep(Instant::now());
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn spec(max: u64) -> CacheSpec {
        CacheSpec {
            max_size: max,
            max_object_size: max / 4,
            default_ttl: Duration::ZERO,
            heuristic_freshness: true,
            key_query: streamgate_config::KeyQuery::All,
            key_headers: vec![],
            purge_from: vec![],
            status_header: "x-cache".into(),
            lock_timeout: Duration::from_secs(1),
            max_variants: 32,
            max_fill_bytes: 64 << 20,
            targeted_fields: vec!["cdn-cache-control".into()],
        }
    }

    pub(crate) fn edge() -> crate::EdgeMetrics {
        crate::EdgeMetrics::new(&streamgate_telemetry::Metrics::new(), "test")
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::{edge, spec};
    use super::*;
    use crate::policy::{Freshness, Timing};
    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    fn variant(body: usize, tags: &str) -> Variant {
        let mut h = HeaderMap::new();
        if !tags.is_empty() {
            h.insert("surrogate-key", HeaderValue::from_str(tags).unwrap());
        }
        let now = SystemTime::now();
        let f = Freshness {
            lifetime: Duration::from_secs(600),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            always_revalidate: false,
        };
        Variant::new(
            StatusCode::OK,
            h,
            Bytes::from(vec![0u8; body]),
            Timing::of(&HeaderMap::new(), now, now),
            f,
            vec![],
        )
    }

    #[test]
    fn byte_bound_holds_after_writing_ten_times_the_bound() {
        let counter = IntCounter::new("e", "e").unwrap();
        let c = ServiceCache::new(spec(1 << 20), counter.clone(), edge());
        for i in 0..1000 {
            c.insert(&format!("h/{i}"), variant(10 * 1024, ""));
        }
        c.settle();
        assert!(c.bytes() <= 1 << 20, "{} bytes", c.bytes());
        assert!(c.objects() > 50, "{}", c.objects());
        assert!(counter.get() > 0, "evictions counted");
        assert!(
            !c.insert("h/huge", variant(300 * 1024, "")),
            "over max_object_size"
        );
    }

    #[test]
    fn the_byte_bound_counts_the_keys() {
        let c = ServiceCache::new(spec(1 << 20), IntCounter::new("e", "e").unwrap(), edge());
        let long = "q".repeat(60_000);
        for i in 0..100 {
            let key = format!("h/x?{i}{long}");
            c.insert(&key, variant(10, ""));
            // Twice: admitted by frequency, as a client asking for each URL twice would be.
            c.insert(&key, variant(10, ""));
        }
        c.settle();
        assert!(c.bytes() <= 1 << 20, "{} bytes", c.bytes());
        assert!(
            c.objects() * 60_000 <= 1 << 20,
            "{} objects of 60 KB keys",
            c.objects()
        );
        // A recovery point's objects are weighed the same way.
        let c = ServiceCache::new(spec(1 << 20), IntCounter::new("e", "e").unwrap(), edge());
        for i in 0..100 {
            let key = format!("h/x?{i}{long}");
            for _ in 0..2 {
                c.restore(&key, vec![variant(10, "")], Duration::from_secs(600));
            }
        }
        c.settle();
        assert!(
            c.objects() * 60_000 <= 1 << 20,
            "{} restored objects of 60 KB keys",
            c.objects()
        );
    }

    #[test]
    fn purge_by_url_prefix_tag_and_all() {
        let c = ServiceCache::new(spec(10 << 20), IntCounter::new("e", "e").unwrap(), edge());
        c.insert("h/a/1", variant(10, "show-1 video"));
        c.insert("h/a/2", variant(10, "show-2 video"));
        c.insert("h/b/1", variant(10, "show-1"));
        c.insert("g/a/1", variant(10, ""));
        assert_eq!(c.purge_url("h/a/1"), 1);
        assert!(c.lookup("h/a/1", &HeaderMap::new()).is_none());
        assert_eq!(c.purge_tag("show-1"), 1);
        assert!(c.lookup("h/b/1", &HeaderMap::new()).is_none());
        assert_eq!(c.purge_prefix("h/a/"), 1);
        assert!(c.lookup("g/a/1", &HeaderMap::new()).is_some());
        assert_eq!(c.purge_all(), 1);
        assert_eq!(c.objects(), 0);
    }
}

#[cfg(test)]
mod variant_tests {
    use super::tests_support::{edge, spec};
    use super::*;
    use crate::policy::{Freshness, Timing};
    use bytes::Bytes;
    use http::StatusCode;
    use streamgate_telemetry::prometheus::IntCounter;

    fn variant(body: &'static str, selectors: &[(&'static str, Option<&'static str>)]) -> Variant {
        let now = SystemTime::now();
        Variant::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body.as_bytes()),
            Timing::of(&HeaderMap::new(), now, now),
            Freshness {
                lifetime: Duration::from_secs(600),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                must_revalidate: false,
                always_revalidate: false,
            },
            selectors
                .iter()
                .map(|(n, v)| (HeaderName::from_static(n), v.map(HeaderValue::from_static)))
                .collect(),
        )
    }

    fn req(list: &[(&'static str, &'static str)]) -> HeaderMap {
        list.iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn a_new_vary_replaces_variants_selected_otherwise() {
        let c = ServiceCache::new(spec(1 << 20), IntCounter::new("e", "e").unwrap(), edge());
        c.insert("k", variant("plain", &[]));
        // The origin starts to vary on the language: the unselected copy must not shadow it.
        c.insert("k", variant("de", &[("accept-language", Some("de"))]));
        c.insert("k", variant("en", &[("accept-language", Some("en"))]));
        let body =
            |r: &[(&'static str, &'static str)]| c.lookup("k", &req(r)).map(|v| v.body.clone());
        assert_eq!(body(&[("accept-language", "de")]).unwrap(), "de");
        assert_eq!(body(&[("accept-language", "en")]).unwrap(), "en");
        assert_eq!(body(&[]), None, "the old unselected copy went");
    }

    #[test]
    fn accept_encoding_spellings_find_one_variant() {
        let c = ServiceCache::new(spec(1 << 20), IntCounter::new("e", "e").unwrap(), edge());
        c.insert(
            "k",
            variant("gz", &[("accept-encoding", Some("br,gzip")), ("x-v", None)]),
        );
        let got = c.lookup("k", &req(&[("accept-encoding", "gzip;q=0.5, BR")]));
        assert_eq!(got.unwrap().body, "gz");
        assert!(
            c.lookup("k", &req(&[("accept-encoding", "gzip")]))
                .is_none()
        );
    }

    #[test]
    fn a_recovery_point_cannot_restore_what_the_live_path_would_not_have_stored() {
        let c = ServiceCache::new(spec(1 << 20), IntCounter::new("e", "e").unwrap(), edge());
        let with = |fields: &[(&'static str, &'static str)], selectors| {
            let mut v = variant("body", selectors);
            v.headers = req(fields);
            v
        };
        let cookie: &[(&'static str, Option<&'static str>)] = &[("cookie", Some("u=1"))];
        let cases = [
            (with(&[("content-length", "4")], &[]), true),
            (with(&[], &[]), false),
            (with(&[("content-length", "40")], &[]), false),
            (
                with(&[("content-length", "4"), ("vary", "Cookie")], cookie),
                true,
            ),
            (
                with(&[("content-length", "4"), ("vary", "Cookie")], &[]),
                false,
            ),
            (
                with(&[("content-length", "4"), ("vary", "a, Cookie")], cookie),
                false,
            ),
        ];
        for (i, (v, want)) in cases.into_iter().enumerate() {
            let got = c.restorable(v, SystemTime::now()).is_some();
            assert_eq!(got, want, "case {i}");
        }
    }
}
