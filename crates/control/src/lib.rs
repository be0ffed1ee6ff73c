//! streamgate-control: the control plane. Active health checks ([`health`]), region failover and
//! failback ([`failover`]), config reload ([`reload`]), the admin API ([`admin`]) and the operator
//! overrides kept across restarts ([`words`], [`overrides`]). It programs
//! the data plane only through the routing table and the per-backend atomics.

pub mod admin;
pub mod dns;
pub mod failover;
pub mod fleet;
mod gauges;
pub mod health;
pub mod overrides;
pub mod probe;
pub mod reload;
pub mod words;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use streamgate_balance::{GeoHandle, RoutingTable, TableHandle};
use streamgate_cache::CacheRegistry;
use streamgate_cache::recovery::Snapshotter;
use streamgate_fleet::Word;
use streamgate_telemetry::Metrics;
use tokio::sync::{Notify, watch};

use health::HealthSupervisor;
use reload::FileStamp;
use words::Words;

/// A mutex's guard, poisoned or not: every value kept behind one here is whole between calls.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `GET /config` reports besides the table's own version and source.
#[derive(Debug, Clone)]
pub struct ConfigStatus {
    pub loaded_at: SystemTime,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
}

/// Something a reload must also apply (certificates, ...): checked before the new table is
/// published, so a reload stays all or nothing.
pub trait ReloadHook: Send + Sync + std::fmt::Debug {
    /// Checks that `config` can be applied; returns what applies it, run after the new table is
    /// published.
    fn prepare(
        &self,
        config: &streamgate_config::Config,
    ) -> Result<Box<dyn FnOnce() + Send>, String>;
}

/// The control plane of one daemon.
#[derive(Debug)]
pub struct Control {
    pub table: TableHandle,
    pub geo: GeoHandle,
    pub metrics: Arc<Metrics>,
    pub config_path: PathBuf,
    pub caches: Arc<CacheRegistry>,
    pub snapshots: Arc<Snapshotter>,
    /// Bound HTTP listeners (name, address), for prefetching through the normal path.
    listeners: Mutex<Vec<(String, std::net::SocketAddr)>>,
    pub(crate) health: Mutex<HealthSupervisor>,
    /// Woken on backend transitions and operator actions, so the evaluator reacts at once.
    pub(crate) changed: Arc<Notify>,
    status: Mutex<ConfigStatus>,
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    pub(crate) geo_stamp: Mutex<Option<FileStamp>>,
    pub(crate) hooks: Mutex<Vec<Arc<dyn ReloadHook>>>,
    ready: AtomicBool,
    /// The configuration the daemon started with: what settings read only at start still say.
    pub(crate) started: Arc<streamgate_config::Config>,
    /// Resolves backend names (the task and reloads share it).
    pub(crate) dns: Arc<dns::Lookup>,
    /// Wakes the re-resolution task after a reload (new names, new `[dns]` settings).
    pub(crate) dns_wake: Arc<Notify>,
    /// Operator overrides changed: the writer task saves them.
    overrides_changed: Arc<Notify>,
    /// One writer of the overrides file at a time.
    overrides_write: Mutex<()>,
    /// Admin requests waiting to hear whether the overrides they changed were saved.
    overrides_waiting: Mutex<Vec<tokio::sync::oneshot::Sender<Result<(), String>>>>,
    /// The link to the other PoPs (`[fleet]`), set once at start.
    fleet: std::sync::OnceLock<streamgate_fleet::Fleet>,
    /// This PoP's operator's words on drains, regions and primaries (admin API, or restored at
    /// start), then the fleet's; kept apart from the table and put into every table built
    /// ([`words`]). Locked in this order when both are.
    local_words: Mutex<Words>,
    fleet_words: Mutex<Words>,
}

