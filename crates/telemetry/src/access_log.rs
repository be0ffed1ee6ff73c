//! The access log: one line per request, JSON or a `$field` template, written by a thread of its
//! own so a slow disk never stalls a request. The file is reopened on demand (SIGUSR1, for
//! logrotate). If the writer falls behind, lines are dropped and counted rather than queued
//! without bound.

use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use prometheus::IntCounter;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

/// The fields a template may use, in the order JSON lines carry them.
pub use streamgate_config::ACCESS_LOG_FIELDS as FIELDS;

/// Lines waiting for the writer at most; past this, lines are dropped and counted.
const QUEUE: usize = 64 * 1024;
/// Bytes of request fields (method, host, path) waiting for the writer at most: the line
/// count alone let clients with 64 KiB paths pin 4 GiB behind a slow disk.
const QUEUE_BYTES: usize = 32 << 20;
/// A logged field's bytes at most (HAProxy cuts whole lines at 1 KiB by default); a cut field
/// ends in [`CUT`].
const FIELD_MAX: usize = 4096;
/// Ends a field cut at [`FIELD_MAX`].
pub const CUT: &str = "...";

/// `s` cut to at most [`FIELD_MAX`] bytes (at a character boundary), marked [`CUT`], and
/// holding no more memory than that: a truncated string keeps its whole buffer.
pub fn capped(mut s: String) -> String {
    if s.len() > FIELD_MAX {
        let mut end = FIELD_MAX - CUT.len();
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(CUT);
        s.shrink_to_fit();
    }
    s
}

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub time: SystemTime,
    pub listener: Arc<str>,
    pub client: IpAddr,
    pub protocol: &'static str,
    pub method: String,
    pub host: String,
    /// Path and query as received.
    pub path: String,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub service: Option<Arc<str>>,
    pub region: Option<Arc<str>>,
    pub backend: Option<SocketAddr>,
    /// HIT, MISS, STALE, EXPIRED, BYPASS when the service caches.
    pub cache: Option<&'static str>,
    pub retries: u32,
}

impl AccessRecord {
    /// A request as it arrives, now: what it was done with (status, bytes, duration, service,
    /// region, backend, cache, retries) is filled in when it is done.
    pub fn arriving(
        listener: Arc<str>,
        client: IpAddr,
        protocol: &'static str,
        method: String,
        host: String,
        path: String,
    ) -> AccessRecord {
        AccessRecord {
            time: SystemTime::now(),
            listener,
            client,
            protocol,
            method: capped(method),
            host: capped(host),
            path: capped(path),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
            service: None,
            region: None,
            backend: None,
            cache: None,
            retries: 0,
        }
    }

    /// Bytes it holds, as counted against [`QUEUE_BYTES`].
    fn weight(&self) -> usize {
        256 + self.method.len() + self.host.len() + self.path.len()
    }
}

/// How lines look.
#[derive(Debug, Clone)]
pub enum Format {
    Json,
    Template(Vec<Piece>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Field(&'static str),
}

impl Format {
    /// Parses a template; `$name` must be one of [`FIELDS`] (`$$` is a literal `$`).
    pub fn template(t: &str) -> Result<Format, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = t.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '$' {
                text.push(c);
                continue;
            }
            if chars.peek() == Some(&'$') {
                chars.next();
                text.push('$');
                continue;
            }
            let mut name = String::new();
            while let Some(&n) = chars.peek() {
                if n.is_ascii_alphanumeric() || n == '_' {
                    name.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(field) = FIELDS.iter().find(|f| **f == name) else {
                return Err(format!(
                    "unknown field ${name}; expected one of {}",
                    FIELDS.join(", ")
                ));
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Field(field));
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Format::Template(pieces))
    }
}

/// Hands records to the writer thread.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<AccessRecord>,
    reopen: Arc<AtomicBool>,
    /// Bytes of the records queued ([`AccessRecord::weight`]).
    queued: Arc<AtomicUsize>,
    /// `access_log_dropped_total`: lines dropped because the writer fell behind.
    dropped: IntCounter,
}

impl AccessLog {
    /// Opens the destination (a file, or standard output) and starts the writer thread;
    /// lines it cannot keep up with are counted in `dropped`.
    pub fn start(
        path: Option<PathBuf>,
        format: Format,
        dropped: IntCounter,
    ) -> io::Result<Arc<AccessLog>> {
        let out = open(path.as_ref())?;
        let (tx, rx) = sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let (flag, written) = (reopen.clone(), queued.clone());
        std::thread::Builder::new()
            .name("streamgate-access-log".into())
            .spawn(move || write_loop(rx, out, path, format, flag, written))?;
        Ok(Arc::new(AccessLog {
            tx,
            reopen,
            queued,
            dropped,
        }))
    }

