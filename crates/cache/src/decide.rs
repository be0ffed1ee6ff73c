//! What a request does with what the cache holds for it. A pure function of the stored copy's
//! usability (from [`crate::policy::usability`], which takes `now` through the copy's age), of
//! the request's `only-if-cached`, and of how a coalesced fill it waited on ended; table-tested
//! below. The proxy's cache layer acts on the answer.

use std::time::Duration;

use crate::fill::Outcome;
use crate::policy::Usable;

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
pub struct Asked {
    /// `Cache-Control: only-if-cached`.
    pub only_if_cached: bool,
    /// The stored copy was validated by a fill this request waited on, after it arrived: a
    /// follower takes what its leader validated, even if its own `no-cache` asked for a
    /// revalidation (that one happened after it arrived).
    pub validated_for_us: bool,
}

/// `stored`: the usability of the variant stored for this request, if any; `waited`: how the
/// coalesced fill this request waited on ended, if it waited.
pub fn decide(stored: Option<Usable>, asked: Asked, waited: Option<Outcome>) -> Decision {
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
            assert_eq!(decide(stored, asked, waited), want, "{name}");
        }
    }
}
