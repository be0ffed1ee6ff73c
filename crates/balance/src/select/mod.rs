//! Backend selectors: pure functions of the backends, their live stats and a little selector state.
//!
//! Picking takes no lock, allocates nothing and never awaits. Each selector is built off the hot
//! path, with the routing table, from the region's backends.

mod least_conn;
mod peak_ewma;
mod random;
mod round_robin;

pub use least_conn::LeastConn;
pub use peak_ewma::PeakEwma;
pub use random::Random;
pub use round_robin::RoundRobin;

use streamgate_config::BackendPolicy;

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
}

impl BackendSelector {
    pub fn new(policy: BackendPolicy, backends: &[Backend]) -> BackendSelector {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        match policy {
            BackendPolicy::RoundRobin => BackendSelector::RoundRobin(RoundRobin::new(&weights)),
            BackendPolicy::LeastConn => BackendSelector::LeastConn(LeastConn::new(backends.len())),
            BackendPolicy::Latency => BackendSelector::Latency(PeakEwma::new()),
            BackendPolicy::Random => BackendSelector::Random(Random::new(&weights)),
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
