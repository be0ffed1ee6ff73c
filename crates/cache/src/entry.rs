//! A stored response and what serving it needs: headers as received (hop-by-hop removed), the
//! whole body in one buffer, its timing and freshness, the request values that selected it, and
//! its purge tags.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub use crate::policy::is_personal;
use crate::policy::{Freshness, Timing, parse_http_date};

/// Longest a stale response with validators is kept for revalidation.
const MAX_KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(86_400);

/// What a stored object costs beyond its body and header text, so that `size` (what the byte
/// bound counts) tracks the memory it takes. Measured with 20 000 stored 1 KiB responses of 9
/// fields: 3.3 KB of resident memory each, 4.6 KB once hit (with the prepared head).
/// Per stored field: a bucket and an index slot of the stored map.
const STORED_FIELD: usize = 160;
/// Per field of the prepared head (whose values are shared with the stored map).
const HEAD_FIELD: usize = 104;
/// Fields the prepared head adds (Age, Via, Accept-Ranges, the cache-status header).
const HEAD_EXTRA_FIELDS: usize = 4;
/// The variant, its entry, the store's node and key, allocator rounding.
const PER_VARIANT: usize = 640;

/// One stored response.
#[derive(Debug, Clone)]
pub struct Variant {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub timing: Timing,
    pub freshness: Freshness,
    /// Request header values this variant answers (key headers and Vary).
    pub selectors: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Surrogate-Key and Cache-Tag values, for purge by tag.
    pub tags: Vec<Box<str>>,
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<SystemTime>,
    /// Bytes it holds (headers and body), for the size bound.
    pub size: u64,
    /// The head hits are answered with, prepared on the first hit (see [`Variant::served_head`]).
    served: OnceLock<ServedHead>,
}

/// A response head ready to be cloned into every hit: the stored headers plus what the proxy
/// adds to each answer, with a placeholder for each per-hit value so a hit only replaces values
/// (a clone of a header map keeps its index's free slots but not its fields' spare capacity;
/// the proxy leaves the slots an answer needs, see `prepare_head` in the proxy crate).
#[derive(Debug, Clone)]
pub struct ServedHead {
    /// The cache-status header it has a placeholder for; a head prepared for another name is
    /// not used.
    pub status_header: Option<HeaderName>,
    pub headers: HeaderMap,
}

