//! Disaster recovery: every cached object written to disk as a recovery point, and read back on
//! start, so a restart (or a replacement machine given the directory) begins with a warm cache.
//!
//! A recovery point is one file, `streamgate-<created, unix ms, 16 digits>.snap`:
//!
//! ```text
//! header   "SGSNAP01" | created ms: u64 | records: u64 | CRC-32 of the 24 bytes before it: u32
//! record   payload length: u32 | CRC-32 of the payload: u32 | payload (one URL's variants)
//! ```
//!
//! Integers are little-endian. A file counts only whole: the magic, every checksum, exactly
//! `records` records and nothing after them. It is written under a temporary name, synced, then
//! renamed, so a crash while writing never leaves a half file under a recovery point's name.
//! Objects keep their absolute timestamps: after a restore their Age includes the time the daemon
//! was down, and what expired meanwhile is not restored.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use thiserror::Error;

use crate::CacheRegistry;
use crate::entry::Variant;
use crate::policy::{Freshness, Timing};

const MAGIC: &[u8; 8] = b"SGSNAP01";
const HEADER_LEN: usize = 8 + 8 + 8 + 4;
const PREFIX: &str = "streamgate-";
const SUFFIX: &str = ".snap";

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a valid recovery point: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// One recovery point on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPoint {
    pub path: PathBuf,
    pub created: SystemTime,
    /// URLs stored (each with one or more variants).
    pub records: u64,
    /// File size.
    pub bytes: u64,
}

/// One URL's stored variants, as read back.
#[derive(Debug)]
pub struct Record {
    pub service: String,
    pub key: String,
    pub variants: Vec<Variant>,
}

/// What a restore put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub point: RecoveryPoint,
    /// URLs now in the cache again.
    pub restored: u64,
    /// URLs whose every variant expired while the daemon was down.
    pub expired: u64,
    /// URLs of services that no longer exist or no longer cache.
    pub unclaimed: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes a recovery point of every service's cache into `dir` (created if missing), then deletes
/// all but the newest `keep`. Blocking: call it off the async runtime.
pub fn write(
    caches: &CacheRegistry,
    dir: &Path,
    keep: usize,
) -> Result<RecoveryPoint, SnapshotError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut entries = Vec::new();
    for (service, cache) in caches.services() {
        for (key, variants) in cache.entries() {
            entries.push((service.clone(), key, variants));
        }
    }
    let created = SystemTime::now();
    // Never older than the newest point already there, so names sort in the order written.
    let newest = list(dir)?.first().map_or(0, |p| unix_ms(p.created));
    let ms = unix_ms(created).max(newest + 1);
    let name = format!("{PREFIX}{ms:016}{SUFFIX}");
    let path = dir.join(&name);
    replace_file(&path, |out| {
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&ms.to_le_bytes());
        header.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        out.write_all(&header)?;
        let mut payload = Vec::new();
        for (service, key, variants) in &entries {
            payload.clear();
            encode(&mut payload, service, key, variants);
            let len = u32::try_from(payload.len()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("object {key} is over 4 GiB"),
                )
            })?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(&crc32fast::hash(&payload).to_le_bytes())?;
            out.write_all(&payload)?;
        }
        Ok(())
    })
    .map_err(io_err(&path))?;
    let point = RecoveryPoint {
        bytes: fs::metadata(&path).map_err(io_err(&path))?.len(),
        path,
        created: UNIX_EPOCH + Duration::from_millis(ms),
        records: entries.len() as u64,
    };
    for old in list(dir)?.iter().skip(keep.max(1)) {
        fs::remove_file(&old.path).map_err(io_err(&old.path))?;
    }
    Ok(point)
}

/// A whole point in memory holding `payloads` as its records, with their checksums: what the
/// fuzz harness decodes to get past the checksums to the record decoder.
pub(crate) fn frame(created_ms: u64, payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&created_ms.to_le_bytes());
    out.extend_from_slice(&(payloads.len() as u64).to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    for p in payloads {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Replaces `path` whole: `fill` writes a temporary file beside it, which is synced and renamed
/// over `path`, and the directory is synced, so a crash leaves the old file or the new one, never
/// a part of one. The temporary file is removed if anything fails.
pub fn replace_file(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        ));
    };
    // A name of its own per write: two writers never share (or rename away) a temporary file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}.{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        fill(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself must survive a power cut.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The files in `dir` named like recovery points, whatever their state (a missing directory has
