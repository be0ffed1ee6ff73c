//! RFC 9111 rules for a shared cache: what may be stored, for how long it is fresh, how old a
//! stored response is, and when a stale one may still be served (RFC 5861 stale-* extensions).

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

pub use crate::directives::Directives;
use crate::directives::{DELTA_MAX, delta_seconds};

/// Longest heuristic freshness (RFC 9111 §4.2.2 leaves the bound to the cache).
const MAX_HEURISTIC: Duration = Duration::from_secs(86_400);

/// Whether a request may be answered from, or stored in, the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestUse {
    /// Look it up; store the answer if the response allows.
    Cacheable,
    /// Go to the origin and leave the cache alone.
    Bypass(&'static str),
}

/// `has_body`: the request carries a body (a length above 0, chunked, or HTTP/2 DATA frames).
pub fn request_use(
    method: &Method,
    headers: &HeaderMap,
    req: &Directives,
    has_body: bool,
) -> RequestUse {
    if method != Method::GET && method != Method::HEAD {
        return RequestUse::Bypass("method");
    }
    // A GET body has no meaning in HTTP (RFC 9110 §9.3.1), but applications that read one
    // answer from it: stored under the URL, one client's body would choose everyone's answer.
    // Varnish does not send it on a miss; here it goes to the origin and the cache stays out.
    if has_body {
        return RequestUse::Bypass("request body");
    }
    if req.no_store {
        return RequestUse::Bypass("request no-store");
    }
    // Caching partial responses of uncached objects or upgrades is not worth the complexity.
    if headers.contains_key(header::UPGRADE) {
        return RequestUse::Bypass("upgrade");
    }
    // A GET an application may read as another method: its answer is not the GET's.
    if headers.keys().any(|k| {
        matches!(
            k.as_str(),
            "x-http-method-override" | "x-http-method" | "x-method-override"
        )
    }) {
        return RequestUse::Bypass("method override");
    }
    RequestUse::Cacheable
}

/// Safe methods (RFC 9110 §9.2.1): only their responses leave stored responses alone.
pub fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether a response to `method` invalidates the stored responses of its target URI (RFC 9111
/// §4.4): a non-error response to any unsafe method, including methods StreamGate does not know.
pub fn invalidates(method: &Method, status: StatusCode) -> bool {
    !is_safe(method) && (status.is_success() || status.is_redirection())
}

/// Statuses cacheable by default, i.e. heuristically (RFC 9110 §15.1).
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// How long a stored response stays fresh, and what may happen after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub lifetime: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// Stale means revalidate first, never serve as is (must-revalidate, proxy-revalidate,
    /// s-maxage).
    pub must_revalidate: bool,
    /// Stored, but every use needs revalidation (no-cache).
    pub always_revalidate: bool,
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    /// A Vary the cache cannot read (not text, or a member that is no field name): what the
    /// answer depends on is unknown, as for `Vary: *`.
    VaryUnreadable,
    NoFreshness,
    Partial,
}

/// The settings of a service's cache that the rules need.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub default_ttl: Duration,
    pub heuristic: bool,
}

