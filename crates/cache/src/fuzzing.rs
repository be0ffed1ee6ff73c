//! Every parser of the cache fed from one input, for the `cache_parsers` and `recovery_point`
//! fuzz targets (fuzz/) and the seed tests below, which run on every `cargo test`.
//!
//! The input is lines: a request's Cache-Control, a response's Cache-Control, its
//! CDN-Cache-Control, Vary, Range, an HTTP date (used as Date, Expires and Last-Modified), Age,
//! Accept-Encoding, Host. Besides "no panic", the checks are the properties the cache relies
//! on: numbers within 2^31, ranges inside the object, a normalised Accept-Encoding normalised
//! again unchanged, keys that start with their scheme.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use streamgate_config::KeyQuery;

use crate::ask::{ClientAsk, Validators, View, view};
use crate::directives::{CDN_CACHE_CONTROL, DELTA_MAX, Directives, unstored_fields};
use crate::key::{normalised_accept_encoding, purge_keys, url_key, vary_names};
use crate::policy::{Rules, Timing, age_of, parse_http_date, storable, usability};
use crate::snapshot;

/// A recovery point on any input: the bytes as a whole file (header and checksums must hold),
/// and as one record's payload framed with good checksums so that the fuzzer gets past them to
/// the record decoder. Besides "no panic": a record read back encodes to a payload that reads
/// back to the same record (encode(decode(x)) is a fixed point), and a point says how many
/// records it holds.
pub fn recovery_point(data: &[u8]) {
    let name = std::path::Path::new("fuzz.snap");
    let mut records = 0u64;
    if let Ok(point) = snapshot::read_bytes(name, data, |_| records += 1) {
        assert_eq!(point.records, records);
    }
    let framed = snapshot::frame(1, &[data]);
    let mut got = Vec::new();
    if snapshot::read_bytes(name, &framed, |r| got.push(r)).is_ok() {
        assert_eq!(got.len(), 1);
        let once = encoded(&got[0]);
        let again = snapshot::codec::decode(2, &once).expect("an encoded record decodes");
        assert_eq!(
            encoded(&again),
            once,
            "encode(decode(x)) is not a fixed point"
        );
    }
}

fn encoded(c: &snapshot::Change) -> Vec<u8> {
    let mut out = Vec::new();
    match c {
        snapshot::Change::Put(r) => {
            let variants: Vec<std::sync::Arc<crate::entry::Variant>> = r
                .variants
                .iter()
                .cloned()
                .map(std::sync::Arc::new)
                .collect();
            snapshot::codec::encode(&mut out, &r.service, &r.key, &variants);
        }
        snapshot::Change::Remove { service, key } => {
            snapshot::codec::encode_removal(&mut out, service, key);
        }
        snapshot::Change::KeyRules { service, rules } => {
            snapshot::codec::encode_key_rules(&mut out, service, rules);
        }
    }
    out
}

/// Runs every parser on `data`; panics only if a property fails.
pub fn parse_all(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let mut next = || lines.next().unwrap_or(b"");
    let mut req = HeaderMap::new();
    let mut resp = HeaderMap::new();
    let put = |map: &mut HeaderMap, name: HeaderName, raw: &[u8]| {
        if let Ok(v) = HeaderValue::from_bytes(raw) {
            map.append(name, v);
        }
    };
    put(&mut req, header::CACHE_CONTROL, next());
    put(&mut resp, header::CACHE_CONTROL, next());
    put(&mut resp, CDN_CACHE_CONTROL.clone(), next());
    put(&mut resp, header::VARY, next());
    put(&mut req, header::RANGE, next());
    let date = next();
    for name in [header::DATE, header::EXPIRES, header::LAST_MODIFIED] {
        put(&mut resp, name, date);
    }
    put(&mut resp, header::AGE, next());
    let ae = next();
    let host = String::from_utf8_lossy(next()).into_owned();

    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_435_200);
    let rd = Directives::of_request(&req);
    let targets = [CDN_CACHE_CONTROL.clone()];
    let sd = Directives::of_response(&resp, &targets);
    for d in [&rd, &sd] {
        for n in [d.max_age, d.s_maxage, d.max_stale, d.min_fresh]
            .into_iter()
            .chain([d.stale_while_revalidate, d.stale_if_error])
            .flatten()
        {
            assert!(n <= DELTA_MAX, "{n}");
        }
    }
    let _ = unstored_fields(&resp, &sd, &targets);
    let _ = vary_names(&resp);
    let _ = std::str::from_utf8(date).ok().and_then(parse_http_date);
    assert!(age_of(&resp) <= Duration::from_secs(DELTA_MAX));

    let rules = Rules {
        default_ttl: Duration::from_secs(5),
        heuristic: true,
    };
    if let Ok(f) = storable(&Method::GET, &req, StatusCode::OK, &resp, &sd, rules, now) {
        let timing = Timing::of(&resp, now - Duration::from_secs(1), now);
        for later in [0, 1, DELTA_MAX, u64::from(u32::MAX)] {
            let age = timing.current_age(now + Duration::from_secs(later));
            let _ = usability(&f, age, &rd);
        }
    }

    let len = u64::from(date.first().copied().unwrap_or(0)) * 1000;
    let ask = ClientAsk::take_from(&mut req.clone(), &Method::GET);
    match view(&ask, StatusCode::OK, &Validators::of(&resp), Some(len)) {
        View::Partial { start, end, len: l } => assert!(start <= end && end < l && l == len),
        View::Unsatisfiable { len: l } => assert_eq!(l, len),
        View::Full | View::NotModified | View::PreconditionFailed => {}
    }

    if let Ok(v) = HeaderValue::from_bytes(ae) {
        let once = normalised_accept_encoding(&v);
        assert_eq!(normalised_accept_encoding(&once), once);
    }
    for scheme in ["http", "https"] {
        let key = url_key(scheme, &host, "/p?q=1", &KeyQuery::All);
        assert!(key.starts_with(scheme), "{key}");
    }
    let _ = purge_keys(&host, &KeyQuery::Only(vec!["q".into()]));
}

