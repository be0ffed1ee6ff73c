//! The routing table: services, their regions and backends, built from a validated config and
//! immutable once published. Live state (health, load, latency, operator overrides) lives in
//! `Arc`s of atomics beside it and is carried over to the next table on reload.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::uri::Authority;
use streamgate_config::{self as config, Config};
use streamgate_telemetry::prometheus::{Histogram, IntCounter};
use streamgate_telemetry::{CODE_CLASSES, DataType, Metrics};

use crate::departed::Departed;
use crate::resolved::{Resolved, expand};
use crate::route::{NoRoute, Router};
use crate::select::BackendSelector;
use crate::stats::BackendState;

/// The handle the data plane reads and the control plane stores into.
pub type TableHandle = Arc<ArcSwap<RoutingTable>>;

/// Everything a request or connection needs to find its backend, as of one config version.
#[derive(Debug)]
pub struct RoutingTable {
    /// Increases by one with every table published.
    pub version: u64,
    pub config: Arc<Config>,
    pub services: Vec<Service>,
    /// Per region name: operator state shared by every service using the region.
    pub regions: HashMap<String, Arc<RegionControl>>,
    /// The addresses backend names had when this table was built; the next table (a reload)
    /// starts from them.
    pub resolved: Arc<Resolved>,
    routers: Vec<(Box<str>, Router, IntCounter)>,
}

impl RoutingTable {
    /// Builds a table for `config`, taking over the live state of every backend, region and
    /// service that `previous` also had (same service, region and address), and the addresses
    /// its backend names had.
    pub fn build(
        config: Arc<Config>,
        previous: Option<&RoutingTable>,
        metrics: &Metrics,
    ) -> RoutingTable {
        let resolved = previous.map(|p| p.resolved.clone()).unwrap_or_default();
        RoutingTable::build_resolved(config, resolved, previous, metrics)
    }

    /// [`RoutingTable::build`] with backend names expanded into `resolved`'s addresses: an
    /// address that `previous` had keeps its state, whether it came from a name or not.
    pub fn build_resolved(
        config: Arc<Config>,
        resolved: Arc<Resolved>,
        previous: Option<&RoutingTable>,
        metrics: &Metrics,
    ) -> RoutingTable {
        let version = previous.map_or(1, |p| p.version + 1);
        let regions: HashMap<String, Arc<RegionControl>> = config
            .regions
            .iter()
            .map(|r| {
                let carried = previous.and_then(|p| p.regions.get(&r.name)).cloned();
                (r.name.clone(), carried.unwrap_or_default())
            })
            .collect();

        let services: Vec<Service> = config
            .services
            .iter()
            .map(|spec| {
                let old = previous.and_then(|p| p.service(&spec.name));
                Service::build(spec, &config, &resolved, old, &regions, metrics)
            })
            .collect();

        let mut routers: Vec<(Box<str>, Router, IntCounter)> = config
            .listeners
            .iter()
            .map(|l| {
                let unrouted = metrics.unrouted.with_label_values(&[l.name.as_str()]);
                (l.name.as_str().into(), Router::default(), unrouted)
            })
            .collect();
        for (index, spec) in config.services.iter().enumerate() {
            for listener in &spec.listeners {
                if let Some((_, router, _)) = routers.iter_mut().find(|(n, _, _)| **n == **listener)
                {
                    for host in &spec.hosts {
                        router.add(host, &spec.path_prefix, index);
                    }
                }
            }
        }
        RoutingTable {
            version,
            config,
            services,
            regions,
            resolved,
            routers,
        }
    }

    /// The service for a request on `listener` with this Host and path.
    pub fn route(&self, listener: &str, host: &str, path: &str) -> Result<&Service, NoRoute> {
        let Some((_, router, unrouted)) = self.routers.iter().find(|(n, _, _)| **n == *listener)
        else {
            return Err(NoRoute::Host);
        };
        match router.route(host, path) {
            Ok(i) => Ok(&self.services[i]),
            Err(e) => {
                unrouted.inc();
                Err(e)
            }
        }
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| &*s.name == name)
    }

    /// Every backend of every service with this address (one address may serve several
    /// services, each with its own state).
    pub fn backends_at(
        &self,
        address: SocketAddr,
    ) -> impl Iterator<Item = (&Service, &ServiceRegion, &Backend)> {
        self.services.iter().flat_map(move |s| {
            s.regions.iter().flat_map(move |r| {
                r.backends
                    .iter()
                    .filter(move |b| b.address == address)
                    .map(move |b| (s, r, b))
            })
        })
    }
}

