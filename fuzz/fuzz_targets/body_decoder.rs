//! Response bodies from HTTP/1.1 backends (chunked, Content-Length, until close) read by the
//! upstream body decoder: see `streamgate_proxy::upstream::fuzzing` for the input's shape and
//! the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| streamgate_proxy::upstream::fuzzing::decode_body(data));
