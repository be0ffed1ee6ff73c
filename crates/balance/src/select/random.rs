//! Weighted random: a binary search over cumulative weights.

use super::{Select, first_usable};
use crate::table::Backend;

#[derive(Debug)]
pub struct Random {
    cumulative: Box<[u64]>,
}

impl Random {
    pub fn new(weights: &[u32]) -> Random {
        let mut sum = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                sum += u64::from(w.max(1));
                sum
            })
            .collect();
        Random { cumulative }
    }
}

impl Select for Random {
    #[inline]
    fn select<F: Fn(&Backend) -> bool>(&self, backends: &[Backend], usable: F) -> Option<usize> {
        let total = *self.cumulative.last()?;
        for _ in 0..4 {
            let r = fastrand::u64(..total);
            let i = self.cumulative.partition_point(|&c| c <= r);
            if i < backends.len() && usable(&backends[i]) {
                return Some(i);
            }
        }
        first_usable(backends, fastrand::usize(..backends.len()), &usable)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{all, backends};
    use super::*;

    #[test]
    fn follows_weights() {
        let b = backends(&[1, 3]);
        let r = Random::new(&[1, 3]);
        let n = 20_000;
        let second = (0..n).filter(|_| r.select(&b, all) == Some(1)).count();
        let share = second as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.03, "{share}");
        assert_eq!(r.select(&b, |x| x.address == b[0].address), Some(0));
        assert_eq!(r.select(&b, |_| false), None);
    }
}
