//! What a client gets of a cacheable representation: the whole of it, 304 for a condition that
//! holds, 206 for one byte range, 416 for a range past its end. Decided the same way for a
//! stored object (a hit) and for a response still arriving from the origin (a miss, answered
//! as soon as the range's bytes arrive), so the cache never has to hold a whole object to
//! answer a range or a condition.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::policy::parse_http_date;
use crate::range::{RangeReply, range_reply};

/// Request fields a cache fill must not pass on: the stored object has to be whole and
/// unconditional (a 412 or 304 an origin gives one client must not be stored for all); the
/// client's range and preconditions are answered from it.
const CLIENT_ONLY: [HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// The parts of a client's request the cache answers itself.
#[derive(Debug, Default)]
pub struct ClientAsk {
    pub conditions: HeaderMap,
    pub range: Option<String>,
    pub method: Method,
}

impl ClientAsk {
    /// Takes the range and condition fields out of a request about to go to the origin.
    pub fn take_from(headers: &mut HeaderMap, method: &Method) -> ClientAsk {
        let mut conditions = HeaderMap::new();
        let mut range = None;
        // One pass over the (few) request fields instead of a lookup per name in the common case.
        if headers.keys().any(|k| CLIENT_ONLY.contains(k)) {
            for name in CLIENT_ONLY {
                if let Some(v) = headers.remove(&name) {
                    if name == header::RANGE {
                        range = v.to_str().ok().map(str::to_string);
                    }
                    conditions.insert(name, v);
                }
            }
        }
        ClientAsk {
            conditions,
            range,
            method: method.clone(),
        }
    }

    /// Puts the client's range and conditions back on a request (one the origin answers for
    /// this client alone).
    pub fn restore_into(&self, headers: &mut HeaderMap) {
        for (k, v) in &self.conditions {
            headers.insert(k.clone(), v.clone());
        }
    }

    /// Neither a range nor a condition: the client takes the representation as it comes.
    pub fn is_plain(&self) -> bool {
        self.conditions.is_empty()
    }
}

/// A representation's validators.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validators<'a> {
    pub etag: Option<&'a HeaderValue>,
    pub last_modified: Option<SystemTime>,
}

impl<'a> Validators<'a> {
    pub fn of(headers: &'a HeaderMap) -> Validators<'a> {
        Validators {
            etag: headers.get(header::ETAG),
            last_modified: headers
                .get(header::LAST_MODIFIED)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_http_date),
        }
    }

    /// RFC 9110 §13.1.1-2: do If-Match (strong comparison), or without it If-Unmodified-Since,
    /// fail for this representation?
    pub fn precondition_fails(&self, req: &HeaderMap) -> bool {
        if let Some(im) = req.get(header::IF_MATCH) {
            let Ok(list) = im.to_str() else { return true };
            let ours = self.etag.and_then(|e| e.to_str().ok());
            return !list.split(',').any(|t| {
                let t = t.trim();
                t == "*"
                    || (!t.starts_with("W/")
                        && ours.is_some_and(|o| !o.starts_with("W/") && o == t))
            });
        }
        if let Some(ius) = req
            .get(header::IF_UNMODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
            && let Some(lm) = self.last_modified
        {
            return lm > ius;
        }
        false
    }

    /// RFC 9110 §13.2.2: does the client's conditional GET/HEAD mean "you have it"?
    /// If-None-Match, when present, decides (weak comparison); else If-Modified-Since.
    pub fn not_modified(&self, req: &HeaderMap) -> bool {
        if let Some(inm) = req.get(header::IF_NONE_MATCH) {
            let Some(etag) = self.etag else { return false };
            let Ok(list) = inm.to_str() else { return false };
            let ours = weak(etag.to_str().unwrap_or(""));
            return list.split(',').any(|t| {
                let t = t.trim();
                t == "*" || weak(t) == ours
            });
        }
        if let Some(ims) = req
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
            && let Some(lm) = self.last_modified
        {
            return lm <= ims;
        }
        false
    }

    /// If-Range (RFC 9110 §13.1.5): the range applies only while the validator still matches
    /// (a strong ETag, or a date no earlier than Last-Modified).
    pub fn if_range_holds(&self, req: &HeaderMap) -> bool {
        let Some(cond) = req.get(header::IF_RANGE).and_then(|c| c.to_str().ok()) else {
            return true;
        };
        if cond.starts_with('"') {
            return self.etag.and_then(|e| e.to_str().ok()) == Some(cond);
        }
        // A date matches only exactly (RFC 9110 §13.1.5).
        match (parse_http_date(cond), self.last_modified) {
            (Some(d), Some(lm)) => lm == d,
            _ => false,
        }
    }
}

/// An entity tag without its weakness marker, for weak comparison.
fn weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// What the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The representation as it is.
    Full,
    /// 304: headers only.
    NotModified,
    /// 412: If-Match or If-Unmodified-Since failed.
    PreconditionFailed,
    /// 206 with bytes `start..=end` of `len`.
    Partial { start: u64, end: u64, len: u64 },
    /// 416: the range starts past the end.
    Unsatisfiable { len: u64 },
}

