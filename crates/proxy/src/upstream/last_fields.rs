//! Fields this hop writes at the end of a request head to an HTTP/1.1 backend, in place of the
//! request map's own lines of them: X-Forwarded-For and Via (the map's lines joined, then this
//! hop), X-Forwarded-Proto and X-Forwarded-Host (set by this hop).
//!
//! Put in the request's map, they were 1 400 instructions of a proxied HTTP/1.1 request
//! (callgrind: entries, inserts, hashing and the list join) only to be read back once by
//! `write_request_head`. The caller decides when nothing else reads them from the map (see
//! `http::origin::fetch`).

use super::codec::put_field;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

/// A list field's lines joined into one value with `item` last: every line that is not blank,
/// as its bytes (obs-text included), then ", ", then `item`.
pub fn join_list<'v>(
    out: &mut Vec<u8>,
    lines: impl IntoIterator<Item = &'v HeaderValue>,
    item: &[u8],
) {
    for line in lines.into_iter().map(HeaderValue::as_bytes) {
        if !line.trim_ascii().is_empty() {
            out.extend_from_slice(line);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(item);
}

/// The fields, with this hop's values.
#[derive(Debug, Clone, Copy)]
pub struct LastFields<'a> {
    /// Lists joined: every non-empty line of the map's, then this item.
    pub joined: [(&'a HeaderName, &'a [u8]); 2],
    /// Fields set: the map's lines are dropped.
    pub set: [(&'a HeaderName, &'a [u8]); 2],
}

impl LastFields<'_> {
    /// Which of the four `name` is, as a bit (0 for none): joined ones first. Lengths are
    /// compared before names, so most fields cost a few instructions.
    pub fn bit(&self, name: &HeaderName) -> u8 {
        let n = name.as_str();
        let all = [
            self.joined[0].0,
            self.joined[1].0,
            self.set[0].0,
            self.set[1].0,
        ];
        for (i, f) in all.into_iter().enumerate() {
            if f.as_str().len() == n.len() && f == name {
                return 1 << i;
            }
        }
        0
    }

    /// Writes the four fields. `seen`: the bits of those the map has lines of.
    pub fn write(&self, out: &mut Vec<u8>, headers: &HeaderMap, seen: u8) {
        for (i, (name, item)) in self.joined.into_iter().enumerate() {
            if seen & (1 << i) != 0 {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                join_list(out, headers.get_all(name), item);
                out.extend_from_slice(b"\r\n");
            } else {
                put_field(out, name.as_str().as_bytes(), item);
            }
        }
        for (name, value) in self.set {
            put_field(out, name.as_str().as_bytes(), value);
        }
    }
}
