//! streamgate-fleet: this PoP's link to the fleet over NATS JetStream.
//!
//! In: fleet-wide purges from a JetStream stream, read by a durable consumer named after the
//! PoP (so a PoP that was away catches up on what it missed, within the stream's retention),
//! and fleet-wide operator words (regions, drains, primaries: [`Word`]) from a key-value
//! bucket every PoP watches. Out: purges and
//! overrides an operator made fleet-wide here, and a heartbeat.
//!
//! The data plane never waits on any of it: messages are applied through [`Apply`] by a task of
//! their own, and a lost link only delays them (the client reconnects with backoff, the
//! consumer resumes where it stopped).

mod link;
pub mod message;
pub mod signing;
pub mod word;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use streamgate_telemetry::Metrics;

pub use message::{Heartbeat, Purge, Target, check_purge};
pub use word::Word;

/// What the fleet asks of this PoP.
pub trait Apply: Send + Sync + 'static {
    /// Removes what the purge names from this PoP's caches; returns how many objects went.
    fn purge(&self, purge: &Purge) -> u64;
    /// Where the purge journal stands, before a purge is applied (for [`Apply::on_disk`]).
    fn journal_mark(&self) -> u64;
    /// Resolves once the purges applied so far are on disk (the purge journal), so that one
    /// acknowledged to JetStream is not lost to a crash: `false` if one applied since `mark`
    /// could not be written.
    fn on_disk(
        &self,
        mark: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
    /// The fleet's word on a region, a backend or a primary changed.
    fn word(&self, word: &Word);
    /// The keys the overrides bucket holds as this PoP joins: a fleet word it holds from
    /// before (saved beside its recovery points) under any other key was withdrawn while it
    /// was away, or lost with the bucket, and goes.
    fn words_held(&self, keys: &std::collections::HashSet<String>);
    /// This PoP's routing table version and the age of its newest recovery point, for its
    /// heartbeat.
    fn status(&self) -> (u64, Option<f64>);
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("not connected to the fleet yet (NATS {servers:?})")]
    NotConnected { servers: Vec<String> },
    #[error("NATS JetStream: {0}")]
    JetStream(String),
    #[error("NATS did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("cannot be said to the fleet: {0}")]
    Invalid(String),
    #[error("fleet.key_file {path}: {source}")]
    Key {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Ids of purges applied lately: a purge comes once from the stream, but a PoP also applies
/// its own at once, and a redelivery after a lost ack comes again.
#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

/// Far more purges than a stream's retention holds between two restarts of a PoP.
pub(crate) const SEEN: usize = 100_000;

impl Seen {
    /// Records `id`; false if it was there already.
    fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.ids.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// A peer as its last heartbeat described it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub heartbeat: Heartbeat,
    pub received: Instant,
}

struct Inner {
    config: streamgate_config::fleet::Fleet,
    metrics: Arc<Metrics>,
    apply: Arc<dyn Apply>,
    client: OnceLock<async_nats::Client>,
    kv: Mutex<Option<async_nats::jetstream::kv::Store>>,
    /// The stream, the consumer and the bucket are set up and being read.
    joined: std::sync::atomic::AtomicBool,
    seen: Mutex<Seen>,
    peers: Mutex<BTreeMap<String, Peer>>,
    /// `[fleet] key_file`: purges and words are signed with it, and only signed ones applied.
    key: Option<signing::Key>,
    /// With a key, the bucket revision of the word applied under each key since this PoP
    /// started, with when the bucket's stream was made (a bucket made anew starts over): a
    /// signed word that replaced an older revision (a captured value put again) is refused.
    /// Bounded by the keys the fleet signed.
    word_revisions: Mutex<(Option<String>, std::collections::HashMap<String, u64>)>,
}

/// The link; cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("pop", &self.inner.config.pop)
            .finish_non_exhaustive()
    }
}

/// Most PoPs `/fleet` keeps: whoever can publish heartbeats cannot make the map grow without
/// bound with made-up names.
pub(crate) const MAX_PEERS: usize = 4096;

/// Most fleet words (keys of the overrides bucket) a PoP holds; the bucket's stream is made
/// with the same bound.
pub const MAX_WORDS: usize = 10_000;

/// A PoP gone for good is forgotten after this long.
const FORGET: Duration = Duration::from_secs(3600);

/// Records a heartbeat received at `now`; false if it names a new PoP and [`MAX_PEERS`] are
/// known already.
pub(crate) fn remember(peers: &mut BTreeMap<String, Peer>, h: Heartbeat, now: Instant) -> bool {
    peers.retain(|_, p| now.saturating_duration_since(p.received) < FORGET);
    if peers.len() >= MAX_PEERS && !peers.contains_key(&h.pop) {
        return false;
    }
    peers.insert(
        h.pop.clone(),
        Peer {
            heartbeat: h,
            received: now,
        },
    );
    true
}

/// How long an operator's fleet-wide action waits for NATS to confirm it.
const CONFIRM: Duration = Duration::from_secs(3);

