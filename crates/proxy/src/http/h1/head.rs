//! Reading a client's HTTP/1.1 request head, and deciding whether our server takes it.
//!
//! Ours are the plain requests that make up most traffic: HTTP/1.1, origin-form, no body, no
//! upgrade, no `Expect`. Anything else, including every malformed or oversized head, goes to
//! hyper's server with the bytes read so far, so that its answers (400, 414, 431, bodies,
//! 100-continue, upgrades, HTTP/1.0) stay exactly what they were. httparse here runs in its
//! strict default mode: what it accepts, hyper's parser accepts the same way.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};

use crate::http::request::ClientRequest;
use crate::upstream::codec::known_name;

/// Most fields our server parses; a request with more goes to hyper (whose limit is the
/// listener's `max_headers`). hyper keeps the same 100 on the stack.
pub(super) const MAX_FIELDS: usize = 100;

/// What the front of the read buffer holds. Returned once per request and taken apart at once:
/// boxing the request would be an allocation per request for nothing.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Head {
    /// A whole request of ours, taken out of the buffer. `close`: the client asked to close
    /// the connection after it.
    Ours { req: ClientRequest, close: bool },
    /// Not a whole head yet.
    Partial,
    /// Something else: hyper serves the connection from the start of the buffer.
    NotOurs,
}

/// Whether `buf` may hold a whole head: an empty line after the part already looked at
/// (`scanned` bytes). A head trickled in byte by byte is then parsed once, not once per read.
/// A buffer that starts with an empty line is not ours (hyper skips such lines).
pub(super) fn may_be_whole(buf: &[u8], scanned: usize) -> bool {
    // The usual read: one whole head, ending the buffer.
    if buf.ends_with(b"\n\r\n") || buf.ends_with(b"\n\n") {
        return true;
    }
    if matches!(buf.first(), Some(b'\r' | b'\n')) {
        return true;
    }
    // The end of a head: a line feed, then an empty line ("\n\n" or "\n\r\n"), which may
    // straddle the bytes already looked at.
    let from = scanned.saturating_sub(2).min(buf.len());
    buf[from..].iter().enumerate().any(|(i, &b)| {
        let rest = &buf[from + i + 1..];
        b == b'\n' && (rest.starts_with(b"\n") || rest.starts_with(b"\r\n"))
    })
}

/// Reads the head at the front of `buf`. `max_headers` and `max_bytes` are the listener's
/// limits: a head over them is not ours (hyper answers 431). The request's fields go into
/// `fields` (taken; it must be empty), an emptied map kept from the last answer, as hyper's server does: sized
/// for a whole answer, it takes the forwarding fields the proxy adds without growing (a map
/// sized for the request alone grew on those: 1 100 more instructions a proxied request).
pub(super) fn read_head(
    buf: &mut BytesMut,
    max_headers: usize,
    max_bytes: usize,
    fields: &mut HeaderMap,
) -> Head {
    // Uninitialised, as the upstream codec's: httparse writes before anything reads.
    let mut parsed = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    if matches!(buf.first(), Some(b'\r' | b'\n')) {
        return Head::NotOurs;
    }
    let mut req = httparse::Request::new(&mut []);
    let limit = max_headers.min(MAX_FIELDS);
    let len = match req.parse_with_uninit_headers(buf, &mut parsed[..limit]) {
        Ok(httparse::Status::Complete(len)) if len <= max_bytes => len,
        Ok(httparse::Status::Partial) if buf.len() < max_bytes => return Head::Partial,
        _ => return Head::NotOurs,
    };
    if req.version != Some(1) {
        return Head::NotOurs;
    }
    let Some(method) = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
    else {
        return Head::NotOurs;
    };
    let path = req.path.unwrap_or_default();
    if method == Method::CONNECT || !path.starts_with('/') {
        return Head::NotOurs;
    }
    // Where each part sits, so that the head leaves the buffer once and every value shares it.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    let path_span = (at(path.as_bytes()), path.len());
    let mut spans = smallvec::SmallVec::<[(usize, usize, usize, usize); 32]>::new();
    for f in req.headers.iter() {
        spans.push((
            at(f.name.as_bytes()),
            f.name.len(),
            at(f.value),
            f.value.len(),
        ));
    }
    let head = buf.split_to(len).freeze();
    match build(&head, method, path_span, &spans, fields) {
        Some((req, close)) => Head::Ours { req, close },
        None => {
            // Put the head back in front: hyper reads it from the start.
            let mut back = BytesMut::with_capacity(head.len() + buf.len());
            back.extend_from_slice(&head);
            back.extend_from_slice(buf);
            *buf = back;
            Head::NotOurs
        }
    }
}

/// The request, or `None` when a field makes it hyper's.
fn build(
    head: &Bytes,
    method: Method,
    (p, pl): (usize, usize),
    spans: &[(usize, usize, usize, usize)],
    fields: &mut HeaderMap,
) -> Option<(ClientRequest, bool)> {
    let uri = Uri::from_maybe_shared(head.slice(p..p + pl)).ok()?;
    // Emptied by the caller when its answer went out (clearing walks the whole index).
    let mut headers = std::mem::take(fields);
    debug_assert!(headers.is_empty());
    headers.reserve(spans.len());
    let mut close = false;
    let mut length_seen = false;
    for &(n, nl, v, vl) in spans {
        let raw = &head[n..n + nl];
        let name = match known_name(raw) {
            Some(name) => name,
            None => HeaderName::from_bytes(raw).ok()?,
        };
        let value = &head[v..v + vl];
        match ours(&name, value) {
            Field::Ours => {}
            Field::NotOurs => return None,
            Field::Close => close = true,
            Field::EmptyBody if !length_seen => length_seen = true,
            Field::EmptyBody => return None,
        }
        headers.append(
            name,
            HeaderValue::from_maybe_shared(head.slice(v..v + vl)).ok()?,
        );
    }
    let mut req = Request::new(None);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some((req, close))
}