impl Control {
    pub fn new(
        table: TableHandle,
        geo: GeoHandle,
        metrics: Arc<Metrics>,
        config_path: PathBuf,
        caches: Arc<CacheRegistry>,
        snapshots: Arc<Snapshotter>,
    ) -> Arc<Control> {
        let changed = Arc::new(Notify::new());
        let started = table.load().config.clone();
        let geo_stamp = table
            .load()
            .config
            .geo
            .as_ref()
            .and_then(|g| g.database.as_deref())
            .and_then(FileStamp::of);
        Arc::new(Control {
            health: Mutex::new(HealthSupervisor::new(metrics.clone(), changed.clone())),
            table,
            geo,
            metrics,
            config_path,
            caches,
            snapshots,
            listeners: Mutex::new(Vec::new()),
            changed,
            status: Mutex::new(ConfigStatus {
                loaded_at: SystemTime::now(),
                last_error: None,
                last_error_at: None,
            }),
            reload_lock: tokio::sync::Mutex::new(()),
            geo_stamp: Mutex::new(geo_stamp),
            hooks: Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
            started,
            dns: Arc::default(),
            dns_wake: Arc::new(Notify::new()),
            overrides_changed: Arc::new(Notify::new()),
            overrides_write: Mutex::new(()),
            overrides_waiting: Mutex::new(Vec::new()),
            fleet: std::sync::OnceLock::new(),
            local_words: Mutex::default(),
            fleet_words: Mutex::default(),
        })
    }

    /// Joins the fleet of `[fleet]` (the binary calls this once, at start).
    pub fn join_fleet(
        self: &Arc<Self>,
        config: streamgate_config::fleet::Fleet,
    ) -> Result<(), streamgate_fleet::FleetError> {
        let apply = Arc::new(fleet::FleetApply(Arc::downgrade(self)));
        let link = streamgate_fleet::Fleet::start(config, self.metrics.clone(), apply)?;
        let _ = self.fleet.set(link);
        Ok(())
    }

    /// The fleet link, when `[fleet]` is configured.
    pub fn fleet(&self) -> Option<&streamgate_fleet::Fleet> {
        self.fleet.get()
    }

