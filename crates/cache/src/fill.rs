//! Request coalescing: while one request fetches a key from the origin, later misses for the same
//! key wait for it (up to the service's lock timeout) and are then served from the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::store::ServiceCache;

/// Keys being fetched right now.
#[derive(Debug, Default)]
pub struct Fills {
    inflight: Mutex<HashMap<Arc<str>, watch::Receiver<()>>>,
}

/// What a missing request should do.
#[derive(Debug)]
pub enum Role {
    /// Fetch it; the guard releases the waiters when dropped (stored or not).
    Leader(FillGuard),
    /// Someone else is fetching it: wait, then look again.
    Follower(watch::Receiver<()>),
}

/// Held by the request fetching a key.
#[derive(Debug)]
pub struct FillGuard {
    cache: Arc<ServiceCache>,
    key: Arc<str>,
    _done: watch::Sender<()>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.cache.fills.inflight.lock() {
            m.remove(&self.key);
        }
    }
}

/// Joins the fill of `key`: the first caller leads, the others follow.
pub fn join(cache: &Arc<ServiceCache>, key: &str) -> Role {
    let mut m = cache
        .fills
        .inflight
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(rx) = m.get(key) {
        return Role::Follower(rx.clone());
    }
    let key: Arc<str> = Arc::from(key);
    let (tx, rx) = watch::channel(());
    m.insert(key.clone(), rx);
    Role::Leader(FillGuard {
        cache: cache.clone(),
        key,
        _done: tx,
    })
}

/// Waits until the leader is done or `timeout` passes; true if the leader finished.
pub async fn wait(mut rx: watch::Receiver<()>, timeout: Duration) -> bool {
    // The sender is dropped when the leader finishes: `changed` then fails.
    matches!(
        tokio::time::timeout(timeout, rx.changed()).await,
        Ok(Err(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamgate_telemetry::prometheus::IntCounter;

    #[tokio::test]
    async fn one_leader_many_followers() {
        let spec = crate::store::tests_support::spec(1 << 20);
        let cache = Arc::new(ServiceCache::new(
            spec,
            IntCounter::new("e", "e").unwrap(),
            crate::store::tests_support::edge(),
        ));
        let Role::Leader(guard) = join(&cache, "k") else {
            panic!("first is leader")
        };
        let Role::Follower(rx) = join(&cache, "k") else {
            panic!("second follows")
        };
        assert!(matches!(join(&cache, "other"), Role::Leader(_)));
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5)));
        drop(guard);
        assert!(waiter.await.unwrap(), "released when the leader finished");
        assert!(
            matches!(join(&cache, "k"), Role::Leader(_)),
            "the key is free again"
        );
        let Role::Leader(_g) = join(&cache, "slow") else {
            panic!()
        };
        let Role::Follower(rx) = join(&cache, "slow") else {
            panic!()
        };
        assert!(!wait(rx, Duration::from_millis(20)).await, "timed out");
    }
}