impl Fleet {
    /// Starts the link's tasks on the current runtime; returns at once. Fails only when
    /// `key_file` cannot be read or holds too short a key.
    pub fn start(
        config: streamgate_config::fleet::Fleet,
        metrics: Arc<Metrics>,
        apply: Arc<dyn Apply>,
    ) -> Result<Fleet, FleetError> {
        let key = match &config.key_file {
            Some(path) => Some(signing::Key::read(path).map_err(|source| FleetError::Key {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let inner = Arc::new(Inner {
            key,
            config,
            metrics,
            apply,
            client: OnceLock::new(),
            kv: Mutex::new(None),
            joined: std::sync::atomic::AtomicBool::new(false),
            seen: Mutex::default(),
            peers: Mutex::default(),
            word_revisions: Mutex::default(),
        });
        tokio::spawn(link::run(inner.clone()));
        Ok(Fleet { inner })
    }

    pub fn pop(&self) -> &str {
        &self.inner.config.pop
    }

    pub fn region(&self) -> &str {
        &self.inner.config.region
    }

    /// Connected to NATS and reading the fleet's stream and bucket.
    pub fn connected(&self) -> bool {
        self.inner.is_joined()
    }

    /// Publishes a purge for every PoP, this one included (which the caller has applied
    /// already: it is marked seen). Returns once JetStream has stored it.
    pub async fn purge(
        &self,
        service: Option<String>,
        target: Target,
    ) -> Result<Purge, FleetError> {
        let purge = Purge {
            id: format!("{}-{:032x}", self.inner.config.pop, fastrand::u128(..)),
            from_pop: self.inner.config.pop.clone(),
            sent_ms: message::now_ms(),
            service,
            target,
        };
        self.inner.seen_insert(&purge.id);
        link::publish_purge(&self.inner, &purge).await?;
        self.inner.count("purge", "published");
        Ok(purge)
    }

    /// Says `word` to every PoP, this one included (which applies it when the bucket tells
    /// it, like the others); a word of `None` withdraws the fleet's.
    pub async fn say(&self, word: &Word) -> Result<(), FleetError> {
        link::say(&self.inner, word).await?;
        self.inner.count("override", "published");
        Ok(())
    }

    /// Every PoP heard from, this one included, with seconds since its heartbeat.
    pub fn peers(&self) -> Vec<(Heartbeat, f64)> {
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .values()
            .map(|p| (p.heartbeat.clone(), p.received.elapsed().as_secs_f64()))
            .collect()
    }

    /// Seconds after which a silent peer is shown stale: three heartbeats.
    pub fn stale_after(&self) -> f64 {
        self.inner.config.heartbeat.as_secs_f64() * 3.0
    }
}

impl Inner {
    fn is_joined(&self) -> bool {
        self.joined.load(std::sync::atomic::Ordering::Relaxed)
            && self
                .client
                .get()
                .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    fn seen_insert(&self, id: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
    }

    /// Records that the word at bucket `revision` under `key`, which replaced revision
    /// `after`, is in force; false if it replaced one older than the word in force (a replay).
    /// The same revision again (a watch resumed) is not a replay.
    fn newest_word(&self, key: &str, revision: u64, after: u64) -> bool {
        let mut held = self
            .word_revisions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let revisions = &mut held.1;
        if let Some(&last) = revisions.get(key)
            && revision != last
            && after < last
        {
            return false;
        }
        revisions.insert(key.to_string(), revision);
        true
    }

    fn count(&self, kind: &str, result: &str) {
        self.metrics
            .fleet_messages
            .with_label_values(&[kind, result])
            .inc();
    }

    fn observe_lag(&self, sent_ms: u64) {
        let lag = message::now_ms().saturating_sub(sent_ms) as f64 / 1000.0;
        self.metrics
            .replication_lag
            .with_label_values(&[&self.config.region])
            .observe(lag);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unbounded_purge_stream_gets_the_bounds_it_lacks_and_keeps_the_rest() {
        use crate::link::with_bounds;
        let mut have = async_nats::jetstream::stream::Config {
            name: "STREAMGATE_PURGES".into(),
            max_messages: -1,
            max_bytes: -1,
            max_message_size: -1,
            num_replicas: 3,
            ..Default::default()
        };
        let want = with_bounds(&have).unwrap();
        assert_eq!(
            (want.max_messages, want.max_bytes, want.max_message_size),
            (250_000, -1, 16 * 1024),
            "no byte bound: NATS would reserve it against the account"
        );
        assert_eq!(want.num_replicas, 3);
        // The operator's own bounds stay, smaller or larger.
        have.max_messages = 5_000;
        have.max_message_size = 8 * 1024;
        assert!(with_bounds(&have).is_none());
    }

    #[test]
    fn a_purge_that_walked_the_cache_is_followed_by_as_long_a_pause() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        for (took, pause) in [
            (Duration::from_micros(40), Duration::ZERO),
            (ms(1), ms(1)),
            (ms(35), ms(35)),
            (ms(5_000), ms(1_000)),
        ] {
            assert_eq!(crate::link::pause_after(took), pause, "{took:?}");
        }
    }

    use super::*;

    fn beat(pop: &str) -> Heartbeat {
        Heartbeat {
            pop: pop.into(),
            region: "r".into(),
            sent_ms: 0,
            config_version: 1,
            snapshot_age_seconds: None,
        }
    }

    #[test]
    fn peers_are_bounded_and_forgotten() {
        let mut peers = BTreeMap::new();
        let t0 = Instant::now();
        for i in 0..MAX_PEERS {
            assert!(remember(&mut peers, beat(&format!("p{i}")), t0));
        }
        assert!(!remember(&mut peers, beat("one-too-many"), t0));
        assert!(
            remember(&mut peers, beat("p0"), t0),
            "a known PoP is updated"
        );
        assert_eq!(peers.len(), MAX_PEERS);
        let later = t0 + FORGET + Duration::from_secs(1);
        assert!(remember(&mut peers, beat("new"), later));
        assert_eq!(peers.len(), 1, "silent PoPs are forgotten after an hour");
    }

    #[test]
    fn seen_ids_are_bounded_and_answer_once() {
        let mut s = Seen::default();
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
        for i in 0..super::SEEN {
            s.insert(&i.to_string());
        }
        assert_eq!(s.order.len(), super::SEEN);
        assert!(s.insert("a"), "the oldest ids are forgotten first");
    }
}