impl Variant {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        timing: Timing,
        freshness: Freshness,
        selectors: Vec<(HeaderName, Option<HeaderValue>)>,
    ) -> Variant {
        let headers = compact(headers);
        let tags = tags_of(&headers);
        let etag = headers.get(header::ETAG).cloned();
        let last_modified = headers
            .get(header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        let header_bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        // The request's values are slices of its connection's read buffer (up to
        // max_header_bytes, doubled as it grew): kept as they are, each variant would hold a
        // whole buffer alive, uncounted. Copied, and counted.
        let selectors: Vec<(HeaderName, Option<HeaderValue>)> = selectors
            .into_iter()
            .map(|(name, v)| (name, v.map(|v| own_value(&v))))
            .collect();
        let selector_bytes: usize = selectors
            .iter()
            .map(|(k, v)| k.as_str().len() + v.as_ref().map_or(0, HeaderValue::len) + STORED_FIELD)
            .sum();
        // Tags are copies of the Surrogate-Key and Cache-Tag values, in boxes of their own.
        let tag_bytes: usize = tags.iter().map(|t| t.len() + 16).sum();
        let size = (body.len()
            + header_bytes
            + selector_bytes
            + tag_bytes
            + headers.len() * STORED_FIELD
            + (headers.len() + HEAD_EXTRA_FIELDS) * HEAD_FIELD
            + PER_VARIANT) as u64;
        Variant {
            status,
            headers,
            body,
            timing,
            freshness,
            selectors,
            tags,
            etag,
            last_modified,
            size,
            served: OnceLock::new(),
        }
    }

    /// The head prepared for hits, built by `prepare` on the first call.
    pub fn served_head(&self, prepare: impl FnOnce(&HeaderMap) -> ServedHead) -> &ServedHead {
        self.served.get_or_init(|| prepare(&self.headers))
    }

    /// True when the request carries the values this variant was stored for.
    pub fn matches(&self, req: &HeaderMap) -> bool {
        self.selectors
            .iter()
            .all(|(name, want)| crate::key::selector_value(req, name).as_ref() == want.as_ref())
    }

    pub fn has_validators(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }

    /// How long the store keeps it: while fresh, then as long as it may still be served stale or
    /// revalidated.
    pub fn keep_for(&self, now: SystemTime) -> Duration {
        let age = self.timing.current_age(now);
        let fresh_left = self.freshness.lifetime.saturating_sub(age);
        let stale_use = self
            .freshness
            .stale_while_revalidate
            .max(self.freshness.stale_if_error);
        let revalidate = if self.has_validators() {
            self.freshness
                .lifetime
                .max(Duration::from_secs(60))
                .min(MAX_KEEP_FOR_REVALIDATION)
        } else {
            Duration::ZERO
        };
        fresh_left
            .saturating_add(stale_use.max(revalidate))
            .max(Duration::from_secs(1))
    }

    /// When the store may drop it: [`Variant::keep_for`] counted from when it arrived. A
    /// restored variant keeps its original deadline.
    pub fn keep_until(&self) -> SystemTime {
        let arrived = self.timing.response_time;
        arrived
            .checked_add(self.keep_for(arrived))
            .unwrap_or(arrived)
    }

    /// After a 304 (RFC 9111 §3.2, §4.3.4): the stored body and headers with the 304's fields
    /// merged in, new timing and freshness. `not_modified` has its hop-by-hop fields removed
    /// already. Not merged: what is for the requesting client only ([`is_personal`] and
    /// `unstored`, the fields its qualified private / no-cache name), Age (the timing carries
    /// it), and the fields the stored body depends on (Content-Length, -Encoding, -Range) and
    /// was selected by (Vary).
    pub fn refreshed(
        &self,
        not_modified: &HeaderMap,
        unstored: &[HeaderName],
        timing: Timing,
        freshness: Freshness,
    ) -> Variant {
        let mut headers = self.headers.clone();
        // Fields the 304 now keeps from shared caches go from the stored copy too.
        for name in unstored {
            headers.remove(name);
        }
        for name in not_modified.keys() {
            if is_personal(name)
                || unstored.contains(name)
                || [
                    header::AGE,
                    header::CONTENT_LENGTH,
                    header::CONTENT_ENCODING,
                    header::CONTENT_RANGE,
                    header::TRANSFER_ENCODING,
                    header::VARY,
                ]
                .contains(name)
            {
                continue;
            }
            // A copy the edge compressed carries the weak form of the origin's tag (another
            // representation, RFC 9110 §8.8.1); the 304 names the identity's strong one, which
            // If-None-Match's weak comparison matched. Merged, the two copies would share a
            // strong validator, and an If-Range resume would mix their bytes.
            if name == header::ETAG && weakened_by_us(headers.get(name), not_modified.get(name)) {
                continue;
            }
            headers.remove(name);
            for v in not_modified.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        Variant::new(
            self.status,
            headers,
            self.body.clone(),
            timing,
            freshness,
            self.selectors.clone(),
        )
    }

    /// The stored representation's validators.
    pub fn validators(&self) -> crate::ask::Validators<'_> {
        crate::ask::Validators {
            etag: self.etag.as_ref(),
            last_modified: self.last_modified,
        }
    }

    /// RFC 9110 §13.2.2: does the client's conditional GET/HEAD mean "you have it"?
    pub fn not_modified_for(&self, req: &HeaderMap) -> bool {
        self.validators().not_modified(req)
    }
}

