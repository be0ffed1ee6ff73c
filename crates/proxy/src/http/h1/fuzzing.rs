//! Client request heads read by our HTTP/1.1 server, for the `request_head` fuzz target (fuzz/)
//! and the seed test below, which runs on every `cargo test`.
//!
//! Input: byte 0 picks the size of the reads (1-256 bytes); the rest is what the client sends.
//! Besides "no panic", the checks: a head not taken leaves every byte for hyper; a head taken
//! is plain (HTTP/1.1, origin-form, no body, no upgrade, no `Expect`) and only its own bytes
//! leave the buffer; and the request taken does not depend on how the bytes were split into
//! reads.

use bytes::BytesMut;
use http::{HeaderMap, Method, header};

use super::head::{Head, may_be_whole, read_head};

/// What reading ended with: the request's method, target and fields, and the bytes left.
type Taken = Option<(String, String, Vec<(String, Vec<u8>)>, Vec<u8>)>;

/// Feeds `input` in reads of `read` bytes as the connection loop does.
fn take(input: &[u8], read: usize) -> Taken {
    let mut buf = BytesMut::new();
    let mut scanned = 0;
    let mut fields = HeaderMap::new();
    for chunk in input.chunks(read.max(1)) {
        buf.extend_from_slice(chunk);
        if !may_be_whole(&buf, scanned) && buf.len() < 64 * 1024 {
            scanned = buf.len();
            continue;
        }
        let before = buf.clone();
        match read_head(&mut buf, 100, 64 * 1024, &mut fields) {
            Head::Partial => assert_eq!(buf, before, "a partial head stays"),
            Head::NotOurs => {
                assert_eq!(buf, before, "hyper reads every byte");
                return None;
            }
            Head::Ours { req, .. } => {
                let used = before.len() - buf.len();
                assert!(before[..used].ends_with(b"\n"), "a head ends a line");
                assert_eq!(&before[used..], &buf[..], "only the head's bytes are taken");
                assert_eq!(req.version(), http::Version::HTTP_11);
                assert_ne!(req.method(), Method::CONNECT);
                assert!(req.uri().path().starts_with('/'));
                assert!(req.uri().authority().is_none());
                let h = req.headers();
                for name in [header::TRANSFER_ENCODING, header::EXPECT, header::UPGRADE] {
                    assert!(!h.contains_key(&name), "{name} is hyper's");
                }
                assert!(h.get_all(header::CONTENT_LENGTH).iter().all(|v| v == "0"));
                assert!(h.get_all(header::CONTENT_LENGTH).iter().count() <= 1);
                let fields = h
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect();
                let rest = input[used..].to_vec();
                return Some((
                    req.method().to_string(),
                    req.uri().to_string(),
                    fields,
                    rest,
                ));
            }
        }
        scanned = buf.len();
    }
    None
}

/// Reads the head in `data`; panics only if a property fails.
pub fn read_request_head(data: &[u8]) {
    let Some((&read, input)) = data.split_first() else {
        return;
    };
    let split = take(input, usize::from(read) + 1);
    let whole = take(input, input.len());
    // A head cut into reads is taken as it is whole, unless it was not complete in the input
    // (then both wait or hand over alike, and only what was taken compares).
    if let (Some(a), Some(b)) = (&split, &whole) {
        assert_eq!(a, b, "depends on the reads");
    }
    assert_eq!(split.is_some(), whole.is_some(), "depends on the reads");
}

#[cfg(test)]
mod tests {
    use super::read_request_head;

    const SEEDS: [&[u8]; 3] = [
        include_bytes!("../../../../../fuzz/seeds/request_head/pipelined"),
        include_bytes!("../../../../../fuzz/seeds/request_head/body"),
        include_bytes!("../../../../../fuzz/seeds/request_head/close"),
    ];

    /// Every seed, every truncation and every single-byte change of it, each in reads of 1, 7
    /// and 256 bytes.
    #[test]
    fn seeds_and_their_corruptions() {
        for seed in SEEDS {
            for read in [0u8, 6, 255] {
                let mut input = vec![read];
                input.extend_from_slice(seed);
                read_request_head(&input);
                for cut in 1..input.len() {
                    read_request_head(&input[..cut]);
                }
                for i in 1..input.len() {
                    for b in [0u8, b'\r', b'\n', b' ', b':', b'0', b'/', 0xff] {
                        let mut s = input.clone();
                        s[i] = b;
                        read_request_head(&s);
                    }
                }
            }
        }
    }
}
