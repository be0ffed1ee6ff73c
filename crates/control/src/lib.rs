//! streamgate-control: the control plane. Active health checks ([`health`]), region failover and
//! failback ([`failover`]), config reload ([`reload`]), the admin API ([`admin`]) and the operator
//! overrides kept across restarts ([`overrides`]). It programs
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

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use streamgate_balance::{GeoHandle, RoutingTable, TableHandle};
use streamgate_cache::CacheRegistry;
use streamgate_cache::recovery::Snapshotter;
use streamgate_telemetry::Metrics;
use tokio::sync::{Notify, watch};

use health::HealthSupervisor;
use reload::FileStamp;

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
    /// The link to the other PoPs (`[fleet]`), set once at start.
    fleet: std::sync::OnceLock<streamgate_fleet::Fleet>,
    /// Addresses operators drained (admin API, or restored at start), kept apart from the
    /// table: a backend's state lives only as long as its address is in the table, and a DNS
    /// answer that drops an address for a while must not undo its drain. Put back into every
    /// table a DNS answer or a reload builds, and saved with the other overrides.
    drains: Mutex<BTreeSet<SocketAddr>>,
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
            fleet: std::sync::OnceLock::new(),
            drains: Mutex::new(BTreeSet::new()),
        })
    }

    /// Joins the fleet of `[fleet]` (the binary calls this once, at start).
    pub fn join_fleet(self: &Arc<Self>, config: streamgate_config::fleet::Fleet) {
        let apply = Arc::new(fleet::FleetApply(Arc::downgrade(self)));
        let link = streamgate_fleet::Fleet::start(config, self.metrics.clone(), apply);
        let _ = self.fleet.set(link);
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

    /// Writes the operator overrides now (the last word of a graceful stop).
    pub fn persist_overrides_now(&self) {
        let Some(settings) = self.snapshots.settings() else {
            return;
        };
        let _one_writer = self
            .overrides_write
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut o = overrides::Overrides::capture(&self.table.load());
        // Drains of addresses a DNS answer has dropped for now are still the operator's word.
        o.drained
            .extend(self.drains.lock().unwrap_or_else(|e| e.into_inner()).iter());
        if let Err(e) = o.save(&settings.dir) {
            tracing::warn!(dir = %settings.dir.display(), error = %e, "cannot save the operator overrides; a restart would lose them");
        }
    }

    /// Records an operator's drain (`true`) or undrain of `address`, for [`Control::reapply_drains`].
    pub fn remember_drain(&self, address: SocketAddr, drained: bool) {
        let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        if drained {
            drains.insert(address);
        } else {
            drains.remove(&address);
        }
    }

    /// Drains, in `table` (not yet published), every backend at an address operators drained:
    /// one that left a DNS answer and came back, or that a reload brought back, is drained
    /// again before any request can pick it. The drains a reload makes impossible (an address
    /// neither in the table nor on the port of a backend name, which could bring it back) are
    /// forgotten, as its carried-over state would be.
    pub(crate) fn reapply_drains(&self, table: &RoutingTable) {
        let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        let name_ports: BTreeSet<u16> = table
            .config
            .regions
            .iter()
            .flat_map(|r| &r.named_backends)
            .map(|b| b.port)
            .collect();
        drains.retain(|addr| {
            let mut found = false;
            for (_, _, b) in table.backends_at(*addr) {
                b.state.set_drained(true);
                found = true;
            }
            found || name_ports.contains(&addr.port())
        });
    }

    /// The task that writes the operator overrides whenever they change, until `shutdown`.
    fn spawn_overrides_writer(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let weak = Arc::downgrade(self);
        let changed = self.overrides_changed.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = changed.notified() => {}
                    _ = shutdown.changed() => return,
                }
                let Some(control) = weak.upgrade() else {
                    return;
                };
                let _ = tokio::task::spawn_blocking(move || control.persist_overrides_now()).await;
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
