//! streamgate-tests: the loopback harness (origins on 127.0.0.1:0, the daemon in-process or as
//! a process, real clients, a typed config builder) used by the end-to-end tests in `tests/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod client;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod h2;
pub mod nats;
pub mod origin;
pub mod presets;
pub mod raw_origin;
pub mod tls;
pub mod wire;

pub use client::{
    Answer, answers, get, get_from, get_tls, http1, http2, raw_exchange, send, stall_then_drain,
};
pub use config::{
    Access, AccessLog, Admin, Cache, Config, Failover, Geo, Hash, Health, Limits, Listener,
    Outlier, Region, Retry, Service, Snapshots, Timeouts, Upstream,
};
pub use daemon::{
    DaemonProcess, TestDaemon, admin_call, eventually, fixture, json_lines, metric,
    with_test_admin, write_config,
};
pub use dns::{DnsAnswer, DnsServer};
pub use origin::Origin;
pub use raw_origin::RawOrigin;
