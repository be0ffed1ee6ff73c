//! The addresses backend names resolved to, as one routing table was built with them. The
//! control plane's resolver owns the lookups; the table only expands names into backends.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use streamgate_config as config;

/// Host name (as written in the config, lower case) -> its last good addresses, sorted. A name
/// that never resolved is absent and gives its regions no backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved(BTreeMap<String, Arc<[IpAddr]>>);

impl Resolved {
    pub fn get(&self, host: &str) -> Option<&[IpAddr]> {
        self.0.get(host).map(|a| &**a)
    }

    /// Records `addresses` (sorted and deduplicated here) for `host`; true if that changed
    /// anything.
    pub fn set(&mut self, host: &str, addresses: impl IntoIterator<Item = IpAddr>) -> bool {
        let mut list: Vec<IpAddr> = addresses.into_iter().collect();
        list.sort_unstable();
        list.dedup();
        if self.get(host) == Some(list.as_slice()) {
            return false;
        }
        self.0.insert(host.to_string(), list.into());
        true
    }

    /// Drops every name `keep` refuses (names no longer in the config); true if any went.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) -> bool {
        let before = self.0.len();
        self.0.retain(|host, _| keep(host));
        self.0.len() != before
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[IpAddr])> {
        self.0.iter().map(|(h, a)| (h.as_str(), &**a))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One backend of a region as the table gets it: the address, its weight and the name it came
/// from (`None`: written as an address).
pub type Expanded = (SocketAddr, NonZeroU32, Option<Arc<str>>);

/// The backends of `region` with its names expanded: the addresses written first, in order, then
/// each name's addresses. An address met twice (a name that resolves to an address also written,
/// two names sharing one) is one backend, the first: one address must have one state, or health
/// and drains would disagree about it. Linear in the addresses (a set of those met): an
/// answer of many addresses must not make every rebuild quadratic.
///
/// Each address of a name gets the name's whole weight, not a share: see docs/configuration.md
/// `[dns]` for why.
pub fn expand(region: &config::Region, resolved: &Resolved) -> Vec<Expanded> {
    let mut out: Vec<Expanded> = region
        .backends
        .iter()
        .map(|b| (b.address, b.weight, None))
        .collect();
    let mut seen: HashSet<SocketAddr> = out.iter().map(|(a, _, _)| *a).collect();
    for n in &region.named_backends {
        let name: Arc<str> = n.host.as_str().into();
        for ip in resolved.get(&n.host).unwrap_or_default() {
            let address = SocketAddr::new(*ip, n.port);
            if seen.insert(address) {
                out.push((address, n.weight, Some(name.clone())));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(text: &str) -> config::Region {
        let file = format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\
             [[regions]]\nname = \"r\"\nbackends = [{text}]\n\
             [[services]]\nname = \"s\"\nlisteners = [\"web\"]\nregions = [\"r\"]\n"
        );
        config::parse(std::path::Path::new("t.toml"), &file)
            .unwrap()
            .regions
            .remove(0)
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn set_reports_changes_only() {
        let mut r = Resolved::default();
        assert!(r.set("a.test", ips(&["10.0.0.2", "10.0.0.1"])));
        assert!(!r.set("a.test", ips(&["10.0.0.1", "10.0.0.2", "10.0.0.1"])));
        assert_eq!(
            r.get("a.test"),
            Some(ips(&["10.0.0.1", "10.0.0.2"]).as_slice())
        );
        assert!(r.set("a.test", ips(&["10.0.0.3"])));
        assert!(!r.retain(|h| h == "a.test"));
        assert!(r.retain(|_| false));
        assert!(r.is_empty());
    }

    #[test]
    fn names_expand_into_their_addresses() {
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [(&'a str, &'a [&'a str])],
            &'a [&'a str],
        );
        let cases: &[Case<'_>] = &[
            (
                "an unresolved name adds nothing",
                r#"{ address = "10.0.0.9:80" }, { address = "a.test:80" }"#,
                &[],
                &["10.0.0.9:80 w1 -"],
            ),
            (
                "every address of a name, with its port and weight",
                r#"{ address = "a.test:8080", weight = 3 }"#,
                &[("a.test", &["10.0.0.2", "10.0.0.1", "::1"])],
                &[
                    "10.0.0.1:8080 w3 a.test",
                    "10.0.0.2:8080 w3 a.test",
                    "[::1]:8080 w3 a.test",
                ],
            ),
            (
                "an address also written stays the written one",
                r#"{ address = "10.0.0.1:80", weight = 2 }, { address = "a.test:80" }"#,
                &[("a.test", &["10.0.0.1", "10.0.0.2"])],
                &["10.0.0.1:80 w2 -", "10.0.0.2:80 w1 a.test"],
            ),
            (
                "two names sharing an address: the first keeps it",
                r#"{ address = "a.test:80" }, { address = "b.test:80" }"#,
                &[
                    ("a.test", &["10.0.0.1"]),
                    ("b.test", &["10.0.0.1", "10.0.0.2"]),
                ],
                &["10.0.0.1:80 w1 a.test", "10.0.0.2:80 w1 b.test"],
            ),
            (
                "one name on two ports is two backends per address",
                r#"{ address = "a.test:80" }, { address = "a.test:81" }"#,
                &[("a.test", &["10.0.0.1"])],
                &["10.0.0.1:80 w1 a.test", "10.0.0.1:81 w1 a.test"],
            ),
        ];
        for (what, backends, answers, want) in cases {
            let mut resolved = Resolved::default();
            for (host, list) in *answers {
                resolved.set(host, ips(list));
            }
            let got: Vec<String> = expand(&region(backends), &resolved)
                .iter()
                .map(|(a, w, n)| format!("{a} w{w} {}", n.as_deref().unwrap_or("-")))
                .collect();
            assert_eq!(got, *want, "{what}");
        }
    }
}
