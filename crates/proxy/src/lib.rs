//! streamgate-proxy: the data plane. Accepts client connections, forwards HTTP/1.1 and HTTP/2
//! to the backends the routing table picks, and streams the answers back.

mod accept;
pub mod access;
mod coalesce;
mod copy;
pub mod descriptors;
mod drain;
mod h2_heads;
pub mod http;
pub mod io;
pub mod limits;
mod own_connections;
pub mod proxy_protocol;
pub mod sni;
mod spare_maps;
#[cfg(target_os = "linux")]
mod splice;
pub mod stream_resets;
pub mod tcp;
pub mod tunnel;
mod tunnel_slots;
pub mod upstream;

pub use http::{AccessLogHandle, FleetHandle, HttpProxy, ListenerLimits, Shared, bind, serve};
pub use upstream::Upstreams;
