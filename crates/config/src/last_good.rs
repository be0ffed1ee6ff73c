//! The last known good configuration: every config that loads (at start or by a reload) is
//! copied into `<snapshots.dir>/config/`, newest kept, so that a broken file plus a restart
//! need not mean no service (`streamgate run --fallback-last-good`), and so that `streamgate
//! check --against-last-good` can say what a new file would change.
//!
//! A copy is `streamgate-<unix ms, 16 digits>.toml`: a first line naming the file it was read
//! from (relative paths in it resolve against that file's directory, not the copy's), then the
//! file's text unchanged. Copies are written whole (temporary file, then rename), owner-only.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::model::Config;
use crate::{ConfigErrors, parse};

/// Copies kept; older ones are deleted when a new one is written.
pub const KEEP: usize = 10;
const HEADER: &str = "# streamgate last known good copy of ";

#[derive(Debug, Error)]
pub enum LastGoodError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("no last known good config in {}: one is kept each time a config loads with [snapshots] set", dir.display())]
    None { dir: PathBuf },
    #[error("{}: not a last known good copy (its first line does not name the original file)", path.display())]
    Malformed { path: PathBuf },
    #[error("the last known good copy {} no longer validates:\n{errors}", path.display())]
    Invalid { path: PathBuf, errors: ConfigErrors },
    #[error("{}: a last known good copy, damaged ({why})", path.display())]
    Damaged { path: PathBuf, why: String },
    #[error("no last known good copy in {} loads:\n{}", dir.display(), one_per_line(errors))]
    NoneLoads {
        dir: PathBuf,
        errors: Vec<LastGoodError>,
    },
}

impl LastGoodError {
    /// No copy of the file asked about was found: none at all, or only copies that cannot say
    /// whose they are (unreadable, damaged), so another file's copy may stand in for it.
    pub fn none_of_its_own(&self) -> bool {
        match self {
            LastGoodError::None { .. } => true,
            LastGoodError::NoneLoads { errors, .. } => errors.iter().all(|e| {
                !matches!(
                    e,
                    LastGoodError::Invalid { .. } | LastGoodError::Damaged { .. }
                )
            }),
            _ => false,
        }
    }
}

fn one_per_line(errors: &[LastGoodError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("- {e}")).collect();
    lines.join("\n")
}

/// The newest copy that loads, and why each newer one did not (a file it names was removed, a
/// newer binary validates differently, the disk damaged it): a fallback that stopped at the
/// first bad copy left a daemon with nine good ones unable to start.
#[derive(Debug)]
pub struct Newest {
    pub path: PathBuf,
    pub config: Config,
    pub skipped: Vec<LastGoodError>,
}

/// The directory of copies under a recovery directory.
pub fn dir_in(snapshots_dir: &Path) -> PathBuf {
    snapshots_dir.join("config")
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LastGoodError + '_ {
    move |source| LastGoodError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The copies in `dir`, newest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, LastGoodError> {
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("streamgate-") && n.ends_with(".toml"))
        })
        .collect();
    out.sort();
    out.reverse();
    Ok(out)
}

