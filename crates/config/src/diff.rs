//! What changed between two configurations, so a reload can say what it did and what it could not.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::model::Config;

/// The difference between a running configuration and a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    pub services_changed: Vec<String>,
    pub regions_added: Vec<String>,
    pub regions_removed: Vec<String>,
    pub backends_added: Vec<(String, SocketAddr)>,
    pub backends_removed: Vec<(String, SocketAddr)>,
    /// Regions whose backend set changed (new regions included): a deployment to them.
    pub regions_deployed: Vec<String>,
    /// Settings a reload cannot apply; they take effect at the next restart.
    pub needs_restart: Vec<String>,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

/// Compares `old` with `new`.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    let names = |v: &mut dyn Iterator<Item = &String>| v.cloned().collect::<BTreeSet<_>>();

    let old_s = names(&mut old.services.iter().map(|s| &s.name));
    let new_s = names(&mut new.services.iter().map(|s| &s.name));
    d.services_added = new_s.difference(&old_s).cloned().collect();
    d.services_removed = old_s.difference(&new_s).cloned().collect();
    for s in &new.services {
        if let Some(o) = old.services.iter().find(|o| o.name == s.name)
            && o != s
        {
            d.services_changed.push(s.name.clone());
        }
    }

    let old_r = names(&mut old.regions.iter().map(|r| &r.name));
    let new_r = names(&mut new.regions.iter().map(|r| &r.name));
    d.regions_added = new_r.difference(&old_r).cloned().collect();
    d.regions_removed = old_r.difference(&new_r).cloned().collect();
    let backends = |c: &Config| {
        c.regions
            .iter()
            .flat_map(|r| r.backends.iter().map(move |b| (r.name.clone(), b.address)))
            .collect::<BTreeSet<_>>()
    };
    let (ob, nb) = (backends(old), backends(new));
    d.backends_added = nb.difference(&ob).cloned().collect();
    d.backends_removed = ob.difference(&nb).cloned().collect();
    // A named backend added or removed changes the region's backend set as well (the
    // addresses it resolves to change without a reload and are not a deployment).
    let named = |c: &Config| {
        c.regions
            .iter()
            .flat_map(|r| {
                r.named_backends
                    .iter()
                    .map(move |b| (r.name.clone(), b.to_string()))
            })
            .collect::<BTreeSet<_>>()
    };
    let (on, nn) = (named(old), named(new));
    let deployed: BTreeSet<String> = d
        .regions_added
        .iter()
        .cloned()
        .chain(on.symmetric_difference(&nn).map(|(r, _)| r.clone()))
        .chain(d.backends_added.iter().map(|(r, _)| r.clone()))
        .chain(d.backends_removed.iter().map(|(r, _)| r.clone()))
        .filter(|r| new_r.contains(r))
        .collect();
    d.regions_deployed = deployed.into_iter().collect();

    if old.runtime.workers != new.runtime.workers {
        d.needs_restart.push("runtime.workers".into());
    }
    if old.runtime.max_connections != new.runtime.max_connections {
        d.needs_restart.push("runtime.max_connections".into());
    }
    if old.admin.listen != new.admin.listen {
        d.needs_restart.push("admin.listen".into());
    }
    if old.admin.max_connections != new.admin.max_connections {
        d.needs_restart.push("admin.max_connections".into());
    }
    if old.admin.max_connections_per_client != new.admin.max_connections_per_client {
        d.needs_restart
            .push("admin.max_connections_per_client".into());
    }
    if old.admin.metrics_listen != new.admin.metrics_listen {
        d.needs_restart.push("metrics.listen".into());
    }
    if old.fleet != new.fleet {
        d.needs_restart.push("fleet".into());
    }
    for l in &new.listeners {
        match old.listeners.iter().find(|o| o.name == l.name) {
            None => d
                .needs_restart
                .push(format!("listeners \"{}\" (new)", l.name)),
            Some(o) if o.listen != l.listen || o.protocol != l.protocol => d
                .needs_restart
                .push(format!("listeners \"{}\" (address or protocol)", l.name)),
            Some(o) => {
                // Read when the listener starts accepting.
                let fixed: [(&str, bool); 5] = [
                    ("max_connections", o.max_connections != l.max_connections),
                    (
                        "max_connections_per_client",
                        o.max_connections_per_client != l.max_connections_per_client,
                    ),
                    ("max_header_bytes", o.max_header_bytes != l.max_header_bytes),
                    ("max_headers", o.max_headers != l.max_headers),
                    ("proxy_protocol", o.proxy_protocol != l.proxy_protocol),
                ];
                for (key, changed) in fixed {
                    if changed {
                        d.needs_restart
                            .push(format!("listeners \"{}\" {key}", l.name));
                    }
                }
            }
        }
    }
    for o in &old.listeners {
        if !new.listeners.iter().any(|l| l.name == o.name) {
            d.needs_restart
                .push(format!("listeners \"{}\" (removed)", o.name));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(regions: &[(&str, &[&str])]) -> Config {
        let mut text = String::from("[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n");
        for (name, backends) in regions {
            let list: Vec<String> = backends
                .iter()
                .map(|b| format!("{{ address = \"{b}\" }}"))
                .collect();
            text.push_str(&format!(
                "[[regions]]\nname = \"{name}\"\nbackends = [{}]\n",
                list.join(", ")
            ));
        }
        let names: Vec<String> = regions.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        text.push_str(&format!(
            "[[services]]\nname = \"s\"\nlisteners = [\"web\"]\nregions = [{}]\n",
            names.join(", ")
        ));
        crate::parse(std::path::Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn deployments_are_regions_whose_backend_set_changed() {
        const A: &[&str] = &["10.0.0.1:80"];
        const AB: &[&str] = &["10.0.0.1:80", "10.0.0.2:80"];
        const B: &[&str] = &["10.0.0.2:80"];
        const C: &[&str] = &["10.0.0.3:80"];
        const AN: &[&str] = &["10.0.0.1:80", "origin.example:80"];
        const AM: &[&str] = &["10.0.0.1:80", "other.example:80"];
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, &'a [&'a str])>,
            Vec<(&'a str, &'a [&'a str])>,
            &'a [&'a str],
        );
        let cases: Vec<Case<'_>> = vec![
            ("nothing changed", vec![("eu", A)], vec![("eu", A)], &[]),
            ("a name unchanged", vec![("eu", AN)], vec![("eu", AN)], &[]),
            ("a name added", vec![("eu", A)], vec![("eu", AN)], &["eu"]),
            (
                "a name replaced",
                vec![("eu", AN)],
                vec![("eu", AM)],
                &["eu"],
            ),
            ("a name removed", vec![("eu", AN)], vec![("eu", A)], &["eu"]),
            (
                "a backend added",
                vec![("eu", A)],
                vec![("eu", AB)],
                &["eu"],
            ),
            (
                "a backend replaced",
                vec![("eu", A), ("us", C)],
                vec![("eu", B), ("us", C)],
                &["eu"],
            ),
            (
                "a new region",
                vec![("eu", A)],
                vec![("eu", A), ("us", C)],
                &["us"],
            ),
            (
                "a region removed is not a deployment",
                vec![("eu", A), ("us", C)],
                vec![("eu", A)],
                &[],
            ),
        ];
        for (name, old, new, want) in cases {
            let d = diff(&config(&old), &config(&new));
            assert_eq!(d.regions_deployed, want.to_vec(), "{name}");
        }
    }
}
