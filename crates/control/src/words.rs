//! Operator words: what this PoP's operator and the fleet said about backends (drained or
//! not), regions (in service or not) and services (their primary region), and which wins: this
//! PoP's word, then the fleet's, then the config.
//!
//! The words live here, not in the routing table: a backend's or a region's live state lasts
//! only as long as the table has it, while a word outlives a DNS answer that drops an address
//! for a while, or a reload that adds the region the fleet deactivated an hour ago. Every table
//! is given the words before it is published ([`apply`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use streamgate_balance::RoutingTable;
use streamgate_fleet::Word;

/// One party's words.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Words {
    /// Backend address to drained (`true`) or undrained (`false`, which overrides the fleet's
    /// drain).
    pub drains: BTreeMap<SocketAddr, bool>,
    /// Region name to in service.
    pub regions: BTreeMap<String, bool>,
    /// Service name to its primary region.
    pub primaries: BTreeMap<String, String>,
}

impl Words {
    /// Records `word` (a `None` value forgets the thing's word); true if that changed them.
    pub fn set(&mut self, word: &Word) -> bool {
        fn put<K: Ord + Clone, V: PartialEq + Clone>(
            map: &mut BTreeMap<K, V>,
            key: &K,
            value: &Option<V>,
        ) -> bool {
            match value {
                Some(v) => map.insert(key.clone(), v.clone()).as_ref() != Some(v),
                None => map.remove(key).is_some(),
            }
        }
        match word {
            Word::Region(name, v) => put(&mut self.regions, name, v),
            Word::Backend(addr, v) => put(&mut self.drains, addr, v),
            Word::Primary(service, v) => put(&mut self.primaries, service, v),
        }
    }

    /// The withdrawals of the words held under none of `keys` (bucket keys, [`Word::key`]).
    pub fn not_under(&self, keys: &std::collections::HashSet<String>) -> Vec<Word> {
        let regions = self.regions.keys().map(|r| Word::Region(r.clone(), None));
        let drains = self.drains.keys().map(|a| Word::Backend(*a, None));
        let primaries = self
            .primaries
            .keys()
            .map(|s| Word::Primary(s.clone(), None));
        regions
            .chain(drains)
            .chain(primaries)
            .filter(|w| !keys.contains(&w.key()))
            .collect()
    }

    /// Words held, of every kind.
    pub fn len(&self) -> usize {
        self.drains.len() + self.regions.len() + self.primaries.len()
    }

    /// Holds a word on the thing `word` names.
    pub fn has(&self, word: &Word) -> bool {
        match word {
            Word::Region(name, _) => self.regions.contains_key(name),
            Word::Backend(addr, _) => self.drains.contains_key(addr),
            Word::Primary(service, _) => self.primaries.contains_key(service),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.drains.is_empty() && self.regions.is_empty() && self.primaries.is_empty()
    }

    /// Forgets the words `table` makes impossible, and returns them: a region or service it
    /// does not have, a primary it does not use, an address neither in it nor on the port of a
    /// backend name (which could bring the address back). Only for this PoP's words: the
    /// fleet's bucket keeps the fleet's, for the PoPs whose config has the thing.
    pub fn forget_missing(&mut self, table: &RoutingTable) -> Vec<String> {
        let mut gone = Vec::new();
        let name_ports: BTreeSet<u16> = table
            .config
            .regions
            .iter()
            .flat_map(|r| &r.named_backends)
            .map(|b| b.port)
            .collect();
        self.drains.retain(|addr, _| {
            let keep =
                table.backends_at(*addr).next().is_some() || name_ports.contains(&addr.port());
            if !keep {
                gone.push(format!("drain of backend {addr}"));
            }
            keep
        });
        self.regions.retain(|name, _| {
            let keep = table.regions.contains_key(name);
            if !keep {
                gone.push(format!("word on region {name}"));
            }
            keep
        });
        self.primaries.retain(|service, region| {
            let keep = table
                .service(service)
                .is_some_and(|s| s.region(region).is_some());
            if !keep {
                gone.push(format!("primary {region} of service {service}"));
            }
            keep
        });
        gone
    }
}

/// Whose word decides a thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    Local,
    Fleet,
    Default,
}

