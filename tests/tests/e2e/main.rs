//! StreamGate's end-to-end tests: each module starts the real daemon (or its real listeners) on
//! 127.0.0.1 and talks to it over real sockets.
//!
//! They are one test binary, not one per file: with ~40 binaries every one linked the whole
//! daemon again, which took 3.7 GB of disk (19 GB with full debug info, enough to make a CI
//! machine's linker die of SIGBUS) and most of the build's link time. Run one file's tests
//! with `cargo test -p streamgate-tests --test e2e recovery::`.

mod access;
mod access_log;
mod admin_api;
mod backend_failures;
mod balancing;
mod cache;
mod cache_attacks;
mod cache_fill_pace;
mod cache_rfc;
mod cache_safety;
mod chaos;
mod check_errors;
mod cli;
mod compression;
mod consistent_hash;
mod dns;
mod dns_health;
mod early_answers;
mod failover;
mod first_hour;
mod fleet;
mod fleet_words;
mod global;
mod hardening;
mod http1_server;
mod http2_hardening;
mod https_backend_framing;
mod l4_tls;
mod limits;
mod loops;
mod observability;
mod protocols;
mod proxy;
mod proxy_protocol;
mod recovery;
mod recovery_chain;
mod region_choice;
mod reload;
mod request_buffering;
mod rules;
mod tunnels;
