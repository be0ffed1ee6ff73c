//! Chains of recovery points, as pure functions of the points' headers: whether the next point
//! is full or an increment, which points make up the chain of a point, and which points
//! retention deletes. Table-tested below.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::RecoveryPoint;

/// What a point holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every object.
    Full,
    /// What changed since the point before it.
    Increment,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Increment => "increment",
        }
    }
}

/// When a chain ends and the next point is full again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Increments after a full point (0: every point is full).
    pub max_increments: u32,
    /// The increments' total size, as a share of the full point's, past which the next point
    /// is full: restoring a long chain reads the same objects again and again.
    pub increment_share: f64,
}

/// The chain the next point would extend, as this daemon wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// The newest point of the chain.
    pub last: RecoveryPoint,
    pub full_bytes: u64,
    pub increments: u32,
    pub increment_bytes: u64,
}

impl ChainState {
    /// The chain after `written` was written on top of `self` (or started it).
    pub fn after(chain: Option<&ChainState>, written: &RecoveryPoint) -> ChainState {
        match chain {
            Some(c) if written.parent.is_some() => ChainState {
                last: written.clone(),
                full_bytes: c.full_bytes,
                increments: c.increments + 1,
                increment_bytes: c.increment_bytes + written.bytes,
            },
            _ => ChainState {
                last: written.clone(),
                full_bytes: written.bytes,
                increments: 0,
                increment_bytes: 0,
            },
        }
    }
}

/// Whether the next point is full or extends `chain`.
pub fn next_kind(chain: Option<&ChainState>, t: Thresholds) -> Kind {
    let Some(c) = chain else {
        return Kind::Full;
    };
    let too_long = c.increments >= t.max_increments;
    let too_big = c.increment_bytes as f64 > t.increment_share * c.full_bytes.max(1) as f64;
    if too_long || too_big {
        Kind::Full
    } else {
        Kind::Increment
    }
}

/// The points to read, in order, to restore `target`: its full point first. `Err` names the
/// missing link.
pub fn chain_of<'a>(
    points: &'a [RecoveryPoint],
    target: &'a RecoveryPoint,
) -> Result<Vec<&'a RecoveryPoint>, String> {
    let mut chain = vec![target];
    let mut at = target;
    while let Some(parent) = at.parent {
        let found = points
            .iter()
            .find(|p| p.created == parent && p.base == target.base && p.created < at.created);
        match found {
            Some(p) => {
                chain.push(p);
                at = p;
            }
            None => {
                return Err(format!(
                    "its chain is broken: the point it builds on (created at unix ms {}) is missing",
                    super::unix_ms(parent)
                ));
            }
        }
        if chain.len() > points.len() {
            return Err("its chain loops".into());
        }
    }
    chain.reverse();
    Ok(chain)
}

/// The points `p` builds on, as far as the links go (all of them when its chain is whole).
fn ancestors<'a>(points: &'a [RecoveryPoint], p: &'a RecoveryPoint) -> Vec<&'a RecoveryPoint> {
    let mut out = vec![p];
    let mut at = p;
    while let Some(parent) = at.parent {
        match points
            .iter()
            .find(|x| x.created == parent && x.base == p.base && x.created < at.created)
        {
            Some(x) => {
                out.push(x);
                at = x;
            }
            None => break,
        }
    }
    out
}

