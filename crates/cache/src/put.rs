//! What an origin's answer does to the cache: whether a response is recorded and as what
//! ([`record_head`]), what a 304 does to the stored copy and what of it is for the requesting
//! client only ([`revalidated`], RFC 9111 §4.3.4), whether a 304 can refresh the copy at all
//! ([`validates`]), the validators a revalidation sends, and when a client's range is better
//! asked of the origin. Pure functions of the headers and of the times passed in; the proxy's
//! cache layer does the fetching and hands the headers over with hop-by-hop fields removed.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

use crate::ask::{ClientAsk, Validators, View, view};
use crate::directives::unstored_fields;
use crate::entry::Variant;
use crate::key::{selectors, vary_names};
use crate::policy::{self, Timing, is_personal};
use crate::record::RecordHead;
use crate::store::ServiceCache;

/// A response from the origin, as the cache sees it: hop-by-hop fields already removed.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
}

/// What a recording of `resp` stores, and its length if the origin gave it; `None` if the
/// response may not be stored (RFC 9111 §3, the service's rules and `max_object_size`).
/// `request_time` is when the request went to the origin, `now` when its head arrived.
pub fn record_head(
    cache: &ServiceCache,
    method: &Method,
    req: &HeaderMap,
    resp: Answer<'_>,
    request_time: SystemTime,
    now: SystemTime,
) -> Option<(RecordHead, Option<u64>)> {
    if method != Method::GET {
        return None;
    }
    let dirs = cache.directives(resp.headers);
    let freshness = policy::storable(
        method,
        req,
        resp.status,
        resp.headers,
        &dirs,
        cache.rules(),
        now,
    )
    .ok()?;
    let length = content_length(resp.headers);
    if length.is_some_and(|n| n > cache.spec.max_object_size) {
        return None;
    }
    let mut names: Vec<HeaderName> = cache.key_names.clone();
    for n in vary_names(resp.headers) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let mut headers = resp.headers.clone();
    headers.remove(header::AGE);
    for n in unstored_fields(resp.headers, &dirs, &cache.targets) {
        headers.remove(n);
    }
    let head = RecordHead {
        status: resp.status,
        timing: Timing::of(resp.headers, request_time, now),
        freshness,
        selectors: selectors(&names, req),
        headers,
    };
    Some((head, length))
}

/// A 304's outcome for the stored object and the client that asked.
#[derive(Debug)]
pub struct Revalidated {
    /// The stored object with the 304's fields merged in.
    pub merged: Variant,
    /// The 304's fields for this client only (Set-Cookie, fields kept from shared caches).
    pub personal: HeaderMap,
    /// Whether the merged object may still be stored (else it must be removed).
    pub stored: bool,
}

/// The stored object updated by a 304 (`not_modified`, hop-by-hop fields removed), and what of
/// the 304 is for the requesting client only. A merged response that may no longer be stored
/// (the 304 said private or no-store) is not to be kept.
pub fn revalidated(
    cache: &ServiceCache,
    stale: &Variant,
    not_modified: &HeaderMap,
    request_time: SystemTime,
    now: SystemTime,
) -> Revalidated {
    let nm_dirs = cache.directives(not_modified);
    let unstored = unstored_fields(not_modified, &nm_dirs, &cache.targets);
    let mut personal = HeaderMap::new();
    for (k, v) in not_modified {
        if is_personal(k) || unstored.contains(k) {
            personal.append(k.clone(), v.clone());
        }
    }
    let merged = stale.refreshed(
        not_modified,
        &unstored,
        Timing::of(not_modified, request_time, now),
        stale.freshness,
    );
    let dirs = cache.directives(&merged.headers);
    // The 304's own no-store or private (unqualified) applies to the merged response too.
    let refused = nm_dirs.no_store || nm_dirs.private;
    // Whether the stored object may be kept is a question about it, not about the client whose
    // request revalidated it (its Authorization, say, was checked when it was stored).
    match policy::storable(
        &Method::GET,
        &HeaderMap::new(),
        stale.status,
        &merged.headers,
        &dirs,
        cache.rules(),
        now,
    ) {
        Ok(f) if !refused => Revalidated {
            merged: Variant::new(
                merged.status,
                merged.headers,
                merged.body,
                merged.timing,
                f,
                merged.selectors,
            ),
            personal,
            stored: true,
        },
        _ => Revalidated {
            merged,
            personal,
            stored: false,
        },
    }
}

/// Whether a 304 can refresh `stale`: validators were sent, and a strong ETag in the 304, if
/// any, is the stored one, or the one it was made weak from. A copy compressed at the edge keeps
/// `W/"v1"` for the origin's `"v1"` (another representation of it), and origins that compare
/// weakly (nginx, Express) confirm it with a 304 carrying `"v1"`: a byte-for-byte comparison
/// refused every such 304 and fetched the whole body again.
pub fn validates(stale: &Variant, not_modified: &HeaderMap) -> bool {
    if !stale.has_validators() {
        return false;
    }
    match (not_modified.get(header::ETAG), &stale.etag) {
        (Some(new), Some(old)) if !new.as_bytes().starts_with(b"W/") => {
            new == old || old.as_bytes().strip_prefix(b"W/") == Some(new.as_bytes())
        }
        _ => true,
    }
}

