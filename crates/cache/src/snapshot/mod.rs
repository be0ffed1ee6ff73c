//! Disaster recovery: cached objects written to disk as recovery points, and read back on
//! start, so a restart (or a replacement machine given the directory) begins with a warm cache.
//!
//! A point is a **full** point (every object) or an **increment** (only what was added, replaced
//! or removed since the point before it). A full point and the increments after it form a
//! chain; restoring an increment restores its whole chain in order. Each point is one file,
//! `streamgate-<created, unix ms, 16 digits>.snap` (increments `….inc.snap`):
//!
//! ```text
//! header   "SGSNAP02" | created ms | base ms (the chain's full point) | parent ms (0: full)
//!          | records | objects (URLs in the cache at this point): u64 each
//!          | CRC-32 of the 48 bytes before it: u32
//! record   payload length: u32 | CRC-32 of the payload: u32 | payload
//! payload  0 | one URL's variants      or      1 | service | key   (removed since the parent)
//! ```
//!
//! Integers are little-endian; version 1 files ("SGSNAP01", full points without record tags)
//! are still read. A file counts only whole: the magic, every checksum, exactly `records`
//! records and nothing after them. It is written under a temporary name (owner-only), synced,
//! then renamed, so a crash while writing never leaves a half file under a point's name; a
//! temporary file left by a crash is removed by [`clean_temporary`] at start. Objects keep their
//! absolute timestamps: after a restore their Age includes the time the daemon was down, and
//! what expired meanwhile is not restored.

mod chain;
pub(crate) mod codec;
pub mod journal;
mod restore;
mod retention;

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::entry::Variant;
use codec::{HEADER_LEN, Header};

pub use chain::{ChainState, Kind, Thresholds, chain_of, next_kind, to_delete};
pub use restore::{Plan, Restored, apply_plan, plan, restore};
pub use retention::{Retention, apply_retention, settle};

/// The file in the recovery directory naming the point to restore at the next start.
pub const RESTORE_TO: &str = "restore-to";
const PREFIX: &str = "streamgate-";
const SUFFIX: &str = ".snap";
const INCREMENT_SUFFIX: &str = ".inc.snap";

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a valid recovery point: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("no recovery point {name} in {}; `streamgate snapshot list` shows them", dir.display())]
    NotFound { dir: PathBuf, name: String },
}

/// One recovery point on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPoint {
    pub path: PathBuf,
    pub created: SystemTime,
    /// Records: URLs stored (a full point), or URLs put and removed (an increment).
    pub records: u64,
    /// URLs in the cache at this point: what restoring it gives back (less what expires).
    pub objects: u64,
    /// File size.
    pub bytes: u64,
    /// When the full point this point's chain starts from was created (its own time for a full
    /// point).
    pub base: SystemTime,
    /// The point this increment applies on top of; `None` for a full point.
    pub parent: Option<SystemTime>,
}

impl RecoveryPoint {
    pub fn kind(&self) -> Kind {
        if self.parent.is_some() {
            Kind::Increment
        } else {
            Kind::Full
        }
    }

    /// The file name, which is how an operator names a point.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }

    /// Whether `name` names this point: its file name, with or without `.snap`, or its
    /// creation time in unix milliseconds.
    pub fn is_named(&self, name: &str) -> bool {
        let file = self.name();
        name == file
            || file.strip_suffix(SUFFIX) == Some(name)
            || name
                .parse::<u64>()
                .is_ok_and(|ms| ms == unix_ms(self.created))
    }
}

/// One URL's stored variants, as read back.
#[derive(Debug)]
pub struct Record {
    pub service: String,
    pub key: String,
    pub variants: Vec<Variant>,
}

/// One record of a point.
#[derive(Debug)]
pub enum Change {
    /// The URL's variants as they are now.
    Put(Record),
    /// The URL is gone since the parent point (expired, evicted, purged).
    Remove { service: String, key: String },
    /// The key rules the service's puts in this file were keyed by (first in a file; points
    /// written before they were recorded have none).
    KeyRules { service: String, rules: String },
}

