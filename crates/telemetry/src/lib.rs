//! streamgate-telemetry: every metric StreamGate exports, in one place, and the log setup.

pub mod access_log;
pub mod logging;
mod metrics;
mod throttle;

pub use metrics::{
    CODE_CLASSES, DNS_DROPPED, DNS_RESULTS, DataType, FLEET_RESULTS, LATENCY_BUCKETS, Metrics,
    code_class_index,
};
pub use prometheus;
pub use throttle::Throttle;
