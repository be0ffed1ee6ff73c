//! Recovery points read back from disk: as whole files and as record payloads framed with good
//! checksums (see `streamgate_cache::fuzzing::recovery_point`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| streamgate_cache::fuzzing::recovery_point(data));