/// Keeps `config` as the newest good copy in `dir` unless the newest already holds the same
/// text; deletes all but the newest [`KEEP`]. Returns the new copy's path, if one was written.
pub fn save(dir: &Path, config: &Config) -> Result<Option<PathBuf>, LastGoodError> {
    // One writer at a time in this process: copies are named and pruned in the order they load
    // (a reload saves from a blocking task it does not wait for).
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let existing = list(dir)?;
    let body = format!(
        "{HEADER}{}\n{}",
        original(&config.source.path).display(),
        config.source.text
    );
    if let Some(newest) = existing.first()
        && fs::read_to_string(newest).is_ok_and(|t| t == body)
    {
        return Ok(None);
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let newest_ms = existing
        .first()
        .and_then(|p| {
            p.file_stem()?
                .to_str()?
                .strip_prefix("streamgate-")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    let path = dir.join(format!(
        "streamgate-{:016}.toml",
        ms.max(newest_ms.saturating_add(1))
    ));
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".config.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut open = fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let mut f = open.open(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&path)(e));
    }
    for old in list(dir)?.iter().skip(KEEP) {
        fs::remove_file(old).map_err(io_err(old))?;
    }
    Ok(Some(path))
}

/// A config file's path as copies name it: absolute, links resolved, when it exists.
fn original(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The newest copy in `dir` of the config file at `of` (any file's when `None`; several config
/// files may share a directory) that still loads, validated again as the file it was read from
/// (so relative paths resolve as they did); newer copies that do not load are passed over.
pub fn load_newest(dir: &Path, of: Option<&Path>) -> Result<Newest, LastGoodError> {
    let wanted = of.map(original);
    let mut skipped = Vec::new();
    for copy in list(dir)? {
        match read_copy(&copy, wanted.as_deref()) {
            Ok(None) => {}
            Ok(Some(config)) => {
                return Ok(Newest {
                    path: copy,
                    config,
                    skipped,
                });
            }
            Err(e) => skipped.push(e),
        }
    }
    let dir = dir.to_path_buf();
    Err(if skipped.is_empty() {
        LastGoodError::None { dir }
    } else {
        LastGoodError::NoneLoads {
            dir,
            errors: skipped,
        }
    })
}

/// The config in the copy at `path`; `None` if it is another file's than `wanted`. A copy
/// that cannot be read cannot say whose it is, and counts as one that does not load.
fn read_copy(path: &Path, wanted: Option<&Path>) -> Result<Option<Config>, LastGoodError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    // The first line says whose copy it is, even when damage further on makes the rest
    // unreadable: such a copy is this file's, not one that cannot say.
    let (first, rest) = match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (&bytes[..], &[][..]),
    };
    let first = String::from_utf8_lossy(first);
    let Some(from) = first.strip_prefix(HEADER) else {
        return Err(LastGoodError::Malformed {
            path: path.to_path_buf(),
        });
    };
    if wanted.is_some_and(|w| w != Path::new(from)) {
        return Ok(None);
    }
    let rest = std::str::from_utf8(rest).map_err(|e| LastGoodError::Damaged {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    match parse(Path::new(from), rest) {
        Ok(config) => Ok(Some(config)),
        Err(errors) => Err(LastGoodError::Invalid {
            path: path.to_path_buf(),
            errors,
        }),
    }
}

/// Where the copies of a config file would be, read leniently from a file that may not
/// validate: its `[snapshots] dir`, relative to the file's directory.
pub fn dir_of_file(path: &Path, text: &str) -> Option<PathBuf> {
    let dir = match toml::from_str::<toml::Table>(text) {
        Ok(table) => table.get("snapshots")?.get("dir")?.as_str()?.to_string(),
        // A file with a syntax error elsewhere: the `dir = "…"` line of its [snapshots] table.
        Err(_) => snapshots_dir_line(text)?,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    Some(dir_in(&base.join(dir)))
}

/// `dir = "…"` (a basic string without escapes) in the `[snapshots]` table, by lines.
fn snapshots_dir_line(text: &str) -> Option<String> {
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line.starts_with("[snapshots]");
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == "dir"
        {
            let v = v.trim();
            let v = v.strip_prefix('"')?;
            let end = v.find('"')?;
            let dir = &v[..end];
            return (!dir.contains('\\')).then(|| dir.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\
        [[regions]]\nname = \"r\"\nbackends = [ { address = \"127.0.0.1:9000\" } ]\n\
        [[services]]\nname = \"s\"\nlisteners = [\"web\"]\nregions = [\"r\"]\n";

    #[test]
    fn copies_are_kept_deduplicated_bounded_and_read_back_as_their_original() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("config");
        let original = tmp.path().join("etc/streamgate.toml");
        assert!(matches!(
            load_newest(&dir, None),
            Err(LastGoodError::None { .. })
        ));
        let config = parse(&original, GOOD).unwrap();
        let first = save(&dir, &config).unwrap().expect("a first copy");
        assert_eq!(
            save(&dir, &config).unwrap(),
            None,
            "the same text twice: one copy"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&first).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let Newest {
            path: copy,
            config: back,
            ..
        } = load_newest(&dir, None).unwrap();
        assert_eq!(copy, first);
        assert_eq!(back.source.path, original, "validated as the original file");
        assert_eq!(back.services, config.services);
        for i in 0..(KEEP + 3) {
            let text = format!("{GOOD}# version {i}\n");
            save(&dir, &parse(&original, &text).unwrap()).unwrap();
        }
        assert_eq!(list(&dir).unwrap().len(), KEEP);
        let newest = load_newest(&dir, None).unwrap().config;
        assert!(
            newest
                .source
                .text
                .ends_with(&format!("# version {}\n", KEEP + 2))
        );
    }

    #[test]
    fn copies_that_do_not_load_are_passed_over_and_named_when_none_does() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("config");
        let original = tmp.path().join("streamgate.toml");
        let good = save(&dir, &parse(&original, GOOD).unwrap())
            .unwrap()
            .unwrap();
        let newer = |n: u64| dir.join(format!("streamgate-{n:016}.toml"));
        let invalid = format!("{HEADER}{}\n[[listeners]]\nname = 1\n", original.display());
        fs::write(newer(9_000_000_000_000_001), invalid).unwrap();
        fs::write(newer(9_000_000_000_000_002), "not a copy\n").unwrap();
        let found = load_newest(&dir, None).unwrap();
        assert_eq!(found.path, good);
        let skipped: Vec<String> = found.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped[0].contains("not a last known good copy"),
            "{skipped:?}"
        );
        assert!(skipped[1].contains("no longer validates"), "{skipped:?}");
        fs::remove_file(&good).unwrap();
        let none = load_newest(&dir, None).unwrap_err().to_string();
        assert!(
            none.contains("no last known good copy") && none.contains("9000000000000001"),
            "{none}"
        );
    }

    #[test]
    fn each_config_file_falls_back_to_its_own_copies() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("config");
        let (a, b) = (tmp.path().join("a.toml"), tmp.path().join("b.toml"));
        for p in [&a, &b] {
            fs::write(p, GOOD).unwrap();
        }
        save(&dir, &parse(&a, &format!("{GOOD}# a\n")).unwrap()).unwrap();
        save(&dir, &parse(&b, &format!("{GOOD}# b\n")).unwrap()).unwrap();
        let of_a = load_newest(&dir, Some(&a)).unwrap().config;
        assert!(of_a.source.text.ends_with("# a\n"), "not b's newer copy");
        assert_eq!(of_a.source.path, fs::canonicalize(&a).unwrap());
        let c = tmp.path().join("c.toml");
        let none = load_newest(&dir, Some(&c));
        assert!(matches!(none, Err(LastGoodError::None { .. })));
        // A damaged copy cannot say whose it is: c still has none of its own, so a check of c
        // may compare it with another file's copy.
        fs::write(dir.join("streamgate-9000000000000001.toml"), "not a copy\n").unwrap();
        let damaged = load_newest(&dir, Some(&c)).unwrap_err();
        assert!(
            matches!(damaged, LastGoodError::NoneLoads { .. }),
            "{damaged}"
        );
        assert!(damaged.none_of_its_own(), "{damaged}");
        let invalid = format!("{HEADER}{}\n[[listeners]]\nname = 1\n", c.display());
        fs::write(dir.join("streamgate-9000000000000002.toml"), invalid).unwrap();
        let its_own = load_newest(&dir, Some(&c)).unwrap_err();
        assert!(!its_own.none_of_its_own(), "{its_own}");
        // c's copy damaged after its first line (a byte that is not UTF-8) is still c's.
        let mut damaged = format!("{HEADER}{}\n{GOOD}", c.display()).into_bytes();
        damaged.push(0xFF);
        fs::write(dir.join("streamgate-9000000000000002.toml"), damaged).unwrap();
        let its_own = load_newest(&dir, Some(&c)).unwrap_err();
        assert!(its_own.to_string().contains("damaged"), "{its_own}");
        assert!(!its_own.none_of_its_own(), "{its_own}");
    }

    #[test]
    fn concurrent_saves_never_mix_two_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("config");
        let path = tmp.path().join("s.toml");
        let bodies: Vec<String> = (0..2).map(|i| format!("{GOOD}# writer {i}\n")).collect();
        std::thread::scope(|s| {
            for body in &bodies {
                let (dir, path) = (&dir, &path);
                s.spawn(move || {
                    let config = parse(path, body).unwrap();
                    for _ in 0..50 {
                        save(dir, &config).unwrap();
                    }
                });
            }
        });
        for copy in list(&dir).unwrap() {
            let text = fs::read_to_string(&copy).unwrap();
            assert!(bodies.iter().any(|b| text.ends_with(b.as_str())), "{text}");
        }
        let leftovers = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn the_directory_is_found_in_a_file_that_does_not_validate() {
        let path = Path::new("/etc/streamgate/streamgate.toml");
        let text = "[snapshots]\ndir = \"state\"\n[timeouts]\nidle = 30\n";
        assert_eq!(
            dir_of_file(path, text),
            Some(PathBuf::from("/etc/streamgate/state/config"))
        );
        assert_eq!(dir_of_file(path, "[snapshots\n"), None);
        // A syntax error elsewhere in the file: the dir is still found.
        let broken = "[services\nname = \"x\"\n[snapshots] # state\ndir = \"/var/lib/sg\"\n[x]\ndir = \"no\"\n";
        assert_eq!(
            dir_of_file(path, broken),
            Some(PathBuf::from("/var/lib/sg/config"))
        );
        assert_eq!(dir_of_file(path, "[runtime]\n"), None);
    }
}
