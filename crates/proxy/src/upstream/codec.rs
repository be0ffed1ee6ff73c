//! HTTP/1.1 to backends, on the wire (RFC 9112): the request head we write, the response head we
//! parse, and how the response body is framed.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use smallvec::SmallVec;

pub use super::last_fields::{LastFields, join_list};
pub use super::raw_head::RawFields;

/// Most headers a backend response may carry.
const MAX_HEADERS: usize = 128;
/// Largest backend response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body bytes follow the head.
    Empty,
    /// Exactly this many bytes follow.
    Length(u64),
    /// Chunked transfer coding (length unknown in advance).
    Chunked,
}

/// Writes a request head. Framing headers are ours, not the client's: the client's were for its
/// own hop. `last`: forwarding fields written after the map's, in place of its lines of them.
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
    last: Option<&LastFields<'_>>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut seen = 0;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        if let Some(last) = last {
            let bit = last.bit(name);
            if bit != 0 {
                seen |= bit;
                continue;
            }
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        RequestFraming::Empty => {
            // Methods that normally carry a body say it is empty, so the backend does not wait.
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if let Some(last) = last {
        last.write(out, headers, seen);
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
    /// The fields as the backend sent them, when asked for and the head is ordinary:
    /// `headers` is then empty.
    pub raw: Option<RawFields>,
}

/// Why a backend's response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed response head: {0}")]
    Malformed(String),
    #[error("response head larger than {MAX_HEAD} bytes")]
    TooLarge,
}

