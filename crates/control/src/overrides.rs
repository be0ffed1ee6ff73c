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
use streamgate_cache::snapshot::replace_file;

use crate::words::Words;

/// The file, next to the recovery points.
pub const FILE: &str = "operator-state.json";

/// What this PoP's operators changed at run time (the fleet's words live in the fleet's
/// bucket). Empty when nothing was.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Backends drained in every service that uses them.
    #[serde(default)]
    pub drained: BTreeSet<SocketAddr>,
    /// Backends undrained here although the fleet drained them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub undrained: BTreeSet<SocketAddr>,
    #[serde(default)]
    pub inactive_regions: BTreeSet<String>,
    /// Regions activated here although the fleet deactivated them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub active_regions: BTreeSet<String>,
    /// Service name to the region an operator made its primary.
    #[serde(default)]
    pub primaries: BTreeMap<String, String>,
    /// The fleet's words as this PoP last heard them: in force after a restart until the
    /// fleet's bucket is read again (which also brings the withdrawals made meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Box<Overrides>>,
}

fn split<K: Ord + Clone>(map: &BTreeMap<K, bool>) -> (BTreeSet<K>, BTreeSet<K>) {
    let (yes, no): (Vec<_>, Vec<_>) = map.iter().partition(|(_, v)| **v);
    (
        yes.into_iter().map(|(k, _)| k.clone()).collect(),
        no.into_iter().map(|(k, _)| k.clone()).collect(),
    )
}

impl Overrides {
    /// This PoP's words and the fleet's as the file keeps them.
    pub fn of(local: &Words, fleet: &Words) -> Overrides {
        let mut o = Overrides::one(local);
        o.fleet = (!fleet.is_empty()).then(|| Box::new(Overrides::one(fleet)));
        o
    }

    fn one(words: &Words) -> Overrides {
        let (drained, undrained) = split(&words.drains);
        let (active_regions, inactive_regions) = split(&words.regions);
        Overrides {
            drained,
            undrained,
            inactive_regions,
            active_regions,
            primaries: words.primaries.clone(),
            fleet: None,
        }
    }

    /// The (this PoP's, the fleet's) words the file kept.
    pub fn words(&self) -> (Words, Words) {
        let fleet = self
            .fleet
            .as_deref()
            .map(Overrides::own)
            .unwrap_or_default();
        (self.own(), fleet)
    }

    fn own(&self) -> Words {
        let mut w = Words::default();
        w.drains.extend(self.drained.iter().map(|a| (*a, true)));
        w.drains.extend(self.undrained.iter().map(|a| (*a, false)));
        w.regions
            .extend(self.inactive_regions.iter().map(|r| (r.clone(), false)));
        w.regions
            .extend(self.active_regions.iter().map(|r| (r.clone(), true)));
        w.primaries = self.primaries.clone();
        w
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
            undrained: ["10.0.0.2:80".parse().unwrap()].into(),
            inactive_regions: ["eu".to_string()].into(),
            active_regions: ["us".to_string()].into(),
            primaries: [("web".to_string(), "us".to_string())].into(),
            fleet: Some(Box::new(Overrides {
                inactive_regions: ["ap".to_string()].into(),
                ..Overrides::default()
            })),
        };
        let (local, fleet) = o.words();
        assert_eq!(Overrides::of(&local, &fleet), o, "words and the file agree");
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