/// One service: where its traffic may go and how it picks.
#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub spec: config::Service,
    /// In the configured priority order: the first is the primary unless an operator chose
    /// another (`state.primary`).
    pub regions: Vec<ServiceRegion>,
    pub state: Arc<ServiceState>,
    /// Index into `regions` of `geo.default_region`, if the service lists it.
    pub default_region: Option<usize>,
    pub retries: IntCounter,
}

impl Service {
    fn build(
        spec: &config::Service,
        config: &Config,
        resolved: &Resolved,
        old: Option<&Service>,
        controls: &HashMap<String, Arc<RegionControl>>,
        metrics: &Metrics,
    ) -> Service {
        let regions = spec
            .regions
            .iter()
            .filter_map(|name| {
                let region = config.region(name)?;
                let old_region = old.and_then(|o| o.regions.iter().find(|r| &*r.name == name));
                Some(ServiceRegion::build(
                    spec,
                    region,
                    resolved,
                    old_region,
                    controls.get(name).cloned(),
                    metrics,
                ))
            })
            .collect();
        let state = old.map(|o| o.state.clone()).unwrap_or_default();
        // An operator's primary choice survives a reload only if the region is still listed.
        if let Some(primary) = state.primary() {
            let still_there = spec
                .regions
                .get(primary)
                .zip(old.and_then(|o| o.regions.get(primary)));
            match still_there {
                Some((new_name, old_region)) if *new_name == *old_region.name => {}
                _ => state.clear_primary(),
            }
        }
        let default_region = config
            .geo
            .as_ref()
            .and_then(|g| g.default_region.as_ref())
            .and_then(|d| spec.regions.iter().position(|r| r == d));
        Service {
            name: spec.name.as_str().into(),
            spec: spec.clone(),
            regions,
            state,
            default_region,
            retries: metrics.retries.with_label_values(&[spec.name.as_str()]),
        }
    }

    pub fn region(&self, name: &str) -> Option<(usize, &ServiceRegion)> {
        self.regions
            .iter()
            .enumerate()
            .find(|(_, r)| &*r.name == name)
    }

    /// Index of the region currently serving as primary.
    pub fn primary_index(&self) -> usize {
        self.state
            .primary()
            .filter(|&i| i < self.regions.len())
            .unwrap_or(0)
    }
}

/// Live state of a service that outlives tables.
#[derive(Debug)]
pub struct ServiceState {
    /// Index into `Service::regions` chosen by an operator as primary; `usize::MAX` = configured.
    primary: AtomicUsize,
    /// Set while every region is down, so the fail-open/closed decision is logged once.
    pub all_down: AtomicBool,
    /// Region the latency policy currently prefers (index), for its tolerance band.
    pub latency_choice: AtomicUsize,
    /// Retry budget: requests and retries in the current one-second window.
    pub budget_window: AtomicU64,
    pub budget_requests: AtomicU32,
    pub budget_retries: AtomicU32,
}

impl Default for ServiceState {
    fn default() -> Self {
        ServiceState {
            primary: AtomicUsize::new(usize::MAX),
            all_down: AtomicBool::new(false),
            latency_choice: AtomicUsize::new(usize::MAX),
            budget_window: AtomicU64::new(0),
            budget_requests: AtomicU32::new(0),
            budget_retries: AtomicU32::new(0),
        }
    }
}

impl ServiceState {
    pub fn primary(&self) -> Option<usize> {
        let p = self.primary.load(Relaxed);
        (p != usize::MAX).then_some(p)
    }

    pub fn set_primary(&self, index: usize) {
        self.primary.store(index, Relaxed);
    }

    pub fn clear_primary(&self) {
        self.primary.store(usize::MAX, Relaxed);
    }