/// The client's view of a `status` representation of `len` bytes (`None`: not known yet, so
/// a range is not applied). Only 200s are narrowed; other statuses go as they are.
pub fn view(ask: &ClientAsk, status: StatusCode, v: &Validators<'_>, len: Option<u64>) -> View {
    if status != StatusCode::OK || ask.is_plain() {
        return View::Full;
    }
    if v.precondition_fails(&ask.conditions) {
        return View::PreconditionFailed;
    }
    if v.not_modified(&ask.conditions) {
        return View::NotModified;
    }
    let (Some(range), Some(len)) = (ask.range.as_deref(), len) else {
        return View::Full;
    };
    if ask.method != Method::GET || !v.if_range_holds(&ask.conditions) {
        return View::Full;
    }
    match range_reply(Some(range), len) {
        RangeReply::Full => View::Full,
        RangeReply::Partial { start, end } => View::Partial { start, end, len },
        RangeReply::Unsatisfiable => View::Unsatisfiable { len },
    }
}

/// The fields a 304 carries: those describing the representation's cache state (RFC 9110
/// §15.4.5).
pub fn retain_304(headers: &mut HeaderMap) {
    const KEEP: [HeaderName; 9] = [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::AGE,
        header::VIA,
        header::LAST_MODIFIED,
    ];
    let mut out = HeaderMap::with_capacity(KEEP.len());
    for (k, v) in headers.iter() {
        if KEEP.contains(k) || crate::policy::is_personal(k) {
            out.append(k.clone(), v.clone());
        }
    }
    *headers = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(list: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    #[test]
    fn conditions() {
        let stored = map(&[("etag", "\"abc\""), ("last-modified", LM)]);
        let v = Validators::of(&stored);
        let cases = [
            (("if-none-match", "\"abc\""), true),
            (("if-none-match", "W/\"abc\", \"x\""), true),
            (("if-none-match", "*"), true),
            (("if-none-match", "\"zzz\""), false),
            (("if-modified-since", LM), true),
            (
                ("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT"),
                false,
            ),
            (("if-modified-since", "yesterday"), false),
        ];
        for ((k, val), want) in cases {
            assert_eq!(v.not_modified(&map(&[(k, val)])), want, "{k}: {val}");
        }
        assert!(!v.not_modified(&HeaderMap::new()));
        // If-None-Match decides when both are present.
        assert!(!v.not_modified(&map(&[
            ("if-none-match", "\"zzz\""),
            ("if-modified-since", LM)
        ])));
    }

    #[test]
    fn views() {
        let stored = map(&[("etag", "\"abc\""), ("last-modified", LM)]);
        let v = Validators::of(&stored);
        let ask = |list: &[(&'static str, &str)]| {
            let mut h = map(list);
            ClientAsk::take_from(&mut h, &Method::GET)
        };
        let ok = StatusCode::OK;
        let cases = [
            (ask(&[]), Some(100), View::Full),
            (
                ask(&[("range", "bytes=0-0")]),
                Some(100),
                View::Partial {
                    start: 0,
                    end: 0,
                    len: 100,
                },
            ),
            (ask(&[("range", "bytes=0-0")]), None, View::Full),
            (
                ask(&[("range", "bytes=500-")]),
                Some(100),
                View::Unsatisfiable { len: 100 },
            ),
            (
                ask(&[("if-none-match", "\"abc\"")]),
                None,
                View::NotModified,
            ),
            (
                ask(&[("range", "bytes=0-9"), ("if-range", "\"abc\"")]),
                Some(100),
                View::Partial {
                    start: 0,
                    end: 9,
                    len: 100,
                },
            ),
            (
                ask(&[("range", "bytes=0-9"), ("if-range", "\"old\"")]),
                Some(100),
                View::Full,
            ),
            (
                ask(&[("range", "bytes=0-9"), ("if-range", LM)]),
                Some(100),
                View::Partial {
                    start: 0,
                    end: 9,
                    len: 100,
                },
            ),
            (
                ask(&[
                    ("range", "bytes=0-9"),
                    ("if-range", "Mon, 07 Nov 1994 08:49:37 GMT"),
                ]),
                Some(100),
                View::Full,
            ),
            (ask(&[("if-match", "\"abc\"")]), None, View::Full),
            (ask(&[("if-match", "\"x\", \"abc\"")]), None, View::Full),
            (ask(&[("if-match", "*")]), None, View::Full),
            (
                ask(&[("if-match", "\"nope\"")]),
                None,
                View::PreconditionFailed,
            ),
            (
                ask(&[("if-match", "W/\"abc\"")]),
                None,
                View::PreconditionFailed,
            ),
            (ask(&[("if-unmodified-since", LM)]), None, View::Full),
            (
                ask(&[("if-unmodified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
                None,
                View::PreconditionFailed,
            ),
        ];
        for (a, len, want) in cases {
            assert_eq!(view(&a, ok, &v, len), want, "{a:?} {len:?}");
        }
        let a = ask(&[("range", "bytes=0-0")]);
        assert_eq!(view(&a, StatusCode::NOT_FOUND, &v, Some(10)), View::Full);
        let mut head = ask(&[("range", "bytes=0-0")]);
        head.method = Method::HEAD;
        assert_eq!(view(&head, ok, &v, Some(10)), View::Full);
    }

    #[test]
    fn a_304_keeps_cache_state_fields_and_the_clients_cookie() {
        let mut h = map(&[
            ("etag", "\"a\""),
            ("content-length", "10"),
            ("content-type", "text/plain"),
            ("set-cookie", "s=1"),
            ("cache-control", "max-age=5"),
        ]);
        retain_304(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["cache-control", "etag", "set-cookie"]);
    }
}
