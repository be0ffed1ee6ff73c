//! The command line's side of the last known good config (see `streamgate_config::last_good`):
//! `run --fallback-last-good` and `check --against-last-good`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use streamgate_config::Config;
use streamgate_config::diff::diff;
use streamgate_config::last_good;
use tracing::error;

/// Where the copies for the config file at `path` are: `dir` if given, else its
/// `[snapshots] dir` (read leniently: the file need not validate).
fn copies_dir(path: &Path, dir: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match last_good::dir_of_file(path, &text) {
        Some(d) => Ok(d),
        None => bail!(
            "{}: no [snapshots] dir can be read from it, so there is no last known good copy to \
             fall back to; give --last-good-dir DIR",
            path.display()
        ),
    }
}

/// Loads the config at `path`; if it does not validate and `fallback` is set, the newest last
/// known good copy instead, loudly.
pub fn load(path: &Path, fallback: bool, dir: Option<PathBuf>) -> Result<Config> {
    let errors = match streamgate_config::load(path) {
        Ok(c) => return Ok(c),
        Err(e) if !fallback => return Err(e.into()),
        Err(e) => e,
    };
    let copies = copies_dir(path, dir).with_context(|| format!("{errors}"))?;
    let newest = last_good::load_newest(&copies, Some(path))
        .with_context(|| format!("{errors}\nand no last known good config to fall back to"))?;
    let copy = newest.path.display();
    eprintln!(
        "streamgate: {} does not validate:\n{errors}\nSTARTING FROM THE LAST KNOWN GOOD COPY {copy}: \
         fix the file and reload (SIGHUP or POST /reload)",
        path.display(),
    );
    for skipped in &newest.skipped {
        eprintln!("streamgate: a newer copy was passed over: {skipped}");
        error!(error = %skipped, "a newer last known good copy does not load; passed over");
    }
    error!(
        config = %path.display(),
        copy = %copy,
        errors = %errors,
        "the config file does not validate; running on the last known good copy"
    );
    Ok(newest.config)
}

/// What running `config` (from `path`) would change against the newest good copy; printed.
#[allow(clippy::print_stdout)]
pub fn check_against(path: &Path, config: &Config, dir: Option<PathBuf>) -> Result<()> {
    let copies = copies_dir(path, dir)?;
    // The copy of this file, else the newest of any (a new file checked before it replaces the
    // one that runs).
    let last_good::Newest {
        path: copy,
        config: good,
        ..
    } = match last_good::load_newest(&copies, Some(path)) {
        Err(e) if e.none_of_its_own() => last_good::load_newest(&copies, None)?,
        other => other?,
    };
    let d = diff(&good, config);
    println!(
        "against the last known good copy {} (of {}):",
        copy.display(),
        good.source.path.display()
    );
    if good.source.text == config.source.text {
        println!("  the same file");
        return Ok(());
    }
    let list = |what: &str, items: &[String]| {
        if !items.is_empty() {
            println!("  {what}: {}", items.join(", "));
        }
    };
    list("services added", &d.services_added);
    list("services removed", &d.services_removed);
    list("services changed", &d.services_changed);
    list("regions added", &d.regions_added);
    list("regions removed", &d.regions_removed);
    let pairs = |v: &[(String, std::net::SocketAddr)]| -> Vec<String> {
        v.iter().map(|(r, a)| format!("{a} in {r}")).collect()
    };
    list("backends added", &pairs(&d.backends_added));
    list("backends removed", &pairs(&d.backends_removed));
    list("needs a restart", &d.needs_restart);
    if d.is_empty() {
        println!(
            "  no change to services, regions or backends (other settings or comments differ)"
        );
    }
    Ok(())
}
