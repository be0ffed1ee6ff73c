//! Wiring: a validated config becomes bound listeners, a published routing table and the tasks
//! that serve them. Used by `streamgate run`, `streamgate demo` and the end-to-end tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::{ArcSwap, ArcSwapOption};
use streamgate_balance::{GeoDb, GeoHandle, RoutingTable, TableHandle};
use streamgate_cache::CacheRegistry;
use streamgate_cache::recovery::Snapshotter;
use streamgate_config::{AccessLogFormat, Config, Protocol};
use streamgate_control::Control;
use streamgate_control::admin::{self, Token};
use streamgate_control::overrides::Overrides;
use streamgate_control::words::Words;
use streamgate_proxy::tcp::TcpProxy;
use streamgate_proxy::{
    AccessLogHandle, FleetHandle, HttpProxy, ListenerLimits, Shared, Upstreams,
};
use streamgate_telemetry::Metrics;
use streamgate_telemetry::access_log::{AccessLog, Format};
use streamgate_tls::TlsHandle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// A started daemon: listeners bound and serving.
#[derive(Debug)]
pub struct Daemon {
    pub table: TableHandle,
    pub geo: GeoHandle,
    pub metrics: Arc<Metrics>,
    pub control: Arc<Control>,
    pub snapshots: Arc<Snapshotter>,
    /// The access log, if enabled (reopened on SIGUSR1).
    pub access_log: AccessLogHandle,
    admin: SocketAddr,
    listeners: Vec<(String, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Daemon {
    /// Binds every listener (all or nothing), publishes the first routing table and starts
    /// serving.
    pub async fn start(config: Config) -> Result<Daemon> {
        let metrics = Arc::new(Metrics::new());
        let config = Arc::new(config);
        let geo: GeoHandle = Arc::new(ArcSwapOption::empty());
        // A [geo] table may only name trusted proxies, without a database.
        if let Some(path) = config.geo.as_ref().and_then(|g| g.database.clone()) {
            let db = tokio::task::spawn_blocking(move || GeoDb::open(&path))
                .await
                .context("geo database check was interrupted")??;
            if let Some(w) = &db.warning {
                warn!(database = %db.path().display(), warning = %w, "geo database: verify() complained; using it anyway");
            }
            info!(
                database = %db.path().display(),
                db_type = db.database_type(),
                records = db.records_checked,
                "geo database loaded"
            );
            geo.store(Some(Arc::new(db)));
        }
        metrics.declare(&config);
        // The first version applied deploys every region's backends.
        for r in &config.regions {
            metrics
                .regional_deployments
                .with_label_values(&[&r.name])
                .inc();
        }
        // Backend names are resolved once before anything listens, so the first table has
        // their addresses. A name that does not resolve does not stop the start: its regions
        // have no backends from it (503 if none else) until the re-resolution task gets one.
        let resolved = streamgate_control::dns::resolve_missing(
            &Arc::default(),
            &config,
            &Default::default(),
            &metrics,
        )
        .await;
        let table: TableHandle = Arc::new(ArcSwap::from_pointee(RoutingTable::build_resolved(
            config.clone(),
            Arc::new(resolved),
            None,
            &metrics,
        )));
        let restored = match &config.snapshots {
            Some(s) => {
                keep_last_good(&config, &s.dir);
                restore_overrides(&table.load(), &s.dir)
            }
            None => (Words::default(), Words::default()),
        };
        let upstreams = Upstreams::new();
        upstreams.install(upstreams.prepare(&config)?);
        let token = Arc::new(arc_swap::ArcSwapOption::new(
            read_token(&config)?.map(Arc::new),
        ));
        let admin_listener = streamgate_proxy::bind(config.admin.listen)
            .with_context(|| format!("admin.listen: cannot bind {}", config.admin.listen))?;
        let admin = admin_listener.local_addr()?;
        let metrics_listener = match config.admin.metrics_listen {
            Some(addr) => Some(
                streamgate_proxy::bind(addr)
                    .with_context(|| format!("metrics.listen: cannot bind {addr}"))?,
            ),
            None => None,
        };

        let mut bound = Vec::new();
        for l in &config.listeners {
            let listener = streamgate_proxy::bind(l.listen)
                .with_context(|| format!("listener \"{}\": cannot bind {}", l.name, l.listen))?;
            bound.push((l, listener));
        }

        let access_log: AccessLogHandle = Arc::new(arc_swap::ArcSwapOption::new(open_access_log(
            &config.access_log,
            &metrics,
        )?));
        let caches = CacheRegistry::new(metrics.clone());
        caches.spawn_gauge_refresher();
        let snapshots = Snapshotter::new(caches.clone(), &metrics, config.snapshots.clone());
        if config.snapshots.is_some() {
            // Before anything listens, so the first requests already hit.
            for s in &config.services {
                if let Some(spec) = &s.cache {
                    caches.for_service(&s.name, spec);
                }
            }
            // A start with an empty cache beats no start: a bad directory is reported, not fatal.
            if let Err(e) = snapshots.restore().await {
                warn!(error = %e, "cannot restore the cache from a recovery point; starting empty");
            }
        }
        // Also without [snapshots]: a reload may add the section.
        snapshots.spawn();
        let shared = Shared {
            table: table.clone(),
            geo: geo.clone(),
            upstreams: upstreams.clone(),
            metrics: metrics.clone(),
            access_log: access_log.clone(),
            caches: caches.clone(),
            rates: streamgate_proxy::limits::RateLimits::new(),
            fleet: FleetHandle::default(),
            encoders: Arc::default(),
            descriptors: {
                let upstreams = upstreams.clone();
                streamgate_proxy::descriptors::Budget::new(
                    connection_budget(&config, &metrics),
                    move || upstreams.shed_idle(),
                )
            },
        };

        // Certificates load before anything listens: a bad one stops the start.
        let mut tls_handles = Vec::new();
        for l in config
            .listeners
            .iter()
            .filter(|l| l.protocol == Protocol::Https)
        {
            let h =
                streamgate_tls::handle(l).with_context(|| format!("listener \"{}\"", l.name))?;
            tls_handles.push((l.name.clone(), h));
        }

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut listeners = Vec::new();
        for (l, listener) in bound {
            let addr = listener.local_addr()?;
            listeners.push((l.name.clone(), addr));
            let limits = ListenerLimits::of(l, &config.timeouts);
            match l.protocol {
                Protocol::Http | Protocol::Https => {
                    let tls = tls_handles
                        .iter()
                        .find(|(n, _)| *n == l.name)
                        .map(|(_, h)| h.clone());
                    let proxy = HttpProxy::new(&l.name, tls, l.proxy_protocol, &limits, &shared);
                    tasks.spawn(streamgate_proxy::serve(
                        listener,
                        proxy,
                        limits,
                        shutdown_rx.clone(),
                    ));
                }
                Protocol::Tcp | Protocol::TlsPassthrough => {
                    let passthrough = l.protocol == Protocol::TlsPassthrough;
                    let proxy =
                        TcpProxy::new(&l.name, passthrough, l.proxy_protocol, &limits, &shared);
                    tasks.spawn(streamgate_proxy::tcp::serve_tcp(
                        listener,
                        proxy,
                        limits,
                        shutdown_rx.clone(),
                    ));
                }
            }
            info!(listener = %l.name, address = %addr, protocol = protocol_name(l.protocol), "listening");
        }

        let control = Control::new(
            table.clone(),
            geo.clone(),
            metrics.clone(),
            config.source.path.clone(),
            caches.clone(),
            snapshots.clone(),
        );
        control.set_listeners(listeners.clone());
        // A restored drain of an address the first answers lack is put back when it returns.
        control.restore_words(restored);
        control.add_reload_hook(Arc::new(UpstreamReload {
            upstreams: upstreams.clone(),
        }));
        control.add_reload_hook(Arc::new(AccessLogReload {
            handle: access_log.clone(),
            applied: Arc::new(Mutex::new(config.access_log.clone())),
            metrics: metrics.clone(),
        }));
        control.add_reload_hook(Arc::new(TokenReload {
            handle: token.clone(),
            listening: admin,
        }));
        if !tls_handles.is_empty() {
            control.add_reload_hook(Arc::new(CertificateReload {
                handles: tls_handles,
            }));
        }
        control.start(shutdown_rx.clone());
        // Read at start only: the link's identity (pop, stream, consumer) does not change
        // under a running daemon.
        if let Some(f) = config.fleet.clone() {
            control.join_fleet(f)?;
            if let Some(link) = control.fleet() {
                let _ = shared.fleet.set(link.clone());
            }
        }
        let admin_limits = admin::AdminLimits::of(&config);
        tasks.spawn(admin::serve(
            admin_listener,
            control.clone(),
            token,
            admin_limits,
            shutdown_rx.clone(),
        ));
        info!(listener = "admin", address = %admin, "listening");
        if let Some(l) = metrics_listener {
            info!(listener = "metrics", address = %l.local_addr()?, "listening");
            tasks.spawn(admin::serve_metrics(
                l,
                control.clone(),
                admin_limits,
                shutdown_rx.clone(),
            ));
        }
        control.set_ready(true);
        Ok(Daemon {
            table,
            geo,
            metrics,
            control,
            snapshots,
            access_log,
            admin,
            listeners,
            shutdown,
            tasks,
        })
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Where listener `name` is bound (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// Publishes a routing table for `config`, carrying live state over from the current one.
    pub fn apply(&self, config: Config) {
        let current = self.table.load_full();
        let next = RoutingTable::build(Arc::new(config), Some(&current), &self.metrics);
        self.table.store(Arc::new(next));
    }

    /// Stops accepting, lets in-flight requests finish for up to `deadline`, then returns.
    /// Returns false if connections were still open at the deadline.
    pub async fn shutdown(mut self, deadline: Duration) -> bool {
        self.control.set_ready(false);
        self.control.stop_probes();
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            self.tasks.abort_all();
        }
        // The last word of a graceful stop: what was cached and set survives the restart.
        let _ = self.control.persist_overrides_now();
        if self.snapshots.settings().is_some()
            && let Err(e) = self.snapshots.take().await
        {
            warn!(error = %e, "cannot write the recovery point at shutdown");
        }
        drained
    }
}

/// Puts back what operators set through the admin API before the last stop; returns it.
fn restore_overrides(table: &RoutingTable, dir: &std::path::Path) -> (Words, Words) {
    let (mut local, fleet) = match Overrides::load(dir) {
        Ok(None) => return (Words::default(), Words::default()),
        Ok(Some(o)) => o.words(),
        Err(e) => {
            warn!(error = %e, "cannot read the operator overrides; starting without them");
            return (Words::default(), Words::default());
        }
    };
    for stale in local.forget_missing(table) {
        warn!(item = %stale, "operator override names something the config no longer has; dropped");
    }
    // Before anything listens; the fleet's words as last heard, until its bucket is read.
    streamgate_control::words::apply(table, &local, &fleet);
    info!(
        drains = local.drains.len(),
        regions = local.regions.len(),
        primaries = local.primaries.len(),
        fleet_words = fleet.len(),
        "operator overrides restored"
    );
    (local, fleet)
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Https => "https",
        Protocol::Tcp => "tcp",
        Protocol::TlsPassthrough => "tls_passthrough",
    }
}

/// Rebuilds the clients of TLS and HTTP/2 backends whose settings changed (CA, client
/// certificate, server name): checked before the new table is published, swapped in after.
/// Opens the access log `[access_log]` asks for (`None`: off).
fn open_access_log(
    cfg: &streamgate_config::AccessLog,
    metrics: &Metrics,
) -> Result<Option<Arc<AccessLog>>> {
    if !cfg.enabled {
        return Ok(None);
    }
    let format = match &cfg.format {
        AccessLogFormat::Json => Format::Json,
        AccessLogFormat::Template(t) => {
            Format::template(t).map_err(|e| anyhow::anyhow!("access_log.format: {e}"))?
        }
    };
    let path = cfg.path.clone();
    let described = path
        .as_ref()
        .map_or("standard output".to_string(), |p| p.display().to_string());
    let log = AccessLog::start(path, format, metrics.access_log_dropped.clone())
        .with_context(|| format!("access_log.path: cannot open {described}"))?;
    info!(destination = %described, "access log enabled");
    Ok(Some(log))
}

/// A reload that changes `[access_log]` opens the new destination and format before anything
/// is swapped (a path that cannot be opened rejects the reload), then writes there.
#[derive(Debug)]
struct AccessLogReload {
    handle: AccessLogHandle,
    applied: Arc<Mutex<streamgate_config::AccessLog>>,
    metrics: Arc<Metrics>,
}

impl streamgate_control::ReloadHook for AccessLogReload {
    fn prepare(&self, config: &Config) -> std::result::Result<Box<dyn FnOnce() + Send>, String> {
        if *self.applied.lock().unwrap_or_else(|e| e.into_inner()) == config.access_log {
            return Ok(Box::new(|| {}));
        }
        let log =
            open_access_log(&config.access_log, &self.metrics).map_err(|e| format!("{e:#}"))?;
        let handle = self.handle.clone();
        let applied = config.access_log.clone();
        let slot = self.applied.clone();
        Ok(Box::new(move || {
            handle.store(log);
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = applied;
        }))
    }
}

/// A reload re-reads `admin.token_file` (a rotated token, or another file): a token that cannot
/// be read rejects the reload and the running one stays.
#[derive(Debug)]
struct TokenReload {
    handle: Arc<arc_swap::ArcSwapOption<Token>>,
    /// Where the admin API listens until a restart (a reload cannot move it).
    listening: SocketAddr,
}

impl streamgate_control::ReloadHook for TokenReload {
    fn prepare(&self, config: &Config) -> std::result::Result<Box<dyn FnOnce() + Send>, String> {
        let token = read_token(config).map_err(|e| format!("{e:#}"))?;
        // The new config may move the API to loopback without a token, but the move waits for
        // a restart: dropping the token now would open the API where it listens today.
        if token.is_none() && !self.listening.ip().is_loopback() {
            return Err(format!(
                "admin.token_file: the admin API listens on {} until a restart, and off \
                 loopback it needs a token; keep admin.token_file until the restart",
                self.listening
            ));
        }
        let handle = self.handle.clone();
        Ok(Box::new(move || handle.store(token.map(Arc::new))))
    }
}

/// The bearer token of `admin.token_file`, if one is set.
/// A token shorter than this is warned of (not refused: a running PoP's reload must not fail on
/// it): guesses are answered as fast as they come.
const MIN_TOKEN_BYTES: usize = 16;

fn read_token(config: &Config) -> Result<Option<Token>> {
    let Some(path) = &config.admin.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("admin.token_file: cannot read {}", path.display()))?;
    let token = Token::new(&text)
        .with_context(|| format!("admin.token_file: {} is empty", path.display()))?;
    if token.len() < MIN_TOKEN_BYTES {
        warn!(
            file = %path.display(), bytes = token.len(),
            "admin.token_file holds a short token; use at least {MIN_TOKEN_BYTES} random bytes (e.g. `openssl rand -hex 32`)"
        );
    }
    Ok(Some(token))
}

#[derive(Debug)]
struct UpstreamReload {
    upstreams: Arc<Upstreams>,
}

impl streamgate_control::ReloadHook for UpstreamReload {
    fn prepare(&self, config: &Config) -> std::result::Result<Box<dyn FnOnce() + Send>, String> {
        let prepared = self.upstreams.prepare(config).map_err(|e| e.to_string())?;
        let upstreams = self.upstreams.clone();
        Ok(Box::new(move || upstreams.install(prepared)))
    }
}

/// Keeps `config` as the last known good copy under `dir` (logged, never fatal).
pub fn keep_last_good(config: &Config, dir: &std::path::Path) {
    let copies = streamgate_config::last_good::dir_in(dir);
    match streamgate_config::last_good::save(&copies, config) {
        Ok(Some(path)) => info!(copy = %path.display(), "config kept as the last known good copy"),
        Ok(None) => {}
        Err(e) => warn!(error = %e, "cannot keep the config as the last known good copy"),
    }
}

/// Checks the files a configuration names beyond itself (certificates, keys, CA bundles, the
/// fleet's key), as `streamgate check` and a start would.
pub fn check_files(config: &Config) -> Result<()> {
    if let Some(path) = config.fleet.as_ref().and_then(|f| f.key_file.as_ref()) {
        streamgate_fleet::signing::Key::read(path)
            .with_context(|| format!("fleet.key_file {}", path.display()))?;
    }
    for l in config
        .listeners
        .iter()
        .filter(|l| l.protocol == Protocol::Https)
    {
        streamgate_tls::check(l).with_context(|| format!("listener \"{}\"", l.name))?;
    }
    Upstreams::default().prepare(config)?;
    Ok(())
}

/// Reloads the certificates of https listeners with the configuration: checked before the new
/// table is published, swapped in after. Connections already open keep their certificate.
#[derive(Debug)]
struct CertificateReload {
    handles: Vec<(String, TlsHandle)>,
}

impl streamgate_control::ReloadHook for CertificateReload {
    fn prepare(&self, config: &Config) -> std::result::Result<Box<dyn FnOnce() + Send>, String> {
        let mut swaps = Vec::new();
        for (name, handle) in &self.handles {
            let Some(l) = config
                .listener(name)
                .filter(|l| l.protocol == Protocol::Https)
            else {
                continue;
            };
            let cfg = streamgate_tls::check(l).map_err(|e| format!("listener \"{name}\": {e}"))?;
            swaps.push((handle.clone(), cfg));
        }
        Ok(Box::new(move || {
            for (h, cfg) in swaps {
                h.store(cfg);
            }
            info!("TLS certificates reloaded");
        }))
    }
}

/// `[runtime] max_connections`, or by default what the descriptor limit in force leaves room
/// for; logged, and set as `connections_limit`.
fn connection_budget(config: &Config, metrics: &streamgate_telemetry::Metrics) -> usize {
    use streamgate_proxy::descriptors;
    let limit = descriptors::soft_limit();
    let room = descriptors::connection_budget(limit);
    let max_connections = match config.runtime.max_connections {
        Some(n) if n.get() > room => {
            warn!(
                max_connections = n.get(),
                descriptors = limit,
                room,
                "runtime.max_connections is more than the descriptor limit leaves room for; backend connects may fail with EMFILE (raise LimitNOFILE)"
            );
            n.get()
        }
        Some(n) => n.get(),
        None => room,
    };
    info!(
        descriptors = limit,
        max_connections, "client connections held at once"
    );
    metrics
        .connections_limit
        .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
    max_connections
}