/// none).
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let read_dir = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in read_dir {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The recovery points in `dir`, newest first, from their headers (a missing directory has none).
/// Files whose header is damaged are left out; [`read`] says what is wrong with one.
pub fn list(dir: &Path) -> Result<Vec<RecoveryPoint>, SnapshotError> {
    scan(dir, |_| {})
}

/// `list`, telling `on_damaged` about each file left out.
fn scan(
    dir: &Path,
    mut on_damaged: impl FnMut(&SnapshotError),
) -> Result<Vec<RecoveryPoint>, SnapshotError> {
    let mut points = Vec::new();
    for path in files(dir)? {
        match File::open(&path)
            .and_then(|f| Ok((f.metadata()?.len(), f)))
            .map_err(io_err(&path))
            .and_then(|(bytes, f)| header(&path, &mut BufReader::new(f), bytes))
        {
            Ok(point) => points.push(point),
            Err(e) => on_damaged(&e),
        }
    }
    points.sort_by(|a, b| b.created.cmp(&a.created).then(b.path.cmp(&a.path)));
    Ok(points)
}

/// The header of a point of `bytes` bytes.
fn header(path: &Path, input: &mut impl Read, bytes: u64) -> Result<RecoveryPoint, SnapshotError> {
    let mut h = [0u8; HEADER_LEN];
    input
        .read_exact(&mut h)
        .map_err(|_| corrupt(path, "shorter than its header"))?;
    if &h[..8] != MAGIC {
        return Err(corrupt(path, "not a StreamGate snapshot (wrong magic)"));
    }
    let stored_crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if crc32fast::hash(&h[..24]) != stored_crc {
        return Err(corrupt(path, "header checksum mismatch"));
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    Ok(RecoveryPoint {
        path: path.to_path_buf(),
        created: UNIX_EPOCH + Duration::from_millis(word(8)),
        records: word(16),
        bytes,
    })
}

/// Reads a whole recovery point, checking every checksum; any damage fails the whole file.
pub fn read(path: &Path) -> Result<(RecoveryPoint, Vec<Record>), SnapshotError> {
    let mut records = Vec::new();
    let point = read_each(path, |r| records.push(r))?;
    Ok((point, records))
}

/// `read`, handing each record to `each` as it is checked instead of holding them all (a verify
/// of a large point needs one record's memory). Records before the damage have been handed over.
pub fn read_each(path: &Path, each: impl FnMut(Record)) -> Result<RecoveryPoint, SnapshotError> {
    let file = File::open(path).map_err(io_err(path))?;
    let bytes = file.metadata().map_err(io_err(path))?.len();
    read_from(path, BufReader::with_capacity(1 << 20, file), bytes, each)
}

/// `read_each` of a point held in memory; `name` stands for its path in errors.
pub fn read_bytes(
    name: &Path,
    data: &[u8],
    each: impl FnMut(Record),
) -> Result<RecoveryPoint, SnapshotError> {
    read_from(name, data, data.len() as u64, each)
}

fn read_from(
    path: &Path,
    mut input: impl Read,
    bytes: u64,
    mut each: impl FnMut(Record),
) -> Result<RecoveryPoint, SnapshotError> {
    let point = header(path, &mut input, bytes)?;
    let mut left = point.bytes.saturating_sub(HEADER_LEN as u64);
    for i in 0..point.records {
        let mut frame = [0u8; 8];
        input.read_exact(&mut frame).map_err(|_| {
            corrupt(
                path,
                format!("cut short at record {} of {}", i + 1, point.records),
            )
        })?;
        let len = u64::from(u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]));
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        left = left.saturating_sub(8);
        // A damaged length must not make us allocate what the file cannot hold.
        if len > left {
            return Err(corrupt(
                path,
                format!(
                    "record {} claims {len} bytes, the file has {left} left (cut short or damaged)",
                    i + 1
                ),
            ));
        }
        let mut payload = vec![0u8; len as usize];
        input
            .read_exact(&mut payload)
            .map_err(|_| corrupt(path, format!("cut short in record {}", i + 1)))?;
        left -= len;
        if crc32fast::hash(&payload) != crc {
            return Err(corrupt(path, format!("record {} checksum mismatch", i + 1)));
        }
        let record = decode(&payload)
            .ok_or_else(|| corrupt(path, format!("record {} does not decode", i + 1)))?;
        each(record);
    }
    let mut extra = [0u8; 1];
    if input.read(&mut extra).map_err(io_err(path))? != 0 {
        return Err(corrupt(
            path,
            format!("bytes after the {} records it announces", point.records),
        ));
    }
    Ok(point)
}

