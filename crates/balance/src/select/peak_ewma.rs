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

#[inline]
fn cost(b: &Backend, now: u64) -> f64 {
    b.state.latency_cost_at(now) * f64::from(b.state.in_flight() + 1) / f64::from(b.weight)
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
                        (true, true) => {
                            let now = crate::stats::now_nanos();
                            return Some(if cost(&backends[b], now) < cost(&backends[a], now) {
                                b
                            } else {
                                a
                            });
                        }
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
}
