//! The bytes of a recovery point: its header and its records (one URL's variants, or the
//! removal of a URL in an increment). Decoding never trusts a length or a count it reads: every
//! one is checked against what the input still holds.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::{Change, Record};
use crate::entry::Variant;
use crate::policy::{Freshness, Timing};

/// Version 1: full points only, records without a tag.
pub(crate) const MAGIC_V1: &[u8; 8] = b"SGSNAP01";
/// Version 2: full points and increments; every record starts with its tag.
pub(crate) const MAGIC: &[u8; 8] = b"SGSNAP02";
/// magic | created ms | records | CRC-32
pub(crate) const HEADER_V1_LEN: usize = 8 + 8 + 8 + 4;
/// magic | created ms | base ms | parent ms (0: a full point) | records | objects | CRC-32
pub(crate) const HEADER_LEN: usize = 8 + 8 + 8 + 8 + 8 + 8 + 4;

const PUT: u8 = 0;
const REMOVE: u8 = 1;
/// A service's key rules at this point: the puts of the file were keyed by them.
const KEY_RULES: u8 = 2;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u8,
    pub created_ms: u64,
    pub base_ms: u64,
    /// 0 for a full point.
    pub parent_ms: u64,
    pub records: u64,
    /// URLs in the cache at this point (for a full point, its records).
    pub objects: u64,
}