/// One record to write: a URL's variants, or its removal.
#[derive(Debug, Clone)]
pub enum ToWrite<'a> {
    Put {
        service: &'a str,
        key: &'a str,
        variants: &'a [Arc<Variant>],
    },
    Remove {
        service: &'a str,
        key: &'a str,
    },
    KeyRules {
        service: &'a str,
        rules: String,
    },
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

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Writes a point into `dir` (created if missing): a full point when `parent` is `None`, else
/// an increment on top of `parent`. Blocking: call it off the async runtime.
/// `objects`: the URLs in the cache at this point (for a full point, `records.len()`);
/// `write_rate`: at most this many bytes per second (`None`: as fast as the disk takes them).
pub fn write(
    dir: &Path,
    parent: Option<&RecoveryPoint>,
    records: &[ToWrite<'_>],
    objects: u64,
    write_rate: Option<u64>,
) -> Result<RecoveryPoint, SnapshotError> {
    write_at(dir, parent, records, objects, write_rate, SystemTime::now())
}

/// [`write`], the point dated `looked`: when its objects were gathered from the caches, which
/// is the moment it holds (and what the purge journal compares with).
pub fn write_at(
    dir: &Path,
    parent: Option<&RecoveryPoint>,
    records: &[ToWrite<'_>],
    objects: u64,
    write_rate: Option<u64>,
    looked: SystemTime,
) -> Result<RecoveryPoint, SnapshotError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Never older than the newest point already there, so names sort in the order written.
    let newest = list(dir)?.first().map_or(0, |p| unix_ms(p.created));
    let ms = unix_ms(looked).max(newest.saturating_add(1));
    let (base_ms, parent_ms, suffix) = match parent {
        Some(p) => (unix_ms(p.base), unix_ms(p.created), INCREMENT_SUFFIX),
        None => (ms, 0, SUFFIX),
    };
    let path = dir.join(format!("{PREFIX}{ms:016}{suffix}"));
    let header = codec::encode_header(&Header {
        version: 2,
        created_ms: ms,
        base_ms,
        parent_ms,
        records: records.len() as u64,
        objects,
    });
    replace_file(&path, |out| {
        out.write_all(&header)?;
        let mut payload = Vec::new();
        let mut written = 0u64;
        let started = std::time::Instant::now();
        for r in records {
            payload.clear();
            match r {
                ToWrite::Put {
                    service,
                    key,
                    variants,
                } => codec::encode(&mut payload, service, key, variants),
                ToWrite::Remove { service, key } => {
                    codec::encode_removal(&mut payload, service, key)
                }
                ToWrite::KeyRules { service, rules } => {
                    codec::encode_key_rules(&mut payload, service, rules)
                }
            }
            let len = u32::try_from(payload.len()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "an object is over 4 GiB")
            })?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(&crc32fast::hash(&payload).to_le_bytes())?;
            out.write_all(&payload)?;
            written += 8 + payload.len() as u64;
            // Paced: a point written flat out competes with the proxy for memory bandwidth
            // and the page cache (see `write_rate` in docs/configuration.md).
            if let Some(rate) = write_rate {
                let due = Duration::from_secs_f64(written as f64 / rate as f64);
                let spent = started.elapsed();
                if due > spent + Duration::from_millis(2) {
                    std::thread::sleep(due - spent);
                }
            }
        }
        Ok(())
    })
    .map_err(io_err(&path))?;
    Ok(RecoveryPoint {
        bytes: fs::metadata(&path).map_err(io_err(&path))?.len(),
        path,
        created: at_ms(ms),
        records: records.len() as u64,
        objects,
        base: at_ms(base_ms),
        parent: (parent_ms != 0).then(|| at_ms(parent_ms)),
    })
}

