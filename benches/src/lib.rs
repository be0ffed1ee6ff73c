//! What the benchmark binaries share: starting the real daemon on free loopback ports and
//! reading a process's memory, CPU and descriptors from /proc.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod daemon;
pub mod procfs;
pub mod rules;
