//! The first bytes of a TLS passthrough connection: never panic; a server name found is text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamgate_proxy::sni::{Sni, client_hello_sni};

fuzz_target!(|data: &[u8]| {
    if let Sni::Found(Some(name)) = client_hello_sni(data) {
        assert!(!name.is_empty());
    }
});
