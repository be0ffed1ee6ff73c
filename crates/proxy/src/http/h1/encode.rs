//! Writing a response head to an HTTP/1.1 client, with the framing rules of hyper's server
//! (RFC 9112 §6): the handler's Content-Length or Transfer-Encoding when it set one, else the
//! body's known length, else chunked; no body for HEAD, 204 and 304; a Date when the answer has
//! none; `connection: close` when this answer is the connection's last.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderName};
use http::{HeaderMap, StatusCode};

use crate::upstream::codec::{RawFields, parse_length, put_field};

/// What the handler's body says about its length before it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodySize {
    Empty,
    Known(u64),
    Unknown,
}

/// How the body goes on the wire after the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// Exactly this many bytes (0: the body is not sent at all).
    Length(u64),
    Chunked,
    /// Until the connection closes (an unknown length where chunked is not allowed).
    UntilClose,
}

/// The head as written, and what follows it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Encoded {
    pub framing: Framing,
    /// The connection closes after this answer (asked for, or the framing needs it).
    pub close: bool,
    /// Trailer fields the head announced; only those go out after a chunked body.
    pub trailers: Vec<HeaderName>,
}

/// A handler's head that cannot be written (hyper refuses the same).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BadLength;

/// Encodes the head into `dst`. `head_request`: the request was HEAD. `close`: the connection
/// ends after this answer whatever the handler said.
pub(super) fn encode_head(
    dst: &mut Vec<u8>,
    status: StatusCode,
    raw: Option<&RawFields>,
    headers: &HeaderMap,
    size: BodySize,
    head_request: bool,
    mut close: bool,
) -> Result<Encoded, BadLength> {
    if status == StatusCode::OK {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(b"HTTP/1.1 ");
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    let no_length_fields = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let can_chunk = !head_request && !no_length_fields;
    let mut framing = None;
    let mut length_field = false;
    let mut te_ends_chunked = true;
    let mut said_close = false;
    let mut wrote_date = false;
    let mut trailers = Vec::new();
    // A backend's fields as it sent them: no framing or hop-by-hop field is among them (see
    // `RawFields`), so they go first and as they are; `headers` then holds what this proxy
    // adds.
    if let Some(raw) = raw {
        for (name, value) in raw.iter() {
            put_field(dst, name, value);
        }
        // This hop, after the backend's own Via lines (the map has none of its own then).
        put(
            dst,
            "via",
            crate::http::headers::via_hop(raw.version).as_bytes(),
        );
        wrote_date = raw.has_date;
    }
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH => {
                if length_field {
                    // A second line: with a known body it adds nothing (hyper drops it);
                    // otherwise it must say the same.
                    match (size, framing) {
                        (BodySize::Known(_) | BodySize::Empty, _) => continue,
                        (_, Some(Framing::Length(n)))
                            if parse_length(value.as_bytes()) == Some(n) =>
                        {
                            continue;
                        }
                        _ => return Err(BadLength),
                    }
                }
                if framing == Some(Framing::Chunked) {
                    return Err(BadLength);
                }
                let n = match size {
                    // The body is framed by what it will send: a field saying otherwise would
                    // leave the client reading the next answer as this one's rest.
                    BodySize::Known(n) if parse_length(value.as_bytes()) != Some(n) => {
                        return Err(BadLength);
                    }
                    BodySize::Known(n) => n,
                    BodySize::Unknown => parse_length(value.as_bytes()).ok_or(BadLength)?,
                    // Nothing to send: the field stays only on a HEAD answer (the length of
                    // what a GET would get).
                    BodySize::Empty if head_request => 0,
                    BodySize::Empty => continue,
                };
                length_field = true;
                framing = Some(Framing::Length(n));
            }
            header::TRANSFER_ENCODING => {
                if length_field {
                    return Err(BadLength);
                }
                if !can_chunk {
                    continue;
                }
                framing = Some(Framing::Chunked);
                te_ends_chunked = value
                    .as_bytes()
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            header::CONNECTION => {
                said_close |= value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if !can_chunk {
                    continue;
                }
                if let Ok(v) = value.to_str() {
                    trailers.extend(
                        v.split(',')
                            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok()),
                    );
                }
            }
            _ => {}
        }
        put(dst, name.as_str(), value.as_bytes());
    }
    if framing == Some(Framing::Chunked) && !te_ends_chunked {
        // Field lines of one name are one list (RFC 9110 §5.3): chunked goes last.
        dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    let framing = match framing {
        Some(f) => f,
        None => match size {
            BodySize::Unknown if can_chunk => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            BodySize::Unknown => Framing::UntilClose,
            BodySize::Empty | BodySize::Known(0) => {
                if !no_length_fields && !head_request {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            BodySize::Known(_) if no_length_fields => Framing::Length(0),
            BodySize::Known(n) => {
                dst.extend_from_slice(b"content-length: ");
                dst.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                dst.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
        },
    };
    // HEAD, 1xx, 204 and 304 answers have no body whatever their fields say.
    let framing = if head_request || no_length_fields {
        Framing::Length(0)
    } else {
        framing
    };
    // After a 101 the connection is no longer HTTP; hyper ends it there too.
    if framing == Framing::UntilClose || status == StatusCode::SWITCHING_PROTOCOLS {
        close = true;
    }
    if close && !said_close {
        dst.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        date(dst);
    }
    dst.extend_from_slice(b"\r\n");
    Ok(Encoded {
        framing,
        close: close || said_close,
        trailers,
    })
}

/// One field line.
pub(super) fn put(dst: &mut Vec<u8>, name: &str, value: &[u8]) {
    put_field(dst, name.as_bytes(), value);
}

thread_local! {
    /// The Date value of the current second: formatting one per answer cost more than the
    /// rest of the head.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Appends a Date field with the IMF-fixdate of now (RFC 9110 §5.6.7); none when the clock is
/// outside what that format can say.
fn date(dst: &mut Vec<u8>) {
    let now = SystemTime::now();
    let Ok(since) = now.duration_since(UNIX_EPOCH) else {
        return;
    };
    let secs = since.as_secs();
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() != text.len() {
                return;
            }
            text.copy_from_slice(s.as_bytes());
            *at = secs;
        }
        dst.extend_from_slice(b"date: ");
        dst.extend_from_slice(text);
        dst.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use BodySize::{Empty, Known, Unknown};

    fn head(
        status: u16,
        fields: &[(&str, &str)],
        size: BodySize,
        head_request: bool,
        close: bool,
    ) -> (String, Result<Encoded, BadLength>) {
        let mut map = HeaderMap::new();
        for (n, v) in fields {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let mut dst = Vec::new();
        let status = StatusCode::from_u16(status).unwrap();
        let r = encode_head(&mut dst, status, None, &map, size, head_request, close);
        let text = String::from_utf8(dst).unwrap();
        // The Date line is the clock's; the rest is compared whole.
        let text = text
            .lines()
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("|");
        (text, r)
    }

    /// (status, fields, body, HEAD?, close?) -> (head lines, framing, closes)
    type Row = (
        u16,
        &'static [(&'static str, &'static str)],
        BodySize,
        bool,
        bool,
        &'static str,
        Framing,
        bool,
    );

    const CT: (&str, &str) = ("content-type", "text/plain");

    #[rustfmt::skip]
    const FRAMING: &[Row] = &[
        (200, &[CT], Known(11), false, false, "HTTP/1.1 200 OK|content-type: text/plain|content-length: 11|", Framing::Length(11), false),
        (200, &[("content-length", "5")], Unknown, false, false, "HTTP/1.1 200 OK|content-length: 5|", Framing::Length(5), false),
        (200, &[], Unknown, false, false, "HTTP/1.1 200 OK|transfer-encoding: chunked|", Framing::Chunked, false),
        (200, &[], Empty, false, false, "HTTP/1.1 200 OK|content-length: 0|", Framing::Length(0), false),
        // A length field on an empty GET answer is wrong and dropped; on HEAD it is the point.
        (200, &[("content-length", "11")], Empty, false, false, "HTTP/1.1 200 OK|content-length: 0|", Framing::Length(0), false),
        (200, &[("content-length", "11")], Empty, true, false, "HTTP/1.1 200 OK|content-length: 11|", Framing::Length(0), false),
        (200, &[], Known(11), true, false, "HTTP/1.1 200 OK|content-length: 11|", Framing::Length(0), false),
        (200, &[], Empty, true, false, "HTTP/1.1 200 OK|", Framing::Length(0), false),
        (200, &[], Unknown, true, false, "HTTP/1.1 200 OK|", Framing::Length(0), false),
        // No body, no length fields.
        (204, &[], Known(0), false, false, "HTTP/1.1 204 No Content|", Framing::Length(0), false),
        (304, &[("content-length", "11"), ("etag", "\"e\"")], Empty, false, false, "HTTP/1.1 304 Not Modified|etag: \"e\"|", Framing::Length(0), false),
        (304, &[], Unknown, false, false, "HTTP/1.1 304 Not Modified|", Framing::Length(0), false),
        // Chunked goes last in the coding list.
        (200, &[("transfer-encoding", "gzip")], Unknown, false, false, "HTTP/1.1 200 OK|transfer-encoding: gzip|transfer-encoding: chunked|", Framing::Chunked, false),
        (200, &[("transfer-encoding", "gzip, chunked")], Unknown, false, false, "HTTP/1.1 200 OK|transfer-encoding: gzip, chunked|", Framing::Chunked, false),
        // A second, equal length adds nothing.
        (200, &[("content-length", "5"), ("content-length", "5")], Unknown, false, false, "HTTP/1.1 200 OK|content-length: 5|", Framing::Length(5), false),
        // Closing: said once; the handler's own `close` counts.
        (200, &[], Known(1), false, true, "HTTP/1.1 200 OK|content-length: 1|connection: close|", Framing::Length(1), true),
        (200, &[("connection", "close")], Known(1), false, false, "HTTP/1.1 200 OK|connection: close|content-length: 1|", Framing::Length(1), true),
        (200, &[("connection", "close")], Known(1), false, true, "HTTP/1.1 200 OK|connection: close|content-length: 1|", Framing::Length(1), true),
        (101, &[("upgrade", "websocket")], Empty, false, false, "HTTP/1.1 101 Switching Protocols|upgrade: websocket|connection: close|", Framing::Length(0), true),
        (599, &[], Empty, false, false, "HTTP/1.1 599 <none>|content-length: 0|", Framing::Length(0), false),
        (404, &[], Known(3), false, false, "HTTP/1.1 404 Not Found|content-length: 3|", Framing::Length(3), false),
    ];

    #[test]
    fn framing_follows_hyper_s_rules() {
        for &(status, fields, size, is_head, close, lines, framing, closes) in FRAMING {
            let (text, r) = head(status, fields, size, is_head, close);
            let what = format!("{status} {fields:?} {size:?} head={is_head} close={close}");
            assert_eq!(text, lines, "{what}");
            let r = r.unwrap();
            assert_eq!(r.framing, framing, "{what}");
            assert_eq!(r.close, closes, "{what}");
        }
    }

    #[test]
    fn conflicting_lengths_are_refused() {
        let table: &[&[(&str, &str)]] = &[
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
            &[("content-length", "five")],
        ];
        for fields in table {
            assert_eq!(
                head(200, fields, Unknown, false, false).1,
                Err(BadLength),
                "{fields:?}"
            );
        }
        // A length field that is not the length of the body to be sent.
        let short = &[("content-length", "7")];
        assert_eq!(head(200, short, Known(5), false, false).1, Err(BadLength));
        assert!(
            head(200, &[("content-length", "5")], Known(5), false, false)
                .1
                .is_ok()
        );
    }

    #[test]
    fn a_date_is_added_unless_the_answer_has_one() {
        let mut dst = Vec::new();
        let none = HeaderMap::new();
        encode_head(&mut dst, StatusCode::OK, None, &none, Empty, false, false).unwrap();
        let text = String::from_utf8(dst).unwrap();
        let date = text.lines().find_map(|l| l.strip_prefix("date: ")).unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        let mut dated = HeaderMap::new();
        dated.insert(
            header::DATE,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        let mut dst = Vec::new();
        encode_head(&mut dst, StatusCode::OK, None, &dated, Empty, false, false).unwrap();
        assert_eq!(String::from_utf8(dst).unwrap().matches("date: ").count(), 1);
    }
}