/// A whole full point in memory holding `payloads` as its records, with their checksums: what
/// the fuzz harness decodes to get past the checksums to the record decoder.
pub(crate) fn frame(created_ms: u64, payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = codec::encode_header(&Header {
        version: 2,
        created_ms,
        base_ms: created_ms,
        parent_ms: 0,
        records: payloads.len() as u64,
        objects: payloads.len() as u64,
    });
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
        let mut open = fs::OpenOptions::new();
        open.write(true).create_new(true);
        // Owner-only: a point holds every cached response, some of them private to a tenant.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let mut out = BufWriter::with_capacity(1 << 20, open.open(&tmp)?);
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

/// Removes temporary files a crash left behind while writing a point (or the overrides file)
/// in `dir`. Returns how many were removed.
pub fn clean_temporary(dir: &Path) -> Result<usize, SnapshotError> {
    let read_dir = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut removed = 0;
    for entry in read_dir {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
        {
            let path = entry.path();
            // One that cannot go (a directory so named, another owner's file) is left, said,
            // and not allowed to stop the restore that runs after this.
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a temporary file in the snapshots directory; left as it is")
                }
            }
        }
    }
    Ok(removed)
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
        // Regular files only (a link is followed): opening a FIFO so named would block the
        // start that restores from it.
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
            && fs::metadata(entry.path()).is_ok_and(|m| m.is_file())
        {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The recovery points in `dir`, newest first, from their headers (a missing directory has none).
/// Files whose header is damaged are left out; [`read_each`] says what is wrong with one.
pub fn list(dir: &Path) -> Result<Vec<RecoveryPoint>, SnapshotError> {
    scan(dir, |_| {})
}

/// `list`, telling `on_damaged` about each file left out.
pub(crate) fn scan(
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
            Ok((point, _, _)) => points.push(point),
            Err(e) => on_damaged(&e),
        }
    }
    points.sort_by(|a, b| b.created.cmp(&a.created).then(b.path.cmp(&a.path)));
    Ok(points)
}

