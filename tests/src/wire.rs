//! HTTP/1.1 framing read by the test origins and clients: where a message's body ends.

/// Whether a message head says its body is chunked.
pub fn is_chunked(head: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    })
}

/// Where a chunked body that starts `buf` ends, and its length: `None` until its last chunk
/// (and the empty line after any trailer fields) is in.
pub fn chunked_end(buf: &[u8]) -> Option<(usize, usize)> {
    let (mut at, mut body) = (0, 0);
    loop {
        let line = buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&buf[at..at + line]).ok()?;
        let size = size.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).expect("a chunk size");
        at += line + 2;
        if size == 0 {
            // Trailer fields, if any, then an empty line.
            let rest = &buf[at..];
            if rest.starts_with(b"\r\n") {
                return Some((at + 2, body));
            }
            let end = rest.windows(4).position(|w| w == b"\r\n\r\n")?;
            return Some((at + end + 4, body));
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
        body += size;
    }
}

/// The Content-Length of a message head (any case), 0 without one; a malformed value is a bug
/// in what sent it, and panics.
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("content-length").then(|| {
                value
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("malformed content-length in {head:?}"))
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes read so far, and where their chunked body ends (wire bytes, body bytes).
    type Case = (&'static [u8], Option<(usize, usize)>);

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let cases: &[Case] = &[
            (b"", None),
            (b"3\r\nab", None),
            (b"3\r\nabc\r\n", None),
            (b"3\r\nabc\r\n0\r\n", None),
            (b"3\r\nabc\r\n0\r\n\r\n", Some((13, 3))),
            (b"3;ext=1\r\nabc\r\n0\r\n\r\nGET", Some((19, 3))),
            (b"0\r\nx-sum: 1\r\n", None),
            (b"0\r\nx-sum: 1\r\n\r\n", Some((15, 0))),
            (b"a\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n", Some((26, 11))),
        ];
        for (buf, want) in cases {
            assert_eq!(
                chunked_end(buf),
                *want,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn content_length_is_read_in_any_case() {
        assert_eq!(content_length("POST / HTTP/1.1\r\nContent-Length: 12"), 12);
        assert_eq!(
            content_length("http/1.1 200 ok\r\ncontent-length:7\r\nx: y"),
            7
        );
        assert_eq!(content_length("GET / HTTP/1.1\r\nHost: a"), 0);
        assert!(is_chunked("POST / HTTP/1.1\r\nTransfer-Encoding: chunked"));
        assert!(!is_chunked("POST / HTTP/1.1\r\nContent-Length: 1"));
    }
}