/// Puts the newest readable recovery point in `dir` back into the caches of the services that
/// still cache (their caches must exist). A damaged point is reported through `on_damaged` and
/// the next older one is tried. `None`: no usable point.
pub fn restore(
    caches: &CacheRegistry,
    dir: &Path,
    mut on_damaged: impl FnMut(&SnapshotError),
) -> Result<Option<Restored>, SnapshotError> {
    let now = SystemTime::now();
    for candidate in scan(dir, &mut on_damaged)? {
        let (point, records) = match read(&candidate.path) {
            Ok(r) => r,
            Err(e) => {
                on_damaged(&e);
                continue;
            }
        };
        let mut done = Restored {
            point,
            restored: 0,
            expired: 0,
            unclaimed: 0,
        };
        for r in records {
            // Points written before keys carried the scheme and port (`host/path`) name objects
            // no request looks up now, and would be served to whichever port asked: left out.
            let current_key = r.key.starts_with("http://") || r.key.starts_with("https://");
            let Some(cache) = caches.get(&r.service).filter(|_| current_key) else {
                done.unclaimed += 1;
                continue;
            };
            let keep_until = r.variants.iter().map(Variant::keep_until).max();
            match keep_until.and_then(|t| t.duration_since(now).ok()) {
                Some(left) if !left.is_zero() => {
                    if cache.restore(&r.key, r.variants, left) {
                        done.restored += 1;
                    }
                }
                _ => done.expired += 1,
            }
        }
        caches.refresh_gauges();
        return Ok(Some(done));
    }
    Ok(None)
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

pub(crate) fn encode(out: &mut Vec<u8>, service: &str, key: &str, variants: &[Arc<Variant>]) {
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

pub(crate) fn decode(payload: &[u8]) -> Option<Record> {
    let mut c = Cursor(payload);
    let service = c.str()?;
    let key = c.str()?;
    let n = c.count(2)?;
    let mut variants = Vec::with_capacity(n);
    for _ in 0..n {
        let status = StatusCode::from_u16(c.u16()?).ok()?;
        let headers_len = c.count(16)?;
        // try_: a damaged count past what a HeaderMap holds (32 768) is an error, not a panic.
        let mut headers = HeaderMap::try_with_capacity(headers_len).ok()?;
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
        let mut selectors = Vec::with_capacity(selectors_len);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::tests_support::spec;
    use streamgate_telemetry::Metrics;

    fn registry() -> Arc<CacheRegistry> {
        let r = CacheRegistry::new(Arc::new(Metrics::new()));
        r.for_service("cdn", &spec(1 << 24));
        r
    }

    fn variant(body: &'static [u8], lang: Option<&'static str>, date: bool) -> Variant {
        let mut headers = HeaderMap::new();
        headers.append("cache-control", HeaderValue::from_static("max-age=600"));
        headers.append("surrogate-key", HeaderValue::from_static("a b"));
        headers.append("x-two", HeaderValue::from_static("1"));
        headers.append("x-two", HeaderValue::from_static("2"));
        headers.append("etag", HeaderValue::from_static("\"v1\""));
        let now = SystemTime::now();
        Variant::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(body),
            Timing {
                request_time: now - Duration::from_millis(5),
                response_time: now,
                date: date.then_some(now - Duration::from_secs(1)),
                age_value: Duration::from_secs(3),
            },
            Freshness {
                lifetime: Duration::from_secs(600),
                stale_while_revalidate: Duration::from_secs(7),
                stale_if_error: Duration::from_secs(9),
                must_revalidate: true,
                always_revalidate: false,
            },
            vec![(
                HeaderName::from_static("accept-language"),
                lang.map(HeaderValue::from_static),
            )],
        )
    }

    fn same(a: &Variant, b: &Variant) {
        assert_eq!(a.status, b.status);
        assert_eq!(a.headers, b.headers);
        assert_eq!(a.body, b.body);
        assert_eq!(a.timing, b.timing);
        assert_eq!(a.freshness, b.freshness);
        assert_eq!(a.selectors, b.selectors);
        assert_eq!(a.tags, b.tags);
        assert_eq!(a.etag, b.etag);
        assert_eq!(a.size, b.size);
    }

    #[test]
    fn every_field_survives_the_round_trip_and_restores_into_a_cache() {
        let dir = tempfile::tempdir().unwrap();
        let caches = registry();
        let cdn = caches.get("cdn").unwrap();
        let (de, any) = (
            variant(b"hallo", Some("de"), true),
            variant(b"hi", None, false),
        );
        assert!(cdn.insert("http://h/v", de.clone()));
        assert!(cdn.insert("http://h/v", any.clone()));
        let point = write(&caches, dir.path(), 3).unwrap();
        assert_eq!(point.records, 1);

        let (read_point, records) = read(&point.path).unwrap();
        assert_eq!(read_point, point);
        assert_eq!(
            (records[0].service.as_str(), records[0].key.as_str()),
            ("cdn", "http://h/v")
        );
        let mut got = records.into_iter().next().unwrap().variants;
        got.sort_by_key(|v| v.body.len());
        same(&got[0], &any);
        same(&got[1], &de);

        let fresh = registry();
        let done = restore(&fresh, dir.path(), |e| panic!("{e}"))
            .unwrap()
            .unwrap();
        assert_eq!((done.restored, done.expired, done.unclaimed), (1, 0, 0));
        let mut req = HeaderMap::new();
        req.insert("accept-language", HeaderValue::from_static("de"));
        let hit = fresh
            .get("cdn")
            .unwrap()
            .lookup("http://h/v", &req)
            .unwrap();
        assert_eq!(hit.body, Bytes::from_static(b"hallo"));
    }

    #[test]
    fn damage_anywhere_fails_the_whole_file_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let caches = registry();
        caches
            .get("cdn")
            .unwrap()
            .insert("http://h/a", variant(b"aaaa", None, true));
        let good = std::fs::read(write(&caches, dir.path(), 3).unwrap().path).unwrap();
        let probe = dir.path().join("probe.snap");
        let reason = |bytes: &[u8]| {
            std::fs::write(&probe, bytes).unwrap();
            match read(&probe) {
                Err(SnapshotError::Corrupt { reason, .. }) => reason,
                other => panic!("accepted damaged file: {other:?}"),
            }
        };
        assert!(reason(&good[..good.len() - 1]).contains("cut short"));
        assert!(reason(&[&good[..], b"x"].concat()).contains("bytes after"));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(reason(&magic).contains("wrong magic"));
        let mut count = good.clone();
        count[16] = 2;
        assert!(reason(&count).contains("header checksum"));
        let mut len = good.clone();
        len[HEADER_LEN + 3] = 0x7f;
        assert!(reason(&len).contains("claims"));
        let mut body = good.clone();
        let last = body.len() - 1;
        body[last] ^= 1;
        assert!(reason(&body).contains("checksum mismatch"));
        assert!(reason(b"SGSN").contains("shorter than its header"));
    }

    #[test]
    fn keeps_the_newest_points_and_falls_back_past_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let caches = registry();
        let cdn = caches.get("cdn").unwrap();
        let mut written = Vec::new();
        for key in ["http://h/1", "http://h/2", "http://h/3"] {
            cdn.insert(key, variant(b"x", None, true));
            written.push(write(&caches, dir.path(), 2).unwrap());
        }
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed, vec![written[2].clone(), written[1].clone()]);
        assert!(!written[0].path.exists());
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

        std::fs::write(&written[2].path, b"SGSNAP01 damaged beyond its header").unwrap();
        let fresh = registry();
        let mut damaged = Vec::new();
        let done = restore(&fresh, dir.path(), |e| damaged.push(e.to_string()))
            .unwrap()
            .unwrap();
        assert_eq!(done.point, written[1]);
        assert_eq!(done.restored, 2);
        assert_eq!(damaged.len(), 1);
        assert!(
            damaged[0].contains("header checksum mismatch"),
            "{damaged:?}"
        );
        assert!(
            fresh
                .get("cdn")
                .unwrap()
                .lookup("http://h/3", &HeaderMap::new())
                .is_none()
        );
    }

    #[test]
    fn objects_of_services_that_no_longer_cache_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let caches = registry();
        caches
            .get("cdn")
            .unwrap()
            .insert("http://h/a", variant(b"a", None, true));
        write(&caches, dir.path(), 1).unwrap();
        let other = CacheRegistry::new(Arc::new(Metrics::new()));
        other.for_service("video", &spec(1 << 24));
        let done = restore(&other, dir.path(), |e| panic!("{e}"))
            .unwrap()
            .unwrap();
        assert_eq!((done.restored, done.unclaimed), (0, 1));
    }
}