    /// Starts the probers and the region evaluator, and registers the scrape-time gauges.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        self.spawn_overrides_writer(shutdown.clone());
        let _ = self
            .metrics
            .registry
            .register(Box::new(gauges::TableGauges::new(self.table.clone())));
        self.metrics
            .config_last_reload_success
            .set(reload::unix_now());
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reconcile(&self.table.load());
        tokio::spawn(dns::run(Arc::downgrade(self), shutdown.clone()));
        tokio::spawn(failover::run(
            self.table.clone(),
            self.metrics.clone(),
            self.changed.clone(),
            shutdown,
        ));
    }

    /// Records where the HTTP listeners are bound (prefetch goes through them).
    pub fn set_listeners(&self, list: Vec<(String, std::net::SocketAddr)>) {
        *self.listeners.lock().unwrap_or_else(|e| e.into_inner()) = list;
    }

    pub fn listeners(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `hook` on every reload.
    pub fn add_reload_hook(&self, hook: Arc<dyn ReloadHook>) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Saves the operator overrides next to the recovery points (with `[snapshots]`), so a
    /// restart keeps them.
    pub fn persist_overrides(&self) {
        // The writer task does the disk work (an fsync) off the admin request, one write at a
        // time, the latest state after a burst of changes.
        self.overrides_changed.notify_one();
    }

    /// Resolves once the operator overrides as they are now have been saved (by the writer
    /// task): the error if they could not be, so the admin API can say that a restart would
    /// lose them. Without `[snapshots]` nothing is saved, as documented, and this is `Ok`.
    pub async fn save_overrides(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.overrides_waiting).push(tx);
        self.overrides_changed.notify_one();
        rx.await
            .unwrap_or_else(|_| Err("the daemon is stopping".to_string()))
    }

    /// Writes the operator overrides now (the last word of a graceful stop).
    pub fn persist_overrides_now(&self) -> Result<(), String> {
        let Some(settings) = self.snapshots.settings() else {
            return Ok(());
        };
        let _one_writer = self
            .overrides_write
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let o = overrides::Overrides::of(&lock(&self.local_words), &lock(&self.fleet_words));
        o.save(&settings.dir).map_err(|e| {
            tracing::error!(dir = %settings.dir.display(), error = %e, "cannot save the operator overrides; a restart would lose them");
            e.to_string()
        })
    }

    /// This PoP's operator says `word`: it is put into the running table at once and saved.
    /// An undo with no fleet word to override (undrain, activate, the config's own primary)
    /// drops this PoP's word rather than keeping one that would hide a later fleet word.
    pub fn say_local(&self, word: &Word) {
        let mut local = lock(&self.local_words);
        let fleet = lock(&self.fleet_words);
        let table = self.table.load();
        let word = words::local_word(&table, &fleet, word.clone());
        if local.set(&word) {
            if words::apply_word(&table, &local, &fleet, &word) {
                self.changed.notify_one();
            }
            drop((local, fleet));
            self.persist_overrides();
        }
    }

    /// The fleet says `word` (from its bucket, or this PoP's operator published it): put into
    /// the running table unless this PoP's word on the thing wins. At most
    /// [`streamgate_fleet::MAX_WORDS`] are held.
    pub(crate) fn say_fleet(&self, word: &Word) {
        let local = lock(&self.local_words);
        let mut fleet = lock(&self.fleet_words);
        if fleet.len() >= streamgate_fleet::MAX_WORDS && !fleet.has(word) && word.is_said() {
            tracing::warn!(word = ?word, "fleet: {} words held already; this one is dropped", streamgate_fleet::MAX_WORDS);
            self.metrics
                .fleet_messages
                .with_label_values(&["override", "refused"])
                .inc();
            return;
        }
        if !fleet.set(word) {
            return;
        }
        if local.has(word) {
            tracing::info!(word = ?word, "fleet word noted; this PoP's own word on it still wins");
        }
        if words::apply_word(&self.table.load(), &local, &fleet, word) {
            self.changed.notify_one();
        }
        drop((local, fleet));
        self.persist_overrides();
    }

    /// (this PoP's, the fleet's) words as they stand.
    pub fn words(&self) -> (Words, Words) {
        let local = lock(&self.local_words).clone();
        let fleet = lock(&self.fleet_words).clone();
        (local, fleet)
    }

    /// The (this PoP's, the fleet's) words restored at start (already put into the first
    /// table): the fleet's as they were at the last stop, until its bucket says otherwise.
    pub fn restore_words(&self, (local, fleet): (Words, Words)) {
        *lock(&self.local_words) = local;
        *lock(&self.fleet_words) = fleet;
    }

    /// Publishes `table` with the words put into it first, under the words' lock, so that a
    /// word said meanwhile is in it too; nothing can pick a backend of the new table before
    /// its drains are set. This PoP's words on things the table no longer has are forgotten
    /// (the fleet's stay, for the table that brings the thing back).
    pub(crate) fn publish(&self, table: Arc<RoutingTable>) {
        let mut local = lock(&self.local_words);
        let gone = local.forget_missing(&table);
        for item in &gone {
            tracing::info!(item = %item, "operator word on something the table no longer has; forgotten");
        }
        let fleet = lock(&self.fleet_words);
        words::apply(&table, &local, &fleet);
        self.table.store(table);
        drop((local, fleet));
        if !gone.is_empty() {
            self.persist_overrides();
        }
        self.changed.notify_one();
    }

    /// The task that writes the operator overrides whenever they change, until `shutdown`.
    fn spawn_overrides_writer(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let weak = Arc::downgrade(self);
        let changed = self.overrides_changed.clone();
        tokio::spawn(async move {
            loop {
                let stopping = tokio::select! {
                    () = changed.notified() => false,
                    _ = shutdown.changed() => true,
                };
                let Some(control) = weak.upgrade() else {
                    return;
                };
                if stopping {
                    // The stop saves them last (`persist_overrides_now`); nobody waits for ever.
                    for w in std::mem::take(&mut *lock(&control.overrides_waiting)) {
                        let _ = w.send(Err("the daemon is stopping".to_string()));
                    }
                    return;
                }
                // Taken before the write: a word said during it waits for the next one.
                let waiting = std::mem::take(&mut *lock(&control.overrides_waiting));
                let saved = tokio::task::spawn_blocking(move || control.persist_overrides_now())
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                for w in waiting {
                    let _ = w.send(saved.clone());
                }
            }
        });
    }

    /// Readiness: the config is loaded and every listener is bound.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    pub fn status(&self) -> ConfigStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wakes the region evaluator (after an operator action on the table's atomics).
    pub fn poke(&self) {
        self.changed.notify_one();
    }

    /// Stops every prober (shutdown).
    pub fn stop_probes(&self) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        *h = HealthSupervisor::new(self.metrics.clone(), self.changed.clone());
    }
}
