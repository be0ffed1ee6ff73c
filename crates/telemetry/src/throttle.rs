//! At most once in a while: for warnings that a flood could repeat thousands of times a second
//! (out of descriptors, refused tokens, forged fleet messages), and for remedies that must not
//! run on every failure (closing the idle pools).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When something last went ahead. `const`, so a `static` can hold one.
#[derive(Debug, Default)]
pub struct Throttle(Mutex<Option<Instant>>);

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle(Mutex::new(None))
    }

    /// True the first time, then at most once per `every` (a monotonic clock; of callers at
    /// the same moment, one).
    pub fn ready(&self, every: Duration) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.saturating_duration_since(t) < every) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_goes_and_the_next_waits_its_turn() {
        let t = Throttle::new();
        assert!(t.ready(Duration::from_secs(3600)), "the first");
        assert!(!t.ready(Duration::from_secs(3600)), "again at once");
        assert!(t.ready(Duration::ZERO), "once its time has passed");
    }
}