#[cfg(test)]
mod tests {
    use super::{parse_all, recovery_point};

    const SEEDS: [&[u8]; 3] = [
        include_bytes!("../../../fuzz/seeds/cache_parsers/typical"),
        include_bytes!("../../../fuzz/seeds/cache_parsers/qualified"),
        include_bytes!("../../../fuzz/seeds/cache_parsers/hostile"),
    ];

    /// Every seed, every truncation and every single-byte change of it (to 0x00, '"', ',', '=',
    /// '9' and 0xff): the parsers answer each without a panic.
    #[test]
    fn seeds_and_their_corruptions() {
        for seed in SEEDS {
            parse_all(seed);
            for cut in 0..seed.len() {
                parse_all(&seed[..cut]);
            }
            for i in 0..seed.len() {
                for b in [0u8, b'"', b',', b'=', b'9', 0xff] {
                    let mut s = seed.to_vec();
                    s[i] = b;
                    parse_all(&s);
                }
            }
        }
    }

    /// A record that claims more header fields than a HeaderMap can hold, with the bytes to
    /// back the claim: refused, not a panic (a point the fuzzer's 4 KiB inputs never reach).
    #[test]
    fn a_record_with_too_many_fields_is_refused() {
        let mut p = vec![0u8]; // a put
        for s in [&b"web"[..], b"http://a/"] {
            p.extend((s.len() as u64).to_le_bytes());
            p.extend(s);
        }
        p.extend(1u32.to_le_bytes());
        p.extend(200u16.to_le_bytes());
        let fields = 40_000u32;
        p.extend(fields.to_le_bytes());
        for _ in 0..fields {
            for s in [&b"x"[..], b"y"] {
                p.extend((s.len() as u64).to_le_bytes());
                p.extend(s);
            }
        }
        let framed = crate::snapshot::frame(1, &[&p]);
        let e = crate::snapshot::read_bytes(std::path::Path::new("big"), &framed, |_| {});
        assert!(e.unwrap_err().to_string().contains("does not decode"));
    }

    /// Version 2 seeds: an increment holding a put and a removal, and each record's payload.
    fn v2_seeds() -> Vec<Vec<u8>> {
        use crate::snapshot::{Change, codec};
        let v1 = include_bytes!("../../../fuzz/seeds/recovery_point/point");
        let mut changes = Vec::new();
        crate::snapshot::read_bytes(std::path::Path::new("seed"), v1, |c| changes.push(c)).unwrap();
        let Some(Change::Put(r)) = changes.into_iter().next() else {
            panic!("the v1 seed starts with a put")
        };
        let variants: Vec<_> = r.variants.into_iter().map(std::sync::Arc::new).collect();
        let (mut put, mut removal) = (Vec::new(), Vec::new());
        codec::encode(&mut put, &r.service, &r.key, &variants[..1]);
        codec::encode_removal(&mut removal, &r.service, "http://a/gone");
        let mut point = codec::encode_header(&codec::Header {
            version: 2,
            created_ms: 2,
            base_ms: 1,
            parent_ms: 1,
            records: 2,
            objects: 1,
        });
        for p in [&put, &removal] {
            point.extend((p.len() as u32).to_le_bytes());
            point.extend(crc32fast::hash(p).to_le_bytes());
            point.extend(p);
        }
        vec![point, put, removal]
    }

    /// The fuzz corpus's version 2 seeds are the ones made here (run with --ignored after a
    /// format change to write them).
    #[test]
    #[ignore = "writes fuzz/seeds"]
    fn write_v2_seeds() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/seeds/recovery_point"
        );
        for (name, bytes) in ["point_v2", "put_v2", "removal_v2"].iter().zip(v2_seeds()) {
            std::fs::write(format!("{dir}/{name}"), bytes).unwrap();
        }
    }

    /// Recovery points of both versions (a version 1 point written by the daemon before
    /// increments existed, a version 2 increment) and record payloads, every truncation and
    /// single-byte change.
    #[test]
    fn recovery_points_and_their_corruptions() {
        let v1: [&[u8]; 2] = [
            include_bytes!("../../../fuzz/seeds/recovery_point/point"),
            include_bytes!("../../../fuzz/seeds/recovery_point/record"),
        ];
        let mut records = 0;
        crate::snapshot::read_bytes(std::path::Path::new("seed"), v1[0], |_| records += 1).unwrap();
        assert_eq!(records, 2, "the version 1 seed point is still read whole");
        let v2 = v2_seeds();
        let mut changes = Vec::new();
        let point = crate::snapshot::read_bytes(std::path::Path::new("v2"), &v2[0], |c| {
            changes.push(c);
        })
        .unwrap();
        assert_eq!(
            point.parent,
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1))
        );
        assert!(matches!(changes[1], crate::snapshot::Change::Remove { .. }));
        let seeds = v1.iter().copied().chain(v2.iter().map(Vec::as_slice));
        for seed in seeds {
            recovery_point(seed);
            for cut in 0..seed.len() {
                recovery_point(&seed[..cut]);
            }
            for i in 0..seed.len() {
                for b in [0u8, 1, 2, 0x7f, 0xff] {
                    let mut s = seed.to_vec();
                    s[i] = b;
                    recovery_point(&s);
                }
            }
        }
    }
}
