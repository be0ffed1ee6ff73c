//! TOML text -> [`RawConfig`], reporting every unknown key and every value of the wrong type
//! rather than only the first.
//!
//! serde stops at its first error. So the text is parsed once into a spanned tree and
//! deserialized from a copy of it; after each error the key it names is taken out of the tree
//! and a fresh copy is deserialized again, until one goes through. Spans are the tree's, so every
//! line stays exact, and no text is rewritten. The keys taken out are returned, so that
//! validation does not report their absence as a second error.

use std::fmt;

use serde_path_to_error::Segment;
use toml::de::{DeTable, DeValue};

use crate::raw::RawConfig;
use crate::suggest;
use crate::validate::Ctx;

/// Past this many the file is not a few typos: the operator fixes these first.
pub(crate) const MAX_ERRORS: usize = 100;

pub(crate) struct Read {
    pub(crate) raw: RawConfig,
    /// Key paths (`services[0].name`) whose values were refused and taken out.
    pub(crate) removed: Vec<KeyPath>,
}

/// Deserializes `text`, recording each refused key in `ctx`. `None` when checking cannot go on
/// to validation: a syntax error (the rest of the file has no reliable structure), too many
/// errors, or an error that names no key to take out.
pub(crate) fn read(text: &str, ctx: &mut Ctx<'_>) -> Option<Read> {
    let mut tree = match DeTable::parse(text) {
        Ok(tree) => tree,
        Err(e) => {
            ctx.err(e.span().unwrap_or(0..0), "", e.message().trim_end());
            return None;
        }
    };
    let mut removed = Vec::new();
    // The note that checking stopped goes after the last error found.
    let mut furthest = 0..0;
    loop {
        let attempt = serde_path_to_error::deserialize(toml::Deserializer::from(tree.clone()));
        let error = match attempt {
            Ok(raw) => return Some(Read { raw, removed }),
            Err(e) => e,
        };
        let path = KeyPath::of(error.path());
        let inner = error.into_inner();
        let span = inner.span().unwrap_or(0..0);
        let message = inner.message().trim_end();
        let message = path
            .last_key()
            .and_then(|key| suggest::unknown_field(message, key))
            .unwrap_or_else(|| message.to_string());
        // "missing field" is the table's error, not a key's: there is nothing to take out. The
        // raw types keep required keys optional so that this is not reached.
        let stuck = message.starts_with("missing field");
        if span.start >= furthest.start {
            furthest = span.clone();
        }
        ctx.err(span, &path, message);
        if stuck {
            return None;
        }
        if removed.len() + 1 >= MAX_ERRORS {
            ctx.err(
                furthest,
                "",
                format!("stopped after {MAX_ERRORS} errors; fix these and check again"),
            );
            return None;
        }
        let key = path.owning_key();
        if !remove(tree.get_mut(), &key.0) {
            return None;
        }
        removed.push(key);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Where in the file a value is: `services[0].cache.max_size`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct KeyPath(Vec<Step>);

impl KeyPath {
    /// serde's path, without the segments `toml::Spanned` adds internally.
    fn of(path: &serde_path_to_error::Path) -> KeyPath {
        let steps = path.iter().filter_map(|segment| match segment {
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                (!key.starts_with("$__serde_spanned")).then(|| Step::Key(key.clone()))
            }
            Segment::Unknown => None,
        });
        KeyPath(steps.collect())
    }

    fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Step::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// The path up to its last key: what is taken out for an error anywhere inside that key's
    /// value. Taking out an array element instead would renumber the ones after it, and every
    /// later error would name the wrong index.
    fn owning_key(&self) -> KeyPath {
        let end = self
            .0
            .iter()
            .rposition(|s| matches!(s, Step::Key(_)))
            .map_or(0, |i| i + 1);
        KeyPath(self.0[..end].to_vec())
    }

    /// Whether an error at `path` (as validation writes it) concerns this key or its value.
    pub(crate) fn covers(&self, path: &str) -> bool {
        let me = self.to_string();
        path.strip_prefix(&me)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Index(n) => write!(f, "[{n}]")?,
                Step::Key(k) if i == 0 => f.write_str(k)?,
                Step::Key(k) => write!(f, ".{k}")?,
            }
        }
        Ok(())
    }
}