impl DecidedBy {
    pub fn of<T>(local: Option<T>, fleet: Option<T>) -> DecidedBy {
        match (local, fleet) {
            (Some(_), _) => DecidedBy::Local,
            (None, Some(_)) => DecidedBy::Fleet,
            (None, None) => DecidedBy::Default,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Local => "local",
            DecidedBy::Fleet => "fleet",
            DecidedBy::Default => "default",
        }
    }
}

/// Puts what `local` and `fleet` say into `table`: this PoP's word wins, then the fleet's, then
/// the config. Returns true when a region or a primary changed (the region evaluator must look
/// again); drains take effect on the next pick by themselves.
pub fn apply(table: &RoutingTable, local: &Words, fleet: &Words) -> bool {
    let addresses: BTreeSet<SocketAddr> = table
        .services
        .iter()
        .flat_map(|s| &s.regions)
        .flat_map(|r| &r.backends)
        .map(|b| b.address)
        .collect();
    for addr in addresses {
        drain(table, local, fleet, addr);
    }
    let mut routing = false;
    for name in table.regions.keys() {
        routing |= region(table, local, fleet, name);
    }
    for s in &table.services {
        routing |= primary(table, local, fleet, &s.name);
    }
    routing
}

/// [`apply`] for the one thing `word` names: a word from the fleet's bucket costs what it
/// changes, not the table's size.
pub fn apply_word(table: &RoutingTable, local: &Words, fleet: &Words, word: &Word) -> bool {
    match word {
        Word::Backend(addr, _) => {
            drain(table, local, fleet, *addr);
            false
        }
        Word::Region(name, _) => region(table, local, fleet, name),
        Word::Primary(service, _) => primary(table, local, fleet, service),
    }
}

fn drain(table: &RoutingTable, local: &Words, fleet: &Words, addr: SocketAddr) {
    let drained = local.drains.get(&addr).or(fleet.drains.get(&addr));
    for (_, _, b) in table.backends_at(addr) {
        b.state.set_drained(drained.copied().unwrap_or(false));
    }
}

fn region(table: &RoutingTable, local: &Words, fleet: &Words, name: &str) -> bool {
    table.regions.get(name).is_some_and(|c| {
        c.set_words(
            local.regions.get(name).copied(),
            fleet.regions.get(name).copied(),
        )
    })
}

fn primary(table: &RoutingTable, local: &Words, fleet: &Words, service: &str) -> bool {
    let Some(s) = table.service(service) else {
        return false;
    };
    // A word naming a region the service does not use is no word (the fleet's may name a
    // region only some PoPs' configs give the service).
    let index = [local.primaries.get(service), fleet.primaries.get(service)]
        .into_iter()
        .flatten()
        .find_map(|region| s.region(region).map(|(i, _)| i));
    let before = s.primary_index();
    match index {
        Some(i) if i > 0 => s.state.set_primary(i),
        _ => s.state.clear_primary(),
    }
    s.primary_index() != before
}

/// This PoP's word as it is kept: an undo (undrain, activate, the config's own primary) with
/// no fleet word to override is no word at all, so that it does not hide a later fleet word.
pub fn local_word(table: &RoutingTable, fleet: &Words, word: Word) -> Word {
    match word {
        Word::Backend(addr, Some(false)) if !fleet.drains.contains_key(&addr) => {
            Word::Backend(addr, None)
        }
        Word::Region(name, Some(true)) if !fleet.regions.contains_key(&name) => {
            Word::Region(name, None)
        }
        Word::Primary(service, Some(region))
            if !fleet.primaries.contains_key(&service)
                && table
                    .service(&service)
                    .is_some_and(|s| s.regions.first().is_some_and(|r| *r.name == *region)) =>
        {
            Word::Primary(service, None)
        }
        w => w,
    }
}

