//! What the fleet asks of this PoP ([`streamgate_fleet::Apply`]): purges applied to its caches,
//! fleet-wide words on regions, drains and primaries put beside its operator's own (which win,
//! [`crate::words`]), and its status for the heartbeat.

use std::sync::Weak;

use streamgate_cache::key::{purge_keys, purge_prefixes, split_url};
use streamgate_fleet::{Purge, Target, Word};
use tracing::warn;

use crate::Control;
use crate::admin::requests::PurgeWhat;

/// Held by the fleet link; weak, as the control plane holds the link.
pub struct FleetApply(pub Weak<Control>);

impl streamgate_fleet::Apply for FleetApply {
    fn purge(&self, p: &Purge) -> u64 {
        self.purge_objects(p) as u64
    }

    fn journal_mark(&self) -> u64 {
        self.0
            .upgrade()
            .map_or(0, |control| control.caches.journal_mark())
    }

    fn on_disk(
        &self,
        mark: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(control) => control.caches.purges_on_disk(mark).await,
                None => true,
            }
        })
    }

    fn word(&self, word: &Word) {
        if let Some(control) = self.0.upgrade() {
            control.say_fleet(word);
        }
    }

    fn words_held(&self, keys: &std::collections::HashSet<String>) {
        let Some(control) = self.0.upgrade() else {
            return;
        };
        let gone = control.words().1.not_under(keys);
        for word in gone {
            tracing::info!(key = %word.key(), "fleet word no longer in the bucket; withdrawn here");
            control.say_fleet(&word);
        }
    }

    fn status(&self) -> (u64, Option<f64>) {
        self.heartbeat_status()
    }
}

impl FleetApply {
    fn purge_objects(&self, p: &Purge) -> usize {
        let Some(control) = self.0.upgrade() else {
            return 0;
        };
        let what = match &p.target {
            Target::Url(u) if split_url(u).is_some() => PurgeWhat::Url(u.clone()),
            Target::Prefix(t) => match purge_prefixes(t) {
                Some(keys) => PurgeWhat::Prefixes(keys),
                None => {
                    warn!(id = %p.id, prefix = %t, "fleet purge with a prefix that is not host/path; ignored");
                    return 0;
                }
            },
            Target::Tag(t) => PurgeWhat::Tag(t.clone()),
            Target::All => PurgeWhat::All,
            Target::Url(u) => {
                warn!(id = %p.id, url = %u, "fleet purge of a URL that is not host/path; ignored");
                return 0;
            }
        };
        purge_local(&control, &what, p.service.as_deref())
    }

    fn heartbeat_status(&self) -> (u64, Option<f64>) {
        let Some(control) = self.0.upgrade() else {
            return (0, None);
        };
        let version = control.table.load().version;
        let age = control
            .snapshots
            .settings()
            .map(|_| control.metrics.recovery_point_age.get());
        (version, age)
    }
}

/// Removes what `what` names from this PoP's caches (one service's, or all); returns how many
/// objects went.
pub(crate) fn purge_local(control: &Control, what: &PurgeWhat, service: Option<&str>) -> usize {
    use streamgate_cache::Purge as P;
    match what {
        PurgeWhat::Url(url) => {
            let table = control.table.load();
            let mut purged = 0;
            // Each service keys URLs by its own query rules.
            for s in &table.services {
                let Some(spec) = &s.spec.cache else { continue };
                if service.is_some_and(|x| x != &*s.name) {
                    continue;
                }
                for key in purge_keys(url, &spec.key_query).unwrap_or_default() {
                    purged += control.caches.purge(&P::Url(key), Some(&s.name));
                }
            }
            purged
        }
        PurgeWhat::Prefixes(prefixes) => prefixes
            .iter()
            .map(|p| control.caches.purge(&P::Prefix(p.clone()), service))
            .sum(),
        PurgeWhat::Tag(tag) => control.caches.purge(&P::Tag(tag.clone()), service),
        PurgeWhat::All => control.caches.purge(&P::All, service),
    }
}
