//! RFC 9111 rules for a shared cache: what may be stored, for how long it is fresh, how old a
//! stored response is, and when a stale one may still be served (RFC 5861 stale-* extensions).

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

/// Longest heuristic freshness (RFC 9111 §4.2.2 leaves the bound to the cache).
const MAX_HEURISTIC: Duration = Duration::from_secs(86_400);

/// Cache-Control directives a shared cache acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Request only.
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
}

impl Directives {
    /// Parses every Cache-Control header (and `Pragma: no-cache` when there is none).
    pub fn parse(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        // Most requests carry neither: one pass over their few fields instead of two lookups.
        if !headers
            .keys()
            .any(|k| k == header::CACHE_CONTROL || k == header::PRAGMA)
        {
            return d;
        }
        let mut any = false;
        for v in headers.get_all(header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                any = true;
                let item = item.trim();
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (item, None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    // `no-cache="field"` only restricts those fields; we treat it as no-cache.
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "max-age" => d.max_age = secs().or(Some(0)),
                    "s-maxage" => d.s_maxage = secs().or(Some(0)),
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                    "stale-if-error" => d.stale_if_error = secs(),
                    "max-stale" => d.max_stale = Some(secs().unwrap_or(u64::MAX)),
                    "min-fresh" => d.min_fresh = secs(),
                    "only-if-cached" => d.only_if_cached = true,
                    _ => {}
                }
            }
        }
        if !any
            && headers.get_all(header::PRAGMA).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|s| s.to_ascii_lowercase().contains("no-cache"))
            })
        {
            d.no_cache = true;
        }
        d
    }
}

/// Whether a request may be answered from, or stored in, the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestUse {
    /// Look it up; store the answer if the response allows.
    Cacheable,
    /// Go to the origin and leave the cache alone.
    Bypass(&'static str),
}

pub fn request_use(method: &Method, headers: &HeaderMap, req: &Directives) -> RequestUse {
    if method != Method::GET && method != Method::HEAD {
        return RequestUse::Bypass("method");
    }
    if req.no_store {
        return RequestUse::Bypass("request no-store");
    }
    // Caching partial responses of uncached objects or upgrades is not worth the complexity.
    if headers.contains_key(header::UPGRADE) {
        return RequestUse::Bypass("upgrade");
    }
    RequestUse::Cacheable
}

/// Methods whose success invalidates stored responses for the same URL (RFC 9111 §4.4).
pub fn invalidates(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    )
}

/// Statuses cacheable by default, i.e. heuristically (RFC 9110 §15.1).
fn heuristically_cacheable(status: StatusCode) -> bool {
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
    if status.is_informational() || status.as_u16() >= 600 {
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
    if resp_headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if resp_headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|f| f.trim() == "*"))
    }) {
        return Err(NotStored::VaryStar);
    }
    let explicit = if let Some(s) = resp.s_maxage {
        Some(Duration::from_secs(s))
    } else if let Some(m) = resp.max_age {
        Some(Duration::from_secs(m))
    } else if let Some(expires) = resp_headers.get(header::EXPIRES) {
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
        stale_while_revalidate: Duration::from_secs(resp.stale_while_revalidate.unwrap_or(0)),
        // must-revalidate forbids serving stale even on error (§5.2.2.2).
        stale_if_error: if must_revalidate {
            Duration::ZERO
        } else {
            Duration::from_secs(resp.stale_if_error.unwrap_or(0))
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
        let age_value = headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        Timing {
            request_time,
            response_time,
            date: date_of(headers),
            age_value,
        }
    }

    /// current_age of RFC 9111 §4.2.3.
    pub fn current_age(&self, now: SystemTime) -> Duration {
        let apparent = self
            .date
            .and_then(|d| self.response_time.duration_since(d).ok())
            .unwrap_or(Duration::ZERO);
        let delay = self
            .response_time
            .duration_since(self.request_time)
            .unwrap_or(Duration::ZERO);
        let corrected_initial = apparent.max(self.age_value + delay);
        corrected_initial
            + now
                .duration_since(self.response_time)
                .unwrap_or(Duration::ZERO)
    }
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
        lifetime = lifetime.min(Duration::from_secs(max_age));
    }
    let min_fresh = Duration::from_secs(req.min_fresh.unwrap_or(0));
    let fresh = age + min_fresh < lifetime;
    if fresh && !f.always_revalidate && !req.no_cache {
        return Usable::Fresh;
    }
    let staleness = age.saturating_sub(f.lifetime);
    if !f.must_revalidate && !f.always_revalidate && !req.no_cache {
        if let Some(ms) = req.max_stale
            && staleness <= Duration::from_secs(ms)
        {
            return Usable::Fresh;
        }
        if staleness < f.stale_while_revalidate {
            return Usable::StaleWhileRevalidate;
        }
    }
    Usable::Stale {
        if_error_for: f.stale_if_error.saturating_sub(staleness),
    }
}

/// Parses an HTTP date (IMF-fixdate; also RFC 850 and asctime, which recipients must accept).
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month_of = |m: &str| {
        months
            .iter()
            .position(|x| x.eq_ignore_ascii_case(m))
            .map(|i| i as u32 + 1)
    };
    let (day, month, year, time) = if let Some((_, rest)) = s.split_once(", ") {
        let parts: Vec<&str> = rest.split([' ', '-']).collect();
        if parts.len() < 4 {
            return None;
        }
        let mut year: i64 = parts[2].parse().ok()?;
        if parts[2].len() == 2 {
            year += if year < 70 { 2000 } else { 1900 };
        }
        (
            parts[0].parse::<u32>().ok()?,
            month_of(parts[1])?,
            year,
            parts[3],
        )
    } else {
        // asctime: "Sun Nov  6 08:49:37 1994"
        let parts: Vec<&str> = s.split_whitespace().collect();
        if parts.len() != 5 {
            return None;
        }
        (
            parts[2].parse().ok()?,
            month_of(parts[1])?,
            parts[4].parse().ok()?,
            parts[3],
        )
    };
    let t: Vec<u64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if t.len() != 3 || t[0] > 23 || t[1] > 59 || t[2] > 60 || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * i64::from(m) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (t[0] * 3600 + t[1] * 60 + t[2]) as i64;
    (secs >= 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64))
}

/// Formats an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT").
pub fn fmt_http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
            &Directives::parse(&rs),
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
                &Directives::parse(&rs),
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
                &Directives::parse(&rs),
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
        let req = |cc: &str| Directives::parse(&headers(&[("cache-control", cc)]));
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
        let pragma = Directives::parse(&headers(&[("pragma", "no-cache")]));
        assert!(pragma.no_cache);
    }

    #[test]
    fn requests_that_bypass() {
        let none = Directives::default();
        assert_eq!(
            request_use(&Method::POST, &HeaderMap::new(), &none),
            RequestUse::Bypass("method")
        );
        let ns = Directives::parse(&headers(&[("cache-control", "no-store")]));
        assert_eq!(
            request_use(&Method::GET, &HeaderMap::new(), &ns),
            RequestUse::Bypass("request no-store")
        );
        assert_eq!(
            request_use(&Method::HEAD, &HeaderMap::new(), &none),
            RequestUse::Cacheable
        );
        assert!(invalidates(&Method::DELETE) && !invalidates(&Method::GET));
    }
}
