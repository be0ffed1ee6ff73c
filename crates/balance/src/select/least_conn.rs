//! Weighted least connections: fewest in-flight requests per unit of weight. Small sets are
//! scanned whole from a rotating start (ties spread round robin); large sets use the power of
//! two random choices, which is nearly as good and O(1).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{P2C_ABOVE, Select, first_usable, two_choices};
use crate::table::Backend;

#[derive(Debug)]
pub struct LeastConn {
    next: AtomicUsize,
}

impl LeastConn {
    pub fn new(_backends: usize) -> LeastConn {
        LeastConn {
            next: AtomicUsize::new(fastrand::usize(..1024)),
        }
    }
}

/// True when `a` carries less load per weight than `b`: (in_flight + 1) / weight, compared
/// without division. The +1 makes weights count even when both are idle.
#[inline]
fn lighter(a: &Backend, b: &Backend) -> bool {
    let la = u64::from(a.state.in_flight()) + 1;
    let lb = u64::from(b.state.in_flight()) + 1;
    la * u64::from(b.weight) < lb * u64::from(a.weight)
}

impl Select for LeastConn {
    #[inline]
    fn select<F: Fn(&Backend) -> bool>(&self, backends: &[Backend], usable: F) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        if n > P2C_ABOVE {
            for _ in 0..4 {
                let (a, b) = two_choices(n);
                match (usable(&backends[a]), usable(&backends[b])) {
                    (true, true) => {
                        return Some(if lighter(&backends[b], &backends[a]) {
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
            return first_usable(backends, fastrand::usize(..n), &usable);
        }
        let start = self.next.fetch_add(1, Relaxed);
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let b = &backends[i];
            if !usable(b) {
                continue;
            }
            match best {
                Some(j) if !lighter(b, &backends[j]) => {}
                _ => best = Some(i),
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{all, backends};
    use super::*;
    use crate::stats::Lease;

    #[test]
    fn prefers_fewest_in_flight() {
        let b = backends(&[1, 1, 1]);
        let _l1 = Lease::new(b[0].state.clone());
        let _l2 = Lease::new(b[1].state.clone());
        let lc = LeastConn::new(3);
        for _ in 0..10 {
            assert_eq!(lc.select(&b, all), Some(2));
        }
    }

    #[test]
    fn ties_rotate() {
        let b = backends(&[1, 1, 1]);
        let lc = LeastConn::new(3);
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[lc.select(&b, all).unwrap()] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
    }

    #[test]
    fn weight_counts() {
        let b = backends(&[3, 1]);
        let lc = LeastConn::new(2);
        let mut leases = Vec::new();
        for _ in 0..8 {
            let i = lc.select(&b, all).unwrap();
            leases.push(Lease::new(b[i].state.clone()));
        }
        assert_eq!(b[0].state.in_flight(), 6);
        assert_eq!(b[1].state.in_flight(), 2);
    }

    #[test]
    fn p2c_on_large_sets_avoids_the_loaded_half() {
        let b = backends(&vec![1; 100]);
        let _busy: Vec<_> = b[..50]
            .iter()
            .flat_map(|x| (0..10).map(|_| Lease::new(x.state.clone())))
            .collect();
        let lc = LeastConn::new(100);
        let picks_in_busy = (0..1000)
            .filter(|_| lc.select(&b, all).unwrap() < 50)
            .count();
        // With two choices a busy backend wins only when both choices are busy: about 1/4.
        assert!(picks_in_busy < 350, "{picks_in_busy}");
        assert_eq!(lc.select(&b, |x| x.address == b[7].address), Some(7));
    }
}
