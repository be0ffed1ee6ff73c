//! Backend health: active checks, passive outlier detection, region failover and retries.

use std::num::NonZeroU32;
use std::time::Duration;

use super::AllDownPolicy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that mark a down backend up.
    pub rise: NonZeroU32,
    /// Consecutive failures that mark an up backend down.
    pub fall: NonZeroU32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    Tcp,
    Http(HttpProbe),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    /// Inclusive range of statuses that count as healthy.
    pub expect_status: (u16, u16),
    pub body_contains: Option<String>,
}

/// Passive health: consecutive failures of real traffic eject a backend for a growing cool-down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// Consecutive failures of any kind (connect errors, 5xx) that eject; `None` disables
    /// passive ejection.
    pub consecutive_failures: Option<NonZeroU32>,
    /// Consecutive connect failures that eject; like nginx's max_fails = 1, a refused
    /// connection takes a backend out at once by default.
    pub consecutive_connect_failures: Option<NonZeroU32>,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// At most this share of a region's backends is out at once for failed answers (5xx,
    /// broken answers, timeouts), which a client can provoke; at least one. Refused
    /// connections, which a client cannot cause, eject whatever the share (Envoy's
    /// `max_ejection_percent`).
    pub max_ejection_percent: u8,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: NonZeroU32::new(5),
            consecutive_connect_failures: NonZeroU32::new(1),
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    /// A recovered region must stay healthy this long before it gets traffic back.
    pub hold_down: Duration,
    /// After the hold-down, its share grows linearly over this long (zero: all at once).
    pub ramp: Duration,
    pub when_all_down: AllDownPolicy,
    /// The latency policy keeps its current region unless another is faster by more than this.
    pub latency_tolerance: Duration,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            hold_down: Duration::from_secs(30),
            ramp: Duration::ZERO,
            when_all_down: AllDownPolicy::FailOpen,
            latency_tolerance: Duration::from_millis(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// Extra attempts for an idempotent request whose backend failed before answering.
    pub attempts: u32,
    /// Retries may add at most this fraction of requests (per second), on top of `min_per_second`.
    pub budget_ratio: f64,
    pub min_per_second: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 1,
            budget_ratio: 0.2,
            min_per_second: 10,
        }
    }
}