/// The conditions of a revalidation of `v`.
pub fn add_validators(headers: &mut HeaderMap, v: &Variant) {
    if let Some(etag) = &v.etag {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = v.headers.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

pub fn strip_validators(headers: &mut HeaderMap) {
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
}

/// Past this offset, a range of a response that is not stored is asked of the origin rather
/// than cut from the whole response.
pub const CUT_RANGE_LOCALLY: u64 = 64 * 1024;

/// Whether the client's range, on a response that will not be stored, starts far enough in
/// (or in a body of unknown length) that the origin should serve it.
pub fn origin_should_cut_range(ask: &ClientAsk, resp: Answer<'_>) -> bool {
    if ask.range.is_none() || resp.status != StatusCode::OK {
        return false;
    }
    let len = content_length(resp.headers);
    match view(ask, StatusCode::OK, &Validators::of(resp.headers), len) {
        View::Partial { start, .. } => start > CUT_RANGE_LOCALLY,
        View::Full => len.is_none(),
        _ => false,
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests_support::{edge, spec};
    use http::HeaderValue;
    use std::time::Duration;
    use streamgate_telemetry::prometheus::IntCounter;

    type Fields<'a> = &'a [(&'a str, &'a str)];

    fn cache() -> ServiceCache {
        let evictions = IntCounter::new("test_evictions", "test").unwrap();
        ServiceCache::new(spec(1 << 20), evictions, edge())
    }

    fn fields(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            let name = HeaderName::from_bytes(k.as_bytes()).unwrap();
            h.append(name, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_435_200 + s)
    }

    fn stored(cache: &ServiceCache, resp: &[(&'static str, &str)]) -> Variant {
        let h = fields(resp);
        let answer = Answer {
            status: StatusCode::OK,
            headers: &h,
        };
        let (head, _) = record_head(cache, &Method::GET, &HeaderMap::new(), answer, at(0), at(0))
            .expect("storable");
        Variant::new(
            head.status,
            head.headers,
            bytes::Bytes::from_static(b"body"),
            head.timing,
            head.freshness,
            head.selectors,
        )
    }

    #[test]
    fn what_is_recorded() {
        let c = cache();
        let too_big = (c.spec.max_object_size + 1).to_string();
        let big = [
            ("cache-control", "max-age=60"),
            ("content-length", too_big.as_str()),
        ];
        // (case, method, request fields, status, response fields, recorded?)
        type Case<'a> = (&'a str, Method, Fields<'a>, u16, Fields<'a>, bool);
        let cases: &[Case<'_>] = &[
            (
                "fresh GET",
                Method::GET,
                &[],
                200,
                &[("cache-control", "max-age=60")],
                true,
            ),
            (
                "HEAD is not recorded",
                Method::HEAD,
                &[],
                200,
                &[("cache-control", "max-age=60")],
                false,
            ),
            (
                "no-store",
                Method::GET,
                &[],
                200,
                &[("cache-control", "no-store")],
                false,
            ),
            (
                "private",
                Method::GET,
                &[],
                200,
                &[("cache-control", "private, max-age=60")],
                false,
            ),
            (
                "Authorization without public",
                Method::GET,
                &[("authorization", "Basic eDp5")],
                200,
                &[("cache-control", "max-age=60")],
                false,
            ),
            (
                "Authorization, public",
                Method::GET,
                &[("authorization", "Basic eDp5")],
                200,
                &[("cache-control", "public, max-age=60")],
                true,
            ),
            (
                "larger than max_object_size",
                Method::GET,
                &[],
                200,
                &big,
                false,
            ),
            (
                "Vary: *",
                Method::GET,
                &[],
                200,
                &[("cache-control", "max-age=60"), ("vary", "*")],
                false,
            ),
            ("a 500 that says nothing", Method::GET, &[], 500, &[], false),
            (
                "a 500 with explicit freshness",
                Method::GET,
                &[],
                500,
                &[("cache-control", "max-age=60")],
                true,
            ),
            (
                "a 200 with only Last-Modified (heuristic)",
                Method::GET,
                &[],
                200,
                &[("last-modified", "Sun, 01 Nov 2026 10:00:00 GMT")],
                true,
            ),
        ];
        for (name, method, req, status, resp, want) in cases {
            let h = fields(resp);
            let answer = Answer {
                status: StatusCode::from_u16(*status).unwrap(),
                headers: &h,
            };
            let got = record_head(&c, method, &fields(req), answer, at(0), at(1));
            assert_eq!(got.is_some(), *want, "{name}");
        }
    }

    #[test]
    fn a_recording_keeps_what_is_shared_and_selects_by_vary() {
        let c = cache();
        let h = fields(&[
            ("cache-control", "max-age=60, no-cache=\"x-user\""),
            ("age", "5"),
            ("x-user", "alice"),
            ("vary", "Accept-Language"),
            ("content-length", "4"),
        ]);
        let answer = Answer {
            status: StatusCode::OK,
            headers: &h,
        };
        let req = fields(&[("accept-language", "de")]);
        let (head, length) = record_head(&c, &Method::GET, &req, answer, at(0), at(2)).unwrap();
        assert_eq!(length, Some(4));
        assert!(
            head.headers.get("age").is_none(),
            "Age is computed when served"
        );
        assert!(
            head.headers.get("x-user").is_none(),
            "no-cache=\"x-user\" is not stored"
        );
        assert_eq!(head.timing.current_age(at(2)), Duration::from_secs(7));
        assert_eq!(head.selectors.len(), 1);
        assert_eq!(head.selectors[0].0, "accept-language");
        assert_eq!(head.selectors[0].1.as_ref().unwrap(), "de");
    }

    #[test]
    fn a_304_refreshes_the_copy_and_keeps_cookies_for_its_client() {
        let c = cache();
        let v = stored(
            &c,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("x-a", "old"),
            ],
        );
        let nm = fields(&[
            ("cache-control", "max-age=120"),
            ("set-cookie", "sid=alice"),
            ("x-a", "new"),
        ]);
        let r = revalidated(&c, &v, &nm, at(100), at(101));
        assert!(r.stored);
        assert_eq!(r.merged.headers.get("x-a").unwrap(), "new");
        assert!(r.merged.headers.get("set-cookie").is_none(), "never shared");
        assert_eq!(r.personal.get("set-cookie").unwrap(), "sid=alice");
        assert_eq!(r.merged.freshness.lifetime, Duration::from_secs(120));
        // The revalidation's round trip counts in the age (RFC 9111 §4.2.3 response_delay).
        assert_eq!(r.merged.timing.current_age(at(101)), Duration::from_secs(1));
        assert_eq!(&r.merged.body[..], b"body");
        for refusal in ["no-store", "private"] {
            let nm = fields(&[("cache-control", refusal)]);
            let r = revalidated(&c, &v, &nm, at(100), at(101));
            assert!(!r.stored, "a 304 saying {refusal} removes the copy");
        }
    }

    #[test]
    fn which_304s_can_refresh() {
        let c = cache();
        let tagged = stored(&c, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
        let dated = stored(
            &c,
            &[
                ("cache-control", "max-age=60"),
                ("last-modified", "Sat, 28 Nov 2026 10:00:00 GMT"),
            ],
        );
        let bare = stored(&c, &[("cache-control", "max-age=60")]);
        // As compressed here: the origin's "v1" made weak.
        let weakened = stored(&c, &[("cache-control", "max-age=60"), ("etag", "W/\"v1\"")]);
        type Case<'a> = (&'a str, &'a Variant, Fields<'a>, bool);
        let cases: &[Case<'_>] = &[
            ("same strong ETag", &tagged, &[("etag", "\"v1\"")], true),
            ("another strong ETag", &tagged, &[("etag", "\"v2\"")], false),
            ("a weak ETag", &tagged, &[("etag", "W/\"v2\"")], true),
            (
                "the strong ETag a weak copy came from",
                &weakened,
                &[("etag", "\"v1\"")],
                true,
            ),
            (
                "another strong ETag, weak copy",
                &weakened,
                &[("etag", "\"v2\"")],
                false,
            ),
            ("no ETag in the 304", &tagged, &[], true),
            ("Last-Modified only", &dated, &[], true),
            ("nothing was sent to validate", &bare, &[], false),
        ];
        for (name, v, nm, want) in cases {
            assert_eq!(validates(v, &fields(nm)), *want, "{name}");
        }
        let mut req = HeaderMap::new();
        add_validators(&mut req, &tagged);
        assert_eq!(req.get(header::IF_NONE_MATCH).unwrap(), "\"v1\"");
        add_validators(&mut req, &dated);
        assert!(req.get(header::IF_MODIFIED_SINCE).is_some());
        strip_validators(&mut req);
        assert!(req.is_empty());
    }

    #[test]
    fn ranges_the_origin_should_cut() {
        let far = format!("bytes={}-", CUT_RANGE_LOCALLY + 1);
        // (case, Range, status, Content-Length, origin cuts?)
        type Case<'a> = (&'a str, Option<&'a str>, u16, Option<&'a str>, bool);
        let cases: &[Case<'_>] = &[
            ("no range", None, 200, Some("1000000"), false),
            (
                "near the start",
                Some("bytes=0-99"),
                200,
                Some("1000000"),
                false,
            ),
            ("far in", Some(&far), 200, Some("1000000"), true),
            ("unknown length", Some("bytes=0-99"), 200, None, true),
            ("not a 200", Some(&far), 404, Some("1000000"), false),
        ];
        for (name, range, status, len, want) in cases {
            let mut req = HeaderMap::new();
            if let Some(r) = range {
                req.insert(header::RANGE, HeaderValue::from_str(r).unwrap());
            }
            let ask = ClientAsk::take_from(&mut req, &Method::GET);
            let resp = fields(&len.map(|l| vec![("content-length", l)]).unwrap_or_default());
            let answer = Answer {
                status: StatusCode::from_u16(*status).unwrap(),
                headers: &resp,
            };
            assert_eq!(origin_should_cut_range(&ask, answer), *want, "{name}");
        }
    }
}