    /// Counts a request toward the retry budget's current one-second window; `now` is
    /// `stats::now_nanos()`.
    #[inline]
    pub fn note_request(&self, now: u64) {
        self.roll_budget_window(now);
        self.budget_requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget: `min_per_second` plus `budget_ratio` of this second's
    /// requests. False when spent, so retries cannot multiply an outage's load.
    pub fn try_retry(&self, policy: &config::Retry) -> bool {
        self.roll_budget_window(crate::stats::now_nanos());
        let requests = f64::from(self.budget_requests.load(Relaxed));
        let allowed = f64::from(policy.min_per_second) + policy.budget_ratio * requests;
        let taken = self.budget_retries.fetch_add(1, Relaxed);
        if f64::from(taken) < allowed {
            true
        } else {
            self.budget_retries.fetch_sub(1, Relaxed);
            false
        }
    }

    fn roll_budget_window(&self, now: u64) {
        let second = now / 1_000_000_000;
        let current = self.budget_window.load(Relaxed);
        if current != second
            && self
                .budget_window
                .compare_exchange(current, second, Relaxed, Relaxed)
                .is_ok()
        {
            self.budget_requests.store(0, Relaxed);
            self.budget_retries.store(0, Relaxed);
        }
    }
}

/// Operator state of a region, shared by every service that uses it.
#[derive(Debug)]
pub struct RegionControl {
    /// What the data path reads: the local word, else the fleet's, else active.
    active: AtomicBool,
    /// (this PoP's operator, the fleet's) word; the local one wins.
    words: std::sync::Mutex<(Option<bool>, Option<bool>)>,
}

impl Default for RegionControl {
    fn default() -> Self {
        RegionControl {
            active: AtomicBool::new(true),
            words: std::sync::Mutex::new((None, None)),
        }
    }
}

impl RegionControl {
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Sets (this PoP's operator's, the fleet's) words on the region; the local one wins, and
    /// without either the region is active. Returns true if that changed whether it is active.
    pub fn set_words(&self, local: Option<bool>, fleet: Option<bool>) -> bool {
        let mut words = self.words.lock().unwrap_or_else(|e| e.into_inner());
        *words = (local, fleet);
        let active = local.or(fleet).unwrap_or(true);
        // Under the lock, so `active` always agrees with the words last set.
        self.active.swap(active, Relaxed) != active
    }

    /// (local, fleet) words.
    pub fn words(&self) -> (Option<bool>, Option<bool>) {
        *self.words.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Health of one region as one service sees it, decided by the control plane.
#[derive(Debug)]
pub struct RegionHealth {
    /// Enough backends are up (region `min_healthy`).
    healthy: AtomicBool,
    /// Healthy and past the failback hold-down: may take traffic.
    eligible: AtomicBool,
    /// Share of its traffic the region takes back while ramping after failback, in 1/1000.
    share: AtomicU32,
    /// Region latency estimate in nanoseconds for the latency policy; 0 = unknown.
    latency_nanos: AtomicU64,
}

impl Default for RegionHealth {
    fn default() -> Self {
        RegionHealth {
            healthy: AtomicBool::new(true),
            eligible: AtomicBool::new(true),
            share: AtomicU32::new(1000),
            latency_nanos: AtomicU64::new(0),
        }
    }
}

impl RegionHealth {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Relaxed) != healthy
    }

    #[inline]
    pub fn is_eligible(&self) -> bool {
        self.eligible.load(Relaxed)
    }

    pub fn set_eligible(&self, eligible: bool) -> bool {
        self.eligible.swap(eligible, Relaxed) != eligible
    }

    #[inline]
    pub fn share_permille(&self) -> u32 {
        self.share.load(Relaxed)
    }

    pub fn set_share_permille(&self, share: u32) {
        self.share.store(share.min(1000), Relaxed);
    }

    #[inline]
    pub fn latency_nanos(&self) -> u64 {
        self.latency_nanos.load(Relaxed)
    }

    pub fn set_latency_nanos(&self, nanos: u64) {
        self.latency_nanos.store(nanos, Relaxed);
    }
}

/// One region as used by one service: its backends, selector, health and metric handles.
#[derive(Debug)]
pub struct ServiceRegion {
    pub name: Arc<str>,
    pub location: Option<config::Location>,
    /// `location` on the unit sphere, for ranking by distance.
    pub unit: Option<[f64; 3]>,
    pub countries: Vec<String>,
    pub min_healthy: f64,
    pub backends: Vec<Backend>,
    pub selector: BackendSelector,
    pub health: Arc<RegionHealth>,
    pub control: Arc<RegionControl>,
    pub metrics: RegionMetrics,
    /// Backends that left lately, with their state (a DNS answer that drops an address and
    /// gives it back).
    pub departed: Departed,
}

impl ServiceRegion {
    fn build(
        spec: &config::Service,
        region: &config::Region,
        resolved: &Resolved,
        old: Option<&ServiceRegion>,
        control: Option<Arc<RegionControl>>,
        metrics: &Metrics,
    ) -> ServiceRegion {
        // One lookup per address, not a scan of the old backends each: a region of many
        // resolved addresses is rebuilt at every answer that changes.
        let old_states: HashMap<SocketAddr, &Arc<BackendState>> = old
            .map(|o| o.backends.iter().map(|x| (x.address, &x.state)).collect())
            .unwrap_or_default();
        let earlier = old.map(|o| &o.departed);
        let now = Instant::now();
        let backends: Vec<Backend> = expand(region, resolved)
            .into_iter()
            .map(|(address, weight, name)| {
                // Still here, or back within the grace: the state it had.
                let state = old_states
                    .get(&address)
                    .copied()
                    .or_else(|| earlier.and_then(|d| d.get(&address, now)))
                    .map(Arc::clone)
                    .unwrap_or_default();
                let mut b = Backend::new(address, weight.get(), state);
                b.name = name;
                b
            })
            .collect();
        let selector = BackendSelector::new(spec.backend_policy, &backends);
        let departed = match old {
            Some(o) => {
                let here: HashSet<SocketAddr> = backends.iter().map(|b| b.address).collect();
                Departed::next(
                    o.backends.iter().map(|b| (b.address, &b.state)),
                    &o.departed,
                    |a| here.contains(a),
                    now,
                )
            }
            None => Departed::default(),
        };
        ServiceRegion {
            departed,
            name: region.name.as_str().into(),
            location: region.location,
            unit: region.location.map(crate::geo::unit_vector),
            countries: region.countries.clone(),
            min_healthy: region.min_healthy,
            selector,
            backends,
            health: old.map(|o| o.health.clone()).unwrap_or_default(),
            control: control.unwrap_or_default(),
            metrics: RegionMetrics::new(metrics, &spec.name, &region.name),
        }
    }

