//! When recovery points are written: every `[snapshots] interval`, on demand (admin API), and on a
//! graceful stop; restored once at start; and the `recovery_point_age_seconds` gauge.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use streamgate_config::Snapshots;
use streamgate_telemetry::Metrics;
use streamgate_telemetry::prometheus::Gauge;
use thiserror::Error;
use tracing::{info, warn};

use crate::CacheRegistry;
use crate::snapshot::{self, RecoveryPoint, Restored, SnapshotError};

#[derive(Debug, Error)]
pub enum RecoveryError {
    #[error(
        "snapshots are not configured: add a [snapshots] section with dir = \"/var/lib/streamgate/snapshots\""
    )]
    NotConfigured,
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the snapshot task stopped: {0}")]
    Task(String),
}

/// Runs file work on a blocking thread, off the runtime's workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, RecoveryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RecoveryError::Task(e.to_string()))?
        .map_err(RecoveryError::from)
}

/// Writes and restores recovery points for one daemon.
#[derive(Debug)]
pub struct Snapshotter {
    caches: Arc<CacheRegistry>,
    settings: ArcSwapOption<Snapshots>,
    /// One writer at a time; holds when the newest point was created.
    newest: tokio::sync::Mutex<Option<SystemTime>>,
    started: SystemTime,
    age: Gauge,
}

impl Snapshotter {
    pub fn new(
        caches: Arc<CacheRegistry>,
        metrics: &Metrics,
        settings: Option<Snapshots>,
    ) -> Arc<Snapshotter> {
        Arc::new(Snapshotter {
            caches,
            settings: ArcSwapOption::new(settings.map(Arc::new)),
            newest: tokio::sync::Mutex::new(None),
            started: SystemTime::now(),
            age: metrics.recovery_point_age.clone(),
        })
    }

    pub fn settings(&self) -> Option<Arc<Snapshots>> {
        self.settings.load_full()
    }

    /// New settings from a reload; the next point follows them.
    pub fn configure(&self, settings: Option<Snapshots>) {
        self.settings.store(settings.map(Arc::new));
    }

    fn require(&self) -> Result<Arc<Snapshots>, RecoveryError> {
        self.settings().ok_or(RecoveryError::NotConfigured)
    }

    /// Puts the newest usable recovery point back into the caches (which must exist); damaged
    /// points are logged and skipped for older ones.
    pub async fn restore(&self) -> Result<Option<Restored>, RecoveryError> {
        let settings = self.require()?;
        let caches = self.caches.clone();
        let dir = settings.dir.clone();
        let mut newest = self.newest.lock().await;
        let started = Instant::now();
        let restored = blocking(move || {
            snapshot::restore(&caches, &dir, |damaged| {
                warn!(error = %damaged, "skipping a damaged recovery point; trying an older one");
            })
        })
        .await?;
        match &restored {
            Some(r) => {
                *newest = Some(r.point.created);
                info!(
                    file = %r.point.path.display(),
                    objects = r.restored,
                    expired = r.expired,
                    unclaimed = r.unclaimed,
                    took_ms = started.elapsed().as_millis() as u64,
                    "cache restored from a recovery point"
                );
            }
            None => {
                info!(dir = %settings.dir.display(), "no recovery point to restore; the cache starts empty");
            }
        }
        drop(newest);
        self.refresh_age().await;
        Ok(restored)
    }

    /// Writes a recovery point now.
    pub async fn take(&self) -> Result<RecoveryPoint, RecoveryError> {
        let settings = self.require()?;
        let mut newest = self.newest.lock().await;
        let caches = self.caches.clone();
        let started = Instant::now();
        let point =
            blocking(move || snapshot::write(&caches, &settings.dir, settings.keep.get())).await?;
        *newest = Some(point.created);
        drop(newest);
        info!(
            file = %point.path.display(),
            objects = point.records,
            bytes = point.bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "recovery point written"
        );
        self.refresh_age().await;
        Ok(point)
    }

    /// The recovery points on disk, newest first.
    pub async fn list(&self) -> Result<(Arc<Snapshots>, Vec<RecoveryPoint>), RecoveryError> {
        let settings = self.require()?;
        let dir: PathBuf = settings.dir.clone();
        let points = blocking(move || snapshot::list(&dir)).await?;
        Ok((settings, points))
    }

    /// `recovery_point_age_seconds`: since the newest point this daemon wrote or restored (since
    /// it started, before any); 0 without snapshots.
    async fn refresh_age(&self) {
        let age = match self.settings() {
            None => Duration::ZERO,
            Some(_) => {
                let since = self.newest.lock().await.unwrap_or(self.started);
                SystemTime::now()
                    .duration_since(since)
                    .unwrap_or(Duration::ZERO)
            }
        };
        self.age.set(age.as_secs_f64());
    }

    /// Writes a point every interval (the first one interval after start) while the
    /// snapshotter lives, and keeps the age gauge current.
    pub fn spawn(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last = Instant::now();
            let mut failing = false;
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { return };
                s.refresh_age().await;
                let Some(settings) = s.settings() else {
                    continue;
                };
                if last.elapsed() < settings.interval {
                    continue;
                }
                last = Instant::now();
                match s.take().await {
                    Ok(_) => failing = false,
                    // Once per run of failures: a full disk should not flood the log.
                    Err(e) if !failing => {
                        failing = true;
                        warn!(error = %e, "cannot write a recovery point; retrying every interval");
                    }
                    Err(_) => {}
                }
            }
        });
    }
}
