//! Response heads from backends read by the HTTP/1.1 upstream client: never panic, and a parsed
//! head consumes only bytes it was given.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use streamgate_proxy::upstream::codec::parse_response_head;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let before = buf.len();
    if let Ok(Some(_)) = parse_response_head(&mut buf, Some(&mut Vec::new())) {
        assert!(buf.len() <= before);
    }
});
