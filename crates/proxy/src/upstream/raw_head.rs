//! A backend's answer head forwarded as it came, without a field map: the fields an HTTP/1.1
//! client is sent are the backend's own bytes, less the ones that were for our hop only.
//!
//! Turning a head into a `HeaderMap` and back into bytes was about a fifth of the user-space
//! instructions of a proxied HTTP/1.1 request (callgrind, nginx origin: map appends, hashing,
//! value checks, the hop-by-hop and framing lookups, re-encoding). An answer that only passes
//! through (no cache, no compression, no response rules, an HTTP/1.1 client on our own server)
//! needs none of that. Anything out of the ordinary in the head (a field that Connection names,
//! TE, Trailer, Upgrade, an interim or bodiless status, lengths that are not plain digits,
//! codings other than chunked, many fields) is left to the map path, which decides and
//! refuses what it always has.

use bytes::Bytes;
use http::{StatusCode, Version};

use super::codec::{ResponseFraming, parse_length};

/// Most fields forwarded this way; a longer head takes the map path. nginx sends about ten.
const MAX_RAW_FIELDS: usize = 24;

/// The fields of a backend's answer head, kept as spans of its bytes.
#[derive(Debug)]
pub struct RawFields {
    head: Bytes,
    /// Name start, name length, value start, value length of each forwarded field, within
    /// `head` (a head is cut off near `codec::MAX_HEAD`, 64 KiB; one whose read crossed it
    /// with offsets past `u16` takes the map path). The vector is the backend connection's
    /// (see [`RawFields::into_spans`]): inline here, 192 bytes more were copied at each move
    /// of the answer, 1 700 instructions a request (callgrind).
    spans: Vec<[u16; 4]>,
    /// One of the forwarded fields is Date.
    pub has_date: bool,
    /// How the body ends: never `None` (bodiless answers take the map path).
    pub framing: ResponseFraming,
    /// The connection may carry another request after this answer.
    pub keep_alive: bool,
    /// The backend's HTTP version (for this hop's Via).
    pub version: Version,
}

/// What a field is to this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Forwarded as it is.
    Forward,
    /// Forwarded; the answer has a Date.
    Date,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Hop-by-hop, dropped: Keep-Alive, Proxy-Connection, Proxy-Authenticate,
    /// Proxy-Authorization.
    Drop,
    /// TE, Trailer, Upgrade, Close: the map path handles these.
    Unusual,
}

fn kind(name: &[u8]) -> Kind {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    // By length first: most names are compared with nothing.
    match name.len() {
        2 if is(b"te") => Kind::Unusual,
        4 if is(b"date") => Kind::Date,
        // A field named Close is hop-by-hop whenever `Connection: close` names it (RFC 9112
        // §9.6 reserves the name): the map path decides.
        5 if is(b"close") => Kind::Unusual,
        7 if is(b"trailer") || is(b"upgrade") => Kind::Unusual,
        10 if is(b"connection") => Kind::Connection,
        10 if is(b"keep-alive") => Kind::Drop,
        14 if is(b"content-length") => Kind::ContentLength,
        16 if is(b"proxy-connection") => Kind::Drop,
        17 if is(b"transfer-encoding") => Kind::TransferEncoding,
        18 if is(b"proxy-authenticate") => Kind::Drop,
        19 if is(b"proxy-authorization") => Kind::Drop,
        _ => Kind::Forward,
    }
}

/// What the head says besides its fields.
struct Facts {
    has_date: bool,
    framing: ResponseFraming,
    keep_alive: bool,
}

impl RawFields {
    /// The head's forwarded fields, or `None` when the answer is for the map path. `spans`:
    /// name start, name length, value start, value length of every field, within `head`.
    /// `reuse`: a vector for the forwarded ones, taken when the answer goes raw.
    pub fn of(
        status: StatusCode,
        version: Version,
        head: &Bytes,
        spans: &[(usize, usize, usize, usize)],
        reuse: &mut Vec<[u16; 4]>,
    ) -> Option<RawFields> {
        reuse.clear();
        let Some(facts) = forwarded(status, version, head, spans, reuse) else {
            reuse.clear();
            return None;
        };
        Some(RawFields {
            head: head.clone(),
            spans: std::mem::take(reuse),
            has_date: facts.has_date,
            framing: facts.framing,
            keep_alive: facts.keep_alive,
            version,
        })
    }

    /// Each forwarded field's name and value, as the backend sent them.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|&[n, nl, v, vl]| {
            let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
            (&self.head[n..n + nl], &self.head[v..v + vl])
        })
    }

    /// The spans' vector, emptied, for the connection's next answer; the head's bytes are let
    /// go (the connection's read buffer is reused only once nothing points into it).
    pub fn into_spans(self) -> Vec<[u16; 4]> {
        let mut spans = self.spans;
        spans.clear();
        spans
    }
}

/// Pushes the forwarded fields' spans into `out` and says what the head says, or `None` for
/// the map path.
fn forwarded(
    status: StatusCode,
    version: Version,
    head: &Bytes,
    spans: &[(usize, usize, usize, usize)],
    out: &mut Vec<[u16; 4]>,
) -> Option<Facts> {
    let s = status.as_u16();
    if status.is_informational() || s == 204 || s == 304 || spans.len() > MAX_RAW_FIELDS {
        return None;
    }
    let (mut has_date, mut length, mut chunked) = (false, None, false);
    let (mut close, mut keep_alive_listed) = (false, false);
    for &(n, nl, v, vl) in spans {
        let value = || head.get(v..v + vl).map(<[u8]>::trim_ascii);
        match kind(head.get(n..n + nl)?) {
            k @ (Kind::Forward | Kind::Date) => {
                has_date |= k == Kind::Date;
                out.push([
                    u16::try_from(n).ok()?,
                    u16::try_from(nl).ok()?,
                    u16::try_from(v).ok()?,
                    u16::try_from(vl).ok()?,
                ]);
            }
            Kind::ContentLength => {
                let n = parse_length(value()?)?;
                // Lines that differ are refused by the map path.
                if length.is_some_and(|l| l != n) {
                    return None;
                }
                length = Some(n);
            }
            Kind::TransferEncoding if !chunked && value()?.eq_ignore_ascii_case(b"chunked") => {
                chunked = true;
            }
            Kind::Connection => {
                for token in value()?.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_listed = true;
                    } else if !token.is_empty() {
                        // It names a field that is hop-by-hop too.
                        return None;
                    }
                }
            }
            Kind::Drop => {}
            Kind::TransferEncoding | Kind::Unusual => return None,
        }
    }
    let framing = match (chunked, length) {
        // Both framings: refused by the map path (response splitting).
        (true, Some(_)) => return None,
        (true, None) => ResponseFraming::Chunked,
        (false, Some(n)) => ResponseFraming::Length(n),
        (false, None) => ResponseFraming::UntilClose,
    };
    let keep_alive = match version {
        // With Transfer-Encoding, faulty framing: closed after it (RFC 9112 §6.1).
        Version::HTTP_10 => keep_alive_listed && !close && !chunked,
        _ => !close,
    };
    Some(Facts {
        has_date,
        framing,
        keep_alive,
    })
}