/// Parses a response head from the front of `buf`. `Ok(None)`: more bytes needed. On success the
/// head's bytes are removed from `buf`; header values share its memory. `raw`: the answer may
/// go to the client without a field map ([`RawFields`]), with this vector for its spans.
pub fn parse_response_head(
    buf: &mut BytesMut,
    raw: Option<&mut Vec<[u16; 4]>>,
) -> Result<Option<ResponseHead>, HeadError> {
    // Left uninitialised, as the spans below (a SmallVec's inline array): zeroing both arrays
    // (8 KiB) was 9% of the instructions of a proxied 1 KiB request (callgrind, 10 000 requests).
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| HeadError::Malformed(format!("status {:?}", resp.code)))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Remember where names and values sit, then take the head out of the buffer once and
    // slice the values from it without copying.
    // On the stack: a Vec here was one allocation of every proxied request.
    let base = buf.as_ptr() as usize;
    // Filled in place: a SmallVec returned from `collect` is moved, inline array and all.
    let mut spans: SmallVec<[(usize, usize, usize, usize); MAX_HEADERS]> = SmallVec::new();
    for h in resp.headers.iter() {
        let n = h.name.as_ptr() as usize - base;
        let v = h.value.as_ptr() as usize - base;
        spans.push((n, h.name.len(), v, h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    // An emptied request map from this thread when there is one: `with_capacity` here was both
    // allocations of a proxied HTTP/1.1 request.
    let mut map = crate::spare_maps::take(spans.len());
    // The map stays empty (for the fields this proxy adds, as Via).
    if let Some(reuse) = raw
        && let Some(raw) = RawFields::of(status, version, &head, &spans, reuse)
    {
        return Ok(Some(ResponseHead {
            status,
            version,
            headers: map,
            keep_alive: raw.keep_alive,
            raw: Some(raw),
        }));
    }
    // `Connection: keep-alive`, on every keep-alive answer from nginx, is for this hop only and
    // names no field that must go with it (Keep-Alive goes by name anyway). It is noted here
    // rather than put in the map, from which stripping it again cost 1 000 instructions per
    // proxied request (callgrind).
    let mut keep_alive_listed = false;
    for &(n, nl, v, vl) in &spans {
        let raw = &head[n..n + nl];
        let name = match known_name(raw) {
            Some(name) => name,
            None => HeaderName::from_bytes(raw).map_err(|e| HeadError::Malformed(e.to_string()))?,
        };
        if name == header::CONNECTION && head[v..v + vl].eq_ignore_ascii_case(b"keep-alive") {
            keep_alive_listed = true;
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
            .map_err(|e| HeadError::Malformed(e.to_string()))?;
        map.append(name, value);
    }
    let keep_alive = connection_persists(version, &map, keep_alive_listed);
    Ok(Some(ResponseHead {
        status,
        version,
        headers: map,
        keep_alive,
        raw: None,
    }))
}

/// The names backends send on most answers and clients on most requests, in the two spellings
/// used (title case from nginx, Apache, browsers and curl, lower case from most others),
/// matched as bytes. `HeaderName::from_bytes` lowercases each name into a scratch buffer and
/// then looks it up: 151 instructions a name, 15% of parsing an nginx head (callgrind). Any
/// other spelling takes that path; the result is the same name either way.
pub(crate) fn known_name(raw: &[u8]) -> Option<HeaderName> {
    Some(match raw {
        b"Date" | b"date" => header::DATE,
        b"Server" | b"server" => header::SERVER,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"Connection" | b"connection" => header::CONNECTION,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"ETag" | b"Etag" | b"etag" => header::ETAG,
        b"Expires" | b"expires" => header::EXPIRES,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
        b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
        b"Content-Encoding" | b"content-encoding" => header::CONTENT_ENCODING,
        b"Vary" | b"vary" => header::VARY,
        b"Location" | b"location" => header::LOCATION,
        b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
        b"Age" | b"age" => header::AGE,
        b"Host" | b"host" => header::HOST,
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Accept" | b"accept" => header::ACCEPT,
        b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
        b"Accept-Language" | b"accept-language" => header::ACCEPT_LANGUAGE,
        b"Cookie" | b"cookie" => header::COOKIE,
        b"Referer" | b"referer" => header::REFERER,
        b"If-None-Match" | b"if-none-match" => header::IF_NONE_MATCH,
        b"If-Modified-Since" | b"if-modified-since" => header::IF_MODIFIED_SINCE,
        b"Range" | b"range" => header::RANGE,
        b"Authorization" | b"authorization" => header::AUTHORIZATION,
        _ => return None,
    })
}

fn connection_persists(version: Version, headers: &HeaderMap, keep_alive_listed: bool) -> bool {
    let has = |token: &str| lists_token(headers, &header::CONNECTION, token);
    // An HTTP/1.0 answer with Transfer-Encoding has faulty framing: the connection is closed
    // after it (RFC 9112 §6.1).
    if version == Version::HTTP_10 && headers.contains_key(header::TRANSFER_ENCODING) {
        return false;
    }
    match version {
        // `close` wins over `keep-alive` (RFC 9112 §9.3): the backend is closing.
        Version::HTTP_10 => (keep_alive_listed || has("keep-alive")) && !has("close"),
        _ => !has("close"),
    }
}

/// Writes one field line: `name: value` and CRLF. Request heads, the forwarding fields and the
/// HTTP/1.1 server's answer heads are all written with it.
// A hint to inline: called from three places, it stopped being inlined into the answer
// encoder. With the one-pass `parse_length` below, a proxied HTTP/1.1 request went from 25 418
// to 25 295 instructions and a cache hit from 19 241 to 19 096 (callgrind, 5 000 requests);
// `#[inline(always)]` with one capacity check measured the same.
#[inline]
pub fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A Content-Length value: digits only (RFC 9110 §8.6; Rust's `parse` would also take "+5"),
/// `None` past `u64::MAX`. One pass: checking the digits, then UTF-8, then parsing took 112
/// instructions for "1024" on every answer (callgrind).
pub fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: HEAD, 1xx, 204, 304.
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

pub fn response_framing(
    method: &Method,
    head: &ResponseHead,
) -> Result<ResponseFraming, HeadError> {
    let s = head.status.as_u16();
    if *method == Method::HEAD || (100..200).contains(&s) || s == 204 || s == 304 {
        return Ok(ResponseFraming::None);
    }
    if let Some(raw) = &head.raw {
        return Ok(raw.framing);
    }
    // Both framings at once is how responses are split and caches poisoned (RFC 9112 §6.3):
    // such a response is refused, never forwarded or stored.
    if head.headers.contains_key(header::TRANSFER_ENCODING)
        && head.headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(HeadError::Malformed(
            "both Transfer-Encoding and Content-Length".into(),
        ));
    }
    // The one transfer coding taken from a backend is `chunked`, alone, as nginx does (it
    // answers 502 to any other). This hop's Transfer-Encoding is not passed on, so a coding
    // under the chunks (`gzip, chunked`) would reach the client unnamed, as if it were the
    // content; and after a last coding other than chunked the body runs to the close, with any
    // chunk lines in it taken for content.
    let mut codings = head.headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(te) = codings.next() {
        if codings.next().is_some() || !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")
        {
            return Err(HeadError::Malformed(
                "a transfer coding other than chunked".into(),
            ));
        }
        return Ok(ResponseFraming::Chunked);
    }
    Ok(match listed_length(&head.headers)? {
        Some(n) => ResponseFraming::Length(n),
        None => ResponseFraming::UntilClose,
    })
}

/// The length of every Content-Length line and list element, which must all be the same
/// digits; `None` without the field.
fn listed_length(headers: &HeaderMap) -> Result<Option<u64>, HeadError> {
    let mut length: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii())
                .ok_or_else(|| HeadError::Malformed("content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Malformed("conflicting content-length".into()));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// A length the backend sent as a list of equal values (`5, 5`, or on two lines; RFC 9110
/// §8.6 lets a recipient take it as one) goes on as one value: clients and caches downstream
/// may refuse the list. A list that does not agree, on an answer without a body (HEAD, 204,
/// 304, whose length framed nothing here), is dropped.
pub fn settle_length(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lines.next() else {
        return;
    };
    if lines.next().is_none() && first.as_bytes().iter().all(u8::is_ascii_digit) {
        return;
    }
    match listed_length(headers) {
        Ok(Some(n)) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Ok(None) => {}
        Err(_) => {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
}

/// Incremental decoder of a response body from a read buffer.
#[derive(Debug)]
pub enum BodyDecoder {
    Length { remaining: u64 },
    Chunked(ChunkState),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    Size,
    Data { remaining: u64 },
    DataEnd,
    Trailers,
}

/// What the decoder got out of the buffer.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes are needed.
    NeedMore,
}

impl BodyDecoder {
    pub fn new(framing: ResponseFraming) -> BodyDecoder {
        match framing {
            ResponseFraming::None | ResponseFraming::Length(0) => BodyDecoder::Done,
            ResponseFraming::Length(n) => BodyDecoder::Length { remaining: n },
            ResponseFraming::Chunked => BodyDecoder::Chunked(ChunkState::Size),
            ResponseFraming::UntilClose => BodyDecoder::UntilClose,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyDecoder::Done)
    }

    /// Bytes of body still expected, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length { remaining } => Some(*remaining),
            BodyDecoder::Done => Some(0),
            _ => None,
        }
    }

    /// Takes what it can from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, HeadError> {
        loop {
            match self {
                BodyDecoder::Done => return Ok(Decoded::End),
                BodyDecoder::UntilClose => {
                    return Ok(if buf.is_empty() {
                        Decoded::NeedMore
                    } else {
                        Decoded::Data(buf.split().freeze())
                    });
                }
                BodyDecoder::Length { remaining } => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (*remaining).min(buf.len() as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        *self = BodyDecoder::Done;
                    }
                    return Ok(Decoded::Data(data));
                }
                BodyDecoder::Chunked(state) => match *state {
                    ChunkState::Size if !size_line_ok(buf) => {
                        return Err(HeadError::Malformed("invalid chunk size".into()));
                    }
                    ChunkState::Size => match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            *state = if size == 0 {
                                ChunkState::Trailers
                            } else {
                                ChunkState::Data { remaining: size }
                            };
                        }
                        Ok(httparse::Status::Partial) => {
                            if buf.len() > 1024 {
                                return Err(HeadError::Malformed(
                                    "chunk size line too long".into(),
                                ));
                            }
                            return Ok(Decoded::NeedMore);
                        }
                        Err(_) => return Err(HeadError::Malformed("invalid chunk size".into())),
                    },
                    ChunkState::Data { remaining } => {
                        if buf.is_empty() {
                            return Ok(Decoded::NeedMore);
                        }
                        let n = remaining.min(buf.len() as u64) as usize;
                        let data = buf.split_to(n).freeze();
                        let left = remaining - n as u64;
                        *state = if left == 0 {
                            ChunkState::DataEnd
                        } else {
                            ChunkState::Data { remaining: left }
                        };
                        return Ok(Decoded::Data(data));
                    }
                    ChunkState::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Decoded::NeedMore);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(HeadError::Malformed("missing CRLF after chunk".into()));
                        }
                        buf.advance(2);
                        *state = ChunkState::Size;
                    }
                    ChunkState::Trailers => {
                        // Either an empty line, or trailer fields ending with an empty line.
                        if buf.starts_with(b"\r\n") {
                            buf.advance(2);
                            *self = BodyDecoder::Done;
                            return Ok(Decoded::End);
                        }
                        let mut fields = [httparse::EMPTY_HEADER; 64];
                        match httparse::parse_headers(buf, &mut fields) {
                            Ok(httparse::Status::Complete((used, parsed))) => {
                                let mut map = HeaderMap::new();
                                for f in parsed {
                                    if let (Ok(n), Ok(v)) = (
                                        HeaderName::from_bytes(f.name.as_bytes()),
                                        HeaderValue::from_bytes(f.value),
                                    ) {
                                        map.append(n, v);
                                    }
                                }
                                buf.advance(used);
                                *self = BodyDecoder::Done;
                                return Ok(Decoded::Trailers(map));
                            }
                            Ok(httparse::Status::Partial) => {
                                if buf.len() > MAX_HEAD {
                                    return Err(HeadError::TooLarge);
                                }
                                return Ok(Decoded::NeedMore);
                            }
                            Err(e) => return Err(HeadError::Malformed(format!("trailers: {e}"))),
                        }
                    }
                },
            }
        }
    }
}

