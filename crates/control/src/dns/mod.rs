//! Backends by DNS name: each name written as a backend `address` is resolved by a resolver of
//! `[dns]`, and again when its answer's TTL runs out (bounded by `min_ttl` and `max_ttl`).
//! When a name's addresses change the routing table is rebuilt and swapped, the way a reload
//! does it: the data plane never waits on DNS. A failed resolution keeps the last good
//! addresses, is counted and logged once per change of standing, and is retried with backoff.

mod schedule;
mod screen;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use streamgate_balance::{Resolved, RoutingTable};
use streamgate_config::{AddressFamily, Config, Dns};
use streamgate_telemetry::Metrics;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::Control;
use schedule::{Failure, NameState, Note, Standing};
use screen::{Dropped, Screened};

/// Why a name gave no address.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot set up the resolver: {0}")]
    Setup(#[source] NetError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Lookup(#[source] NetError),
    #[error("the answer has no address of the families asked for")]
    Empty,
    /// Every address of the answer was refused (see [`screen`]).
    #[error("no address of the answer may be a backend ({})", .0.dropped.iter().map(|(ip, why)| format!("{ip}: {}", why.as_str())).collect::<Vec<_>>().join(", "))]
    Filtered(Screened),
}

impl DnsError {
    fn failure(&self) -> Failure {
        match self {
            DnsError::Timeout(_) => Failure::Timeout,
            DnsError::Empty => Failure::NoRecords,
            DnsError::Filtered(_) => Failure::Filtered,
            DnsError::Lookup(e) if e.is_nx_domain() => Failure::NxDomain,
            DnsError::Lookup(e) if e.is_no_records_found() => Failure::NoRecords,
            DnsError::Lookup(NetError::Timeout) => Failure::Timeout,
            DnsError::Setup(_) | DnsError::Lookup(_) => Failure::Error,
        }
    }
}

/// The resolver, built for the `[dns]` settings in force and built again when they change.
#[derive(Default)]
pub struct Lookup {
    built: Mutex<Option<(Dns, TokioResolver)>>,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup").finish_non_exhaustive()
    }
}

impl Lookup {
    fn resolver(&self, dns: &Dns) -> Result<TokioResolver, DnsError> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((settings, r)) = &*built
            && settings == dns
        {
            return Ok(r.clone());
        }
        let r = build_resolver(dns).map_err(DnsError::Setup)?;
        *built = Some((dns.clone(), r.clone()));
        Ok(r)
    }

    /// The addresses of `host` that may be backends (screened: see [`screen`]) and how long
    /// they are good for.
    pub(crate) async fn resolve(
        &self,
        dns: &Dns,
        host: &str,
    ) -> Result<(Screened, Duration), DnsError> {
        let resolver = self.resolver(dns)?;
        let answer = tokio::time::timeout(dns.timeout, resolver.lookup_ip(host))
            .await
            .map_err(|_| DnsError::Timeout(dns.timeout))?
            .map_err(DnsError::Lookup)?;
        let ttl = answer
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        let addresses: Vec<IpAddr> = answer.iter().collect();
        if addresses.is_empty() {
            return Err(DnsError::Empty);
        }
        let screened = screen::screen(addresses, dns);
        if screened.kept.is_empty() {
            return Err(DnsError::Filtered(screened));
        }
        Ok((screened, ttl))
    }
}

