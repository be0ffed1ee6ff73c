//! The purge journal: every operator purge (admin API, PURGE request, fleet) written to disk
//! before it is answered or acknowledged, and applied again after a restore.
//!
//! A purge reaches the recovery points with the next point, at least 5 s after the last one
//! (ten times its writing time: minutes for a large cache). A crash in between restored the
//! purged object from the older point, and a fleet purge already acknowledged to JetStream never
//! came again: a takedown undone by a restart. One line appended and `fdatasync`ed per purge
//! closes that window; a point written after a purge makes its line unneeded, and it is dropped
//! once such a point has been read back.
//!
//! One thread does the journal's file work ([`Writer`]): purges are queued without blocking the
//! runtime that answers requests, written in batches with one `fdatasync` each, and whoever
//! answers or acknowledges a purge waits for [`Writer::on_disk`]. Appends and trims are never
//! interleaved, because only that thread does either.
//!
//! A line: `<ms since the epoch>\t<service, empty for all>\t<url|prefix|tag|all>\t<value>`,
//! the value escaped (`\\`, `\t`, `\n`). A line that does not read (the torn last line of a
//! crash) is skipped.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use crate::Purge;

/// The journal's file name in the snapshots directory.
pub const JOURNAL: &str = "purges.journal";

/// One purge as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journaled {
    pub at_ms: u64,
    /// The one service it was for, or every service.
    pub service: Option<String>,
    pub what: Purge,
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

impl Journaled {
    fn line(&self) -> String {
        let (kind, value) = match &self.what {
            Purge::Url(u) => ("url", u.as_str()),
            Purge::Prefix(p) => ("prefix", p.as_str()),
            Purge::Tag(t) => ("tag", t.as_str()),
            Purge::All => ("all", ""),
        };
        // Service names are never empty (the config refuses one), so empty means every service.
        let service = self.service.as_deref().map_or(String::new(), escape);
        format!("{}\t{service}\t{kind}\t{}\n", self.at_ms, escape(value))
    }

    fn parse(line: &str) -> Option<Journaled> {
        let mut f = line.splitn(4, '\t');
        let at_ms = f.next()?.parse().ok()?;
        let service = match f.next()? {
            "" => None,
            s => Some(unescape(s)),
        };
        let kind = f.next()?;
        let value = unescape(f.next()?);
        let what = match kind {
            "url" => Purge::Url(value),
            "prefix" => Purge::Prefix(value),
            "tag" => Purge::Tag(value),
            "all" => Purge::All,
            _ => return None,
        };
        Some(Journaled {
            at_ms,
            service,
            what,
        })
    }
}

/// Appends `entries` and waits until they are on disk. A write that failed part-way (a full
/// disk) left a line without its end: the first of these goes on a line of its own, not glued
/// to that fragment and lost with it.
pub fn append(dir: &Path, entries: &[Journaled]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    fs::create_dir_all(dir)?;
    let path = dir.join(JOURNAL);
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    let meta = f.metadata()?;
    let mut last = [b'\n'];
    // A regular file's last byte, read through a handle of its own (anything else, a FIFO
    // standing in for a hung disk in a test, is written as it is).
    if meta.is_file() && meta.len() > 0 {
        fs::File::open(&path)?.read_exact_at(&mut last, meta.len() - 1)?;
    }
    let mut lines: String = if last[0] == b'\n' {
        String::new()
    } else {
        "\n".into()
    };
    lines.extend(entries.iter().map(Journaled::line));
    f.write_all(lines.as_bytes())?;
    f.sync_data()
}

enum Job {
    /// A purge and its place in the sequence.
    Append(Arc<PathBuf>, Journaled, u64),
    Trim(Arc<PathBuf>, u64),
    /// Answered once every purge queued before it is on disk: `false` if one from the given
    /// place in the sequence on could not be written.
    OnDisk(u64, tokio::sync::oneshot::Sender<bool>),
}

