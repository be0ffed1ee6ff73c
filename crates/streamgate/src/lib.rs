//! streamgate: the daemon's wiring, shared by the binary and the end-to-end tests.

pub mod cli;
pub mod daemon;
pub mod demo;

pub use daemon::Daemon;