    /// Queues a line; never blocks. Past [`QUEUE`] lines or [`QUEUE_BYTES`], it is dropped
    /// and counted.
    pub fn log(&self, record: AccessRecord) {
        let weight = record.weight();
        if self.queued.fetch_add(weight, Relaxed) + weight > QUEUE_BYTES {
            self.queued.fetch_sub(weight, Relaxed);
            self.dropped.inc();
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(record)
        {
            self.queued.fetch_sub(weight, Relaxed);
            self.dropped.inc();
        }
    }

    /// Reopens the file before the next line (after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Relaxed);
    }
}

fn open(path: Option<&PathBuf>) -> io::Result<Box<dyn Write + Send>> {
    Ok(match path {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => Box::new(io::stdout()),
    })
}

fn write_loop(
    rx: Receiver<AccessRecord>,
    out: Box<dyn Write + Send>,
    path: Option<PathBuf>,
    format: Format,
    reopen: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    let mut next: Option<AccessRecord> = None;
    loop {
        // Flush when the queue goes quiet, so lines appear promptly without a write per line.
        let record = match next
            .take()
            .map_or_else(|| rx.recv_timeout(Duration::from_millis(200)), Ok)
        {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                let _ = out.flush();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        };
        if reopen.swap(false, Relaxed) {
            let _ = out.flush();
            match open(path.as_ref()) {
                Ok(w) => out = BufWriter::with_capacity(64 * 1024, w),
                Err(e) => {
                    tracing::error!(error = %e, "access log: cannot reopen the file; still writing to the old one")
                }
            }
        }
        queued.fetch_sub(record.weight(), Relaxed);
        line.clear();
        format_record(&format, &record, &mut line);
        line.push('\n');
        let _ = out.write_all(line.as_bytes());
        match rx.try_recv() {
            Ok(r) => next = Some(r),
            // Nothing else queued right now: make this line visible.
            Err(_) => {
                let _ = out.flush();
            }
        }
    }
}

/// Formats one record (no trailing newline).
pub fn format_record(format: &Format, r: &AccessRecord, out: &mut String) {
    match format {
        Format::Json => {
            out.push('{');
            for (i, f) in FIELDS.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                out.push_str(f);
                out.push_str("\":");
                json_value(f, r, out);
            }
            out.push('}');
        }
        Format::Template(pieces) => {
            for p in pieces {
                match p {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Field(f) => plain_value(f, r, out),
                }
            }
        }
    }
}

fn json_value(field: &str, r: &AccessRecord, out: &mut String) {
    // serde_json's escaping: quotes, backslashes and control characters.
    let string = |s: &str, out: &mut String| match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("null"),
    };
    match field {
        // Numbers are written as in templates, unquoted.
        "status" | "bytes_in" | "bytes_out" | "retries" | "duration_ms" => {
            plain_value(field, r, out);
        }
        "service" | "region" | "backend" | "cache" if is_none(field, r) => out.push_str("null"),
        // The client's text as it came: JSON escaping is enough there.
        "method" => string(&r.method, out),
        "host" => string(&r.host, out),
        "path" => string(&r.path, out),
        _ => {
            let mut v = String::new();
            plain_value(field, r, &mut v);
            string(&v, out);
        }
    }
}