/// Takes the key at `steps` (which ends with a key) out of `table`; false if it is not there.
fn remove(table: &mut DeTable<'_>, steps: &[Step]) -> bool {
    match steps {
        [Step::Key(k)] => table.remove(k.as_str()).is_some(),
        [Step::Key(k), rest @ ..] => table
            .get_mut(k.as_str())
            .is_some_and(|v| remove_in(v.get_mut(), rest)),
        _ => false,
    }
}

fn remove_in(value: &mut DeValue<'_>, steps: &[Step]) -> bool {
    match (value, steps) {
        (DeValue::Table(t), [Step::Key(_), ..]) => remove(t, steps),
        (DeValue::Array(a), [Step::Index(i), rest @ ..]) => {
            a.get_mut(*i).is_some_and(|v| remove_in(v.get_mut(), rest))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(steps: &[&str]) -> KeyPath {
        KeyPath(
            steps
                .iter()
                .map(|s| match s.parse() {
                    Ok(n) => Step::Index(n),
                    Err(_) => Step::Key((*s).to_string()),
                })
                .collect(),
        )
    }

    #[test]
    fn key_paths() {
        // (steps, shown as, the key taken out)
        let cases: &[(&[&str], &str, &str)] = &[
            (&["timeouts", "idle"], "timeouts.idle", "timeouts.idle"),
            (
                &["services", "0", "hosts", "1"],
                "services[0].hosts[1]",
                "services[0].hosts",
            ),
            (
                &["regions", "0", "backends", "2", "weight"],
                "regions[0].backends[2].weight",
                "regions[0].backends[2].weight",
            ),
            (&["bogus"], "bogus", "bogus"),
            (&[], "", ""),
        ];
        for (steps, shown, owner) in cases {
            let p = path(steps);
            assert_eq!(p.to_string(), *shown);
            assert_eq!(p.owning_key().to_string(), *owner, "{shown}");
        }
    }

    #[test]
    fn a_key_covers_its_own_errors_only() {
        let name = path(&["services", "1", "name"]);
        for (error_at, covered) in [
            ("services[1].name", true),
            ("services[1].names", false),
            ("services[1]", false),
            ("services[10].name", false),
        ] {
            assert_eq!(name.covers(error_at), covered, "{error_at}");
        }
        let backends = path(&["regions", "0", "backends"]);
        assert!(backends.covers("regions[0].backends[3].address"));
        assert!(backends.covers("regions[0].backends.x"));
        assert!(!backends.covers("regions[0].backendsx"));
    }

    #[test]
    fn removes_keys_from_tables_arrays_of_tables_and_inline_tables() {
        let text = "[a]\nx = 1\ny = 2\n[[b]]\nz = 1\n[[b]]\nz = [ { w = 1, v = 2 } ]\n";
        let mut tree = DeTable::parse(text).unwrap();
        for (steps, found) in [
            (&["a", "x"][..], true),
            (&["a", "x"][..], false),
            (&["b", "1", "z", "0", "w"][..], true),
            (&["b", "0", "z"][..], true),
            (&["b", "5", "z"][..], false),
            (&["a", "y", "deeper"][..], false),
            (&["a", "0"][..], false),
        ] {
            assert_eq!(remove(tree.get_mut(), &path(steps).0), found, "{steps:?}");
        }
        let left = <toml::Table as serde::Deserialize>::deserialize(toml::Deserializer::from(tree))
            .unwrap();
        let want: toml::Table =
            toml::from_str("a = { y = 2 }\nb = [ {}, { z = [{ v = 2 }] } ]").unwrap();
        assert_eq!(left, want);
    }
}
