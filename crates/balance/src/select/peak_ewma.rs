//! Latency-aware picking: peak-EWMA of time to response head, times in-flight requests, divided
//! by weight; the lower of two random choices (all of them for two or fewer).

use super::{Select, first_usable, two_choices};
use crate::table::Backend;

#[derive(Debug, Default)]
pub struct PeakEwma;

impl PeakEwma {
    pub fn new() -> PeakEwma {
        PeakEwma
    }
}

/// `b`'s cost with its estimate decayed to `at` (see `BackendState::latency_cost_at`).
#[inline]
fn cost(b: &Backend, at: u64) -> f64 {
    b.state.latency_cost_at(at) * f64::from(b.state.in_flight() + 1) / f64::from(b.weight)
}

/// Which of `a` and `b` costs less, both estimates decayed to the newer of their last
/// samples rather than to now: decaying both further, to now, multiplies both costs by the
/// same factor and cannot change the answer, so a pick reads no clock.
#[inline]
fn cheaper(backends: &[Backend], a: usize, b: usize) -> usize {
    let (x, y) = (&backends[a], &backends[b]);
    let at = x.state.latency_stamp().max(y.state.latency_stamp());
    if cost(y, at) < cost(x, at) { b } else { a }
}

impl Select for PeakEwma {
    #[inline]
    fn select<F: Fn(&Backend) -> bool>(&self, backends: &[Backend], usable: F) -> Option<usize> {
        let n = backends.len();
        match n {
            0 => None,
            1 => usable(&backends[0]).then_some(0),
            _ => {
                for _ in 0..4 {
                    let (a, b) = two_choices(n);
                    match (usable(&backends[a]), usable(&backends[b])) {
                        (true, true) => return Some(cheaper(backends, a, b)),
                        (true, false) => return Some(a),
                        (false, true) => return Some(b),
                        (false, false) => {}
                    }
                }
                first_usable(backends, fastrand::usize(..n), &usable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{all, backends};
    use super::*;

    #[test]
    fn prefers_the_fast_backend() {
        let b = backends(&[1, 1]);
        b[0].state.record_latency(Duration::from_millis(50));
        b[1].state.record_latency(Duration::from_millis(1));
        let p = PeakEwma::new();
        for _ in 0..20 {
            assert_eq!(p.select(&b, all), Some(1));
        }
        assert_eq!(p.select(&b, |x| x.address == b[0].address), Some(0));
    }

    #[test]
    fn a_backend_slow_once_long_ago_is_tried_again() {
        let b = backends(&[1, 1]);
        let t0 = crate::stats::now_nanos();
        b[0].state.record_latency_at(Duration::from_secs(20), t0);
        b[1].state
            .record_latency_at(Duration::from_millis(5), t0 + 1_000_000_000);
        let p = PeakEwma::new();
        assert_eq!(
            p.select(&b, all),
            Some(1),
            "one second on: still priced out"
        );
        b[1].state
            .record_latency_at(Duration::from_millis(5), t0 + 17_000_000_000);
        assert_eq!(
            p.select(&b, all),
            Some(0),
            "17 s on, its 20 s is under 5 ms"
        );
    }
}