/// Whose word decides a service's primary in `table` (a word naming a region the service
/// does not use decides nothing).
pub fn primary_by(table: &RoutingTable, service: &str, local: &Words, fleet: &Words) -> DecidedBy {
    fn usable<'w>(table: &RoutingTable, service: &str, w: &'w Words) -> Option<&'w String> {
        w.primaries.get(service).filter(|r| {
            table
                .service(service)
                .is_some_and(|s| s.region(r).is_some())
        })
    }
    DecidedBy::of(usable(table, service, local), usable(table, service, fleet))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    fn table() -> RoutingTable {
        let text = r#"
            [[listeners]]
            name = "web"
            listen = "127.0.0.1:0"
            [[regions]]
            name = "us"
            backends = [ { address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002" } ]
            [[regions]]
            name = "eu"
            backends = [ { address = "127.0.0.1:9003" } ]
            [[services]]
            name = "web"
            listeners = ["web"]
            regions = ["us", "eu"]
        "#;
        let config = streamgate_config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let metrics = streamgate_telemetry::Metrics::new();
        RoutingTable::build(Arc::new(config), None, &metrics)
    }

    fn words(drains: &[(&str, bool)], regions: &[(&str, bool)], primary: Option<&str>) -> Words {
        Words {
            drains: drains
                .iter()
                .map(|(a, d)| (a.parse().unwrap(), *d))
                .collect(),
            regions: regions.iter().map(|(r, a)| (r.to_string(), *a)).collect(),
            primaries: primary
                .map(|r| ("web".to_string(), r.to_string()))
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn this_pops_word_wins_then_the_fleets_then_the_config() {
        let a = "127.0.0.1:9001";
        let none = Words::default();
        // (local, fleet) -> (backend a drained, region eu active, primary of web)
        let cases = [
            (none.clone(), none.clone(), (false, true, "us")),
            (
                none.clone(),
                words(&[(a, true)], &[("eu", false)], Some("eu")),
                (true, false, "eu"),
            ),
            (
                words(&[(a, false)], &[("eu", true)], Some("us")),
                words(&[(a, true)], &[("eu", false)], Some("eu")),
                (false, true, "us"),
            ),
            (
                words(&[(a, true)], &[], None),
                words(&[(a, false)], &[], Some("eu")),
                (true, true, "eu"),
            ),
            // A primary naming a region the service lacks falls through to the next word.
            (
                words(&[], &[], Some("mars")),
                words(&[], &[], Some("eu")),
                (false, true, "eu"),
            ),
        ];
        let t = table();
        for (i, (local, fleet, (drained, eu_active, primary))) in cases.into_iter().enumerate() {
            apply(&t, &local, &fleet);
            let s = t.service("web").unwrap();
            let b = t.backends_at(a.parse().unwrap()).next().unwrap().2;
            assert_eq!(b.state.is_drained(), drained, "case {i}: drained");
            assert_eq!(
                t.regions["eu"].is_active(),
                eu_active,
                "case {i}: eu active"
            );
            assert_eq!(
                &*s.regions[s.primary_index()].name,
                primary,
                "case {i}: primary"
            );
        }
    }

    #[test]
    fn words_for_what_the_table_lacks_are_forgotten() {
        let t = table();
        let mut w = words(
            &[("127.0.0.1:9001", true), ("10.9.9.9:80", true)],
            &[("eu", false), ("gone", false)],
            Some("mars"),
        );
        let gone = w.forget_missing(&t);
        assert_eq!(gone.len(), 3, "{gone:?}");
        assert_eq!(
            w,
            words(&[("127.0.0.1:9001", true)], &[("eu", false)], None)
        );
    }

    #[test]
    fn an_undo_with_no_fleet_word_to_override_is_no_word() {
        let t = table();
        let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let fleet = words(&[("127.0.0.1:9002", true)], &[("us", false)], None);
        let cases = [
            (Word::Backend(a, Some(false)), Word::Backend(a, None)),
            (Word::Backend(a, Some(true)), Word::Backend(a, Some(true))),
            (
                Word::Backend("127.0.0.1:9002".parse().unwrap(), Some(false)),
                Word::Backend("127.0.0.1:9002".parse().unwrap(), Some(false)),
            ),
            (
                Word::Region("eu".into(), Some(true)),
                Word::Region("eu".into(), None),
            ),
            (
                Word::Region("us".into(), Some(true)),
                Word::Region("us".into(), Some(true)),
            ),
            (
                Word::Primary("web".into(), Some("us".into())),
                Word::Primary("web".into(), None),
            ),
            (
                Word::Primary("web".into(), Some("eu".into())),
                Word::Primary("web".into(), Some("eu".into())),
            ),
        ];
        for (said, kept) in cases {
            assert_eq!(local_word(&t, &fleet, said.clone()), kept, "{said:?}");
        }
    }

    #[test]
    fn set_reports_changes() {
        let mut w = Words::default();
        let word = Word::Region("eu".into(), Some(false));
        assert!(w.set(&word));
        assert!(!w.set(&word));
        assert!(w.set(&Word::Region("eu".into(), None)));
        assert!(w.is_empty());
    }
}