    /// Operator-active and healthy (past hold-down).
    #[inline]
    pub fn is_eligible(&self) -> bool {
        self.control.is_active() && self.health.is_eligible()
    }

    /// Backends needed up for the region to be healthy: `min_healthy` of them, at least one.
    pub fn needed_up(&self) -> usize {
        ((self.min_healthy * self.backends.len() as f64).ceil() as usize).max(1)
    }
}

/// Metric handles resolved once per table so a request only touches atomics.
#[derive(Debug)]
pub struct RegionMetrics {
    pub requests: [IntCounter; 5],
    pub latency: Histogram,
    pub routing: [IntCounter; RouteReason::COUNT],
    /// `data_locality_requests_total` and `data_locality_latency_seconds` by [`DataType`].
    pub locality: [IntCounter; 4],
    pub locality_latency: [Histogram; 4],
}

impl RegionMetrics {
    fn new(m: &Metrics, service: &str, region: &str) -> RegionMetrics {
        RegionMetrics {
            requests: CODE_CLASSES.map(|c| m.requests.with_label_values(&[service, region, c])),
            latency: m.latency_by_region.with_label_values(&[region]),
            routing: RouteReason::ALL.map(|r| m.routing.with_label_values(&[region, r.as_str()])),
            locality: DataType::ALL
                .map(|d| m.locality_requests.with_label_values(&[region, d.as_str()])),
            locality_latency: DataType::ALL
                .map(|d| m.locality_latency.with_label_values(&[region, d.as_str()])),
        }
    }
}

/// Why a request went to the region it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteReason {
    /// The service's primary region (failover policy).
    Primary,
    /// Nearest region to the client, or its country's mapping.
    Geo,
    /// Lowest-latency region.
    Latency,
    /// The policy's first choice was unavailable; this is the next.
    Failover,
    /// A retry after the first backend failed.
    Retry,
    /// Every region was down and the service fails open.
    FailOpen,
}

impl RouteReason {
    pub const COUNT: usize = 6;
    pub const ALL: [RouteReason; RouteReason::COUNT] = [
        RouteReason::Primary,
        RouteReason::Geo,
        RouteReason::Latency,
        RouteReason::Failover,
        RouteReason::Retry,
        RouteReason::FailOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteReason::Primary => "primary",
            RouteReason::Geo => "geo",
            RouteReason::Latency => "latency",
            RouteReason::Failover => "failover",
            RouteReason::Retry => "retry",
            RouteReason::FailOpen => "fail_open",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One backend of one service's region.
#[derive(Debug, Clone)]
pub struct Backend {
    pub address: SocketAddr,
    /// `address` as a URI authority, built once for every request's URI.
    pub authority: Authority,
    pub weight: u32,
    pub state: Arc<BackendState>,
    /// The host name this address was resolved from (`None`: written as an address).
    pub name: Option<Arc<str>>,
    /// What a `consistent_hash` sticky cookie names this backend by.
    pub sticky_id: u64,
}

impl Backend {
    pub fn new(address: SocketAddr, weight: u32, state: Arc<BackendState>) -> Backend {
        let authority = Authority::try_from(address.to_string().as_str())
            .expect("a socket address is a valid authority");
        Backend {
            address,
            authority,
            weight,
            state,
            name: None,
            sticky_id: crate::select::sticky_id(address),
        }
    }
}
