//! Reloading: SIGHUP, the admin API or a change of the config file. Parse and validate, check a
//! changed geo database, build a new table carrying over live state, publish it. A file that
//! fails any step changes nothing: the errors are logged and counted and the running table stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use streamgate_balance::{GeoDb, RoutingTable};
use streamgate_config::diff::{ConfigDiff, diff};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::Control;

/// What a reload did.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    Applied { version: u64, changes: ConfigDiff },
    Unchanged { version: u64 },
    Rejected { errors: Vec<String> },
}

/// Identity of a geo database file, to notice when it is replaced in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    pub(crate) fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            path: path.to_path_buf(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

impl Control {
    /// Reloads the config file. `force` rebuilds even if the file is unchanged (SIGHUP, admin);
    /// the file watcher passes false.
    pub async fn reload(&self, force: bool) -> ReloadOutcome {
        let _serial = self.reload_lock.lock().await;
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || streamgate_config::load(&path)).await;
        let config = match loaded {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return self.reject(e.to_string().lines().map(str::to_string).collect()),
            Err(e) => return self.reject(vec![format!("reload task failed: {e}")]),
        };
        let current = self.table.load_full();
        let database = config.geo.as_ref().and_then(|g| g.database.clone());
        let geo_now = database.as_deref().and_then(FileStamp::of);
        let geo_changed = geo_now != *self.geo_stamp.lock().unwrap_or_else(|e| e.into_inner());
        if !force && config.source.digest == current.config.source.digest && !geo_changed {
            return ReloadOutcome::Unchanged {
                version: current.version,
            };
        }

        // Everything is checked before anything is swapped: a geo database that opens but a
        // certificate that does not leaves the running database in place too.
        let new_geo = if geo_changed {
            match database {
                Some(db_path) => {
                    let opened = tokio::task::spawn_blocking(move || GeoDb::open(&db_path)).await;
                    match opened {
                        Ok(Ok(db)) => Some(Some(Arc::new(db))),
                        Ok(Err(e)) => {
                            return self.reject(vec![format!(
                                "{}: geo.database: {e}; keeping the running configuration and database",
                                config.source.path.display()
                            )]);
                        }
                        Err(e) => {
                            return self.reject(vec![format!("geo database check failed: {e}")]);
                        }
                    }
                }
                None => Some(None),
            }
        } else {
            None
        };

        // CA bundles and client certificates are read again for the configuration checked now.
        let forgotten = streamgate_tls::forget_client_configs();
        let hooks: Vec<Arc<dyn crate::ReloadHook>> =
            self.hooks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut commits = Vec::new();
        for h in hooks {
            match h.prepare(&config) {
                Ok(commit) => commits.push(commit),
                Err(e) => {
                    // Rejected: clients built from now on read what the running config did.
                    streamgate_tls::remember_client_configs(forgotten);
                    return self.reject(vec![format!("{}: {e}", config.source.path.display())]);
                }
            }
        }
        // A name new to this file is resolved before its table is published, so its regions
        // do not go without backends until the re-resolution task gets to it. This is the last
        // await: nothing is swapped before it, so a reload given up on here (its caller gone)
        // leaves the running configuration and database whole.
        let resolved =
            crate::dns::resolve_missing(&self.dns, &config, &current.resolved, &self.metrics).await;
        if let Some(db) = new_geo {
            if let Some(db) = &db {
                info!(database = %db.path().display(), records = db.records_checked, "geo database loaded");
            }
            self.geo.store(db);
            *self.geo_stamp.lock().unwrap_or_else(|e| e.into_inner()) = geo_now;
        }
        let changes = diff(&current.config, &config);
        for item in &changes.needs_restart {
            warn!(setting = %item, "changed in the config file; takes effect at the next restart");
        }
        let table = Arc::new(RoutingTable::build_resolved(
            Arc::new(config),
            Arc::new(resolved),
            Some(&current),
            &self.metrics,
        ));
        let version = table.version;
        self.publish(table.clone());
        self.dns_wake.notify_one();
        for commit in commits {
            commit();
        }
        let names: Vec<&str> = table
            .services
            .iter()
            .filter(|s| s.spec.cache.is_some())
            .map(|s| &*s.name)
            .collect();
        self.caches.retain(&names);
        self.snapshots.configure(table.config.snapshots.clone());
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reconcile(&table);
        self.changed.notify_one();
        if let Some(s) = &table.config.snapshots {
            // The file that just loaded is the newest known good one (fsync: off the runtime).
            let (config, dir) = (
                table.config.clone(),
                streamgate_config::last_good::dir_in(&s.dir),
            );
            tokio::task::spawn_blocking(move || {
                match streamgate_config::last_good::save(&dir, &config) {
                    Ok(Some(path)) => {
                        info!(copy = %path.display(), "config kept as the last known good copy")
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "cannot keep the config as the last known good copy")
                    }
                }
            });
        }
        self.metrics.declare(&table.config);
        for region in &changes.regions_deployed {
            self.metrics
                .regional_deployments
                .with_label_values(&[region])
                .inc();
        }
        self.metrics
            .config_reloads
            .with_label_values(&["success"])
            .inc();
        self.metrics.config_last_reload_success.set(unix_now());
        {
            let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
            st.loaded_at = SystemTime::now();
            st.last_error = None;
        }
        info!(
            version,
            services_added = ?changes.services_added,
            services_removed = ?changes.services_removed,
            services_changed = ?changes.services_changed,
            backends_added = changes.backends_added.len(),
            backends_removed = changes.backends_removed.len(),
            "configuration reloaded"
        );
        ReloadOutcome::Applied { version, changes }
    }

    fn reject(&self, errors: Vec<String>) -> ReloadOutcome {
        for e in &errors {
            error!(error = %e, "config reload rejected; the running configuration stays");
        }
        self.metrics
            .config_reloads
            .with_label_values(&["failure"])
            .inc();
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        st.last_error = Some(errors.join("\n"));
        st.last_error_at = Some(SystemTime::now());
        ReloadOutcome::Rejected { errors }
    }
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Watches the config file (through its directory, since editors replace files) and reloads
/// once changes have settled for `debounce`.
pub fn watch_config(
    control: Arc<Control>,
    debounce: Duration,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let path = control.config_path.clone();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path.file_name()?.to_os_string();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let tx_first = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only what can change the file's contents: reading it (which every reload does)
        // raises access events, and reacting to those made one SIGHUP reload forever.
        // Kubernetes ConfigMaps swap a `..data` symlink rather than touching the file itself.
        if let Ok(ev) = event
            && !matches!(ev.kind, notify::EventKind::Access(_))
            && ev.paths.iter().any(|p| {
                p.file_name() == Some(name.as_os_str())
                    || p.file_name().is_some_and(|n| n == "..data")
            })
        {
            let _ = tx.send(());
        }
    })
    .map_err(
        |e| warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload"),
    )
    .ok()?;
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP or POST /reload");
        return None;
    }
    // The file may have changed between the load at start and this watch (an edit while the
    // daemon was starting would otherwise wait for the next event): look once now. The digest
    // makes it a no-op when nothing changed.
    let _ = tx_first.send(());
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until no event for `debounce`.
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            // Its digest decides whether the file changed (a touch or a rewrite of the same
            // bytes is no change): only a change is reloaded, and logged by the reload.
            if let ReloadOutcome::Unchanged { .. } = control.reload(false).await {
                tracing::debug!(file = %control.config_path.display(), "config file event; contents unchanged");
            }
        }
    });
    Some(watcher)
}
