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

/// What a file event says of a change to the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileEvent {
    /// A change has ended and the file can be read: a writer closed it, a name moved over it
    /// (editors, `sed -i`, `mv`, Kubernetes' `..data` swap), it was removed or replaced.
    Ended,
    /// A write is under way: bytes written, or a regular file created (written next, then
    /// closed). A writer that pauses longer than the debounce (`scp`, `kubectl cp`, `tee`)
    /// would otherwise have its first half read, and a file cut at a `[[services]]` line is
    /// valid TOML that drops services.
    Writing,
    /// Nothing changed: the file was read (every reload reads it, and reacting to that made
    /// one SIGHUP reload forever) or its metadata changed.
    Nothing,
}

/// Where the platform reports no close (not inotify), a write ends a change. `whole`: the path
/// was made whole, and nothing writes it after: a symbolic link (`ln -sf`) or a hard link to
/// an existing file (`ln`, `cp -l`).
fn file_event(kind: &notify::EventKind, whole: bool) -> FileEvent {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
    let write = if cfg!(target_os = "linux") {
        FileEvent::Writing
    } else {
        FileEvent::Ended
    };
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => FileEvent::Ended,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => FileEvent::Nothing,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => write,
        EventKind::Create(CreateKind::File) if !whole => write,
        _ => FileEvent::Ended,
    }
}

/// Whether `path` is whole as it was made (see [`file_event`]).
fn made_whole(path: &Path) -> bool {
    let Ok(m) = path.symlink_metadata() else {
        return false;
    };
    #[cfg(unix)]
    let linked = std::os::unix::fs::MetadataExt::nlink(&m) > 1;
    #[cfg(not(unix))]
    let linked = false;
    m.file_type().is_symlink() || linked
}

/// A write with no close after it for this long (a writer that hung, events the kernel's queue
/// lost) ends its change all the same: the file is read, and validated, as it is.
const STALLED_WRITE: Duration = Duration::from_secs(60);

/// Watches the config file (through its directory, since editors replace files) and reloads
/// once a change has ended ([`FileEvent`]), no write is under way, and no event came for
/// `debounce`.
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
    let (tx, mut rx) = mpsc::unbounded_channel::<FileEvent>();
    let tx_first = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Kubernetes ConfigMaps swap a `..data` symlink rather than touching the file itself.
        let Ok(ev) = event else { return };
        // The kernel's queue overflowed: whatever happened to the file, look at it.
        if ev.need_rescan() {
            let _ = tx.send(FileEvent::Ended);
            return;
        }
        if let Some(p) = ev.paths.iter().find(|p| {
            p.file_name() == Some(name.as_os_str()) || p.file_name().is_some_and(|n| n == "..data")
        }) {
            // Reads and metadata are not sent: they would only hold a pending reload back.
            match file_event(&ev.kind, made_whole(p)) {
                FileEvent::Nothing => {}
                said => {
                    let _ = tx.send(said);
                }
            }
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
    info!(file = %path.display(), "watching the config file for changes");
    // The file may have changed between the load at start and this watch (an edit while the
    // daemon was starting would otherwise wait for the next event): look once now. The digest
    // makes it a no-op when nothing changed.
    let _ = tx_first.send(FileEvent::Ended);
    tokio::spawn(async move {
        let (mut ended, mut writing) = (false, false);
        loop {
            let wait = match (ended, writing) {
                (_, true) => Some(STALLED_WRITE),
                (true, false) => Some(debounce),
                (false, false) => None,
            };
            let event = match wait {
                None => rx.recv().await,
                Some(wait) => match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(event) => event,
                    Err(_) => {
                        if writing {
                            warn!(file = %control.config_path.display(), "config file written to without a close for a minute; reading it as it is");
                        }
                        (ended, writing) = (false, false);
                        // Its digest decides whether the file changed (a touch or a rewrite of
                        // the same bytes is no change): only a change is reloaded, and logged.
                        if let ReloadOutcome::Unchanged { .. } = control.reload(false).await {
                            tracing::debug!(file = %control.config_path.display(), "config file event; contents unchanged");
                        }
                        continue;
                    }
                },
            };
            match event {
                None => return,
                Some(FileEvent::Ended) => (ended, writing) = (true, false),
                Some(FileEvent::Writing) => writing = true,
                Some(FileEvent::Nothing) => {}
            }
        }
    });
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::{FileEvent, file_event, made_whole};
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, MetadataKind, ModifyKind,
        RemoveKind, RenameMode,
    };

    #[test]
    fn a_change_ends_when_its_writer_closes_the_file_or_a_name_moves() {
        use FileEvent::{Ended, Nothing, Writing};
        assert_eq!(
            file_event(&EventKind::Create(CreateKind::File), true),
            Ended
        );
        for (kind, says) in [
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                Ended,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                Nothing,
            ),
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                Nothing,
            ),
            (
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                Writing,
            ),
            (
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                Nothing,
            ),
            (EventKind::Create(CreateKind::File), Writing),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), Ended),
            (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), Ended),
            (EventKind::Remove(RemoveKind::File), Ended),
        ] {
            assert_eq!(file_event(&kind, false), says, "{kind:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn links_are_made_whole_and_new_files_are_written_after() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("release.toml");
        std::fs::write(&file, "x = 1\n").unwrap();
        assert!(!made_whole(&file), "a regular file of its own");
        let hard = dir.path().join("hard.toml");
        std::fs::hard_link(&file, &hard).unwrap();
        assert!(made_whole(&hard));
        let soft = dir.path().join("soft.toml");
        std::os::unix::fs::symlink(&file, &soft).unwrap();
        assert!(made_whole(&soft));
        assert!(!made_whole(&dir.path().join("missing.toml")));
    }
}