/// Decides whether a response may be stored (RFC 9111 §3) and how fresh it is (§4.2.1).
pub fn storable(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
    resp: &Directives,
    rules: Rules,
    now: SystemTime,
) -> Result<Freshness, NotStored> {
    if method != Method::GET && method != Method::HEAD {
        return Err(NotStored::Method);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        // We store whole objects and answer ranges from them.
        return Err(NotStored::Partial);
    }
    // A 304 (even one to an unconditional request) describes another response; it is never
    // an answer to store.
    if status.is_informational() || status == StatusCode::NOT_MODIFIED || status.as_u16() >= 600 {
        return Err(NotStored::Status);
    }
    if resp.no_store {
        return Err(NotStored::NoStore);
    }
    if resp.private {
        return Err(NotStored::Private);
    }
    // A request with credentials: only if the response explicitly allows shared caching.
    if req_headers.contains_key(header::AUTHORIZATION)
        && !(resp.public || resp.s_maxage.is_some() || resp.must_revalidate)
    {
        return Err(NotStored::Authorization);
    }
    // A response that sets a cookie is for one client; storing it would hand the cookie to all.
    if resp_headers.keys().any(is_personal) {
        return Err(NotStored::SetCookie);
    }
    for v in resp_headers.get_all(header::VARY) {
        let Ok(s) = v.to_str() else {
            return Err(NotStored::VaryUnreadable);
        };
        for f in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            if f == "*" {
                return Err(NotStored::VaryStar);
            }
            if HeaderName::from_bytes(f.as_bytes()).is_err() {
                return Err(NotStored::VaryUnreadable);
            }
        }
    }
    let explicit = if let Some(s) = resp.s_maxage {
        Some(Duration::from_secs(s.min(DELTA_MAX)))
    } else if let Some(m) = resp.max_age {
        Some(Duration::from_secs(m.min(DELTA_MAX)))
    } else if let Some(expires) = resp_headers
        .get(header::EXPIRES)
        // A targeted field replaces Cache-Control and Expires (RFC 9213 §2.1).
        .filter(|_| !resp.targeted)
    {
        // An invalid Expires (e.g. "0") means already expired (§5.3).
        let expires = expires
            .to_str()
            .ok()
            .and_then(parse_http_date)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let date = date_of(resp_headers).unwrap_or(now);
        Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
    } else {
        None
    };
    let lifetime = match explicit {
        Some(l) => l,
        None if resp.public || heuristically_cacheable(status) => {
            let heuristic = rules
                .heuristic
                .then(|| {
                    let lm = resp_headers
                        .get(header::LAST_MODIFIED)?
                        .to_str()
                        .ok()
                        .and_then(parse_http_date)?;
                    let date = date_of(resp_headers).unwrap_or(now);
                    Some(
                        date.duration_since(lm)
                            .ok()?
                            .div_f64(10.0)
                            .min(MAX_HEURISTIC),
                    )
                })
                .flatten();
            match heuristic {
                Some(h) if !h.is_zero() => h,
                _ if !rules.default_ttl.is_zero() => rules.default_ttl,
                _ => return Err(NotStored::NoFreshness),
            }
        }
        None if !rules.default_ttl.is_zero() && status.is_success() => rules.default_ttl,
        None => return Err(NotStored::NoFreshness),
    };
    let must_revalidate = resp.must_revalidate || resp.proxy_revalidate || resp.s_maxage.is_some();
    Ok(Freshness {
        lifetime,
        stale_while_revalidate: secs(resp.stale_while_revalidate),
        // must-revalidate forbids serving stale even on error (§5.2.2.2).
        stale_if_error: if must_revalidate {
            Duration::ZERO
        } else {
            secs(resp.stale_if_error)
        },
        must_revalidate,
        always_revalidate: resp.no_cache,
    })
}

/// The Date header, if valid.
pub fn date_of(headers: &HeaderMap) -> Option<SystemTime> {
    headers
        .get(header::DATE)?
        .to_str()
        .ok()
        .and_then(parse_http_date)
}

/// When a stored response was received and what the origin said of its age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    pub date: Option<SystemTime>,
    pub age_value: Duration,
}

impl Timing {
    pub fn of(headers: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> Timing {
        Timing {
            request_time,
            response_time,
            date: date_of(headers),
            age_value: age_of(headers),
        }
    }

    /// current_age of RFC 9111 §4.2.3, saturating: times from a file or a peer cannot overflow.
    pub fn current_age(&self, now: SystemTime) -> Duration {
        let apparent = self
            .date
            .and_then(|d| self.response_time.duration_since(d).ok())
            .unwrap_or(Duration::ZERO);
        let delay = self
            .response_time
            .duration_since(self.request_time)
            .unwrap_or(Duration::ZERO);
        let corrected_initial = apparent.max(self.age_value.saturating_add(delay));
        corrected_initial.saturating_add(
            now.duration_since(self.response_time)
                .unwrap_or(Duration::ZERO),
        )
    }
}

/// The Age header (RFC 9111 §5.1): delta-seconds; of a list, the first member; invalid means
/// none.
pub fn age_of(headers: &HeaderMap) -> Duration {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| delta_seconds(v.split(',').next().unwrap_or("").trim()))
        .map_or(Duration::ZERO, Duration::from_secs)
}

