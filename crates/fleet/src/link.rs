//! The NATS side: connecting (with backoff, in the background), the purge stream and this PoP's
//! durable consumer, the overrides bucket, heartbeats. A session that fails is started again;
//! its failure is logged once until the link recovers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::{StreamExt, TryStreamExt};
use tracing::{debug, info, warn};

use crate::message::{self, Heartbeat, Purge};
use crate::word::{self, Word};
use crate::{FleetError, Inner};

fn js_err(e: impl std::fmt::Display) -> FleetError {
    FleetError::JetStream(e.to_string())
}

pub(crate) async fn run(inner: Arc<Inner>) {
    let cfg = &inner.config;
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("streamgate {}", cfg.pop))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        // The client's own backoff, capped: a PoP back from a partition catches up soon.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100u64 << attempts.min(8)).min(5_000))
        });
    if let Some(path) = &cfg.credentials {
        options = match options.credentials_file(path).await {
            Ok(o) => o,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "fleet: cannot read the NATS credentials; the fleet link stays down");
                return;
            }
        };
    }
    let client = match options.connect(cfg.servers.clone()).await {
        Ok(c) => c,
        Err(e) => {
            warn!(servers = ?cfg.servers, error = %e, "fleet: cannot start the NATS client; the fleet link stays down");
            return;
        }
    };
    let _ = inner.client.set(client.clone());
    tokio::spawn(heartbeats(inner.clone(), client.clone()));
    tokio::spawn(peers(inner.clone(), client.clone()));
    tokio::spawn(connected_gauge(inner.clone(), client.clone()));

    let js = jetstream::new(client);
    let mut backoff = Duration::from_millis(200);
    let mut last_error: Option<String> = None;
    loop {
        let started = Instant::now();
        let e = session(&inner, &js).await;
        inner
            .joined
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let text = e.to_string();
        if last_error.as_deref() != Some(&text) {
            warn!(error = %text, "fleet: link to NATS lost; retrying with backoff (traffic is not affected)");
            last_error = Some(text);
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Sets up the stream, the consumer and the bucket, then applies what arrives until something
/// fails.
async fn session(inner: &Arc<Inner>, js: &jetstream::Context) -> FleetError {
    match session_inner(inner, js).await {
        Ok(()) => FleetError::JetStream("the consumer ended".into()),
        Err(e) => e,
    }
}

async fn session_inner(inner: &Arc<Inner>, js: &jetstream::Context) -> Result<(), FleetError> {
    let cfg = &inner.config;
    let purges = js
        .get_or_create_stream(purge_stream(cfg))
        .await
        .map_err(|e| js_err(format!("stream {}: {e}", cfg.stream())))?;
    // A stream an older release made has no bounds: they are added to it, and nothing else
    // of it changes (its replicas, retention and placement are the operator's). A refused
    // update (a NATS user without STREAM.UPDATE) leaves it as it is.
    let have = &purges.cached_info().config;
    if let Some(bounded) = with_bounds(have) {
        match js.update_stream(&bounded).await {
            Ok(_) => info!(stream = %cfg.stream(), "fleet: purge stream given its bounds"),
            Err(e) => {
                warn!(stream = %cfg.stream(), error = %e, "fleet: cannot bound the purge stream; going on with it unbounded")
            }
        }
    }
    let consumer = purges
        .get_or_create_consumer(
            &cfg.pop,
            consumer::pull::Config {
                durable_name: Some(cfg.pop.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| js_err(format!("consumer {}: {e}", cfg.pop)))?;
    // The bucket's stream is made as a key-value bucket's is (one value per key, direct
    // gets): the client's create_key_value first asks for account info, whose answer from
    // nats-server 2.9 (Debian's) it cannot read.
    let words_stream = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{}", cfg.bucket()),
            subjects: vec![format!("$KV.{}.>", cfg.bucket())],
            max_messages_per_subject: 1,
            // Bounds what a writer of the bucket can make every PoP hold: far more words than a
            // fleet's regions, services and backends, each a short JSON value.
            max_messages: crate::MAX_WORDS as i64,
            max_message_size: 1024,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err(format!("bucket {}: {e}", cfg.bucket())))?;
    let bucket = js
        .get_key_value(cfg.bucket())
        .await
        .map_err(|e| js_err(format!("bucket {}: {e}", cfg.bucket())))?;
    *inner.kv.lock().unwrap_or_else(|e| e.into_inner()) = Some(bucket.clone());
    // Before watching: the watch brings what the bucket holds, never what it no longer does.
    let held: std::collections::HashSet<String> = bucket
        .keys()
        .await
        .map_err(|e| js_err(format!("keys of {}: {e}", cfg.bucket())))?
        .try_collect()
        .await
        .map_err(|e| js_err(format!("keys of {}: {e}", cfg.bucket())))?;
    inner.apply.words_held(&held);
    // Replays stay refused across reconnects, but a bucket made anew counts its revisions from
    // 1 again: what was held of another bucket goes.
    let made = format!("{:?}", words_stream.cached_info().created);
    {
        let mut revisions = inner
            .word_revisions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if revisions.0.as_deref() != Some(made.as_str()) {
            *revisions = (Some(made), Default::default());
        }
    }
    let mut overrides = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| js_err(format!("watching {}: {e}", cfg.bucket())))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| js_err(format!("reading {}: {e}", cfg.stream())))?;
    info!(pop = %cfg.pop, stream = %cfg.stream(), "fleet: joined");
    inner
        .joined
        .store(true, std::sync::atomic::Ordering::Relaxed);
    loop {
        tokio::select! {
            m = messages.next() => match m {
                Some(Ok(m)) => {
                    if !signed(inner, &m) {
                        // Not from the fleet: dropped, and acked so that it is not delivered
                        // again.
                        m.ack().await.map_err(js_err)?;
                        continue;
                    }
                    let mark = inner.apply.journal_mark();
                    // A prefix, tag or whole-cache purge walks every stored object: off the
                    // runtime's threads, which serve traffic, and followed by a pause as long
                    // as it took, so purges take at most half a core however fast they come.
                    let started = Instant::now();
                    let (applying, payload) = (inner.clone(), m.payload.clone());
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || apply_purge(&applying, &payload)).await
                    {
                        warn!(error = %e, "fleet: applying a purge failed; acknowledged so that it is not delivered again");
                    }
                    tokio::time::sleep(pause_after(started.elapsed())).await;
                    // Acked once applied and journaled: a purge lost to a crash comes again.
                    // One the journal could not take is acked all the same (logged): sent
                    // again, it would fail again, and the purge is applied in memory.
                    inner.apply.on_disk(mark).await;
                    m.ack().await.map_err(js_err)?;
                }
                Some(Err(e)) => return Err(js_err(e)),
                None => return Ok(()),
            },
            e = overrides.next() => match e {
                Some(Ok(entry)) => apply_override(inner, &entry),
                Some(Err(e)) => return Err(js_err(e)),
                None => return Ok(()),
            },
        }
    }
}