/// Longest a purge's answer waits for the journal's sync. A sync takes milliseconds, a slow
/// one on a busy disk a second or two; a disk that stopped answering (a hung network mount)
/// would otherwise hold every purge's answer, and a fleet purge's ack, for ever.
pub const ON_DISK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The journal's thread, started with the first purge to journal.
#[derive(Debug)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    next: std::sync::atomic::AtomicU64,
    shared: Arc<Shared>,
}

/// What the thread and those who queue for it both see.
#[derive(Debug, Default)]
struct Shared {
    /// Purges queued but not known to be on disk (still queued, or their write failed), with
    /// their directory and place in the sequence. A restore applies them again as it does the
    /// file's: a purge whose line did not reach the disk of a running daemon must not be undone
    /// by going back to a point older than it.
    unwritten: std::sync::Mutex<Vec<(Arc<PathBuf>, Journaled, u64)>>,
    /// A wait for the disk ran out and the thread has not answered since: the next waits are
    /// answered at once, not [`ON_DISK_WAIT`] each (a fleet consumer applies its purges one at
    /// a time, and would fall to one every 5 s).
    stuck: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn unwritten(&self) -> std::sync::MutexGuard<'_, Vec<(Arc<PathBuf>, Journaled, u64)>> {
        self.unwritten.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Writer {
    pub fn start() -> io::Result<Writer> {
        let (jobs, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("purge-journal".into())
            .spawn(move || run(&rx, &theirs))?;
        Ok(Writer {
            jobs,
            next: std::sync::atomic::AtomicU64::new(1),
            shared,
        })
    }

    /// The place in the sequence the next purge queued takes.
    pub fn mark(&self) -> u64 {
        self.next.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Queues `entry` for `dir`; it is on disk once a later [`Writer::on_disk`] says so.
    pub fn append(&self, dir: Arc<PathBuf>, entry: Journaled) {
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.shared
            .unwritten()
            .push((dir.clone(), entry.clone(), seq));
        if self.jobs.send(Job::Append(dir, entry, seq)).is_err() {
            tracing::error!("the purge journal's thread is gone; purges are not journaled");
        }
    }

    /// Queues dropping the purges made before `from_ms` (see [`trim`]).
    pub fn trim(&self, dir: Arc<PathBuf>, from_ms: u64) {
        let _ = self.jobs.send(Job::Trim(dir, from_ms));
    }

    /// Resolves once every purge queued so far is on disk: `false` if one queued from `mark`
    /// ([`Writer::mark`]) on could not be written (logged), or if the disk has not answered in
    /// [`ON_DISK_WAIT`]: whoever waits (an operator's purge, a fleet purge's ack) is answered
    /// that it is not on disk rather than never.
    /// Once a wait has run out, the next ones are answered `false` at once until the thread
    /// answers again.
    pub async fn on_disk(&self, mark: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.shared.stuck.load(Relaxed) {
            tracing::warn!(
                "the purge journal's disk still has not answered; the purge is applied but not journaled"
            );
            return false;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.jobs.send(Job::OnDisk(mark, tx)).is_err() {
            return false;
        }
        match tokio::time::timeout(ON_DISK_WAIT, rx).await {
            Ok(written) => written.unwrap_or(false),
            Err(_) => {
                self.shared.stuck.store(true, Relaxed);
                tracing::error!(waited = ?ON_DISK_WAIT, "the purge journal's disk has not answered; the purge is applied but not journaled");
                false
            }
        }
    }

    /// The purges queued for `dir` that are not known to be on disk, oldest first.
    pub fn unwritten(&self, dir: &Path) -> Vec<Journaled> {
        let unwritten = self.shared.unwritten();
        unwritten
            .iter()
            .filter(|(d, _, _)| d.as_path() == dir)
            .map(|(_, e, _)| e.clone())
            .collect()
    }
}

/// The thread: takes every job queued, writes the appends of a batch with one sync per
/// directory, then trims and answers in queue order.
fn run(rx: &mpsc::Receiver<Job>, shared: &Shared) {
    // The last place in the sequence whose purge could not be written.
    let mut failed: Option<u64> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut pending: Vec<(Arc<PathBuf>, Journaled, u64)> = Vec::new();
        for job in batch {
            match job {
                Job::Append(dir, e, seq) => pending.push((dir, e, seq)),
                Job::Trim(dir, from_ms) => {
                    flush(&mut pending, &mut failed, shared);
                    // A point read back holds what was purged before it, written or not.
                    shared
                        .unwritten()
                        .retain(|(d, e, _)| *d != dir || e.at_ms >= from_ms);
                    if let Err(e) = trim(&dir, from_ms) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot trim the purge journal; its purges will be applied again after a restore");
                    }
                }
                Job::OnDisk(mark, tx) => {
                    flush(&mut pending, &mut failed, shared);
                    let _ = tx.send(failed.is_none_or(|f| f < mark));
                }
            }
        }
        flush(&mut pending, &mut failed, shared);
        // The disk answered. Cleared after every batch, not only at an answer: a waiter whose
        // time ran out just as an answer came sets `stuck` again, and while it is set no one
        // queues an answer to wait for; the next purge's append clears it.
        shared
            .stuck
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Writes `pending` (one sync per directory), noting the last purge that could not be written
/// in `failed`; those written are no longer [`Shared::unwritten`].
fn flush(
    pending: &mut Vec<(Arc<PathBuf>, Journaled, u64)>,
    failed: &mut Option<u64>,
    shared: &Shared,
) {
    while let Some((dir, _, _)) = pending.first() {
        let dir = dir.clone();
        let (these, rest): (Vec<_>, Vec<_>) = std::mem::take(pending)
            .into_iter()
            .partition(|(d, _, _)| *d == dir);
        *pending = rest;
        let last = these.iter().map(|(_, _, seq)| *seq).max();
        // Sorted (two threads' appends may reach the queue out of order), for a binary search
        // per entry kept: after a long hang the whole queue is one batch, and a linear search
        // each was quadratic.
        let mut seqs: Vec<u64> = these.iter().map(|(_, _, seq)| *seq).collect();
        seqs.sort_unstable();
        let entries: Vec<Journaled> = these.into_iter().map(|(_, e, _)| e).collect();
        if let Err(e) = append(&dir, &entries) {
            tracing::error!(dir = %dir.display(), error = %e, purges = entries.len(), "cannot journal purges: a crash before the next recovery point would bring their objects back");
            *failed = (*failed).max(last);
        } else {
            shared
                .unwritten()
                .retain(|(_, _, seq)| seqs.binary_search(seq).is_err());
        }
    }
}

/// Whether a purge dated `at_ms` can have been made by now (`now_ms`): one dated more than a
/// minute ahead (a clock stepped back, another machine's file) would never be trimmed and would
/// be applied at every restart.
pub fn plausible(at_ms: u64, now_ms: u64) -> bool {
    at_ms <= now_ms.saturating_add(60_000)
}

/// Every purge the journal holds, oldest first (none when there is no journal).
pub fn read(dir: &Path) -> io::Result<Vec<Journaled>> {
    let text = match fs::read(dir.join(JOURNAL)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .filter_map(Journaled::parse)
        .collect())
}

/// Drops the purges made before `from_ms` (a point read back since holds them), replacing the
/// file whole; with none left, the file goes.
pub fn trim(dir: &Path, from_ms: u64) -> io::Result<()> {
    let all = read(dir)?;
    let now = super::unix_ms(std::time::SystemTime::now());
    let keep = |e: &Journaled| e.at_ms >= from_ms && plausible(e.at_ms, now);
    if all.iter().all(keep) {
        return Ok(());
    }
    let kept: String = all
        .iter()
        .filter(|e| keep(e))
        .map(Journaled::line)
        .collect();
    let path = dir.join(JOURNAL);
    if kept.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    // `.name.tmp`: what `clean_temporary` removes after a crash mid-write.
    let tmp = dir.join(format!(".{JOURNAL}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(kept.as_bytes())?;
    f.sync_data()?;
    fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_ms: u64, service: Option<&str>, what: Purge) -> Journaled {
        Journaled {
            at_ms,
            service: service.map(str::to_string),
            what,
        }
    }

    #[test]
    fn purges_read_back_as_written_and_trim_keeps_the_newer() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), []);
        let all = [
            entry(10, None, Purge::Url("http://a/x?y=1".into())),
            entry(20, Some("-"), Purge::Prefix("http://a/\tb\\".into())),
            entry(30, None, Purge::Tag("line\nbreak".into())),
            entry(40, Some("cdn"), Purge::All),
        ];
        append(dir.path(), &all[..1]).unwrap();
        append(dir.path(), &all[1..]).unwrap();
        assert_eq!(read(dir.path()).unwrap(), all);
        // A torn last line (a crash mid-append) is skipped.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap();
        f.write_all(b"50\t\tur").unwrap();
        assert_eq!(read(dir.path()).unwrap(), all);
        // The next append after such a fragment (a write that failed part-way) is read back,
        // not glued to it.
        let after = entry(35, None, Purge::Url("after".into()));
        append(dir.path(), std::slice::from_ref(&after)).unwrap();
        let mut with_it = all.to_vec();
        with_it.push(after);
        assert_eq!(read(dir.path()).unwrap(), with_it);
        trim(dir.path(), 30).unwrap();
        assert_eq!(read(dir.path()).unwrap(), with_it[2..]);
        trim(dir.path(), 41).unwrap();
        assert!(!dir.path().join(JOURNAL).exists());
        assert_eq!(read(dir.path()).unwrap(), []);
    }

    #[tokio::test]
    async fn the_writer_answers_once_what_came_before_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let d = Arc::new(dir.path().to_path_buf());
        let w = Writer::start().unwrap();
        let start = w.mark();
        for at in 0..100 {
            w.append(d.clone(), entry(at, None, Purge::Url(format!("k{at}"))));
        }
        assert!(w.on_disk(start).await);
        assert_eq!(read(dir.path()).unwrap().len(), 100);
        // A trim queued among appends drops only what came before its time.
        w.trim(d.clone(), 50);
        w.append(d.clone(), entry(10, None, Purge::All));
        assert!(w.on_disk(start).await);
        let left = read(dir.path()).unwrap();
        assert_eq!(left.len(), 51, "50..99 and the one appended after the trim");
        // A directory that cannot be written: the answer says so.
        let file = dir.path().join("not-a-dir");
        fs::write(&file, "").unwrap();
        let failing = w.mark();
        w.append(Arc::new(file), entry(1, None, Purge::All));
        // Another purge written fine meanwhile, and asked about first: the failure is not
        // taken by it and then forgotten.
        let fine = w.mark();
        w.append(d.clone(), entry(60, None, Purge::All));
        assert!(w.on_disk(fine).await);
        assert!(
            !w.on_disk(failing).await,
            "the failed one is told, whoever asked first"
        );
        assert!(!w.on_disk(failing).await, "every time");
    }

    /// A wait that ran out just as the thread answered leaves `stuck` set with a disk that is
    /// fine: the next batch the thread writes clears it, so purges are not all told
    /// "not journaled" from then on.
    #[tokio::test]
    async fn a_disk_that_answers_again_is_not_taken_for_stuck() {
        let dir = tempfile::tempdir().unwrap();
        let d = Arc::new(dir.path().to_path_buf());
        let w = Writer::start().unwrap();
        w.shared
            .stuck
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mark = w.mark();
        w.append(d.clone(), entry(1, None, Purge::All));
        for _ in 0..100 {
            if !w.shared.stuck.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(w.on_disk(mark).await, "the purge is on disk and told so");
        assert!(w.unwritten(dir.path()).is_empty());
    }
}
