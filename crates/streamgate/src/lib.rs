//! streamgate: the daemon's wiring, shared by the binary and the end-to-end tests.

mod admin_client;
pub mod cli;
pub mod daemon;
pub mod demo;
mod last_good;
mod snapshot_cli;

pub use daemon::Daemon;
