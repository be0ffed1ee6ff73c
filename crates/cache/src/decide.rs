//! What a request does with what the cache holds for it: [`decide`], a pure function of the
//! stored copy, the request's directives, how a coalesced fill it waited on ended, and `now`
//! (passed in, never read here); table-tested below, time included. The proxy's cache layer
//! acts on the answer and reports it as a [`CacheStatus`].

use std::time::{Duration, SystemTime};

use crate::directives::Directives;
use crate::entry::Variant;
use crate::fill::Outcome;
use crate::policy::{Usable, usability};

/// What the cache answered, for the status header (`X-Cache`) and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Stale,
    Expired,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

/// The request's side of a look at the cache.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Its Cache-Control.
    pub dirs: &'a Directives,
    /// When it arrived: a copy validated since then, by a fill it waited on, was validated
    /// for it.
    pub arrived: SystemTime,
}

/// A decision and the stored copy's age it was made at (what `Age` says if it is served).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    pub decision: Decision,
    pub age: Duration,
}

/// What to do with `stored` (the variant stored for this request, if any) at `now`; `waited`:
/// how the coalesced fill this request waited on ended, if it waited.
pub fn decide(
    stored: Option<&Variant>,
    req: Request<'_>,
    waited: Option<Outcome>,
    now: SystemTime,
) -> Look {
    let only_if_cached = req.dirs.only_if_cached;
    let Some(v) = stored else {
        let asked = Asked {
            only_if_cached,
            validated_for_us: false,
        };
        return Look {
            decision: choose(None, asked, waited),
            age: Duration::ZERO,
        };
    };
    let age = v.timing.current_age(now);
    let asked = Asked {
        only_if_cached,
        validated_for_us: waited == Some(Outcome::Stored) && v.timing.response_time >= req.arrived,
    };
    let usable = usability(&v.freshness, age, req.dirs);
    Look {
        decision: choose(Some(usable), asked, waited),
        age,
    }
}

/// What the cache layer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve the stored copy as a hit.
    Hit,
    /// Serve the stored copy stale and refresh it in the background (stale-while-revalidate).
    StaleRefresh,
    /// Serve the stored copy stale: the fill this request waited on just failed and
    /// stale-if-error allows it (one origin request for all the waiters, not one each).
    StaleIfError,
    /// `only-if-cached` and nothing usable: 504.
    NotInCache,
    /// Revalidate the stale copy with the origin; it may stand in for `if_error_for` more if
    /// the origin fails.
    Revalidate { if_error_for: Duration },
    /// Nothing stored for this request: fetch it.
    Fill,
}

/// The request's side of the decision.
#[derive(Debug, Clone, Copy, Default)]
struct Asked {
    /// `Cache-Control: only-if-cached`.
    only_if_cached: bool,
    /// The stored copy was validated by a fill this request waited on, after it arrived: a
    /// follower takes what its leader validated, even if its own `no-cache` asked for a
    /// revalidation (that one happened after it arrived).
    validated_for_us: bool,
}

