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
//! A line: `<ms since the epoch>\t<service or ->\t<url|prefix|tag|all>\t<value>`, the value
//! escaped (`\\`, `\t`, `\n`). A line that does not read (the torn last line of a crash) is
//! skipped.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

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
        let service = self.service.as_deref().map_or("-".to_string(), escape);
        format!("{}\t{service}\t{kind}\t{}\n", self.at_ms, escape(value))
    }

    fn parse(line: &str) -> Option<Journaled> {
        let mut f = line.splitn(4, '\t');
        let at_ms = f.next()?.parse().ok()?;
        let service = match f.next()? {
            "-" => None,
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

/// Appends `entry` and waits until it is on disk.
pub fn append(dir: &Path, entry: &Journaled) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(JOURNAL))?;
    f.write_all(entry.line().as_bytes())?;
    f.sync_data()
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
    if all.iter().all(|e| e.at_ms >= from_ms) {
        return Ok(());
    }
    let kept: String = all
        .iter()
        .filter(|e| e.at_ms >= from_ms)
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
            entry(20, Some("cdn"), Purge::Prefix("http://a/\tb\\".into())),
            entry(30, None, Purge::Tag("line\nbreak".into())),
            entry(40, Some("cdn"), Purge::All),
        ];
        for e in &all {
            append(dir.path(), e).unwrap();
        }
        assert_eq!(read(dir.path()).unwrap(), all);
        // A torn last line (a crash mid-append) is skipped.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap();
        f.write_all(b"50\t-\tur").unwrap();
        assert_eq!(read(dir.path()).unwrap(), all);
        trim(dir.path(), 30).unwrap();
        assert_eq!(read(dir.path()).unwrap(), all[2..]);
        trim(dir.path(), 41).unwrap();
        assert!(!dir.path().join(JOURNAL).exists());
        assert_eq!(read(dir.path()).unwrap(), []);
    }
}
