//! Client request heads read by our HTTP/1.1 server (the plain requests it takes, and every
//! byte handed to hyper for the rest): see `streamgate_proxy::http::h1::fuzzing` for the input's
//! shape and the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| streamgate_proxy::http::h1::fuzzing::read_request_head(data));