#[derive(Debug, PartialEq, Eq)]
enum Field {
    Ours,
    NotOurs,
    /// `Connection: close`.
    Close,
    /// `Content-Length: 0`.
    EmptyBody,
}

/// What one field says about whether the request is ours. A body (`Content-Length` other
/// than 0, any `Transfer-Encoding`), `Expect`, an upgrade, and `Connection` tokens other than
/// `keep-alive` and `close` (which name fields hyper treats specially) are hyper's.
fn ours(name: &HeaderName, value: &[u8]) -> Field {
    match *name {
        header::CONTENT_LENGTH if value == b"0" => Field::EmptyBody,
        header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::EXPECT | header::UPGRADE => {
            Field::NotOurs
        }
        header::CONNECTION if value.eq_ignore_ascii_case(b"close") => Field::Close,
        header::CONNECTION if value.eq_ignore_ascii_case(b"keep-alive") => Field::Ours,
        header::CONNECTION => Field::NotOurs,
        _ => Field::Ours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &str) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let head = read_head(&mut buf, 100, 64 * 1024, &mut HeaderMap::new());
        (head, buf)
    }

    #[test]
    fn which_requests_are_ours() {
        let ours = [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "HEAD /x?y=1 HTTP/1.1\r\nhost: a\r\nAccept: */*\r\n\r\n",
            "DELETE /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "PURGE /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nX-Odd: \r\n\r\n",
            // A bare LF ends a line for httparse, so for hyper too (RFC 9112 §2.2 allows it).
            "GET /x HTTP/1.1\nHost: a\r\n\r\n",
        ];
        for raw in ours {
            assert!(matches!(read(raw).0, Head::Ours { .. }), "{raw:?}");
        }
        let not_ours = [
            // HTTP/2's preface, HTTP/1.0, forms other than origin-form, CONNECT.
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            // Bodies, expectations, upgrades, and what decides framing twice.
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n",
            "PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-secret\r\n\r\n",
            // Malformed: hyper answers 400.
            "GET /x HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "G@T /x HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for raw in not_ours {
            let (head, buf) = read(raw);
            assert!(matches!(head, Head::NotOurs), "{raw:?}");
            assert_eq!(&buf[..], raw.as_bytes(), "hyper reads it all: {raw:?}");
        }
    }

    #[test]
    fn a_request_is_parsed_as_hyper_would_and_the_next_stays_in_the_buffer() {
        let (head, buf) = read(
            "GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next",
        );
        let Head::Ours { req, close } = head else {
            panic!("ours");
        };
        assert!(!close);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), "/a/b");
        assert_eq!(req.uri().query(), Some("c=d"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "example.com");
        let two: Vec<_> = req.headers().get_all("x-two").iter().collect();
        assert_eq!(two, ["1", "2"]);
        assert!(req.body().is_none());
        assert_eq!(&buf[..], b"GET /next");
        assert!(matches!(
            read("GET /x HTTP/1.1\r\nHost: a\r\nconnection: close\r\n\r\n").0,
            Head::Ours { close: true, .. }
        ));
    }

    #[test]
    fn heads_over_the_limits_are_hyper_s_to_refuse() {
        let many: String = (0..20).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        let mut buf = BytesMut::from(raw.as_str());
        assert!(matches!(
            read_head(&mut buf, 10, 64 * 1024, &mut HeaderMap::new()),
            Head::NotOurs
        ));
        let mut buf = BytesMut::from(raw.as_str());
        assert!(matches!(
            read_head(&mut buf, 100, 64, &mut HeaderMap::new()),
            Head::NotOurs
        ));
        // Partial below the byte limit waits for more; at the limit it is hyper's.
        let mut buf = BytesMut::from("GET / HTTP/1.1\r\nHost: a\r\n");
        assert!(matches!(
            read_head(&mut buf, 100, 1024, &mut HeaderMap::new()),
            Head::Partial
        ));
        assert!(matches!(
            read_head(&mut buf, 100, 16, &mut HeaderMap::new()),
            Head::NotOurs
        ));
    }

    #[test]
    fn a_trickled_head_is_parsed_once_it_may_be_whole() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut whole_at = Vec::new();
        for len in 1..=raw.len() {
            if may_be_whole(&raw[..len], len - 1) {
                whole_at.push(len);
            }
        }
        assert_eq!(whole_at, [raw.len()], "only the last byte completes it");
        assert!(may_be_whole(b"GET / HTTP/1.1\nHost: a\n\n", 20));
        assert!(!may_be_whole(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        // Leading empty lines are hyper's: looked at at once, and not ours.
        assert!(may_be_whole(b"\r\nGET", 0));
        let mut buf = BytesMut::from("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(
            read_head(&mut buf, 100, 1024, &mut HeaderMap::new()),
            Head::NotOurs
        ));
    }
}
