//! streamgate-balance: the routing table and everything that picks from it.
//!
//! [`table::RoutingTable`] is immutable once built and published through an `ArcSwap`
//! ([`table::TableHandle`]); per-backend live state ([`stats::BackendState`]) is atomics beside
//! it. Selection ([`pick`], [`select`]) takes no lock, allocates nothing and never awaits.

mod centroids;
pub mod departed;
pub mod geo;
pub mod pick;
pub mod resolved;
pub mod route;
pub mod select;
pub mod shortage;
pub mod stats;
pub mod table;

pub use geo::{GeoDb, GeoHandle, GeoInfo};
pub use pick::{ClientFacts, Pick};
pub use resolved::Resolved;
pub use route::NoRoute;
pub use stats::{BackendState, Lease, Outcome};
pub use table::{Backend, RouteReason, RoutingTable, Service, ServiceRegion, TableHandle};