/// What may be done with a stored response now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    Fresh,
    /// Stale but within stale-while-revalidate: serve it and refresh in the background.
    StaleWhileRevalidate,
    /// Must be revalidated (or refetched) before use; may serve on origin error until `Duration`
    /// more of staleness.
    Stale {
        if_error_for: Duration,
    },
}

/// Applies the response's freshness and the request's directives (RFC 9111 §4.2, §5.2.1).
pub fn usability(f: &Freshness, age: Duration, req: &Directives) -> Usable {
    let mut lifetime = f.lifetime;
    if let Some(max_age) = req.max_age {
        lifetime = lifetime.min(secs(Some(max_age)));
    }
    let fresh = age.saturating_add(secs(req.min_fresh)) < lifetime;
    if fresh && !f.always_revalidate && !req.no_cache {
        return Usable::Fresh;
    }
    let staleness = age.saturating_sub(f.lifetime);
    if !f.must_revalidate && !f.always_revalidate && !req.no_cache {
        if let Some(ms) = req.max_stale
            && staleness <= secs(Some(ms))
        {
            return Usable::Fresh;
        }
        // A client that bounds the age it accepts (max-age, min-fresh; a browser reload sends
        // max-age=0) does not want a stale answer, not even one refreshed behind it
        // (RFC 9111 §5.2.1.1, §5.2.1.3).
        let client_bounds_age = req.max_age.is_some() || req.min_fresh.is_some();
        if staleness < f.stale_while_revalidate && !client_bounds_age {
            return Usable::StaleWhileRevalidate;
        }
    }
    Usable::Stale {
        if_error_for: f.stale_if_error.saturating_sub(staleness),
    }
}

/// Seconds from a directive, at most 2^31.
fn secs(v: Option<u64>) -> Duration {
    Duration::from_secs(v.unwrap_or(0).min(DELTA_MAX))
}

/// Parses an HTTP date (RFC 9110 §5.6.7): IMF-fixdate and the two obsolete forms recipients
/// must accept (RFC 850, asctime), validated to the weekday by the httpdate crate.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

/// Formats an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"). Times before 1970 or after 9999
/// (which httpdate cannot write) are clamped.
pub fn fmt_http_date(t: SystemTime) -> String {
    const LAST: Duration = Duration::from_secs(253_402_300_799); // 9999-12-31T23:59:59Z
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .min(LAST);
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + since)
}