/// The header values copied into one buffer of their own. Values parsed by the HTTP client are
/// slices of the connection's read buffer (8 KiB or more); a stored object holding them would
/// keep that whole buffer alive, beyond what `size` counts.
fn compact(headers: HeaderMap) -> HeaderMap {
    let mut all = BytesMut::with_capacity(headers.values().map(HeaderValue::len).sum());
    for v in headers.values() {
        all.extend_from_slice(v.as_bytes());
    }
    let mut all = all.freeze();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, v) in &headers {
        let mut copy =
            HeaderValue::from_maybe_shared(all.split_to(v.len())).unwrap_or_else(|_| v.clone());
        copy.set_sensitive(v.is_sensitive());
        out.append(name.clone(), copy);
    }
    // A map keeps room to grow; its clone holds exactly its fields (and the index's size).
    out.clone()
}

/// `v` in memory of its own.
fn own_value(v: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
    copy.set_sensitive(v.is_sensitive());
    copy
}

/// Tags from `Surrogate-Key` (space separated) and `Cache-Tag` (comma separated).
fn tags_of(headers: &HeaderMap) -> Vec<Box<str>> {
    let mut tags: Vec<Box<str>> = Vec::new();
    for v in headers.get_all("surrogate-key") {
        if let Ok(s) = v.to_str() {
            tags.extend(s.split_whitespace().map(Into::into));
        }
    }
    for v in headers.get_all("cache-tag") {
        if let Ok(s) = v.to_str() {
            tags.extend(
                s.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(Into::into),
            );
        }
    }
    tags.sort();
    tags.dedup();
    tags
}