fn build_resolver(dns: &Dns) -> Result<TokioResolver, NetError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if dns.servers.is_empty() {
        TokioResolver::builder(provider)?
    } else {
        let servers = dns
            .servers
            .iter()
            .map(|a| {
                let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                (udp.port, tcp.port) = (a.port(), a.port());
                NameServerConfig::new(a.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut b = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            provider,
        );
        // Servers named in the config are the whole truth, as with nginx's `resolver`.
        b.options_mut().use_hosts_file = ResolveHosts::Never;
        b
    };
    let o = builder.options_mut();
    o.timeout = dns.timeout;
    // The task keeps the answers and their TTLs itself: a cache would hand back the very
    // answer whose expiry it is asking about.
    o.cache_size = 0;
    o.ip_strategy = match dns.family {
        AddressFamily::Any => LookupIpStrategy::Ipv4AndIpv6,
        AddressFamily::Ipv4 => LookupIpStrategy::Ipv4Only,
        AddressFamily::Ipv6 => LookupIpStrategy::Ipv6Only,
    };
    builder.build()
}

/// The backend names `config` writes.
pub fn names_in(config: &Config) -> BTreeSet<String> {
    config
        .regions
        .iter()
        .flat_map(|r| &r.named_backends)
        .map(|b| b.host.clone())
        .collect()
}

/// `current` for `config`'s names, with those it lacks resolved now (at start and at a reload,
/// so a new name has its addresses in the very table that brings it). A name that fails stays
/// absent; the re-resolution task retries and logs it at once.
pub async fn resolve_missing(
    lookup: &Arc<Lookup>,
    config: &Config,
    current: &Resolved,
    metrics: &Metrics,
) -> Resolved {
    let names = names_in(config);
    let mut resolved = current.clone();
    resolved.retain(|h| names.contains(h));
    rescreen(&mut resolved, &config.dns);
    let missing = names.into_iter().filter(|n| resolved.get(n).is_none());
    for (host, result) in resolve_all(lookup, &config.dns, missing).await {
        report_screen(metrics, &config.dns, &host, &result, None);
        let label = match &result {
            Ok((screened, _)) => {
                resolved.set(&host, screened.kept.iter().copied());
                "success"
            }
            Err(e) => e.failure().as_str(),
        };
        metrics
            .dns_resolutions
            .with_label_values(&[&host, label])
            .inc();
        let count = resolved.get(&host).map_or(0, <[IpAddr]>::len);
        metrics
            .dns_addresses
            .with_label_values(&[&host])
            .set(count as i64);
    }
    resolved
}

/// Screens the addresses held from earlier answers again under `dns` (a reload's): one that
/// turns `allow_local` off, narrows `family` or lowers `max_addresses` drops what it no longer
/// allows now. Otherwise they would stay until the name's next good answer, and a refused
/// answer counts as a failure, which keeps the last good addresses: for ever. A name left with
/// none is asked again at once, as a new one is.
fn rescreen(resolved: &mut Resolved, dns: &Dns) {
    let family = |ip: &IpAddr| match dns.family {
        AddressFamily::Any => true,
        AddressFamily::Ipv4 => ip.is_ipv4(),
        AddressFamily::Ipv6 => ip.is_ipv6(),
    };
    let changed: Vec<(String, Vec<IpAddr>)> = resolved
        .iter()
        .filter_map(|(host, held)| {
            let kept = screen::screen(held.iter().copied().filter(family), dns).kept;
            (kept.as_slice() != held).then(|| (host.to_string(), kept))
        })
        .collect();
    for (host, kept) in changed {
        info!(name = %host, kept = ?kept, "backend name's addresses screened again under the new [dns]");
        if kept.is_empty() {
            resolved.retain(|h| h != host);
        } else {
            resolved.set(&host, kept);
        }
    }
}

type Answer = (String, Result<(Screened, Duration), DnsError>);

/// Counts the addresses screening dropped from one answer and logs them when they differ from
/// `last` (what the name's previous answer dropped; `None`: log whatever there is). Returns
/// what this answer dropped.
fn report_screen(
    metrics: &Metrics,
    dns: &Dns,
    host: &str,
    result: &Result<(Screened, Duration), DnsError>,
    last: Option<&[(IpAddr, Dropped)]>,
) -> Vec<(IpAddr, Dropped)> {
    let screened = match result {
        Ok((s, _)) | Err(DnsError::Filtered(s)) => s,
        Err(_) => return last.map(<[_]>::to_vec).unwrap_or_default(),
    };
    for why in Dropped::ALL {
        let n = screened.count(why);
        if n > 0 {
            metrics
                .dns_addresses_dropped
                .with_label_values(&[host, why.as_str()])
                .inc_by(n as u64);
        }
    }
    if last == Some(screened.dropped.as_slice()) || screened.dropped.is_empty() {
        return screened.dropped.clone();
    }
    let refused: Vec<String> = screened
        .dropped
        .iter()
        .filter(|(_, why)| *why != Dropped::OverCap)
        .map(|(ip, why)| format!("{ip} ({})", why.as_str()))
        .collect();
    if !refused.is_empty() {
        warn!(
            name = %host, dropped = ?refused, allow_local = dns.allow_local,
            "backend name answers with addresses that may not be backends; they are not used"
        );
    }
    let over = screened.count(Dropped::OverCap);
    if over > 0 {
        warn!(
            name = %host, max_addresses = dns.max_addresses, dropped = over,
            "backend name answers with more addresses than [dns] max_addresses; keeping the first in sorted order"
        );
    }
    screened.dropped.clone()
}

/// Resolves `hosts` side by side (each bounded by `timeout`), answers in host order.
async fn resolve_all(
    lookup: &Arc<Lookup>,
    dns: &Dns,
    hosts: impl IntoIterator<Item = String>,
) -> Vec<Answer> {
    let mut set = JoinSet::new();
    for host in hosts {
        let (lookup, dns) = (lookup.clone(), dns.clone());
        set.spawn(async move {
            let result = lookup.resolve(&dns, &host).await;
            (host, result)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(answer) = joined {
            out.push(answer);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Re-resolves every backend name on its schedule until `shutdown` (or the control plane is
/// gone). Without names it only waits for a reload to bring some: no resolver is built.
pub(crate) async fn run(control: Weak<Control>, mut shutdown: watch::Receiver<bool>) {
    let mut states: HashMap<String, NameState> = HashMap::new();
    let mut settings: Option<Dns> = None;
    loop {
        let Some(c) = control.upgrade() else { return };
        let wake = c.dns_wake.clone();
        let table = c.table.load_full();
        let dns = table.config.dns.clone();
        let now = Instant::now();
        // New servers or bounds: every name is asked again under them.
        if settings.as_ref().is_some_and(|s| *s != dns) {
            states.values_mut().for_each(|s| s.due = now);
        }
        settings = Some(dns.clone());
        let names = names_in(&table.config);
        states.retain(|n, _| names.contains(n));
        for n in names {
            let has = table.resolved.get(&n).is_some();
            states
                .entry(n)
                .or_insert_with(|| NameState::new(now, has, &dns));
        }
        let due = schedule::due(&states, now);
        if !due.is_empty() {
            let answers = resolve_all(&c.dns, &dns, due).await;
            c.apply_answers(&dns, answers, &mut states).await;
        }
        let next = schedule::next_wake(&states);
        drop(c);
        tokio::select! {
            () = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
            () = wake.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

impl Control {
    /// Applies one round of answers: schedules, counts and logs each, and publishes a new
    /// table if any name's addresses changed. Serialized with reloads, so neither loses the
    /// other's table.
    async fn apply_answers(
        &self,
        dns: &Dns,
        answers: Vec<Answer>,
        states: &mut HashMap<String, NameState>,
    ) {
        let _serial = self.reload_lock.lock().await;
        let current = self.table.load_full();
        if current.config.dns != *dns {
            // A reload changed [dns] while this round was asking: its answers were screened
            // under the old settings (allow_local, family, max_addresses) and would undo the
            // reload's own screening. Asked again, at once, under the new ones.
            let now = Instant::now();
            states.values_mut().for_each(|s| s.due = now);
            return;
        }
        let names = names_in(&current.config);
        let mut resolved = (*current.resolved).clone();
        let mut changed = resolved.retain(|h| names.contains(h));
        let now = Instant::now();
        for (host, result) in answers {
            // A reload may have dropped the name while it was being resolved.
            let Some(state) = states.get_mut(&host).filter(|_| names.contains(&host)) else {
                continue;
            };
            let before = state.standing;
            let old: Vec<IpAddr> = resolved.get(&host).unwrap_or_default().to_vec();
            state.dropped = report_screen(&self.metrics, dns, &host, &result, Some(&state.dropped));
            match result {
                Ok((screened, ttl)) => {
                    self.metrics
                        .dns_resolutions
                        .with_label_values(&[&host, "success"])
                        .inc();
                    state.failures = 0;
                    state.standing = Standing::Good;
                    state.due = now + schedule::next_delay(Ok(ttl), 0, dns);
                    if resolved.set(&host, screened.kept) {
                        changed = true;
                        let new = resolved.get(&host).unwrap_or_default();
                        let (added, removed) = schedule::changes(&old, new);
                        info!(
                            name = %host, added = ?added, removed = ?removed, ttl = ?ttl,
                            "backend name resolves to other addresses; routing follows"
                        );
                    }
                    if schedule::note(before, state.standing, true) == Some(Note::Recovered) {
                        info!(name = %host, "backend name resolves again");
                    }
                }
                Err(e) => {
                    let failure = e.failure();
                    self.metrics
                        .dns_resolutions
                        .with_label_values(&[&host, failure.as_str()])
                        .inc();
                    state.failures = state.failures.saturating_add(1);
                    state.standing = Standing::Failing(failure);
                    let retry = schedule::next_delay(Err(failure), state.failures, dns);
                    state.due = now + retry;
                    match schedule::note(before, state.standing, !old.is_empty()) {
                        Some(Note::NeverResolved(_)) => error!(
                            name = %host, error = %e, retry_in = ?retry,
                            "backend name does not resolve; its regions get no backends from it until it does"
                        ),
                        Some(Note::Failing(_)) => warn!(
                            name = %host, error = %e, kept = ?old, retry_in = ?retry,
                            "backend name does not resolve; keeping its last good addresses"
                        ),
                        _ => {}
                    }
                }
            }
            let count = resolved.get(&host).map_or(0, <[IpAddr]>::len);
            self.metrics
                .dns_addresses
                .with_label_values(&[&host])
                .set(count as i64);
        }
        if !changed {
            return;
        }
        let table = Arc::new(RoutingTable::build_resolved(
            current.config.clone(),
            Arc::new(resolved),
            Some(&current),
            &self.metrics,
        ));
        // An address back in the answer was a new backend above: the operators' drain of it
        // is put back before the table is published.
        self.publish(table.clone());
        // New addresses get their probers (and start up, as backends added by a reload do);
        // removed ones lose theirs. In-flight requests to a removed address finish.
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reconcile(&table);
        self.changed.notify_one();
        info!(
            version = table.version,
            "routing table rebuilt for new DNS answers"
        );
    }
}