/// `stored`: the usability of the variant stored for this request, if any.
fn choose(stored: Option<Usable>, asked: Asked, waited: Option<Outcome>) -> Decision {
    match stored {
        None if asked.only_if_cached => Decision::NotInCache,
        None => Decision::Fill,
        Some(Usable::Fresh) => Decision::Hit,
        Some(_) if asked.validated_for_us => Decision::Hit,
        Some(Usable::StaleWhileRevalidate) => Decision::StaleRefresh,
        Some(Usable::Stale { if_error_for })
            if waited == Some(Outcome::Failed) && !if_error_for.is_zero() =>
        {
            Decision::StaleIfError
        }
        Some(Usable::Stale { .. }) if asked.only_if_cached => Decision::NotInCache,
        Some(Usable::Stale { if_error_for }) => Decision::Revalidate { if_error_for },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let stale = |s| {
            Some(Usable::Stale {
                if_error_for: Duration::from_secs(s),
            })
        };
        let plain = Asked::default();
        let oic = Asked {
            only_if_cached: true,
            ..Asked::default()
        };
        let ours = Asked {
            validated_for_us: true,
            ..Asked::default()
        };
        let failed = Some(Outcome::Failed);
        type Case = (
            &'static str,
            Option<Usable>,
            Asked,
            Option<Outcome>,
            Decision,
        );
        let cases: Vec<Case> = vec![
            ("nothing stored", None, plain, None, Decision::Fill),
            (
                "nothing stored, only-if-cached",
                None,
                oic,
                None,
                Decision::NotInCache,
            ),
            ("fresh", Some(Usable::Fresh), plain, None, Decision::Hit),
            (
                "fresh, only-if-cached",
                Some(Usable::Fresh),
                oic,
                None,
                Decision::Hit,
            ),
            (
                "stale but validated for us",
                stale(0),
                ours,
                Some(Outcome::Stored),
                Decision::Hit,
            ),
            (
                "within stale-while-revalidate",
                Some(Usable::StaleWhileRevalidate),
                plain,
                None,
                Decision::StaleRefresh,
            ),
            (
                "stale",
                stale(0),
                plain,
                None,
                Decision::Revalidate {
                    if_error_for: Duration::ZERO,
                },
            ),
            (
                "stale, stale-if-error, nobody failed",
                stale(60),
                plain,
                None,
                Decision::Revalidate {
                    if_error_for: Duration::from_secs(60),
                },
            ),
            (
                "stale, the fill we waited on failed, stale-if-error",
                stale(60),
                plain,
                failed,
                Decision::StaleIfError,
            ),
            (
                "stale, the fill failed, no stale-if-error",
                stale(0),
                plain,
                failed,
                Decision::Revalidate {
                    if_error_for: Duration::ZERO,
                },
            ),
            (
                "stale, only-if-cached",
                stale(60),
                oic,
                None,
                Decision::NotInCache,
            ),
            (
                "stale, only-if-cached, fill failed: the copy stands in",
                stale(60),
                oic,
                failed,
                Decision::StaleIfError,
            ),
        ];
        for (name, stored, asked, waited, want) in cases {
            assert_eq!(choose(stored, asked, waited), want, "{name}");
        }
    }

    /// A response stored at T with `resp` headers (freshness from RFC 9111 as stored).
    fn stored_at(resp: &[(&'static str, &str)]) -> (Variant, SystemTime) {
        use crate::policy::{Rules, Timing, storable};
        use http::{HeaderMap, HeaderValue, Method, StatusCode};
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_435_200);
        let mut h = HeaderMap::new();
        for (k, v) in resp {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        let rules = Rules {
            default_ttl: Duration::ZERO,
            heuristic: false,
        };
        let dirs = Directives::of_response(&h, &[]);
        let f = storable(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &h,
            &dirs,
            rules,
            t,
        )
        .unwrap();
        let timing = Timing::of(&h, t, t);
        let v = Variant::new(StatusCode::OK, h, bytes::Bytes::new(), timing, f, vec![]);
        (v, t)
    }

    fn request(fields: &[(&'static str, &str)]) -> Directives {
        let mut h = http::HeaderMap::new();
        for (k, v) in fields {
            h.append(*k, http::HeaderValue::from_str(v).unwrap());
        }
        Directives::of_request(&h)
    }

    /// `now` is passed in: the age a hit reports and the moment a copy turns stale are read off
    /// the table instead of waiting for the clock (the end-to-end test only checks Age is sent).
    #[test]
    fn decisions_over_time() {
        let secs = Duration::from_secs;
        let plain = request(&[]);
        let no_cache = request(&[("cache-control", "no-cache")]);
        let reload = request(&[("cache-control", "max-age=0")]);
        let max_stale = request(&[("cache-control", "max-stale=30")]);
        let oic = request(&[("cache-control", "only-if-cached")]);
        let m60: &[(&str, &str)] = &[("cache-control", "max-age=60")];
        let aged: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("age", "30")];
        let swr: &[(&str, &str)] = &[("cache-control", "max-age=60, stale-while-revalidate=30")];
        let sie: &[(&str, &str)] = &[("cache-control", "max-age=60, stale-if-error=60")];
        let mr: &[(&str, &str)] = &[("cache-control", "max-age=60, must-revalidate")];
        let revalidate = |s| Decision::Revalidate {
            if_error_for: secs(s),
        };
        // (case, stored headers, request, waited, arrived - T, now - T, decision, age)
        type Case<'a> = (
            &'a str,
            &'a [(&'static str, &'a str)],
            &'a Directives,
            Option<Outcome>,
            i64,
            i64,
            Decision,
            u64,
        );
        let cases: Vec<Case<'_>> = vec![
            ("just stored", m60, &plain, None, 0, 0, Decision::Hit, 0),
            ("a second later", m60, &plain, None, 1, 1, Decision::Hit, 1),
            (
                "last fresh second",
                m60,
                &plain,
                None,
                59,
                59,
                Decision::Hit,
                59,
            ),
            ("expired", m60, &plain, None, 60, 60, revalidate(0), 60),
            (
                "Age from upstream counts",
                aged,
                &plain,
                None,
                10,
                10,
                Decision::Hit,
                40,
            ),
            (
                "Age from upstream expires it sooner",
                aged,
                &plain,
                None,
                30,
                30,
                revalidate(0),
                60,
            ),
            (
                "clock behind the store time",
                m60,
                &plain,
                None,
                -5,
                -5,
                Decision::Hit,
                0,
            ),
            (
                "no-cache revalidates",
                m60,
                &no_cache,
                None,
                1,
                1,
                revalidate(0),
                1,
            ),
            (
                "a reload (max-age=0) revalidates",
                m60,
                &reload,
                None,
                1,
                1,
                revalidate(0),
                1,
            ),
            (
                "max-stale accepts",
                m60,
                &max_stale,
                None,
                80,
                80,
                Decision::Hit,
                80,
            ),
            (
                "beyond max-stale",
                m60,
                &max_stale,
                None,
                91,
                91,
                revalidate(0),
                91,
            ),
            (
                "must-revalidate ignores max-stale",
                mr,
                &max_stale,
                None,
                70,
                70,
                revalidate(0),
                70,
            ),
            (
                "stale-while-revalidate",
                swr,
                &plain,
                None,
                70,
                70,
                Decision::StaleRefresh,
                70,
            ),
            (
                "past stale-while-revalidate",
                swr,
                &plain,
                None,
                90,
                90,
                revalidate(0),
                90,
            ),
            (
                "reload refuses stale-while-revalidate",
                swr,
                &reload,
                None,
                70,
                70,
                revalidate(0),
                70,
            ),
            (
                "stale-if-error left",
                sie,
                &plain,
                None,
                70,
                70,
                revalidate(50),
                70,
            ),
            (
                "stale-if-error spent",
                sie,
                &plain,
                None,
                130,
                130,
                revalidate(0),
                130,
            ),
            (
                "fill failed, stale-if-error",
                sie,
                &plain,
                Some(Outcome::Failed),
                70,
                71,
                Decision::StaleIfError,
                71,
            ),
            // A follower whose leader revalidated after it arrived takes that copy, even with
            // its own no-cache; a copy stored before it arrived does not count.
            (
                "validated after we arrived",
                m60,
                &no_cache,
                Some(Outcome::Stored),
                -1,
                0,
                Decision::Hit,
                0,
            ),
            (
                "stored before we arrived",
                m60,
                &no_cache,
                Some(Outcome::Stored),
                1,
                1,
                revalidate(0),
                1,
            ),
            (
                "only-if-cached, fresh",
                m60,
                &oic,
                None,
                5,
                5,
                Decision::Hit,
                5,
            ),
            (
                "only-if-cached, stale",
                m60,
                &oic,
                None,
                61,
                61,
                Decision::NotInCache,
                61,
            ),
        ];
        let at = |t: SystemTime, d: i64| {
            if d >= 0 {
                t + secs(d as u64)
            } else {
                t - secs(d.unsigned_abs())
            }
        };
        for (name, resp, dirs, waited, arrived, now, want, age) in cases {
            let (v, t) = stored_at(resp);
            let req = Request {
                dirs,
                arrived: at(t, arrived),
            };
            let look = decide(Some(&v), req, waited, at(t, now));
            assert_eq!(look.decision, want, "{name}");
            assert_eq!(look.age, secs(age), "{name}: age");
        }
        let nothing = decide(
            None,
            Request {
                dirs: &oic,
                arrived: SystemTime::UNIX_EPOCH,
            },
            None,
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(nothing.decision, Decision::NotInCache);
    }
}