/// The header of a point of `bytes` bytes, its format version, and the bytes read past the
/// header (a version 1 header is shorter than the read).
fn header(
    path: &Path,
    input: &mut impl Read,
    bytes: u64,
) -> Result<(RecoveryPoint, u8, Vec<u8>), SnapshotError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match input.read(&mut h[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    let head = codec::decode_header(&h[..got]).map_err(|why| corrupt(path, why))?;
    let point = RecoveryPoint {
        path: path.to_path_buf(),
        created: at_ms(head.created_ms),
        records: head.records,
        objects: head.objects,
        bytes,
        base: at_ms(head.base_ms),
        parent: (head.parent_ms != 0).then(|| at_ms(head.parent_ms)),
    };
    let len = if head.version == 1 {
        codec::HEADER_V1_LEN
    } else {
        HEADER_LEN
    };
    Ok((point, head.version, h[len.min(got)..got].to_vec()))
}

/// Reads a whole recovery point, handing each record to `each` as it is checked (memory: one
/// record, whatever the file's size); any damage fails the whole file, after the records
/// before it were handed over (verify first where that matters).
pub fn read_each(path: &Path, each: impl FnMut(Change)) -> Result<RecoveryPoint, SnapshotError> {
    let file = File::open(path).map_err(io_err(path))?;
    let bytes = file.metadata().map_err(io_err(path))?.len();
    read_from(path, BufReader::with_capacity(1 << 20, file), bytes, each)
}

/// Reads a point whole, checking every checksum and decoding every record, and drops them.
pub fn verify(path: &Path) -> Result<RecoveryPoint, SnapshotError> {
    read_each(path, drop)
}

/// `read_each` of a point held in memory; `name` stands for its path in errors.
pub fn read_bytes(
    name: &Path,
    data: &[u8],
    each: impl FnMut(Change),
) -> Result<RecoveryPoint, SnapshotError> {
    read_from(name, data, data.len() as u64, each)
}

fn read_from(
    path: &Path,
    mut input: impl Read,
    bytes: u64,
    mut each: impl FnMut(Change),
) -> Result<RecoveryPoint, SnapshotError> {
    let (point, version, past) = header(path, &mut input, bytes)?;
    let consumed = if version == 1 {
        codec::HEADER_V1_LEN as u64
    } else {
        HEADER_LEN as u64
    };
    let mut input = past.as_slice().chain(input);
    let mut left = point.bytes.saturating_sub(consumed);
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
        let record = codec::decode(version, &payload)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::CacheRegistry;
    use crate::policy::{Freshness, Timing};
    use crate::store::tests_support::spec;
    use bytes::Bytes;
    use http::StatusCode;
    use http::header::{HeaderMap, HeaderName, HeaderValue};
    use streamgate_telemetry::Metrics;

    /// A full point of everything in `caches`.
    fn full(caches: &CacheRegistry, dir: &Path) -> RecoveryPoint {
        let mut objects = Vec::new();
        for (service, cache) in caches.services() {
            for (key, entry) in cache.entries() {
                objects.push((service.clone(), key, entry));
            }
        }
        let records: Vec<ToWrite<'_>> = objects
            .iter()
            .map(|(service, key, entry)| ToWrite::Put {
                service,
                key,
                variants: entry.as_slice(),
            })
            .collect();
        let n = records.len() as u64;
        write(dir, None, &records, n, None).unwrap()
    }

    fn read(path: &Path) -> Result<(RecoveryPoint, Vec<Record>), SnapshotError> {
        let mut records = Vec::new();
        let point = read_each(path, |c| match c {
            Change::Put(r) => records.push(r),
            Change::Remove { .. } => panic!("a removal in a full point"),
            Change::KeyRules { .. } => {}
        })?;
        Ok((point, records))
    }

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
        headers.append("content-length", HeaderValue::from(body.len()));
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
        let point = full(&caches, dir.path());
        assert_eq!(point.records, 1);
        assert_eq!(point.kind(), Kind::Full);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&point.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "owner-only");
        }

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
        let done = restore(&fresh, dir.path(), None, |e| panic!("{e}"))
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
        let good = std::fs::read(full(&caches, dir.path()).path).unwrap();
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
        count[32] = 2;
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
            written.push(full(&caches, dir.path()));
            let done = apply_retention(dir.path(), 2, None, SystemTime::now());
            assert!(done.failed.is_empty());
        }
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed, vec![written[2].clone(), written[1].clone()]);
        assert!(!written[0].path.exists());
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

        std::fs::write(
            &written[2].path,
            b"SGSNAP02 damaged beyond its header, and a good deal more",
        )
        .unwrap();
        let fresh = registry();
        let mut damaged = Vec::new();
        let done = restore(&fresh, dir.path(), None, |e| damaged.push(e.to_string()))
            .unwrap()
            .unwrap();
        assert_eq!(done.point, written[1]);
        assert_eq!((done.restored, done.damaged), (2, 1));
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
        full(&caches, dir.path());
        let other = CacheRegistry::new(Arc::new(Metrics::new()));
        other.for_service("video", &spec(1 << 24));
        let done = restore(&other, dir.path(), None, |e| panic!("{e}"))
            .unwrap()
            .unwrap();
        assert_eq!((done.restored, done.unclaimed), (0, 1));
    }

    fn keys(caches: &CacheRegistry) -> Vec<String> {
        let mut k: Vec<String> = caches
            .get("cdn")
            .unwrap()
            .entries()
            .into_iter()
            .map(|(k, _)| k.to_string())
            .collect();
        k.sort();
        k
    }

    /// An increment of puts and removals on top of `parent`.
    fn increment(
        caches: &CacheRegistry,
        dir: &Path,
        parent: &RecoveryPoint,
        put: &[&str],
        removed: &[&str],
    ) -> RecoveryPoint {
        let cdn = caches.get("cdn").unwrap();
        let entries = cdn.entries();
        let mut records: Vec<ToWrite<'_>> = entries
            .iter()
            .filter(|(k, _)| put.contains(&k.as_ref()))
            .map(|(k, e)| ToWrite::Put {
                service: "cdn",
                key: k,
                variants: e.as_slice(),
            })
            .collect();
        records.extend(removed.iter().map(|k| ToWrite::Remove {
            service: "cdn",
            key: k,
        }));
        let objects = cdn.objects();
        write(dir, Some(parent), &records, objects, None).unwrap()
    }

    #[test]
    fn a_chain_restores_exactly_what_was_alive_at_its_last_increment() {
        let dir = tempfile::tempdir().unwrap();
        let caches = registry();
        let cdn = caches.get("cdn").unwrap();
        for k in ["http://h/1", "http://h/2", "http://h/3"] {
            cdn.insert(k, variant(b"v1", None, true));
        }
        let f = full(&caches, dir.path());
        // Replaced, added, removed.
        cdn.insert("http://h/1", variant(b"v2", None, true));
        cdn.insert("http://h/4", variant(b"v1", None, true));
        cdn.purge_url("http://h/2");
        let i1 = increment(
            &caches,
            dir.path(),
            &f,
            &["http://h/1", "http://h/4"],
            &["http://h/2"],
        );
        assert_eq!(
            (i1.kind(), i1.records, i1.base, i1.parent),
            (Kind::Increment, 3, f.created, Some(f.created))
        );
        assert!(i1.name().ends_with(".inc.snap"));
        cdn.purge_url("http://h/3");
        let i2 = increment(&caches, dir.path(), &i1, &[], &["http://h/3"]);
        let want = keys(&caches);
        assert_eq!(want, ["http://h/1", "http://h/4"]);

        let fresh = registry();
        let done = restore(&fresh, dir.path(), None, |e| panic!("{e}"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (done.point.clone(), done.chain, done.restored),
            (i2.clone(), 3, 2)
        );
        assert_eq!(keys(&fresh), want);
        let body = fresh
            .get("cdn")
            .unwrap()
            .lookup("http://h/1", &HeaderMap::new())
            .unwrap()
            .body
            .clone();
        assert_eq!(
            body,
            Bytes::from_static(b"v2"),
            "the replacement, not the full point's copy"
        );

        // An older point on request: the chain up to it.
        let older = registry();
        let done = restore(&older, dir.path(), Some(&i1.name()), |e| panic!("{e}"))
            .unwrap()
            .unwrap();
        assert_eq!(done.point, i1);
        assert_eq!(keys(&older), ["http://h/1", "http://h/3", "http://h/4"]);
        let missing = restore(&older, dir.path(), Some("streamgate-0.snap"), |_| {});
        assert!(matches!(missing, Err(SnapshotError::NotFound { .. })));

        // A damaged increment ends the chain at the point before it.
        let mut bytes = fs::read(&i2.path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&i2.path, bytes).unwrap();
        let after_damage = registry();
        let mut damaged = Vec::new();
        let done = restore(&after_damage, dir.path(), None, |e| {
            damaged.push(e.to_string())
        })
        .unwrap()
        .unwrap();
        assert_eq!((done.point.clone(), done.damaged), (i1.clone(), 1));
        assert!(damaged[0].contains("checksum"), "{damaged:?}");
        assert_eq!(
            keys(&after_damage),
            ["http://h/1", "http://h/3", "http://h/4"]
        );
    }

    #[test]
    fn temporary_files_of_a_crash_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".streamgate-1.snap.99.0.tmp"), b"half").unwrap();
        fs::write(dir.path().join("keep.me"), b"x").unwrap();
        // One that cannot be removed is left, and does not stop the rest (nor the restore).
        fs::create_dir(dir.path().join(".stuck.tmp")).unwrap();
        assert_eq!(clean_temporary(dir.path()).unwrap(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        // A FIFO named like a point is not one: opening it would block the start.
        let fifo = dir.path().join(format!("{PREFIX}fifo{SUFFIX}"));
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        assert_eq!(files(dir.path()).unwrap(), Vec::<PathBuf>::new());
        assert!(list(dir.path()).unwrap().is_empty());
        assert_eq!(clean_temporary(&dir.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn a_point_restores_only_what_the_cache_could_have_stored() {
        let dir = tempfile::tempdir().unwrap();
        let caches = registry();
        let cdn = caches.get("cdn").unwrap();
        let with = |name: &'static str, value: &'static str| {
            let mut v = variant(b"x", None, true);
            v.headers.insert(name, HeaderValue::from_static(value));
            v
        };
        let mut partial = variant(b"x", None, true);
        partial.status = StatusCode::PARTIAL_CONTENT;
        // No freshness of its own, and a status no default_ttl or heuristic stores.
        let mut error = variant(b"x", None, true);
        error.status = StatusCode::INTERNAL_SERVER_ERROR;
        error.headers.remove("cache-control");
        let mut ahead = variant(b"ahead", None, true);
        let year = Duration::from_secs(365 * 86_400);
        ahead.timing.response_time += year;
        ahead.freshness.lifetime = Duration::from_secs(4_000_000_000);
        // Put there as a writer of the directory could: the live path refuses each of these.
        cdn.insert("http://h/cookie", with("set-cookie", "session=alice"));
        cdn.insert(
            "http://h/private",
            with("cache-control", "private, max-age=600"),
        );
        cdn.insert("http://h/no-store", with("cache-control", "no-store"));
        cdn.insert("http://h/partial", partial);
        cdn.insert("http://h/error", error);
        cdn.insert("http://h/ahead", ahead);
        cdn.insert("http://h/fine", variant(b"fine", None, true));
        full(&caches, dir.path());

        let fresh = registry();
        let done = restore(&fresh, dir.path(), None, |e| panic!("{e}"))
            .unwrap()
            .unwrap();
        assert_eq!(done.restored, 2);
        let cdn = fresh.get("cdn").unwrap();
        let req = HeaderMap::new();
        for gone in ["cookie", "private", "no-store", "partial", "error"] {
            let key = format!("http://h/{gone}");
            assert!(cdn.lookup(&key, &req).is_none(), "{gone} restored");
        }
        assert!(cdn.lookup("http://h/fine", &req).is_some());
        let ahead = cdn.lookup("http://h/ahead", &req).unwrap();
        let now = SystemTime::now();
        assert!(
            ahead.timing.response_time <= now,
            "a response time in the future"
        );
        assert!(ahead.freshness.lifetime <= Duration::from_secs(1 << 31));
    }

    #[test]
    fn a_replacement_the_cache_refuses_does_not_bring_back_the_older_copy() {
        let dir = tempfile::tempdir().unwrap();
        let caches = registry();
        let cdn = caches.get("cdn").unwrap();
        cdn.insert("http://h/v", variant(b"small", None, true));
        let f = full(&caches, dir.path());
        let big: &'static [u8] = Box::leak(vec![b'x'; 512 * 1024].into_boxed_slice());
        cdn.insert("http://h/v", variant(big, None, true));
        increment(&caches, dir.path(), &f, &["http://h/v"], &[]);
        // Restored where max_object_size is 256 KiB: the replacement does not fit.
        let small = CacheRegistry::new(Arc::new(Metrics::new()));
        small.for_service("cdn", &spec(1 << 20));
        let done = restore(&small, dir.path(), None, |e| panic!("{e}"))
            .unwrap()
            .unwrap();
        assert_eq!(done.restored, 0);
        assert!(
            small
                .get("cdn")
                .unwrap()
                .lookup("http://h/v", &HeaderMap::new())
                .is_none()
        );
    }
}
