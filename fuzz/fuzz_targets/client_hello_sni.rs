//! The first bytes of a TLS passthrough connection: never panic; a server name found is text;
//! read as it arrives (in pieces the first byte sizes), the answer is the whole buffer's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamgate_proxy::sni::{HelloReader, Sni, client_hello_sni};

fuzz_target!(|data: &[u8]| {
    let whole = client_hello_sni(data);
    if let Sni::Found(Some(name)) = &whole {
        assert!(!name.is_empty());
    }
    let step = usize::from(data.first().copied().unwrap_or(1).max(1));
    let mut reader = HelloReader::default();
    let mut end = 0;
    let mut first = Sni::Incomplete;
    while end < data.len() {
        end = (end + step).min(data.len());
        first = reader.advance(&data[..end]);
        if first != Sni::Incomplete {
            break;
        }
    }
    if data.is_empty() {
        first = reader.advance(data);
    }
    assert_eq!(first, whole);
});
