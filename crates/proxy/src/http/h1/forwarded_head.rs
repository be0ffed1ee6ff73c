//! A backend's answer head as an HTTP/1.1 client gets it, written the two ways the proxy can
//! write it: from the field map (hop-by-hop fields stripped, Via appended) and from the
//! backend's own bytes ([`RawFields`]). For the `forwarded_head` fuzz target (fuzz/) and the
//! seed test below, which runs on every `cargo test`.
//!
//! Input: a backend's answer head. Whenever the head is taken as raw fields, the map path must
//! take it too, and both must give the client the same fields (per name, in order; Via as one
//! list of hops), the same framing and the same end of connection.

use bytes::BytesMut;
use http::{HeaderMap, Method};

use super::encode::{BodySize, Encoded, encode_head};
use crate::http::headers::{append_via, strip_hop_by_hop};
use crate::upstream::codec::{
    ResponseFraming, ResponseHead, parse_response_head, response_framing,
};

/// The fields a client is sent: lower-case name, then each value in order. Via is one entry
/// per hop, Content-Length is its number, and the Date this proxy writes when the backend sent
/// none is left out (its value is the clock's).
type Fields = Vec<(String, Vec<Vec<u8>>)>;

/// Writes the head as the HTTP/1.1 server does, and reads back what the client gets.
fn client_gets(head: &ResponseHead, map: &HeaderMap) -> (Fields, Encoded) {
    let framing = response_framing(&Method::GET, head).expect("framing of a taken head");
    let size = match framing {
        ResponseFraming::Length(n) => BodySize::Known(n),
        ResponseFraming::None => BodySize::Empty,
        ResponseFraming::Chunked | ResponseFraming::UntilClose => BodySize::Unknown,
    };
    let mut out = Vec::new();
    let encoded = encode_head(
        &mut out,
        head.status,
        head.raw.as_ref(),
        map,
        size,
        false,
        false,
    )
    .expect("a taken head encodes");
    let mut fields = [httparse::EMPTY_HEADER; 160];
    let mut resp = httparse::Response::new(&mut fields);
    assert!(
        matches!(resp.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()),
        "the written head parses"
    );
    let backend_date =
        map.contains_key(http::header::DATE) || head.raw.as_ref().is_some_and(|r| r.has_date);
    let mut got: Fields = Vec::new();
    for h in resp.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name == "date" && !backend_date {
            continue;
        }
        let values: Vec<Vec<u8>> = if name == "via" {
            h.value
                .split(|&b| b == b',')
                .map(|hop| hop.trim_ascii().to_vec())
                .filter(|hop| !hop.is_empty())
                .collect()
        } else if name == "content-length" {
            // The map path forwards the backend's digits ("01024"), the raw path writes the
            // length it reads: the same number.
            let n: u64 = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.parse().ok())
                .expect("a length");
            vec![n.to_string().into_bytes()]
        } else {
            vec![h.value.to_vec()]
        };
        match got.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.extend(values),
            None => got.push((name, values)),
        }
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    (got, encoded)
}

/// Checks `data` as a backend's answer head; panics only if a property fails. Returns whether
/// the head was taken as raw fields.
pub fn raw_and_map_agree(data: &[u8]) -> bool {
    let mut spans = Vec::new();
    let Ok(Some(raw)) = parse_response_head(&mut BytesMut::from(data), Some(&mut spans)) else {
        return false;
    };
    if raw.raw.is_none() {
        return false;
    }
    let mut mapped = parse_response_head(&mut BytesMut::from(data), None)
        .expect("the map path takes what the raw path takes")
        .expect("the same bytes are a whole head");
    assert!(mapped.raw.is_none());
    assert_eq!(raw.status, mapped.status);
    assert_eq!(raw.keep_alive, mapped.keep_alive, "keep-alive");
    assert_eq!(
        response_framing(&Method::GET, &raw),
        response_framing(&Method::GET, &mapped),
        "framing"
    );
    // What the origin path does to each before the head is written.
    strip_hop_by_hop(&mut mapped.headers);
    let mut map = std::mem::take(&mut mapped.headers);
    append_via(&mut map, mapped.version);
    assert!(raw.headers.is_empty(), "raw fields leave the map empty");
    let (from_map, map_encoded) = client_gets(&mapped, &map);
    let (from_raw, raw_encoded) = client_gets(&raw, &raw.headers);
    assert_eq!(from_raw, from_map, "fields");
    assert_eq!(raw_encoded, map_encoded, "framing and close");
    true
}

#[cfg(test)]
mod tests {
    use super::raw_and_map_agree;

    /// Heads and whether they go raw; each also checked with every single-byte change.
    const HEADS: [(&str, bool); 19] = [
        (
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 1024\r\nLast-Modified: Mon, 30 Nov 2026 00:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"1\"\r\nAccept-Ranges: bytes\r\n\r\n",
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n",
            true,
        ),
        (
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            true,
        ),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
            true,
        ),
        ("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", true),
        ("HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\n", true),
        (
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nVia: 1.1 cdn\r\nSet-Cookie: b=2\r\nVia: 1.0 edge, 1.1 other\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nX-A: caf\u{e9}\r\ncontent-length: 1\r\n\r\n",
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nConnection: x-secret\r\nx-secret: 1\r\ncontent-length: 1\r\n\r\n",
            false,
        ),
        ("HTTP/1.1 200 OK\r\ncontent-length: 1, 1\r\n\r\n", false),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n",
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nTrailer: x-sum\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
        ),
        ("HTTP/1.1 304 Not Modified\r\nETag: \"1\"\r\n\r\n", false),
        (
            "HTTP/1.1 200 OK\r\nConnection: close\r\nClose: 1\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 01024\r\nConnection: Close\r\n\r\n",
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            false,
        ),
    ];

    #[test]
    fn heads_go_raw_only_when_ordinary_and_agree_with_the_map() {
        for (head, raw) in HEADS {
            assert_eq!(raw_and_map_agree(head.as_bytes()), raw, "{head:?}");
            every_single_byte_change(head.as_bytes());
        }
    }

    /// Checks every single-byte change of `head` (to a byte that matters in a head).
    fn every_single_byte_change(head: &[u8]) {
        for i in 0..head.len() {
            for b in [0u8, b'\r', b'\n', b' ', b',', b':', b'0', b'a', b'A', 0xff] {
                let mut s = head.to_vec();
                s[i] = b;
                raw_and_map_agree(&s);
            }
        }
    }

    /// The fuzz target's seeds, with every single-byte change.
    #[test]
    fn fuzz_seeds_and_their_corruptions() {
        let seeds: [&[u8]; 3] = [
            include_bytes!("../../../../../fuzz/seeds/forwarded_head/nginx"),
            include_bytes!("../../../../../fuzz/seeds/forwarded_head/chunked"),
            include_bytes!("../../../../../fuzz/seeds/forwarded_head/close"),
        ];
        for seed in seeds {
            raw_and_map_agree(seed);
            every_single_byte_change(seed);
        }
    }

    #[test]
    fn a_head_with_many_fields_takes_the_map_path() {
        let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n");
        for i in 0..23 {
            head.push_str(&format!("x-{i}: {i}\r\n"));
        }
        assert!(raw_and_map_agree(format!("{head}\r\n").as_bytes()));
        head.push_str("x-last: 1\r\n");
        assert!(!raw_and_map_agree(format!("{head}\r\n").as_bytes()));
    }
}
