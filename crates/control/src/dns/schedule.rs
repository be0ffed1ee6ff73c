//! The pure decisions of re-resolution: when a name is asked again, what is worth a log line,
//! which addresses came and went. Each takes `now` so the tables below can pin it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use streamgate_config::Dns;
use tokio::time::Instant;

/// Retries after failures back off up to this (or `max_ttl`, if shorter): a name that is gone
/// costs a query every half minute, and one that comes back is seen within that.
pub(crate) const RETRY_CAP: Duration = Duration::from_secs(30);

/// Why a resolution gave no address. Every failure keeps the name's last good addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The name does not exist (NXDOMAIN).
    NxDomain,
    /// It exists but has no address of the families asked for (NODATA, empty answer).
    NoRecords,
    Timeout,
    /// SERVFAIL, REFUSED, a network or protocol error.
    Error,
    /// Addresses came, but none may be a backend (local without `allow_local`, unusable).
    Filtered,
}

impl Failure {
    /// The `result` label of `dns_resolutions_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Failure::NxDomain => "nxdomain",
            Failure::NoRecords => "no_records",
            Failure::Timeout => "timeout",
            Failure::Error => "error",
            Failure::Filtered => "filtered",
        }
    }
}

/// How a name stands, as far as logging goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Not asked yet by this task.
    Unknown,
    Good,
    Failing(Failure),
}

/// What the task remembers of one name between resolutions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameState {
    pub due: Instant,
    /// Failed resolutions in a row (0 after a success).
    pub failures: u32,
    pub standing: Standing,
    /// What screening dropped from the last answer, so a change is logged once.
    pub dropped: Vec<(IpAddr, super::screen::Dropped)>,
}

impl NameState {
    /// A name first seen by the task. One a start or reload already resolved is asked again
    /// after `min_ttl` (its TTL is not known here, and asking early is harmless); one without
    /// addresses at once.
    pub(crate) fn new(now: Instant, has_addresses: bool, dns: &Dns) -> NameState {
        NameState {
            due: if has_addresses {
                now + dns.min_ttl
            } else {
                now
            },
            failures: 0,
            standing: if has_addresses {
                Standing::Good
            } else {
                Standing::Unknown
            },
            dropped: Vec::new(),
        }
    }
}

/// Time until a name is asked again: its answer's TTL within `[min_ttl, max_ttl]` after a
/// success; after `failures` failures in a row, `min_ttl` doubled each time up to [`RETRY_CAP`]
/// (or `max_ttl`, if shorter, and never below `min_ttl`).
pub(crate) fn next_delay(result: Result<Duration, Failure>, failures: u32, dns: &Dns) -> Duration {
    match result {
        Ok(ttl) => ttl.clamp(dns.min_ttl, dns.max_ttl),
        Err(_) => {
            let cap = RETRY_CAP.min(dns.max_ttl).max(dns.min_ttl);
            let doublings = failures.saturating_sub(1).min(20);
            dns.min_ttl.saturating_mul(1 << doublings).min(cap)
        }
    }
}

/// Names due at `now`, in name order (so logs and queries come in a stable order).
pub(crate) fn due(states: &HashMap<String, NameState>, now: Instant) -> Vec<String> {
    let mut list: Vec<String> = states
        .iter()
        .filter(|(_, s)| s.due <= now)
        .map(|(n, _)| n.clone())
        .collect();
    list.sort();
    list
}

/// When the task must wake next (`None`: no name to resolve).
pub(crate) fn next_wake(states: &HashMap<String, NameState>) -> Option<Instant> {
    states.values().map(|s| s.due).min()
}

/// A log line worth writing for a change of standing (`None`: nothing new to say, such as the
/// tenth failure of the same kind in a row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Note {
    /// Failing, and no address was ever had: its regions get nothing from it.
    NeverResolved(Failure),
    /// Failing now (or failing differently): the last good addresses stay.
    Failing(Failure),
    /// Resolves again after failing.
    Recovered,
}

pub(crate) fn note(before: Standing, after: Standing, has_addresses: bool) -> Option<Note> {
    match (before, after) {
        (Standing::Failing(_), Standing::Good) => Some(Note::Recovered),
        (b, Standing::Failing(f)) if b != after => Some(if has_addresses {
            Note::Failing(f)
        } else {
            Note::NeverResolved(f)
        }),
        _ => None,
    }
}

