//! Operator overrides (drained backends, deactivated regions, chosen primaries) kept on disk in the
//! `[snapshots]` directory, so a restart or an upgrade keeps what an operator set through the
//! admin API, as HAProxy's server-state file does. Written after every change and at a stop,
//! applied at start before anything listens.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use streamgate_balance::RoutingTable;
use streamgate_cache::snapshot::replace_file;

/// The file, next to the recovery points.
pub const FILE: &str = "operator-state.json";

/// What operators changed at run time. Empty when nothing was.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Backends drained in every service that uses them.
    #[serde(default)]
    pub drained: BTreeSet<SocketAddr>,
    #[serde(default)]
    pub inactive_regions: BTreeSet<String>,
    /// Service name to the region an operator made its primary.
    #[serde(default)]
    pub primaries: BTreeMap<String, String>,
}

impl Overrides {
    /// The overrides in effect in `table`.
    pub fn capture(table: &RoutingTable) -> Overrides {
        let mut o = Overrides::default();
        for s in &table.services {
            for r in &s.regions {
                for b in &r.backends {
                    if b.state.is_drained() {
                        o.drained.insert(b.address);
                    }
                }
            }
            if let Some(i) = s.state.primary()
                && let Some(r) = s.regions.get(i)
            {
                o.primaries.insert(s.name.to_string(), r.name.to_string());
            }
        }
        for (name, control) in &table.regions {
            // Only this PoP's word: the fleet's lives in the fleet's bucket.
            if control.words().0 == Some(false) {
                o.inactive_regions.insert(name.clone());
            }
        }
        o
    }

    /// Puts the overrides into `table`; returns those that name something it no longer has.
    pub fn apply(&self, table: &RoutingTable) -> Vec<String> {
        let mut stale = Vec::new();
        for addr in &self.drained {
            let mut found = false;
            for (_, _, b) in table.backends_at(*addr) {
                b.state.set_drained(true);
                found = true;
            }
            if !found {
                stale.push(format!("drained backend {addr}"));
            }
        }
        for name in &self.inactive_regions {
            match table.regions.get(name) {
                Some(c) => {
                    c.set_active(false);
                }
                None => stale.push(format!("inactive region {name}")),
            }
        }
        for (service, region) in &self.primaries {
            match table
                .service(service)
                .and_then(|s| Some(s).zip(s.region(region)))
            {
                Some((s, (0, _))) => s.state.clear_primary(),
                Some((s, (i, _))) => s.state.set_primary(i),
                None => stale.push(format!("primary {region} of service {service}")),
            }
        }
        stale
    }

    /// Writes the file in `dir`, replaced whole (see [`replace_file`]).
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        let mut text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        text.push(b'\n');
        replace_file(&dir.join(FILE), |out| out.write_all(&text))
    }

    /// Reads the file in `dir`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Overrides>, String> {
        let path: PathBuf = dir.join(FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn saved_whole_and_read_back_or_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Overrides::load(dir.path()), Ok(None));
        let o = Overrides {
            drained: ["10.0.0.1:80".parse().unwrap()].into(),
            inactive_regions: ["eu".to_string()].into(),
            primaries: [("web".to_string(), "us".to_string())].into(),
        };
        o.save(dir.path()).unwrap();
        assert_eq!(Overrides::load(dir.path()), Ok(Some(o)));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );

        std::fs::write(dir.path().join(FILE), b"{\"drained\": [\"nope\"]}").unwrap();
        let err = Overrides::load(dir.path()).unwrap_err();
        assert!(err.contains(FILE) && err.contains("invalid"), "{err}");
    }
}