pub(crate) fn encode_header(h: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(MAGIC);
    for w in [h.created_ms, h.base_ms, h.parent_ms, h.records, h.objects] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The header at the start of `first` (the file's first [`HEADER_LEN`] bytes, or all of it if
/// shorter); `Err` says what is wrong.
pub(crate) fn decode_header(first: &[u8]) -> Result<Header, &'static str> {
    if first.len() < HEADER_V1_LEN {
        return Err("shorter than its header");
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&first[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let crc_at =
        |i: usize| u32::from_le_bytes([first[i], first[i + 1], first[i + 2], first[i + 3]]);
    match &first[..8] {
        m if m == MAGIC_V1 => {
            if crc32fast::hash(&first[..24]) != crc_at(24) {
                return Err("header checksum mismatch");
            }
            let created_ms = word(8);
            Ok(Header {
                version: 1,
                created_ms,
                base_ms: created_ms,
                parent_ms: 0,
                records: word(16),
                objects: word(16),
            })
        }
        m if m == MAGIC => {
            if first.len() < HEADER_LEN {
                return Err("shorter than its header");
            }
            if crc32fast::hash(&first[..48]) != crc_at(48) {
                return Err("header checksum mismatch");
            }
            Ok(Header {
                version: 2,
                created_ms: word(8),
                base_ms: word(16),
                parent_ms: word(24),
                records: word(32),
                objects: word(40),
            })
        }
        _ => Err("not a StreamGate snapshot (wrong magic)"),
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u64(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_duration(out: &mut Vec<u8>, d: Duration) {
    put_u64(out, u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
}

fn put_time(out: &mut Vec<u8>, t: SystemTime) {
    put_duration(out, t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO));
}

/// The removal of `key` of `service` (an increment's record).
pub(crate) fn encode_removal(out: &mut Vec<u8>, service: &str, key: &str) {
    out.push(REMOVE);
    put_bytes(out, service.as_bytes());
    put_bytes(out, key.as_bytes());
}

/// The key rules (`ServiceCache::key_rules`) the puts of `service` in this file were keyed by.
pub(crate) fn encode_key_rules(out: &mut Vec<u8>, service: &str, rules: &str) {
    out.push(KEY_RULES);
    put_bytes(out, service.as_bytes());
    put_bytes(out, rules.as_bytes());
}

/// One URL's variants, as a version 2 record.
pub(crate) fn encode(out: &mut Vec<u8>, service: &str, key: &str, variants: &[Arc<Variant>]) {
    out.push(PUT);
    put_bytes(out, service.as_bytes());
    put_bytes(out, key.as_bytes());
    put_u32(out, variants.len() as u32);
    for v in variants {
        put_u16(out, v.status.as_u16());
        put_u32(out, v.headers.len() as u32);
        for (name, value) in &v.headers {
            put_bytes(out, name.as_str().as_bytes());
            put_bytes(out, value.as_bytes());
        }
        put_bytes(out, &v.body);
        put_time(out, v.timing.request_time);
        put_time(out, v.timing.response_time);
        match v.timing.date {
            Some(d) => {
                out.push(1);
                put_time(out, d);
            }
            None => out.push(0),
        }
        put_duration(out, v.timing.age_value);
        let f = &v.freshness;
        put_duration(out, f.lifetime);
        put_duration(out, f.stale_while_revalidate);
        put_duration(out, f.stale_if_error);
        out.push(u8::from(f.must_revalidate) | (u8::from(f.always_revalidate) << 1));
        put_u32(out, v.selectors.len() as u32);
        for (name, value) in &v.selectors {
            put_bytes(out, name.as_str().as_bytes());
            match value {
                Some(value) => {
                    out.push(1);
                    put_bytes(out, value.as_bytes());
                }
                None => out.push(0),
            }
        }
    }
}

/// A bounds-checked reader over one record's payload; `None` on any inconsistency.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }

    fn str(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_owned)
    }

    fn duration(&mut self) -> Option<Duration> {
        self.u64().map(Duration::from_nanos)
    }

    fn time(&mut self) -> Option<SystemTime> {
        self.duration().map(|d| UNIX_EPOCH + d)
    }

    /// A count of items that each take at least `min_size` bytes: a damaged count cannot make
    /// us reserve more than the payload could hold.
    fn count(&mut self, min_size: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.saturating_mul(min_size) <= self.0.len()).then_some(n)
    }
}

/// A record of a point of `version`.
pub(crate) fn decode(version: u8, payload: &[u8]) -> Option<Change> {
    let mut c = Cursor(payload);
    if version >= 2 {
        match c.u8()? {
            PUT => {}
            REMOVE => {
                let service = c.str()?;
                let key = c.str()?;
                return c.0.is_empty().then_some(Change::Remove { service, key });
            }
            KEY_RULES => {
                let service = c.str()?;
                let rules = c.str()?;
                return c
                    .0
                    .is_empty()
                    .then_some(Change::KeyRules { service, rules });
            }
            _ => return None,
        }
    }
    decode_put(c).map(Change::Put)
}

fn decode_put(mut c: Cursor<'_>) -> Option<Record> {
    let service = c.str()?;
    let key = c.str()?;
    let n = c.count(2)?;
    // The count bounds the bytes read, not the memory per item (a Variant is hundreds of bytes
    // in memory, two on disk): reserve little and let the vector grow with what decodes.
    let mut variants = Vec::with_capacity(n.min(8));
    for _ in 0..n {
        let status = StatusCode::from_u16(c.u16()?).ok()?;
        let headers_len = c.count(16)?;
        // try_append: a damaged count past what a HeaderMap holds (32 768) is an error, not a
        // panic; the reservation is small whatever the count says.
        let mut headers = HeaderMap::try_with_capacity(headers_len.min(64)).ok()?;
        for _ in 0..headers_len {
            let name = HeaderName::from_bytes(c.bytes()?).ok()?;
            let value = HeaderValue::from_bytes(c.bytes()?).ok()?;
            headers.try_append(name, value).ok()?;
        }
        let body = Bytes::copy_from_slice(c.bytes()?);
        let request_time = c.time()?;
        let response_time = c.time()?;
        let date = match c.u8()? {
            0 => None,
            1 => Some(c.time()?),
            _ => return None,
        };
        let timing = Timing {
            request_time,
            response_time,
            date,
            age_value: c.duration()?,
        };
        let lifetime = c.duration()?;
        let stale_while_revalidate = c.duration()?;
        let stale_if_error = c.duration()?;
        let flags = c.u8()?;
        let freshness = Freshness {
            lifetime,
            stale_while_revalidate,
            stale_if_error,
            must_revalidate: flags & 1 != 0,
            always_revalidate: flags & 2 != 0,
        };
        let selectors_len = c.count(9)?;
        let mut selectors = Vec::with_capacity(selectors_len.min(8));
        for _ in 0..selectors_len {
            let name = HeaderName::from_bytes(c.bytes()?).ok()?;
            let value = match c.u8()? {
                0 => None,
                1 => Some(HeaderValue::from_bytes(c.bytes()?).ok()?),
                _ => return None,
            };
            selectors.push((name, value));
        }
        variants.push(Variant::new(
            status, headers, body, timing, freshness, selectors,
        ));
    }
    c.0.is_empty().then_some(Record {
        service,
        key,
        variants,
    })
}
