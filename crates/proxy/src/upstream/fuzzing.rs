//! The HTTP/1.1 backend body decoder on any input, for the `body_decoder` fuzz target (fuzz/)
//! and the seed test below, which runs on every `cargo test`.
//!
//! Input: byte 0 picks the framing (chunked, a Content-Length from bytes 1-2, or until close),
//! byte 3 the size of the reads (1-256 bytes); the rest is what the backend sends. Besides "no
//! panic", the checks: no more body comes out than went in, a Content-Length body is never
//! longer than announced and ends exactly at it, and the body does not depend on how the bytes
//! were split into reads.

use bytes::{Bytes, BytesMut};

use super::codec::{BodyDecoder, Decoded, ResponseFraming};

/// How one decoding ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    End,
    /// The input ran out first.
    Short,
    Error,
}

/// Feeds `input` in reads of `read` bytes: the body and how it ended.
fn decode(framing: ResponseFraming, input: &[u8], read: usize) -> (Vec<u8>, Outcome) {
    let mut decoder = BodyDecoder::new(framing);
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut reads = input.chunks(read.max(1));
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
            Ok(Decoded::Trailers(_)) | Ok(Decoded::End) => return (body, Outcome::End),
            Ok(Decoded::NeedMore) => match reads.next() {
                Some(r) => buf.extend_from_slice(r),
                None => return (body, Outcome::Short),
            },
            Err(_) => return (body, Outcome::Error),
        }
    }
}

/// Runs the decoder on `data`; panics only if a property fails.
pub fn decode_body(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let framing = match data[0] % 3 {
        0 => ResponseFraming::Chunked,
        1 => ResponseFraming::Length(u64::from(u16::from_be_bytes([data[1], data[2]]))),
        _ => ResponseFraming::UntilClose,
    };
    let read = usize::from(data[3]) + 1;
    let input = &data[4..];
    let (body, outcome) = decode(framing, input, read);
    assert!(body.len() <= input.len(), "more body than input");
    if let ResponseFraming::Length(n) = framing {
        assert!(body.len() as u64 <= n, "longer than Content-Length");
        assert_eq!(
            outcome == Outcome::End,
            body.len() as u64 == n,
            "{outcome:?}"
        );
    }
    // Reads of one size or another: the same body. (A chunk-size line is refused once 1 KiB of
    // it is buffered, which depends on the reads: only outcomes without an error compare.)
    let (whole, whole_outcome) = decode(framing, input, input.len());
    if outcome != Outcome::Error && whole_outcome != Outcome::Error {
        assert_eq!(
            Bytes::from(body),
            Bytes::from(whole),
            "depends on the reads"
        );
        assert_eq!(outcome, whole_outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::decode_body;

    const SEEDS: [&[u8]; 3] = [
        include_bytes!("../../../../fuzz/seeds/body_decoder/chunked"),
        include_bytes!("../../../../fuzz/seeds/body_decoder/trailers"),
        include_bytes!("../../../../fuzz/seeds/body_decoder/length"),
    ];

    /// Every seed, every truncation and every single-byte change of it, each in reads of 1, 7
    /// and 256 bytes.
    #[test]
    fn seeds_and_their_corruptions() {
        for seed in SEEDS {
            for read in [0u8, 6, 255] {
                let mut seed = seed.to_vec();
                seed[3] = read;
                decode_body(&seed);
                for cut in 4..seed.len() {
                    decode_body(&seed[..cut]);
                }
                for i in 4..seed.len() {
                    for b in [0u8, b'\r', b'\n', b';', b'0', b'f', b':', 0xff] {
                        let mut s = seed.clone();
                        s[i] = b;
                        decode_body(&s);
                    }
                }
            }
        }
    }
}
