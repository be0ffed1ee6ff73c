//! Smooth weighted round robin, as nginx does it, precomputed into a schedule so a pick is one
//! atomic increment and an array read.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{Select, first_usable};
use crate::table::Backend;

/// Longest schedule kept; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 1 << 20;
/// Above this many steps of work, the schedule is built by stride scheduling (O(total log n))
/// instead of nginx's O(total * n) loop; both interleave the same proportions.
const MAX_NGINX_WORK: u64 = 4_000_000;

#[derive(Debug)]
pub struct RoundRobin {
    schedule: Box<[u32]>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> RoundRobin {
        let weights = normalise(weights);
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let schedule = if total * weights.len() as u64 <= MAX_NGINX_WORK {
            nginx_schedule(&weights, total)
        } else {
            stride_schedule(&weights, total)
        };
        // Start at a random point so that many proxies restarted together do not move in step.
        let start = if schedule.is_empty() {
            0
        } else {
            fastrand::usize(..schedule.len())
        };
        RoundRobin {
            schedule: schedule.into_boxed_slice(),
            next: AtomicUsize::new(start),
        }
    }

    #[cfg(test)]
    pub(crate) fn schedule(&self) -> &[u32] {
        &self.schedule
    }
}

impl Select for RoundRobin {
    #[inline]
    fn select<F: Fn(&Backend) -> bool>(&self, backends: &[Backend], usable: F) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 || backends.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        let first = self.schedule[start % len] as usize;
        if usable(&backends[first]) {
            return Some(first);
        }
        // Skip unusable entries along the schedule, a bounded number of steps, then any usable.
        for step in 1..len.min(64) {
            let i = self.schedule[(start + step) % len] as usize;
            if usable(&backends[i]) {
                return Some(i);
            }
        }
        first_usable(backends, first, &usable)
    }
}

/// Divides by the common divisor and scales down to at most `MAX_SCHEDULE` in total.
fn normalise(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w.max(1)));
    let mut w: Vec<u32> = weights.iter().map(|&x| x.max(1) / g).collect();
    let total: u64 = w.iter().map(|&x| u64::from(x)).sum();
    if total > MAX_SCHEDULE {
        let scale = MAX_SCHEDULE as f64 / total as f64;
        for x in &mut w {
            *x = ((f64::from(*x) * scale).round() as u32).max(1);
        }
    }
    w
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// nginx's smooth weighted round robin: each step every backend gains its weight, the one with
/// the most is picked and pays back the total.
fn nginx_schedule(weights: &[u32], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

/// Stride scheduling: each backend is due every total/weight steps, offset by half a stride.
fn stride_schedule(weights: &[u32], total: u64) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    // Fixed point: due times in units of 1/weight scaled by `total` to stay integral.
    let mut heap: BinaryHeap<Reverse<(u128, u32)>> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Reverse(((u128::from(total) << 20) / u128::from(w) / 2, i as u32)))
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    while (out.len() as u64) < total {
        let Some(Reverse((due, i))) = heap.pop() else {
            break;
        };
        out.push(i);
        let stride = (u128::from(total) << 20) / u128::from(weights[i as usize]);
        heap.push(Reverse((due + stride, i)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{all, backends};
    use super::*;

    #[test]
    fn nginx_order_for_5_1_1() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        assert_eq!(rr.schedule(), &[0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn equal_weights_are_plain_rotation() {
        let rr = RoundRobin::new(&[3, 3, 3]);
        assert_eq!(rr.schedule().len(), 3);
        let b = backends(&[3, 3, 3]);
        let picks: Vec<_> = (0..6).map(|_| rr.select(&b, all).unwrap()).collect();
        for i in 0..3 {
            assert_eq!(picks.iter().filter(|&&p| p == i).count(), 2);
        }
    }

    #[test]
    fn proportions_exact_over_a_period_both_builders() {
        let weights = [7u32, 3, 1, 4];
        for schedule in [nginx_schedule(&weights, 15), stride_schedule(&weights, 15)] {
            for (i, &w) in weights.iter().enumerate() {
                assert_eq!(
                    schedule.iter().filter(|&&x| x == i as u32).count(),
                    w as usize
                );
            }
        }
    }

    #[test]
    fn skips_unusable() {
        let b = backends(&[1, 1, 1]);
        let rr = RoundRobin::new(&[1, 1, 1]);
        for _ in 0..10 {
            assert_ne!(rr.select(&b, |x| x.address != b[1].address), Some(1));
        }
        assert_eq!(rr.select(&b, |_| false), None);
    }

    #[test]
    fn large_weights_are_scaled() {
        let weights = vec![10_000u32; 1000];
        let rr = RoundRobin::new(&weights);
        assert_eq!(
            rr.schedule().len(),
            1000,
            "equal weights reduce by their divisor"
        );
        let mut w: Vec<u32> = (1..=2000).collect();
        w[0] = 10_000;
        let rr = RoundRobin::new(&w);
        assert!(rr.schedule().len() as u64 <= MAX_SCHEDULE + 2000);
    }
}
