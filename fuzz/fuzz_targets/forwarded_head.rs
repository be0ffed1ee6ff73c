//! Backend answer heads as an HTTP/1.1 client gets them, written from the backend's own bytes
//! and from the field map: see `streamgate_proxy::http::h1::forwarded_head` for the properties
//! checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    streamgate_proxy::http::h1::forwarded_head::raw_and_map_agree(data);
});
