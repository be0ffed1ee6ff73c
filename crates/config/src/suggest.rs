//! "Did you mean": an unknown key's error names the known key it is a typo of.

/// Rewrites serde's `unknown field `idel`, expected one of `connect`, ...` for the key `field`
/// into a suggestion when one of the table's keys is close to it, and into the list of the
/// table's keys otherwise. `None` when `message` is not that error.
///
/// serde puts the table's keys, in their declared order, in backticks after the field: that is
/// the only place the list is given, so it is read back from there.
pub(crate) fn unknown_field(message: &str, field: &str) -> Option<String> {
    let rest = message.strip_prefix(&format!("unknown field `{field}`"))?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    Some(match closest(field, &expected) {
        Some(key) => format!("unknown field `{field}`; did you mean `{key}`?"),
        None => match expected.as_slice() {
            [] => format!("unknown field `{field}`; this table takes no keys"),
            [one] => format!("unknown field `{field}`; expected `{one}`"),
            all => format!(
                "unknown field `{field}`; expected one of {}",
                all.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    })
}

/// The known key nearest to `typo`, if it is near enough to be the same word misspelt: at most
/// one edit per three characters (always at least one). Ties go to the key declared first.
pub(crate) fn closest<'k>(typo: &str, known: &[&'k str]) -> Option<&'k str> {
    let typo = typo.to_ascii_lowercase();
    let limit = (typo.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (edit_distance(&typo, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbouring characters each cost one, since `idel` for `idle` is one slip, not two.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: the one two back is needed for swaps.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(before[j - 2] + 1);
            }
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        for (a, b, d) in [
            ("", "", 0),
            ("idle", "idle", 0),
            ("idel", "idle", 1),
            ("wieght", "weight", 1),
            ("conect", "connect", 1),
            ("workerz", "workers", 1),
            ("timout", "timeouts", 2),
            ("", "abc", 3),
            ("abc", "", 3),
            ("colour", "workers", 5),
            ("µs", "us", 1),
        ] {
            assert_eq!(edit_distance(a, b), d, "{a} -> {b}");
            assert_eq!(edit_distance(b, a), d, "{b} -> {a}");
        }
    }

    #[test]
    fn closest_keys() {
        let timeouts = [
            "connect",
            "request_header",
            "idle",
            "upstream_response",
            "upstream_idle",
            "tunnel_idle",
        ];
        for (typo, want) in [
            ("idel", Some("idle")),
            ("IDLE", Some("idle")),
            ("conect", Some("connect")),
            ("upstream_idel", Some("upstream_idle")),
            ("tunnelidle", Some("tunnel_idle")),
            // Two slips in a short word is another word.
            ("iedl", None),
            ("x", None),
            ("keepalive", None),
        ] {
            assert_eq!(closest(typo, &timeouts), want, "{typo}");
        }
        assert_eq!(closest("ab", &[]), None);
        // Equally near: the one declared first.
        assert_eq!(closest("bat", &["cat", "bar"]), Some("cat"));
    }

    #[test]
    fn unknown_field_messages() {
        let cases = [
            (
                "unknown field `idel`, expected one of `connect`, `idle`, `tunnel_idle`",
                "idel",
                Some("unknown field `idel`; did you mean `idle`?"),
            ),
            (
                "unknown field `port`, expected `listen`",
                "port",
                Some("unknown field `port`; expected `listen`"),
            ),
            (
                "unknown field `colour`, expected `workers` or `shutdown_timeout`",
                "colour",
                Some("unknown field `colour`; expected one of `workers`, `shutdown_timeout`"),
            ),
            (
                "unknown field `x`, there are no fields",
                "x",
                Some("unknown field `x`; this table takes no keys"),
            ),
            // A key holding a backtick is taken from the path, not from the message.
            (
                "unknown field `a`b`, expected `ab`",
                "a`b",
                Some("unknown field `a`b`; did you mean `ab`?"),
            ),
            ("invalid type: integer `5`, expected a string", "name", None),
            ("unknown field `other`, expected `a`", "mine", None),
        ];
        for (message, field, want) in cases {
            assert_eq!(unknown_field(message, field).as_deref(), want, "{message}");
        }
    }
}