/// The points retention deletes: all but the newest `keep`, and those older than `max_age`.
/// Never deleted: the newest point, the newest point whose chain is whole (what a restore would
/// use if the newest chain is broken), the point an operator asked to restore (`protect`), and
/// anything a kept point builds on. `points` newest first.
pub fn to_delete(
    points: &[RecoveryPoint],
    keep: usize,
    max_age: Option<Duration>,
    now: SystemTime,
    protect: Option<&str>,
) -> Vec<RecoveryPoint> {
    let young = |p: &RecoveryPoint| {
        max_age.is_none_or(|m| now.duration_since(p.created).unwrap_or(Duration::ZERO) <= m)
    };
    let newest_whole = points.iter().position(|p| chain_of(points, p).is_ok());
    let mut kept: HashSet<&PathBuf> = HashSet::new();
    for (i, p) in points.iter().enumerate() {
        let asked = protect.is_some_and(|name| p.is_named(name));
        if i == 0 || Some(i) == newest_whole || asked || (i < keep.max(1) && young(p)) {
            kept.extend(ancestors(points, p).iter().map(|c| &c.path));
        }
    }
    points
        .iter()
        .filter(|p| !kept.contains(&p.path))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// A point created at `t` seconds: full when `parent` is None.
    fn point(t: u64, base: u64, parent: Option<u64>) -> RecoveryPoint {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s);
        RecoveryPoint {
            path: PathBuf::from(format!("p{t}")),
            created: at(t),
            records: 1,
            objects: 1,
            bytes: 100,
            base: at(base),
            parent: parent.map(at),
        }
    }

    fn names(v: &[RecoveryPoint]) -> Vec<String> {
        v.iter().map(|p| p.path.display().to_string()).collect()
    }

    /// Two chains: full 10 <- 20 <- 30, full 40 <- 50; newest first.
    fn two_chains() -> Vec<RecoveryPoint> {
        vec![
            point(50, 40, Some(40)),
            point(40, 40, None),
            point(30, 10, Some(20)),
            point(20, 10, Some(10)),
            point(10, 10, None),
        ]
    }

    #[test]
    fn chains_are_followed_to_their_full_point() {
        let pts = two_chains();
        let chain = chain_of(&pts, &pts[2]).unwrap();
        assert_eq!(
            chain
                .iter()
                .map(|p| p.path.to_str().unwrap())
                .collect::<Vec<_>>(),
            ["p10", "p20", "p30"]
        );
        assert_eq!(chain_of(&pts, &pts[1]).unwrap().len(), 1);
        let broken: Vec<RecoveryPoint> = pts
            .iter()
            .filter(|p| p.path.as_os_str() != "p20")
            .cloned()
            .collect();
        let e = chain_of(&broken, &broken[2]).unwrap_err();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn retention_by_count_and_age_keeps_chains_whole() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_060);
        let secs = Duration::from_secs;
        // (case, keep, max_age, deleted)
        let cases: Vec<(&str, usize, Option<Duration>, Vec<&str>)> = vec![
            ("keep all", 10, None, vec![]),
            (
                "keep 2: the second chain whole, the first gone",
                2,
                None,
                vec!["p30", "p20", "p10"],
            ),
            ("keep 3: p30 needs p20 and p10", 3, None, vec![]),
            (
                "keep 1: the newest and its full point",
                1,
                None,
                vec!["p30", "p20", "p10"],
            ),
            (
                "max_age 25s: only p50 and p40 are young",
                10,
                Some(secs(25)),
                vec!["p30", "p20", "p10"],
            ),
            (
                "max_age 35s: p30 young, its chain stays",
                10,
                Some(secs(35)),
                vec![],
            ),
            (
                "everything old: the newest point stays with its chain",
                10,
                Some(secs(1)),
                vec!["p30", "p20", "p10"],
            ),
        ];
        let pts = two_chains();
        for (name, keep, max_age, want) in cases {
            assert_eq!(
                names(&to_delete(&pts, keep, max_age, now, None)),
                want,
                "{name}"
            );
        }
        // The point an operator asked to restore stays, with its chain.
        let asked = to_delete(&pts, 1, None, now, Some("p20"));
        assert_eq!(names(&asked), ["p30"]);
    }

    /// F <- I1 <- I2 <- I3 <- I4 with I2 unreadable (not listed): the newest points are kept by
    /// count, and F <- I1, the newest chain that restores, is not deleted for them.
    #[test]
    fn retention_keeps_what_restores_when_the_newest_chain_is_broken() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_060);
        let pts = vec![
            point(50, 10, Some(40)),
            point(40, 10, Some(30)),
            point(20, 10, Some(10)),
            point(10, 10, None),
        ];
        assert_eq!(
            names(&to_delete(&pts, 2, None, now, None)),
            Vec::<String>::new()
        );
        // Their own partial chain is kept too: p40 is what p50 builds on.
        assert_eq!(
            names(&to_delete(&pts, 1, None, now, None)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn when_the_next_point_is_full() {
        let t = Thresholds {
            max_increments: 3,
            increment_share: 0.5,
        };
        let full = point(10, 10, None);
        let mut chain = ChainState::after(None, &full);
        assert_eq!(next_kind(None, t), Kind::Full);
        assert_eq!(next_kind(Some(&chain), t), Kind::Increment);
        // Each increment is 100 bytes on a 100-byte full point: past 50% after the first.
        chain = ChainState::after(Some(&chain), &point(20, 10, Some(10)));
        assert_eq!((chain.increments, chain.increment_bytes), (1, 100));
        assert_eq!(next_kind(Some(&chain), t), Kind::Full);
        let roomy = Thresholds {
            increment_share: 10.0,
            ..t
        };
        assert_eq!(next_kind(Some(&chain), roomy), Kind::Increment);
        for s in [30, 40] {
            chain = ChainState::after(Some(&chain), &point(s, 10, Some(s - 10)));
        }
        assert_eq!(
            next_kind(Some(&chain), roomy),
            Kind::Full,
            "three increments"
        );
        let never = Thresholds {
            max_increments: 0,
            increment_share: 10.0,
        };
        assert_eq!(
            next_kind(Some(&ChainState::after(None, &full)), never),
            Kind::Full
        );
    }
}