/// The purge stream, made with bounds, as the overrides bucket is, so that whoever may
/// publish on the purge subject cannot make every PoP's NATS hold without limit: no message
/// larger than a PoP takes ([`message::MAX_MESSAGE`]), at most [`MAX_PURGES`], the oldest
/// going first (as `purge_retention` ages them out; a burst of purges is never refused). No
/// byte bound: NATS reserves a stream's `max_bytes` (times its replicas) against the
/// account's storage when it is made, and a PoP whose account has less would never join.
pub(crate) fn purge_stream(cfg: &streamgate_config::fleet::Fleet) -> stream::Config {
    stream::Config {
        name: cfg.stream(),
        subjects: vec![cfg.purge_subject()],
        max_age: cfg.purge_retention,
        max_messages: MAX_PURGES,
        max_message_size: message::MAX_MESSAGE as i32,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// `have` with the bounds it lacks (unlimited: 0 or below), or `None` if it has them all.
/// Bounds an operator set are kept, smaller or larger.
pub(crate) fn with_bounds(have: &stream::Config) -> Option<stream::Config> {
    let mut want = have.clone();
    if want.max_messages <= 0 {
        want.max_messages = MAX_PURGES;
    }
    if want.max_message_size <= 0 {
        want.max_message_size = message::MAX_MESSAGE as i32;
    }
    (want.max_messages != have.max_messages || want.max_message_size != have.max_message_size)
        .then_some(want)
}

/// Purges the stream holds at most: 4 GiB at worst (of 16 KiB messages), about 250 MiB of
/// real ones (a URL and its envelope).
const MAX_PURGES: i64 = 250_000;

/// How long to wait after a purge that took `took` before the next: as long again once it
/// took a millisecond or more (a walk of the cache; a URL purge takes microseconds and waits
/// for nothing), at most a second.
pub(crate) fn pause_after(took: Duration) -> Duration {
    if took < Duration::from_millis(1) {
        Duration::ZERO
    } else {
        took.min(Duration::from_secs(1))
    }
}

/// Whether a purge may go on to be applied: always without a key; with one, only when it
/// carries the key's signature of its subject and bytes (dropped as `unsigned` otherwise).
fn signed(inner: &Inner, m: &jetstream::Message) -> bool {
    let Some(key) = &inner.key else {
        return true;
    };
    let authentic = m
        .headers
        .as_ref()
        .and_then(|h| h.get(crate::signing::HEADER))
        .is_some_and(|sig| key.verifies(m.subject.as_str(), &m.payload, sig.as_str()));
    if !authentic {
        dropped(inner, "unsigned");
    }
    authentic
}

/// With a key, whether a purge sent at `sent_ms` is older than the stream keeps purges, with
/// five minutes of clock skew: only a signed purge captured and published again can be.
fn stale(inner: &Inner, sent_ms: u64) -> bool {
    let oldest = u64::try_from(inner.config.purge_retention.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(300_000);
    inner.key.is_some() && message::now_ms().saturating_sub(sent_ms) > oldest
}

/// Counts a purge refused as `why` (`unsigned`, `stale`); logged at most once a minute.
fn dropped(inner: &Inner, why: &str) {
    static LAST: streamgate_telemetry::Throttle = streamgate_telemetry::Throttle::new();
    inner.count("purge", why);
    if LAST.ready(Duration::from_secs(60)) {
        warn!(subject = %inner.config.purge_subject(), result = why, "fleet: a purge without the fleet key's signature, or older than purge_retention, dropped (a publisher that is not a PoP of this fleet, one with another key_file, or a replay)");
    }
}

fn apply_purge(inner: &Inner, payload: &[u8]) {
    match Purge::decode(payload) {
        Err(e) => {
            warn!(error = %e, "fleet: malformed purge dropped");
            inner.count("purge", "malformed");
        }
        Ok(p) if stale(inner, p.sent_ms) => dropped(inner, "stale"),
        Ok(p) if !inner.seen_insert(&p.id) => {
            debug!(id = %p.id, "fleet: purge applied already");
            inner.count("purge", "duplicate");
        }
        Ok(p) => {
            let purged = inner.apply.purge(&p);
            inner.observe_lag(p.sent_ms);
            inner.count("purge", "applied");
            info!(id = %p.id, from = %p.from_pop, target = ?p.target, service = ?p.service, purged, "fleet purge applied");
        }
    }
}

fn apply_override(inner: &Inner, entry: &kv::Entry) {
    let value = match entry.operation {
        kv::Operation::Put => Some(&entry.value[..]),
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    if let Some(key) = &inner.key
        && !crate::word::signed_with(key, &word_subject(inner, &entry.key), value)
    {
        return refused_word(inner, &entry.key, "unsigned");
    }
    match Word::decode(&entry.key, value) {
        Ok(r) => {
            if inner.key.is_some()
                && !inner.newest_word(&entry.key, entry.revision, r.after.unwrap_or(0))
            {
                return refused_word(inner, &entry.key, "stale");
            }
            if let Some(sent_ms) = r.sent_ms {
                inner.observe_lag(sent_ms);
            }
            inner.apply.word(&r.word);
            inner.count("override", "applied");
            info!(key = %entry.key, word = ?r.word, from = ?r.from_pop, "fleet override applied");
        }
        Err(e) => {
            warn!(key = %entry.key, error = %e, "fleet: malformed override dropped");
            inner.count("override", "malformed");
        }
    }
}

/// The NATS subject a fleet word's `key` is put on: what its signature covers.
fn word_subject(inner: &Inner, key: &str) -> String {
    format!("$KV.{}.{key}", inner.config.bucket())
}

/// Counts a fleet word refused as `why` (`unsigned`, `stale`); logged at most once a minute.
fn refused_word(inner: &Inner, key: &str, why: &str) {
    static LAST: streamgate_telemetry::Throttle = streamgate_telemetry::Throttle::new();
    inner.count("override", why);
    if LAST.ready(Duration::from_secs(60)) {
        warn!(bucket = %inner.config.bucket(), key, result = why, "fleet: an override without the fleet key's signature (a deletion, or a writer that is not a PoP of this fleet), or older than the word in force (a replay), dropped; the word in force stays");
    }
}

pub(crate) async fn publish_purge(inner: &Inner, purge: &Purge) -> Result<(), FleetError> {
    let client = inner.client.get().ok_or_else(|| FleetError::NotConnected {
        servers: inner.config.servers.clone(),
    })?;
    let js = jetstream::new(client.clone());
    let payload = serde_json::to_vec(purge).map_err(js_err)?;
    let subject = inner.config.purge_subject();
    let mut headers = async_nats::HeaderMap::new();
    match &inner.key {
        Some(key) => {
            let sig = key.sign(&subject, &payload);
            // The signature is the deduplication id as well: one who cannot sign cannot take
            // a coming purge's id first (an unsigned message with it would make JetStream
            // drop the real one as a duplicate).
            headers.insert("Nats-Msg-Id", sig.as_str());
            headers.insert(crate::signing::HEADER, sig.as_str());
        }
        None => headers.insert("Nats-Msg-Id", purge.id.as_str()),
    }
    let confirm = async {
        js.publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(js_err)?
            .await
            .map_err(js_err)
    };
    let ack = tokio::time::timeout(super::CONFIRM, confirm)
        .await
        .map_err(|_| FleetError::Timeout(super::CONFIRM))??;
    // Every purge's id is new: a duplicate means the stream dropped it.
    if ack.duplicate {
        return Err(FleetError::JetStream(
            "the stream took the purge for a duplicate of an earlier message and dropped it".into(),
        ));
    }
    Ok(())
}

pub(crate) async fn say(inner: &Inner, word: &Word) -> Result<(), FleetError> {
    let key = word.key();
    let subject = word_subject(inner, &key);
    // What every PoP would refuse (an IPv6 scope id, a name over 128 bytes) is refused here.
    let value = word.value(&inner.config.pop, message::now_ms(), None);
    if Word::decode(&key, value.as_deref())
        .map(|r| r.word)
        .as_ref()
        != Ok(word)
    {
        return Err(FleetError::Invalid(format!(
            "{word:?} does not survive the bucket (names are at most 128 bytes, addresses without a scope id)"
        )));
    }
    let bucket = inner
        .kv
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| FleetError::NotConnected {
            servers: inner.config.servers.clone(),
        })?;
    let write = async {
        let Some(fleet_key) = &inner.key else {
            return match value {
                Some(value) => bucket
                    .put(key, value.into())
                    .await
                    .map(|_| ())
                    .map_err(js_err),
                None => bucket.delete(key).await.map_err(js_err),
            };
        };
        // Signed over the revision it replaces, and written only over that revision: a PoP
        // that saw a later one refuses this word if it is ever put again. Another PoP's word
        // written in between: read the revision again.
        for _ in 0..3 {
            let after = bucket
                .entry(key.as_str())
                .await
                .map_err(js_err)?
                .map_or(0, |e| e.revision);
            let signer = word::Signer {
                key: fleet_key,
                subject: &subject,
                after,
            };
            let signed = word
                .value(&inner.config.pop, message::now_ms(), Some(signer))
                .ok_or_else(|| FleetError::Invalid(format!("{word:?} cannot be written")))?;
            match bucket.update(key.as_str(), signed.into(), after).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(js_err(e)),
            }
        }
        Err(FleetError::JetStream(format!(
            "{key} kept changing under this word; say it again"
        )))
    };
    tokio::time::timeout(super::CONFIRM, write)
        .await
        .map_err(|_| FleetError::Timeout(super::CONFIRM))?
}

async fn heartbeats(inner: Arc<Inner>, client: async_nats::Client) {
    let cfg = &inner.config;
    let mut tick = tokio::time::interval(cfg.heartbeat);
    loop {
        tick.tick().await;
        let (config_version, snapshot_age_seconds) = inner.apply.status();
        let beat = Heartbeat {
            pop: cfg.pop.clone(),
            region: cfg.region.clone(),
            sent_ms: message::now_ms(),
            config_version,
            snapshot_age_seconds,
        };
        if let Ok(payload) = serde_json::to_vec(&beat) {
            // Core NATS, fire and forget: a lost heartbeat is replaced by the next.
            let _ = client
                .publish(cfg.heartbeat_subject(&cfg.pop), payload.into())
                .await;
        }
    }
}

async fn peers(inner: Arc<Inner>, client: async_nats::Client) {
    let subject = inner.config.heartbeat_subject("*");
    loop {
        let mut sub = match client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(m) = sub.next().await {
            match Heartbeat::decode(&m.payload) {
                // A heartbeat speaks for the PoP its subject names: with NATS permissions that
                // let each PoP publish only its own subject, no PoP (or other publisher) can
                // show a dead PoP as alive or report another's config version.
                Ok(h) if *m.subject != *inner.config.heartbeat_subject(&h.pop) => {
                    debug!(subject = %m.subject, pop = %h.pop, "fleet: heartbeat on another PoP's subject dropped");
                    inner.count("heartbeat", "malformed");
                }
                Ok(h) => {
                    let mut peers = inner.peers.lock().unwrap_or_else(|e| e.into_inner());
                    if !crate::remember(&mut peers, h, Instant::now()) {
                        debug!(
                            "fleet: heartbeat of a new PoP dropped: {} PoPs known",
                            crate::MAX_PEERS
                        );
                    }
                }
                Err(e) => {
                    debug!(error = %e, "fleet: malformed heartbeat dropped");
                    inner.count("heartbeat", "malformed");
                }
            }
        }
    }
}

async fn connected_gauge(inner: Arc<Inner>, client: async_nats::Client) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let _ = &client;
        inner
            .metrics
            .fleet_connected
            .set(i64::from(inner.is_joined()));
    }
}
