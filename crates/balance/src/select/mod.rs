//! Backend selectors: pure functions of the backends, their live stats and a little selector state.
//!
//! Picking takes no lock, allocates nothing and never awaits. Each selector is built off the hot
//! path, with the routing table, from the region's backends.

mod least_conn;
mod maglev;
mod peak_ewma;
mod random;
mod round_robin;

pub use least_conn::LeastConn;
pub use maglev::{Maglev, ip_hash, key_hash, sticky_id};
pub use peak_ewma::PeakEwma;
pub use random::Random;
pub use round_robin::RoundRobin;

use streamgate_config::BackendPolicy;

use crate::pick::ClientFacts;
use crate::table::Backend;

/// Picks one backend among those `usable` says may take the request.
pub trait Select {
    fn select<F: Fn(&Backend) -> bool>(&self, backends: &[Backend], usable: F) -> Option<usize>;
}

/// The selector a service's `backend_policy` chose, one per region.
#[derive(Debug)]
pub enum BackendSelector {
    RoundRobin(RoundRobin),
    LeastConn(LeastConn),
    Latency(PeakEwma),
    Random(Random),
    ConsistentHash(Maglev),
}

impl BackendSelector {
    pub fn new(policy: BackendPolicy, backends: &[Backend]) -> BackendSelector {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        match policy {
            BackendPolicy::RoundRobin => BackendSelector::RoundRobin(RoundRobin::new(&weights)),
            BackendPolicy::LeastConn => BackendSelector::LeastConn(LeastConn::new(backends.len())),
            BackendPolicy::Latency => BackendSelector::Latency(PeakEwma::new()),
            BackendPolicy::Random => BackendSelector::Random(Random::new(&weights)),
            BackendPolicy::ConsistentHash => BackendSelector::ConsistentHash(Maglev::new(backends)),
        }
    }

    /// Picks for one client. `consistent_hash` goes first to the backend the client's sticky
    /// cookie names, while it is usable, then to its key's backend; the other policies do not
    /// look at the client.
    #[inline]
    pub fn select_for<F: Fn(&Backend) -> bool>(
        &self,
        client: &ClientFacts,
        backends: &[Backend],
        usable: F,
    ) -> Option<usize> {
        let BackendSelector::ConsistentHash(maglev) = self else {
            return self.select(backends, usable);
        };
        if let Some(id) = client.sticky
            && let Some(i) = backends.iter().position(|b| b.sticky_id == id && usable(b))
        {
            return Some(i);
        }
        match client.hash_key() {
            Some(key) => maglev.select_key(key, backends, usable),
            None => maglev.select(backends, usable),
        }
    }
}

impl Select for BackendSelector {
    #[inline]
    fn select<F: Fn(&Backend) -> bool>(&self, backends: &[Backend], usable: F) -> Option<usize> {
        match self {
            BackendSelector::RoundRobin(s) => s.select(backends, usable),
            BackendSelector::LeastConn(s) => s.select(backends, usable),
            BackendSelector::Latency(s) => s.select(backends, usable),
            BackendSelector::Random(s) => s.select(backends, usable),
            BackendSelector::ConsistentHash(s) => s.select(backends, usable),
        }
    }
}

/// Above this many backends, least_conn and latency compare two random choices instead of all.
pub const P2C_ABOVE: usize = 32;

/// Two distinct random indexes below `n` (n >= 2).
#[inline]
fn two_choices(n: usize) -> (usize, usize) {
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// The first usable backend at or after `start`, wrapping around.
#[inline]
fn first_usable<F: Fn(&Backend) -> bool>(
    backends: &[Backend],
    start: usize,
    usable: &F,
) -> Option<usize> {
    let n = backends.len();
    (0..n)
        .map(|i| (start + i) % n)
        .find(|&i| usable(&backends[i]))
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use crate::stats::BackendState;
    use crate::table::Backend;

    pub(crate) fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Backend::new(
                    format!("127.0.0.1:{}", 10000 + i).parse().unwrap(),
                    w,
                    Arc::new(BackendState::default()),
                )
            })
            .collect()
    }

    pub(crate) fn all(_: &Backend) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{all, backends};
    use super::*;

    #[test]
    fn consistent_hash_follows_the_sticky_cookie_while_its_backend_is_usable() {
        let b = backends(&[1; 4]);
        let s = BackendSelector::new(BackendPolicy::ConsistentHash, &b);
        let keyed = ClientFacts {
            key: Some(key_hash(b"u1")),
            ..ClientFacts::default()
        };
        let hashed = s.select_for(&keyed, &b, all).unwrap();
        assert_eq!(s.select_for(&keyed, &b, all), Some(hashed), "stable");
        let other = (hashed + 1) % 4;
        let sticky = ClientFacts {
            sticky: Some(b[other].sticky_id),
            ..keyed.clone()
        };
        assert_eq!(s.select_for(&sticky, &b, all), Some(other));
        let gone = b[other].address;
        assert_eq!(
            s.select_for(&sticky, &b, |x: &Backend| x.address != gone),
            Some(hashed),
            "an unusable cookie backend falls back to the key's"
        );
        let unknown = ClientFacts {
            sticky: Some(12345),
            ..keyed
        };
        assert_eq!(s.select_for(&unknown, &b, all), Some(hashed));
    }

    #[test]
    fn without_a_key_consistent_hash_uses_the_client_address() {
        let b = backends(&[1; 8]);
        let s = BackendSelector::new(BackendPolicy::ConsistentHash, &b);
        let by_ip = |ip: &str| ClientFacts {
            ip: Some(ip.parse().unwrap()),
            ..ClientFacts::default()
        };
        let first = s.select_for(&by_ip("192.0.2.7"), &b, all);
        for _ in 0..20 {
            assert_eq!(s.select_for(&by_ip("192.0.2.7"), &b, all), first);
        }
        let spread: std::collections::HashSet<_> = (0..64)
            .map(|i| s.select_for(&by_ip(&format!("192.0.2.{i}")), &b, all))
            .collect();
        assert!(spread.len() >= 6, "{spread:?}");
    }
}
