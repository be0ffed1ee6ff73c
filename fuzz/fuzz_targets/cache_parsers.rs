//! The edge cache's parsers (Cache-Control and targeted fields, Vary, Range, HTTP dates, Age,
//! Accept-Encoding, cache keys) on one input: never panic, and keep the properties
//! `streamgate_cache::fuzzing::parse_all` checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    streamgate_cache::fuzzing::parse_all(data);
});
