//! Request coalescing: while one request fetches or revalidates a key at the origin, later
//! requests for the same key wait for it (up to the service's lock timeout) and then act on how
//! it went: look again after a store, go to the origin on their own when the response may not
//! be stored (queueing behind each other would only serialise uncacheable traffic), or serve a
//! stale copy when the origin failed and the copy allows it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamgate_telemetry::prometheus::IntGauge;
use tokio::sync::watch;

/// Keys being fetched right now.
#[derive(Debug, Default)]
pub struct Fills {
    inflight: Mutex<HashMap<Arc<str>, watch::Receiver<Outcome>>>,
}

/// How a fill ended, as its followers learn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    /// Stored (or refreshed by a 304): look again.
    Stored,
    /// The response may not be stored (or was too large to): fetch on your own.
    Uncacheable,
    /// The origin could not be reached or its body broke.
    Failed,
}

/// What a request should do about a key it cannot serve from the cache.
#[derive(Debug)]
pub enum Role {
    /// Fetch it; the guard tells the waiters how it went when it is dropped.
    Leader(FillGuard),
    /// Someone else is fetching it: wait, then act on the outcome.
    Follower(watch::Receiver<Outcome>),
}

/// Held by the request fetching a key.
#[derive(Debug)]
pub struct FillGuard {
    fills: Arc<Fills>,
    key: Arc<str>,
    done: watch::Sender<Outcome>,
}

impl FillGuard {
    /// Records how the fill ended; the waiters learn it when the guard is dropped.
    pub fn set(&self, outcome: Outcome) {
        self.done.send_replace(outcome);
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.fills.inflight.lock() {
            m.remove(&self.key);
        }
        // A guard dropped without an outcome: the fill did not get to the end.
        self.done.send_if_modified(|o| {
            if *o == Outcome::Pending {
                *o = Outcome::Failed;
                true
            } else {
                false
            }
        });
    }
}

/// Joins the fill of `key`: the first caller leads, the others follow.
pub fn join(fills: &Arc<Fills>, key: &str) -> Role {
    let mut m = fills.inflight.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rx) = m.get(key) {
        return Role::Follower(rx.clone());
    }
    let key: Arc<str> = Arc::from(key);
    let (tx, rx) = watch::channel(Outcome::Pending);
    m.insert(key.clone(), rx);
    Role::Leader(FillGuard {
        fills: fills.clone(),
        key,
        done: tx,
    })
}

/// The fill of `key` in flight, to wait for, without leading one if there is none: for a
/// request whose own fetch stores nothing (a HEAD's answer has no body), so that the requests
/// behind it are not all told "not stored".
pub fn follow(fills: &Arc<Fills>, key: &str) -> Option<watch::Receiver<Outcome>> {
    let m = fills.inflight.lock().unwrap_or_else(|e| e.into_inner());
    m.get(key).cloned()
}

/// Waits until the leader is done or `timeout` passes: the fill's outcome, or `Pending` if
/// it timed out.
pub async fn wait(mut rx: watch::Receiver<Outcome>, timeout: Duration) -> Outcome {
    let ended = tokio::time::timeout(timeout, async {
        // The sender goes when the leader finishes: `changed` then fails.
        while rx.changed().await.is_ok() {}
    })
    .await;
    match ended {
        Ok(()) => match *rx.borrow() {
            Outcome::Pending => Outcome::Failed,
            o => o,
        },
        Err(_) => Outcome::Pending,
    }
}

/// Bytes held by a service's recordings in progress.
#[derive(Debug)]
pub struct FillBudget {
    used: AtomicU64,
    /// `cache_fill_bytes`, shared by every service.
    gauge: IntGauge,
    /// Fills of the service running without their client (`record::MAX_ORPHANS`).
    pub(crate) orphans: std::sync::atomic::AtomicUsize,
}

impl FillBudget {
    pub fn new(gauge: IntGauge) -> FillBudget {
        FillBudget {
            used: AtomicU64::new(0),
            gauge,
            orphans: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Takes `n` more bytes if that keeps the total within `limit`.
    pub(crate) fn try_take(&self, n: u64, limit: u64) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&t| t <= limit)
            })
            .is_ok();
        if taken {
            self.gauge.add(n as i64);
        }
        taken
    }

    pub(crate) fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.gauge.sub(n as i64);
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ServiceCache;
    use streamgate_telemetry::prometheus::IntCounter;

    fn cache() -> Arc<ServiceCache> {
        Arc::new(ServiceCache::new(
            crate::store::tests_support::spec(1 << 20),
            IntCounter::new("e", "e").unwrap(),
            crate::store::tests_support::edge(),
        ))
    }

    #[tokio::test]
    async fn one_leader_many_followers() {
        let cache = cache();
        let Role::Leader(guard) = join(&cache.fills, "k") else {
            panic!("first is leader")
        };
        let Role::Follower(rx) = join(&cache.fills, "k") else {
            panic!("second follows")
        };
        assert!(matches!(join(&cache.fills, "other"), Role::Leader(_)));
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5)));
        guard.set(Outcome::Stored);
        drop(guard);
        assert_eq!(waiter.await.unwrap(), Outcome::Stored);
        assert!(
            matches!(join(&cache.fills, "k"), Role::Leader(_)),
            "the key is free again"
        );
    }

    #[tokio::test]
    async fn outcomes_reach_followers() {
        let cache = cache();
        for (set, want) in [
            (None, Outcome::Failed),
            (Some(Outcome::Uncacheable), Outcome::Uncacheable),
            (Some(Outcome::Failed), Outcome::Failed),
        ] {
            let Role::Leader(g) = join(&cache.fills, "k") else {
                panic!()
            };
            let Role::Follower(rx) = join(&cache.fills, "k") else {
                panic!()
            };
            if let Some(o) = set {
                g.set(o);
            }
            drop(g);
            assert_eq!(wait(rx, Duration::from_secs(5)).await, want, "{set:?}");
        }
        let Role::Leader(_g) = join(&cache.fills, "slow") else {
            panic!()
        };
        let Role::Follower(rx) = join(&cache.fills, "slow") else {
            panic!()
        };
        assert_eq!(
            wait(rx, Duration::from_millis(20)).await,
            Outcome::Pending,
            "timed out"
        );
    }
}