/// Whether `stored` is `W/` and the strong `fresh` tag: the weak copy of a compressed variant.
fn weakened_by_us(stored: Option<&HeaderValue>, fresh: Option<&HeaderValue>) -> bool {
    match (stored, fresh) {
        (Some(s), Some(f)) => s.as_bytes().strip_prefix(b"W/") == Some(f.as_bytes()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fmt_http_date;

    #[test]
    fn a_304_keeps_the_weak_tag_only_of_a_weakened_copy() {
        let v = |s: &'static str| Some(HeaderValue::from_static(s));
        for (stored, fresh, kept) in [
            (v("W/\"v1\""), v("\"v1\""), true),
            (v("W/\"v1\""), v("\"v2\""), false),
            (v("W/\"v1\""), v("W/\"v1\""), false),
            (v("\"v1\""), v("\"v1\""), false),
            (None, v("\"v1\""), false),
            (v("W/\"v1\""), None, false),
        ] {
            assert_eq!(
                weakened_by_us(stored.as_ref(), fresh.as_ref()),
                kept,
                "{stored:?} {fresh:?}"
            );
        }
    }

    fn variant(headers: &[(&'static str, &str)]) -> Variant {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_435_200);
        let f = Freshness {
            lifetime: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            always_revalidate: false,
        };
        Variant::new(
            StatusCode::OK,
            h,
            Bytes::from_static(b"body"),
            Timing::of(&HeaderMap::new(), t, t),
            f,
            vec![],
        )
    }

    #[test]
    fn stored_values_do_not_keep_the_read_buffer_alive() {
        // As the HTTP client parses them: every value a slice of one large read buffer.
        let mut read_buf = vec![b'x'; 64 * 1024];
        let text = b"max-age=60a=1b=2secret";
        read_buf[..text.len()].copy_from_slice(text);
        let read_buf = Bytes::from(read_buf);
        let value =
            |r: std::ops::Range<usize>| HeaderValue::from_maybe_shared(read_buf.slice(r)).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, value(0..10));
        h.append("x-multi", value(10..13));
        h.append("x-multi", value(13..16));
        let mut secret = value(16..22);
        secret.set_sensitive(true);
        h.insert("x-secret", secret);
        let t = SystemTime::UNIX_EPOCH;
        let stored = |selectors| {
            Variant::new(
                StatusCode::OK,
                h.clone(),
                Bytes::new(),
                Timing::of(&HeaderMap::new(), t, t),
                Freshness {
                    lifetime: Duration::from_secs(60),
                    stale_while_revalidate: Duration::ZERO,
                    stale_if_error: Duration::ZERO,
                    must_revalidate: false,
                    always_revalidate: false,
                },
                selectors,
            )
        };
        // A request's Vary value, as the server parses it: a slice of the same kind of buffer.
        let origin = HeaderName::from_static("origin");
        let v = stored(vec![(origin.clone(), Some(value(1000..61_000)))]);
        let without = stored(vec![]);
        assert!(
            v.size >= without.size + 60_000,
            "a selector's bytes are counted: {} against {}",
            v.size,
            without.size
        );
        let sel = v.selectors[0].1.as_ref().unwrap();
        assert_eq!(sel.as_bytes(), &read_buf[1000..61_000]);
        assert!(!read_buf.as_ptr_range().contains(&sel.as_bytes().as_ptr()));
        assert_eq!(v.headers, h);
        let multi: Vec<_> = v.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a=1", "b=2"]);
        assert!(v.headers["x-secret"].is_sensitive());
        let buf = read_buf.as_ptr_range();
        for stored in v.headers.values() {
            assert!(!buf.contains(&stored.as_bytes().as_ptr()), "{stored:?}");
        }
    }

    #[test]
    fn conditional_requests() {
        let v = variant(&[
            ("etag", "\"abc\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let req = |k: &'static str, val: &str| {
            let mut h = HeaderMap::new();
            h.insert(k, HeaderValue::from_str(val).unwrap());
            h
        };
        assert!(v.not_modified_for(&req("if-none-match", "\"abc\"")));
        assert!(v.not_modified_for(&req("if-none-match", "W/\"abc\", \"x\"")));
        assert!(v.not_modified_for(&req("if-none-match", "*")));
        assert!(!v.not_modified_for(&req("if-none-match", "\"zzz\"")));
        assert!(v.not_modified_for(&req("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")));
        assert!(!v.not_modified_for(&req("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")));
        assert!(!v.not_modified_for(&HeaderMap::new()));
    }

    #[test]
    fn tags_and_refresh() {
        let v = variant(&[
            ("surrogate-key", "video  show-42"),
            ("cache-tag", "a, b"),
            ("x-old", "1"),
        ]);
        let tags: Vec<&str> = v.tags.iter().map(|t| &**t).collect();
        assert_eq!(tags, ["a", "b", "show-42", "video"]);
        let mut nm = HeaderMap::new();
        nm.insert("x-old", HeaderValue::from_static("2"));
        nm.insert("content-length", HeaderValue::from_static("0"));
        let now = SystemTime::now();
        nm.insert("set-cookie", HeaderValue::from_static("session=1"));
        nm.insert("x-user", HeaderValue::from_static("alice"));
        let unstored = [HeaderName::from_static("x-user")];
        let r = v.refreshed(&nm, &unstored, Timing::of(&nm, now, now), v.freshness);
        assert!(
            r.headers.get("set-cookie").is_none(),
            "personal: not stored"
        );
        assert!(
            r.headers.get("x-user").is_none(),
            "named by private=: not stored"
        );
        assert_eq!(r.headers["x-old"], "2");
        assert_eq!(r.body, v.body);
        assert!(r.headers.get("content-length").is_none());
        let _ = fmt_http_date(now);
    }

    #[test]
    fn kept_while_useful() {
        let v = variant(&[]);
        let at = v.timing.response_time;
        assert_eq!(v.keep_for(at), Duration::from_secs(60));
        assert_eq!(
            v.keep_for(at + Duration::from_secs(100)),
            Duration::from_secs(1)
        );
        let with_etag = variant(&[("etag", "\"x\"")]);
        assert_eq!(
            with_etag.keep_for(at),
            Duration::from_secs(120),
            "kept stale a while for revalidation"
        );
    }
}
