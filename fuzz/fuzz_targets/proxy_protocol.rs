//! PROXY protocol v1/v2 headers from the network: never panic, and a header never claims more
//! bytes than were given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamgate_proxy::proxy_protocol::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Header { len, .. }) = parse(data) {
        assert!(len <= data.len());
    }
});