/// Fields that belong to one client's exchange and are never stored by a shared cache: cookies
/// set for whoever made the request.
pub fn is_personal(name: &HeaderName) -> bool {
    name == header::SET_COOKIE || name.as_str() == "set-cookie2"
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(list: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const NOW: u64 = 1_795_435_200; // 2026-11-23T12:00:00Z
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }
    fn at(offset: i64) -> String {
        fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs((NOW as i64 + offset) as u64))
    }
    const RULES: Rules = Rules {
        default_ttl: Duration::ZERO,
        heuristic: true,
    };

    fn decide(
        req: &[(&'static str, &str)],
        status: u16,
        resp: &[(&'static str, &str)],
    ) -> Result<Freshness, NotStored> {
        let (rq, rs) = (headers(req), headers(resp));
        storable(
            &Method::GET,
            &rq,
            StatusCode::from_u16(status).unwrap(),
            &rs,
            &Directives::of_response(&rs, &[]),
            RULES,
            now(),
        )
    }

    #[test]
    fn dates_round_trip_in_all_three_formats() {
        assert_eq!(
            fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
        assert_eq!(parse_http_date("0"), None);
        assert_eq!(parse_http_date(&at(0)), Some(now()));
    }

    #[test]
    fn freshness_lifetime_precedence() {
        // s-maxage beats max-age beats Expires; s-maxage implies must-revalidate for shared caches.
        let f = decide(&[], 200, &[("cache-control", "max-age=60, s-maxage=30")]).unwrap();
        assert_eq!(
            (f.lifetime, f.must_revalidate),
            (Duration::from_secs(30), true)
        );
        let f = decide(
            &[],
            200,
            &[
                ("cache-control", "max-age=60"),
                ("expires", &at(600)),
                ("date", &at(0)),
            ],
        )
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(60));
        let f = decide(&[], 200, &[("expires", &at(600)), ("date", &at(0))]).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(600));
        let f = decide(&[], 200, &[("expires", "0"), ("date", &at(0))]).unwrap();
        assert_eq!(
            f.lifetime,
            Duration::ZERO,
            "an invalid Expires is already expired"
        );
    }

    type Fields<'a> = &'a [(&'static str, &'a str)];

    #[test]
    fn what_a_shared_cache_must_not_store() {
        let cases: &[(Fields<'_>, u16, Fields<'_>, NotStored)] = &[
            (
                &[],
                200,
                &[("cache-control", "no-store, max-age=60")],
                NotStored::NoStore,
            ),
            (
                &[],
                200,
                &[("cache-control", "private, max-age=60")],
                NotStored::Private,
            ),
            (
                &[("authorization", "Bearer x")],
                200,
                &[("cache-control", "max-age=60")],
                NotStored::Authorization,
            ),
            (
                &[],
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                NotStored::SetCookie,
            ),
            (
                &[],
                200,
                &[("cache-control", "max-age=60"), ("vary", "*")],
                NotStored::VaryStar,
            ),
            (
                &[],
                200,
                &[("cache-control", "max-age=60"), ("vary", "accept, x user")],
                NotStored::VaryUnreadable,
            ),
            (&[], 200, &[], NotStored::NoFreshness),
            (
                &[],
                500,
                &[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")],
                NotStored::NoFreshness,
            ),
            (
                &[],
                206,
                &[("cache-control", "max-age=60")],
                NotStored::Partial,
            ),
            (
                &[],
                304,
                &[("cache-control", "max-age=60")],
                NotStored::Status,
            ),
            (
                &[],
                200,
                &[("cache-control", "max-age=60"), ("set-cookie2", "a=b")],
                NotStored::SetCookie,
            ),
        ];
        for (req, status, resp, why) in cases {
            assert_eq!(
                decide(req, *status, resp),
                Err(*why),
                "{req:?} {status} {resp:?}"
            );
        }
        // Authorization is fine when the response says so explicitly.
        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            assert!(
                decide(
                    &[("authorization", "Bearer x")],
                    200,
                    &[("cache-control", cc)]
                )
                .is_ok(),
                "{cc}"
            );
        }
        // An explicit lifetime makes other statuses cacheable.
        assert!(decide(&[], 500, &[("cache-control", "max-age=5")]).is_ok());
    }

    #[test]
    fn heuristic_freshness_only_where_permitted() {
        let lm = at(-10 * 86_400);
        let f = decide(&[], 200, &[("last-modified", &lm), ("date", &at(0))]).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(86_400), "10% of 10 days");
        let f = decide(&[], 404, &[("last-modified", &at(-1000)), ("date", &at(0))]).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(100));
        assert_eq!(
            decide(&[], 302, &[("last-modified", &lm)]),
            Err(NotStored::NoFreshness),
            "302 is not heuristically cacheable"
        );
        let (rq, rs) = (headers(&[]), headers(&[("last-modified", &lm)]));
        let strict = Rules {
            default_ttl: Duration::ZERO,
            heuristic: false,
        };
        assert_eq!(
            storable(
                &Method::GET,
                &rq,
                StatusCode::OK,
                &rs,
                &Directives::of_response(&rs, &[]),
                strict,
                now()
            ),
            Err(NotStored::NoFreshness)
        );
        let opt_in = Rules {
            default_ttl: Duration::from_secs(30),
            heuristic: false,
        };
        assert_eq!(
            storable(
                &Method::GET,
                &rq,
                StatusCode::OK,
                &rs,
                &Directives::of_response(&rs, &[]),
                opt_in,
                now()
            )
            .unwrap()
            .lifetime,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn age_follows_rfc_9111_section_4_2_3() {
        let h = headers(&[("date", &at(-10)), ("age", "5")]);
        let t = Timing::of(&h, now() - Duration::from_secs(2), now());
        // apparent 10 s; corrected age value 5 + 2 s delay = 7: the larger wins.
        assert_eq!(t.current_age(now()), Duration::from_secs(10));
        assert_eq!(
            t.current_age(now() + Duration::from_secs(20)),
            Duration::from_secs(30)
        );
        let h = headers(&[("age", "100")]);
        assert_eq!(
            Timing::of(&h, now(), now()).current_age(now()),
            Duration::from_secs(100)
        );
    }

    #[test]
    fn usability_of_stored_responses() {
        let f = |cc: &str| decide(&[], 200, &[("cache-control", cc)]).unwrap();
        let none = Directives::default();
        let s = Duration::from_secs;
        assert_eq!(usability(&f("max-age=60"), s(30), &none), Usable::Fresh);
        assert_eq!(
            usability(&f("max-age=60"), s(61), &none),
            Usable::Stale { if_error_for: s(0) }
        );
        assert_eq!(
            usability(&f("max-age=60, stale-while-revalidate=30"), s(80), &none),
            Usable::StaleWhileRevalidate
        );
        assert_eq!(
            usability(&f("max-age=60, stale-while-revalidate=30"), s(95), &none),
            Usable::Stale { if_error_for: s(0) }
        );
        assert_eq!(
            usability(&f("max-age=60, stale-if-error=300"), s(100), &none),
            Usable::Stale {
                if_error_for: s(260)
            }
        );
        assert_eq!(
            usability(
                &f("max-age=60, must-revalidate, stale-if-error=300"),
                s(100),
                &none
            ),
            Usable::Stale { if_error_for: s(0) },
            "must-revalidate forbids stale on error"
        );
        assert_eq!(
            usability(&f("max-age=60, no-cache"), s(1), &none),
            Usable::Stale { if_error_for: s(0) }
        );
        let req = |cc: &str| Directives::of_request(&headers(&[("cache-control", cc)]));
        assert_eq!(
            usability(&f("max-age=60"), s(30), &req("no-cache")),
            Usable::Stale { if_error_for: s(0) }
        );
        assert_eq!(
            usability(&f("max-age=60"), s(30), &req("max-age=10")),
            Usable::Stale { if_error_for: s(0) }
        );
        assert_eq!(
            usability(&f("max-age=60"), s(50), &req("min-fresh=20")),
            Usable::Stale { if_error_for: s(0) }
        );
        assert_eq!(
            usability(&f("max-age=60"), s(70), &req("max-stale=20")),
            Usable::Fresh
        );
        // A client bounding the age it accepts gets no stale-while-revalidate answer.
        let swr = f("max-age=60, stale-while-revalidate=600");
        assert_eq!(usability(&swr, s(80), &none), Usable::StaleWhileRevalidate);
        for cc in ["max-age=0", "max-age=70", "min-fresh=5"] {
            assert_eq!(
                usability(&swr, s(80), &req(cc)),
                Usable::Stale { if_error_for: s(0) },
                "{cc}"
            );
        }
        let pragma = Directives::of_request(&headers(&[("pragma", "no-cache")]));
        assert!(pragma.no_cache);
    }

    #[test]
    fn requests_that_bypass() {
        let none = Directives::default();
        assert_eq!(
            request_use(&Method::POST, &HeaderMap::new(), &none, false),
            RequestUse::Bypass("method")
        );
        let ns = Directives::of_request(&headers(&[("cache-control", "no-store")]));
        assert_eq!(
            request_use(&Method::GET, &HeaderMap::new(), &ns, false),
            RequestUse::Bypass("request no-store")
        );
        assert_eq!(
            request_use(&Method::HEAD, &HeaderMap::new(), &none, false),
            RequestUse::Cacheable
        );
        assert_eq!(
            request_use(&Method::GET, &HeaderMap::new(), &none, true),
            RequestUse::Bypass("request body")
        );
        let ok = StatusCode::OK;
        assert!(invalidates(&Method::DELETE, ok) && !invalidates(&Method::GET, ok));
    }
}
