//! The admin API's JSON request bodies and the operator-state file (see
//! `streamgate_control::admin::requests::parse_all`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| streamgate_control::admin::requests::parse_all(data));
