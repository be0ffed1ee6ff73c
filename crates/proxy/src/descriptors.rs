//! The process's file-descriptor budget: how many client connections it can hold without a
//! backend connect, a splice pipe, a recovery point or a config reload failing with EMFILE.
//!
//! Without a cap, connections that clients open and leave idle are accepted until the
//! descriptor limit is reached; from then on every request on the connections already open
//! needs a backend socket it cannot get (502), recovery points cannot be written and a reload
//! cannot read its file. HAProxy derives `maxconn` from `ulimit -n` for this reason; StreamGate
//! does the same, and excess clients wait in the kernel's backlog as under a listener's
//! `max_connections`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use streamgate_telemetry::Throttle;
use tokio::sync::Semaphore;

/// Descriptors a client connection costs at most: its own socket and a backend's.
pub const PER_CONNECTION: u64 = 2;

/// Splice pipes may hold at most one descriptor per connection of the budget: a spliced L4
/// connection needs four (two pipes) on top of its sockets, so a quarter of the budget can
/// splice at once and the rest copies (HAProxy's default `maxpipes` is `maxconn / 4` for the
/// same reason).
pub const PIPE_SHARE: usize = 4;

/// Raises the soft `RLIMIT_NOFILE` to the hard one, as nginx's `worker_rlimit_nofile`, HAProxy
/// and Go programs do: the soft 1024 of a login shell would otherwise cap a PoP at a few hundred
/// clients. Returns the soft limit now in force.
pub fn raise_soft_limit() -> io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let (soft, hard) = (now.current, now.maximum);
    if soft.is_some() && soft != hard {
        let mut raised = now;
        raised.current = hard;
        setrlimit(Resource::Nofile, raised)?;
    }
    Ok(soft_limit())
}

/// The soft `RLIMIT_NOFILE` in force (`u64::MAX` when unlimited).
pub fn soft_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// Descriptors kept back from client connections, for what they do not account for: listeners,
/// the runtime's own, idle backend connections in the pools, health checks, DNS, the fleet
/// link, logs, recovery points and reloads. An eighth of the limit, at least 256 (the admin
/// and metrics listeners alone may hold 128), at most 4096.
pub fn reserve(limit: u64) -> u64 {
    (limit / 8).clamp(256, 4096)
}

/// The default `[runtime] max_connections` under a descriptor limit: what is left after the
/// reserve, at two descriptors a connection plus the pipes a quarter of them may splice with.
/// At least one.
pub fn connection_budget(limit: u64) -> usize {
    let spare = limit.saturating_sub(reserve(limit));
    // 2 per connection + 4 per spliced connection for a quarter of them = 3 per connection.
    let per = PER_CONNECTION + 4 / PIPE_SHARE as u64;
    usize::try_from(spare / per).unwrap_or(usize::MAX).max(1)
}

/// What client connections may take of the process's descriptors, shared by every listener
/// (the admin API has its own `admin.max_connections`).
pub struct Budget {
    /// `[runtime] max_connections` slots.
    pub connections: Arc<Semaphore>,
    /// Spliced L4 connections at once: a quarter of the connections.
    splicing: AtomicUsize,
    max_splicing: usize,
    /// Closes idle backend connections when the process is out of descriptors; how many.
    shed: Box<dyn Fn() -> usize + Send + Sync>,
    /// When `shed` last ran.
    last_shed: Throttle,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("free", &self.connections.available_permits())
            .field("splicing", &self.splicing)
            .finish_non_exhaustive()
    }
}

impl Budget {
    /// `shed` frees descriptors that no one is using (idle pooled backend connections) for an
    /// accept that found none left.
    pub fn new(
        max_connections: usize,
        shed: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Arc<Budget> {
        Arc::new(Budget {
            connections: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            splicing: AtomicUsize::new(0),
            max_splicing: (max_connections / PIPE_SHARE).max(1),
            shed: Box::new(shed),
            last_shed: Throttle::new(),
        })
    }

    /// Frees idle descriptors, at most once a second (an accept that keeps failing retries at
    /// once after a shed, and then backs off); how many.
    pub fn shed(&self) -> usize {
        if !self.last_shed.ready(Duration::from_secs(1)) {
            return 0;
        }
        (self.shed)()
    }

    /// Room for one more spliced connection's pipes, given back on drop; `None` when a quarter
    /// of the connections splice already (the connection is copied instead).
    pub fn pipes(self: &Arc<Budget>) -> Option<PipeRoom> {
        self.splicing
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < self.max_splicing).then_some(n + 1)
            })
            .ok()
            .map(|_| PipeRoom(self.clone()))
    }
}

/// One spliced connection's share of [`Budget`]'s pipes.
#[derive(Debug)]
pub struct PipeRoom(Arc<Budget>);

impl Drop for PipeRoom {
    fn drop(&mut self) {
        self.0.splicing.fetch_sub(1, Relaxed);
    }
}

/// Logs, at most once a minute, a connect that failed for want of this process's resources
/// (a flood can make thousands a second).
pub fn shortage_met(e: &dyn std::fmt::Display) {
    static LAST: Throttle = Throttle::new();
    if LAST.ready(MINUTE) {
        tracing::warn!(error = %e, "out of descriptors or socket memory: answering 503 without counting it against the backend (raise LimitNOFILE, lower runtime.max_connections)");
    }
}

/// How often a warning a flood could repeat is logged at most.
pub(crate) const MINUTE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_under_common_limits() {
        // (soft limit, connections): a login shell, systemd's default soft limit, the unit's
        // LimitNOFILE, the kernel's nr_open default, and limits too small to leave a reserve.
        let table: [(u64, usize); 8] = [
            (1024, 256),
            (4096, 1194),
            (65_536, 20_480),
            (1_048_576, 348_160),
            (512, 85),
            (256, 1),
            (64, 1),
            (0, 1),
        ];
        for (limit, want) in table {
            assert_eq!(connection_budget(limit), want, "limit {limit}");
            let used = want as u64 * 3 + reserve(limit);
            assert!(
                limit < 512 || used <= limit,
                "limit {limit}: the budget uses {used}"
            );
        }
    }

    #[test]
    fn a_quarter_of_the_connections_may_splice() {
        let b = Budget::new(9, || 0);
        let held: Vec<_> = (0..2).map(|_| b.pipes().expect("room")).collect();
        assert!(b.pipes().is_none(), "9 / 4 = 2 splice at once");
        drop(held);
        assert!(b.pipes().is_some(), "room given back");
        assert!(Budget::new(1, || 0).pipes().is_some(), "at least one");
    }

    #[test]
    fn idle_connections_are_shed_at_most_once_a_second() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let b = Budget::new(1, move || counted.fetch_add(1, Relaxed) + 5);
        assert_eq!(b.shed(), 5);
        assert_eq!(b.shed(), 0, "again at once: nothing");
        assert_eq!(calls.load(Relaxed), 1);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_soft_limit().unwrap();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, now.maximum);
        assert_eq!(Some(limit), now.current);
    }
}