/// Whether a comma-separated header lists `token` (case-insensitively) on any of its lines.
pub fn lists_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    // As bytes: a byte that is not text elsewhere on a line must not hide its tokens
    // (`Upgrade: h2c, \x80` lists h2c to a backend that splits it).
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether `buf` can start a chunk-size line as hyper and nginx read one: a hex digit first,
/// and the line (once it is all there) ended by CRLF. httparse takes an empty line, blanks or an
/// extension alone as size 0 (the last chunk), and a bare LF inside an extension, so a body cut
/// there looked whole and was stored.
fn size_line_ok(buf: &[u8]) -> bool {
    let Some(&first) = buf.first() else {
        return true;
    };
    first.is_ascii_hexdigit()
        && buf
            .iter()
            .position(|&b| b == b'\n')
            .is_none_or(|lf| buf[lf - 1] == b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> ResponseHead {
        let mut b = BytesMut::from(text.as_bytes());
        parse_response_head(&mut b, None).unwrap().unwrap()
    }

    #[test]
    fn lengths_are_digits_only_and_fit_in_64_bits() {
        let cases: [(&[u8], Option<u64>); 13] = [
            (b"0", Some(0)),
            (b"1024", Some(1024)),
            (b"007", Some(7)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"99999999999999999999999", None),
            (b"", None),
            (b"+5", None),
            (b"-1", None),
            (b" 5", None),
            (b"5 ", None),
            (b"5,5", None),
            ("\u{663}".as_bytes(), None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_length(v), want, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn known_names_are_what_from_bytes_gives() {
        let taken = [
            "Date",
            "date",
            "Server",
            "server",
            "Content-Type",
            "content-type",
            "Content-Length",
            "content-length",
            "Connection",
            "connection",
            "Last-Modified",
            "last-modified",
            "ETag",
            "Etag",
            "etag",
            "Expires",
            "expires",
            "Cache-Control",
            "cache-control",
            "Accept-Ranges",
            "accept-ranges",
            "Transfer-Encoding",
            "transfer-encoding",
            "Content-Encoding",
            "content-encoding",
            "Vary",
            "vary",
            "Location",
            "location",
            "Set-Cookie",
            "set-cookie",
            "Age",
            "age",
            "Host",
            "host",
            "User-Agent",
            "user-agent",
            "Accept",
            "accept",
            "Accept-Encoding",
            "accept-encoding",
            "Accept-Language",
            "accept-language",
            "Cookie",
            "cookie",
            "Referer",
            "referer",
            "If-None-Match",
            "if-none-match",
            "If-Modified-Since",
            "if-modified-since",
            "Range",
            "range",
            "Authorization",
            "authorization",
        ];
        for raw in taken {
            let slow = HeaderName::from_bytes(raw.as_bytes()).unwrap();
            assert_eq!(known_name(raw.as_bytes()), Some(slow), "{raw}");
        }
        // Other spellings and near misses go the long way.
        for raw in [
            "DATE",
            "content-Length",
            "X-Date",
            "Dat",
            "Datee",
            "",
            "Set-Cookie2",
        ] {
            assert_eq!(known_name(raw.as_bytes()), None, "{raw}");
        }
        // Either way the head is the same.
        let a = head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n");
        let b = head("HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 0\r\nx-a: 1\r\n\r\n");
        assert_eq!(a.headers, b.headers);
        assert_eq!(a.headers["content-length"], "0");
    }

    #[test]
    fn request_head_with_our_framing() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.com"));
        h.insert("content-length", HeaderValue::from_static("999"));
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            &Method::POST,
            "/a?b=1",
            &h,
            RequestFraming::Length(5),
            None,
        );
        assert_eq!(
            &out[..],
            b"POST /a?b=1 HTTP/1.1\r\nhost: example.com\r\ncontent-length: 5\r\n\r\n"
        );
        out.clear();
        write_request_head(
            &mut out,
            &Method::GET,
            "/",
            &HeaderMap::new(),
            RequestFraming::Empty,
            None,
        );
        assert_eq!(&out[..], b"GET / HTTP/1.1\r\n\r\n");
        out.clear();
        write_request_head(
            &mut out,
            &Method::PUT,
            "/",
            &HeaderMap::new(),
            RequestFraming::Chunked,
            None,
        );
        assert_eq!(
            &out[..],
            b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn parses_heads_partially_and_whole() {
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Len"[..]);
        assert!(parse_response_head(&mut b, None).unwrap().is_none());
        b.extend_from_slice(b"gth: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\nabc");
        let h = parse_response_head(&mut b, None).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert!(h.keep_alive);
        assert_eq!(&b[..], b"abc", "the body stays in the buffer");
        assert_eq!(
            response_framing(&Method::GET, &h),
            Ok(ResponseFraming::Length(3))
        );
        assert_eq!(
            response_framing(&Method::HEAD, &h),
            Ok(ResponseFraming::None)
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nConnection: x, keep-alive\r\n\r\n").keep_alive);
        // Faulty framing (RFC 9112 §6.1): closed after the answer.
        let old_chunked =
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!head(old_chunked).keep_alive);
        assert!(head(&old_chunked.replace("1.0", "1.1")).keep_alive);
        // close wins over keep-alive (RFC 9112 9.3), on one line or two, in either version:
        // the backend is closing, so the connection must not go back to the pool.
        for v in ["1.0", "1.1"] {
            let one = format!("HTTP/{v} 200 OK\r\nConnection: keep-alive, close\r\n\r\n");
            let two =
                format!("HTTP/{v} 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n");
            assert!(!head(&one).keep_alive, "{one:?}");
            assert!(!head(&two).keep_alive, "{two:?}");
        }
        // A lone keep-alive is noted, not kept; any other list stays for the hop-by-hop strip.
        let h = head("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive && h.headers.get("connection").is_none());
        let h = head("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive);
        assert_eq!(h.headers["connection"], "close");
        let h = head("HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\n\r\n");
        assert_eq!(h.headers["connection"], "keep-alive, X-Secret");
    }

    #[test]
    fn framing_rules() {
        for te in ["chunked", "Chunked", " CHUNKED "] {
            let h = head(&format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding:{te}\r\n\r\n"
            ));
            assert_eq!(
                response_framing(&Method::GET, &h),
                Ok(ResponseFraming::Chunked),
                "{te}"
            );
        }
        // Only chunked, alone (as nginx): another coding would reach the client unnamed.
        for te in [
            "gzip, chunked",
            "chunked, identity",
            "gzip",
            "identity",
            "chunked, chunked",
            "chunked\r\nTransfer-Encoding: chunked",
            "gzip\r\nTransfer-Encoding: chunked",
            "chunked\r\nTransfer-Encoding: gzip",
            "",
        ] {
            let h = head(&format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n"
            ));
            assert!(response_framing(&Method::GET, &h).is_err(), "{te:?}");
        }
        // Both framings, or a Content-Length that is not digits: refused (RFC 9112 §6.3).
        for bad in [
            "Transfer-Encoding: chunked\r\nContent-Length: 5",
            "Content-Length: 5\r\nTransfer-Encoding: identity",
            "Content-Length: +5",
            "Content-Length: 5 5",
            "Content-Length: 0x5",
            "Content-Length: ",
            "Content-Length: 5, 6",
        ] {
            let h = head(&format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n"));
            assert!(response_framing(&Method::GET, &h).is_err(), "{bad}");
        }
        let mut h = head("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(
            response_framing(&Method::GET, &h),
            Ok(ResponseFraming::Length(5)),
            "a repeated equal value is one length"
        );
        settle_length(&mut h.headers);
        assert_eq!(h.headers.get_all("content-length").iter().count(), 1);
        assert_eq!(h.headers["content-length"], "5", "and goes on as one");
        let h = head("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(
            response_framing(&Method::GET, &h),
            Ok(ResponseFraming::None)
        );
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(
            response_framing(&Method::GET, &h),
            Ok(ResponseFraming::UntilClose)
        );
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert!(response_framing(&Method::GET, &h).is_err());
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"[..]);
        assert!(parse_response_head(&mut b, None).is_err());
    }

    #[test]
    fn chunk_size_lines() {
        for (line, ok) in [
            (&b""[..], true),
            (b"5", true),
            (b"5;ext=1", true),
            (b"a\r\n", true),
            (b"0;x=\"y\"\r\n", true),
            (b"\r\n", false),
            (b"  \r\n", false),
            (b";x=1\r\n", false),
            (b"0;a\nb\r\n", false),
            (b"5\n", false),
            (b"g\r\n", false),
        ] {
            assert_eq!(
                size_line_ok(line),
                ok,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn chunked_in_pieces_with_trailers() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n";
        for split in 1..wire.len() {
            let mut d = BodyDecoder::new(ResponseFraming::Chunked);
            let mut buf = BytesMut::new();
            let mut data = Vec::new();
            let mut trailers = None;
            let mut ended = false;
            for piece in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(piece);
                loop {
                    match d.decode(&mut buf).unwrap() {
                        Decoded::Data(b) => data.extend_from_slice(&b),
                        Decoded::Trailers(t) => trailers = Some(t),
                        Decoded::End => {
                            ended = true;
                            break;
                        }
                        Decoded::NeedMore => break,
                    }
                }
            }
            assert_eq!(data, b"hello world", "split at {split}");
            assert!(d.is_done() || ended, "split at {split}");
            assert_eq!(trailers.unwrap()["grpc-status"], "0");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn length_body_leaves_extra_bytes() {
        let mut d = BodyDecoder::new(ResponseFraming::Length(3));
        let mut buf = BytesMut::from(&b"abcEXTRA"[..]);
        match d.decode(&mut buf).unwrap() {
            Decoded::Data(b) => assert_eq!(&b[..], b"abc"),
            other => panic!("{other:?}"),
        }
        assert!(d.is_done());
        assert_eq!(&buf[..], b"EXTRA");
    }

    #[test]
    fn bad_chunks_are_errors() {
        let mut d = BodyDecoder::new(ResponseFraming::Chunked);
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert!(d.decode(&mut buf).is_err());
        let mut d = BodyDecoder::new(ResponseFraming::Chunked);
        let mut buf = BytesMut::from(&b"2\r\nabXY"[..]);
        assert!(matches!(d.decode(&mut buf).unwrap(), Decoded::Data(_)));
        assert!(d.decode(&mut buf).is_err());
    }

    #[test]
    fn lengths_go_on_as_one_value() {
        // (the backend's Content-Length lines, what goes on)
        let table: [(&[&str], Option<&str>); 7] = [
            (&["5"], Some("5")),
            (&["5, 5"], Some("5")),
            (&["5", "5"], Some("5")),
            (&[" 5 ,5 "], Some("5")),
            (&["5, 6"], None),
            (&["5", "x"], None),
            (&[], None),
        ];
        for (lines, goes_on) in table {
            let mut map = HeaderMap::new();
            for l in lines {
                map.append(header::CONTENT_LENGTH, HeaderValue::from_str(l).unwrap());
            }
            settle_length(&mut map);
            let got: Vec<&str> = map
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(got, goes_on.into_iter().collect::<Vec<_>>(), "{lines:?}");
        }
    }
}
