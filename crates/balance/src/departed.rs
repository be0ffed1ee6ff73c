//! Backends that left a region lately, kept with their live state for a while.
//!
//! A DNS name's answer may drop an address and give it back a moment later (registries that
//! answer with a random subset, round-robin DNS, a spoofer). Started afresh each time it came
//! back, a dead address was "up" with no failures until its first probe, which waits a random
//! part of the interval, and reached `fall` never, when it flipped faster than that: it was
//! tried and failed over from for ever while `/backends` showed it healthy. Envoy keeps a new
//! host out until its first active check passes; HAProxy has `init-state down`. Here an
//! address that comes back within [`GRACE`] gets the state it left with: down stays down until
//! `rise` probes pass, an ejection runs its course.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::BackendState;

/// How long a departed backend's state is kept: `[dns] max_ttl`'s default, the longest an
/// answer is believed.
pub const GRACE: Duration = Duration::from_secs(300);

/// Most departed backends kept a region, the latest first: a name's answer holds at most 1024
/// addresses (`[dns] max_addresses`), and an answer that rotates through more is not kept
/// whole.
pub const MAX: usize = 1024;

/// The departed backends of one service's region: their state, and when they left.
#[derive(Debug, Default, Clone)]
pub struct Departed(HashMap<SocketAddr, (Arc<BackendState>, Instant)>);

impl Departed {
    /// After a rebuild at `now`: the backends of the old region (`before`) that are not among
    /// the new (`stays`), and those departed earlier that are still within [`GRACE`] and not
    /// back; the latest at most [`MAX`].
    pub fn next<'a>(
        before: impl Iterator<Item = (SocketAddr, &'a Arc<BackendState>)>,
        earlier: &Departed,
        stays: impl Fn(&SocketAddr) -> bool,
        now: Instant,
    ) -> Departed {
        let mut out: HashMap<SocketAddr, (Arc<BackendState>, Instant)> = earlier
            .0
            .iter()
            .filter(|(a, (_, left))| !stays(a) && now.saturating_duration_since(*left) < GRACE)
            .map(|(a, v)| (*a, v.clone()))
            .collect();
        for (a, s) in before.filter(|(a, _)| !stays(a)) {
            out.insert(a, (s.clone(), now));
        }
        if out.len() > MAX {
            let mut by_age: Vec<_> = out.into_iter().collect();
            by_age.sort_unstable_by_key(|(_, (_, left))| std::cmp::Reverse(*left));
            by_age.truncate(MAX);
            out = by_age.into_iter().collect();
        }
        Departed(out)
    }

    /// The state `address` left with, if it left within the grace of `now` (a table is rebuilt
    /// only on a reload or a new answer: what is kept may be older than the grace).
    pub fn get(&self, address: &SocketAddr, now: Instant) -> Option<&Arc<BackendState>> {
        self.0
            .get(address)
            .filter(|(_, left)| now.saturating_duration_since(*left) < GRACE)
            .map(|(s, _)| s)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 80))
    }

    #[test]
    fn departures_are_kept_for_the_grace_and_dropped_on_return() {
        let t0 = Instant::now();
        let (a, b) = (
            Arc::new(BackendState::default()),
            Arc::new(BackendState::default()),
        );
        b.set_up(false);
        // (backends before, departed earlier, staying, at, expected departed)
        let step = |before: &[(SocketAddr, &Arc<BackendState>)],
                    earlier: &Departed,
                    stays: &[SocketAddr],
                    at| {
            Departed::next(before.iter().copied(), earlier, |x| stays.contains(x), at)
        };
        let d1 = step(
            &[(addr(1), &a), (addr(2), &b)],
            &Departed::default(),
            &[addr(1)],
            t0,
        );
        assert_eq!(d1.len(), 1);
        assert!(
            !d1.get(&addr(2), t0).unwrap().is_up(),
            "left with its state"
        );
        assert!(d1.get(&addr(1), t0).is_none(), "still there");
        assert!(
            d1.get(&addr(2), t0 + GRACE).is_none(),
            "too long ago, rebuilt or not"
        );
        // Another rebuild while it is away: still kept, with the time it left.
        let d2 = step(&[(addr(1), &a)], &d1, &[addr(1)], t0 + GRACE / 2);
        assert!(Arc::ptr_eq(d2.get(&addr(2), t0 + GRACE / 2).unwrap(), &b));
        // Past the grace: gone.
        let d3 = step(&[(addr(1), &a)], &d2, &[addr(1)], t0 + GRACE);
        assert!(d3.is_empty());
        // Back within the grace: no longer departed.
        let d4 = step(&[(addr(1), &a)], &d2, &[addr(1), addr(2)], t0 + GRACE / 2);
        assert!(d4.is_empty());
    }

    #[test]
    fn at_most_max_are_kept_the_latest_first() {
        let t0 = Instant::now();
        let states: Vec<_> = (0..MAX + 10)
            .map(|_| Arc::new(BackendState::default()))
            .collect();
        let port = |i: usize| SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 80));
        let old = Departed::next(
            (0..MAX).map(|i| (port(i), &states[i])),
            &Departed::default(),
            |_| false,
            t0,
        );
        let new = Departed::next(
            (MAX..MAX + 10).map(|i| (port(i), &states[i])),
            &old,
            |_| false,
            t0 + Duration::from_secs(1),
        );
        assert_eq!(new.len(), MAX, "the oldest let go");
        assert!(
            (MAX..MAX + 10).all(|i| new.get(&port(i), t0).is_some()),
            "the latest kept"
        );
    }
}