/// Addresses in `new` that `old` lacks, and those in `old` that `new` lacks.
pub(crate) fn changes(old: &[IpAddr], new: &[IpAddr]) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let added = new.iter().filter(|a| !old.contains(a)).copied().collect();
    let removed = old.iter().filter(|a| !new.contains(a)).copied().collect();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(min: u64, max: u64) -> Dns {
        Dns {
            min_ttl: Duration::from_secs(min),
            max_ttl: Duration::from_secs(max),
            ..Dns::default()
        }
    }

    #[test]
    fn delays() {
        let s = Duration::from_secs;
        type Case = (&'static str, Dns, Result<Duration, Failure>, u32, Duration);
        let cases: Vec<Case> = vec![
            ("ttl within bounds", dns(1, 300), Ok(s(60)), 0, s(60)),
            ("ttl 0 waits min_ttl", dns(1, 300), Ok(s(0)), 0, s(1)),
            (
                "long ttl waits max_ttl",
                dns(1, 300),
                Ok(s(86_400)),
                0,
                s(300),
            ),
            (
                "first failure: min_ttl",
                dns(1, 300),
                Err(Failure::Timeout),
                1,
                s(1),
            ),
            ("second: doubled", dns(1, 300), Err(Failure::Error), 2, s(2)),
            ("fifth: 16 s", dns(1, 300), Err(Failure::NxDomain), 5, s(16)),
            (
                "sixth: capped at 30 s",
                dns(1, 300),
                Err(Failure::NxDomain),
                6,
                s(30),
            ),
            (
                "many: still capped",
                dns(1, 300),
                Err(Failure::NoRecords),
                1_000,
                s(30),
            ),
            (
                "cap below 30 s by max_ttl",
                dns(1, 10),
                Err(Failure::Error),
                9,
                s(10),
            ),
            (
                "min_ttl above the cap wins",
                dns(60, 600),
                Err(Failure::Error),
                3,
                s(60),
            ),
        ];
        for (what, d, result, failures, want) in cases {
            assert_eq!(next_delay(result, failures, &d), want, "{what}");
        }
    }

    #[test]
    fn due_names_and_wake() {
        let now = Instant::now();
        let at = |secs: u64| NameState {
            due: now + Duration::from_secs(secs),
            failures: 0,
            standing: Standing::Good,
            dropped: Vec::new(),
        };
        let mut states = HashMap::new();
        assert_eq!(next_wake(&states), None);
        states.insert("b.test".to_string(), at(0));
        states.insert("a.test".to_string(), at(0));
        states.insert("c.test".to_string(), at(5));
        assert_eq!(due(&states, now), ["a.test", "b.test"]);
        assert_eq!(next_wake(&states), Some(now));
        assert_eq!(due(&states, now + Duration::from_secs(5)).len(), 3);

        let d = dns(2, 300);
        assert_eq!(
            NameState::new(now, true, &d).due,
            now + Duration::from_secs(2)
        );
        assert_eq!(NameState::new(now, false, &d).due, now);
        assert_eq!(NameState::new(now, false, &d).standing, Standing::Unknown);
    }

    #[test]
    fn notes_only_on_a_change_of_standing() {
        use Failure::*;
        use Standing::*;
        let cases: &[(Standing, Standing, bool, Option<Note>)] = &[
            (Unknown, Good, true, None),
            (Good, Good, true, None),
            (
                Unknown,
                Failing(Timeout),
                false,
                Some(Note::NeverResolved(Timeout)),
            ),
            (Good, Failing(Error), true, Some(Note::Failing(Error))),
            (Failing(Error), Failing(Error), true, None),
            (
                Failing(Error),
                Failing(NxDomain),
                true,
                Some(Note::Failing(NxDomain)),
            ),
            (
                Failing(Error),
                Failing(Timeout),
                false,
                Some(Note::NeverResolved(Timeout)),
            ),
            (Failing(Timeout), Good, true, Some(Note::Recovered)),
        ];
        for (before, after, has, want) in cases {
            assert_eq!(
                note(*before, *after, *has),
                *want,
                "{before:?} -> {after:?}"
            );
        }
    }

    #[test]
    fn address_changes() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (a, b, c) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("::1"));
        type Case = (Vec<IpAddr>, Vec<IpAddr>, Vec<IpAddr>, Vec<IpAddr>);
        let cases: Vec<Case> = vec![
            (vec![a], vec![a], vec![], vec![]),
            (vec![a], vec![b], vec![b], vec![a]),
            (vec![a, b], vec![b, c], vec![c], vec![a]),
            (vec![], vec![a, c], vec![a, c], vec![]),
        ];
        for (old, new, added, removed) in cases {
            assert_eq!(changes(&old, &new), (added, removed), "{old:?} -> {new:?}");
        }
    }
}