fn is_none(field: &str, r: &AccessRecord) -> bool {
    match field {
        "service" => r.service.is_none(),
        "region" => r.region.is_none(),
        "backend" => r.backend.is_none(),
        "cache" => r.cache.is_none(),
        _ => false,
    }
}

/// A client's text in a template line, escaped as nginx escapes variables: `"`, `\`, control
/// bytes and bytes past ASCII as `\xHH`, so no client can end a quoted field, fake another,
/// or reorder the line's text (U+202E).
fn escaped(s: &str, out: &mut String) {
    let plain = |b: u8| b != b'"' && b != b'\\' && (0x20..0x7f).contains(&b);
    if s.bytes().all(plain) {
        out.push_str(s);
        return;
    }
    for b in s.bytes() {
        if !plain(b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
}

fn plain_value(field: &str, r: &AccessRecord, out: &mut String) {
    let dash = |o: Option<&str>, out: &mut String| out.push_str(o.unwrap_or("-"));
    match field {
        "time" => rfc3339(r.time, out),
        "listener" => out.push_str(&r.listener),
        "client" => {
            let _ = write!(out, "{}", r.client);
        }
        "protocol" => out.push_str(r.protocol),
        "method" => escaped(&r.method, out),
        "host" => escaped(&r.host, out),
        "path" => escaped(&r.path, out),
        "status" => {
            let _ = write!(out, "{}", r.status);
        }
        "bytes_in" => {
            let _ = write!(out, "{}", r.bytes_in);
        }
        "bytes_out" => {
            let _ = write!(out, "{}", r.bytes_out);
        }
        "duration_ms" => {
            let _ = write!(out, "{:.3}", r.duration.as_secs_f64() * 1e3);
        }
        "service" => dash(r.service.as_deref(), out),
        "region" => dash(r.region.as_deref(), out),
        "backend" => match r.backend {
            Some(b) => {
                let _ = write!(out, "{b}");
            }
            None => out.push('-'),
        },
        "cache" => dash(r.cache, out),
        "retries" => {
            let _ = write!(out, "{}", r.retries);
        }
        _ => out.push('-'),
    }
}

/// `2026-11-23T12:00:00.123Z`: UTC, milliseconds, fixed width.
fn rfc3339(t: SystemTime, out: &mut String) {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    match time::OffsetDateTime::from(t).format(FORMAT) {
        Ok(s) => out.push_str(&s),
        Err(_) => out.push('-'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn record() -> AccessRecord {
        AccessRecord {
            time: UNIX_EPOCH + Duration::from_millis(1_795_435_200_123),
            listener: "web".into(),
            client: "192.0.2.7".parse().unwrap(),
            protocol: "HTTP/1.1",
            method: "GET".into(),
            host: "video.example.com".into(),
            path: "/v/\"x\".ts?a=1".into(),
            status: 200,
            bytes_in: 0,
            bytes_out: 1024,
            duration: Duration::from_micros(1500),
            service: Some("video".into()),
            region: Some("eu-west".into()),
            backend: Some("10.0.0.1:8080".parse().unwrap()),
            cache: None,
            retries: 1,
        }
    }

    #[test]
    fn dates() {
        let mut s = String::new();
        rfc3339(UNIX_EPOCH, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_392_000), &mut s);
        assert_eq!(s, "2026-11-23T00:00:00.000Z");
        s.clear();
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut s);
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_lines_escape_and_use_null() {
        let mut s = String::new();
        format_record(&Format::Json, &record(), &mut s);
        assert!(s.starts_with("{\"time\":\"2026-11-23T12:00:00.123Z\",\"listener\":\"web\",\"client\":\"192.0.2.7\""), "{s}");
        assert!(s.contains("\"path\":\"/v/\\\"x\\\".ts?a=1\""), "{s}");
        assert!(s.contains("\"status\":200,"), "{s}");
        assert!(s.contains("\"cache\":null,"), "{s}");
        assert!(s.contains("\"duration_ms\":1.500,"), "{s}");
        assert!(s.ends_with("\"retries\":1}"), "{s}");
    }

    /// Lines queued faster than the writer drains them all reach the file, in order.
    #[test]
    fn a_burst_of_lines_arrives_whole_and_in_order() {
        let path = std::env::temp_dir().join(format!("sg-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let log = AccessLog::start(
            Some(path.clone()),
            Format::template("$status").unwrap(),
            dropped.clone(),
        )
        .unwrap();
        for i in 0..5000u16 {
            let mut r = record();
            r.status = i;
            log.log(r);
        }
        let want: String = (0..5000).map(|i| format!("{i}\n")).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut got = String::new();
        while std::time::Instant::now() < deadline {
            got = std::fs::read_to_string(&path).unwrap_or_default();
            if got.len() >= want.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&path);
        assert_eq!(dropped.get(), 0);
        assert!(got == want, "{} lines of 5000", got.lines().count());
    }

    #[test]
    fn templates() {
        let f = Format::template("$client $method $path $status $$ $cache").unwrap();
        let mut s = String::new();
        format_record(&f, &record(), &mut s);
        assert_eq!(s, "192.0.2.7 GET /v/\\x22x\\x22.ts?a=1 200 $ -");
        assert!(
            Format::template("$nope")
                .unwrap_err()
                .contains("unknown field $nope")
        );
    }

    /// A client's text cannot end a quoted field, add one or reorder the line.
    #[test]
    fn template_fields_from_clients_are_escaped() {
        let f = Format::template("\"$method $path\" $host").unwrap();
        let mut r = record();
        r.path = "/a\" 200 \"x\\y\u{202e}".into();
        r.host = "h ost".into();
        let mut s = String::new();
        format_record(&f, &r, &mut s);
        assert_eq!(s, "\"GET /a\\x22 200 \\x22x\\x5Cy\\xE2\\x80\\xAE\" h ost");
    }

    /// Long fields are cut, and the queue is held to bytes as well as lines: 64 KiB paths
    /// behind a writer that stalled pinned gigabytes.
    #[test]
    fn long_fields_are_cut_and_the_queue_is_held_to_its_bytes() {
        let long = format!("/{}", "a".repeat(60_000));
        let r = AccessRecord::arriving(
            "web".into(),
            "192.0.2.7".parse().unwrap(),
            "HTTP/1.1",
            "GET".into(),
            "h".into(),
            long,
        );
        assert_eq!(r.path.len(), FIELD_MAX);
        assert!(r.path.ends_with(CUT));
        assert!(
            r.path.capacity() < 2 * FIELD_MAX,
            "the cut-off part's memory is kept"
        );
        let cut = capped("é".repeat(3000));
        assert!(
            cut.len() <= FIELD_MAX && cut.ends_with(CUT),
            "cut at a boundary"
        );

        // A writer that never drains.
        let (tx, _stalled) = sync_channel(QUEUE);
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let log = AccessLog {
            tx,
            reopen: Arc::new(AtomicBool::new(false)),
            queued: Arc::new(AtomicUsize::new(0)),
            dropped: dropped.clone(),
        };
        for _ in 0..20_000 {
            log.log(r.clone());
        }
        let queued = log.queued.load(Relaxed);
        assert!(queued <= QUEUE_BYTES, "{queued} bytes queued");
        let kept = 20_000 - dropped.get();
        assert_eq!(kept as usize, queued / r.weight());
        assert!(kept < 8_000, "{kept} lines of 4 KiB kept");
    }
}
