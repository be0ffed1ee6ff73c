//! Active health: one prober task per backend of every service with `[services.health]`, with
//! rise/fall hysteresis and jitter. Each up/down transition flips the backend's atomic flag, is
//! logged once and wakes the region evaluator.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use streamgate_balance::{BackendState, RoutingTable};
use streamgate_config::{HealthCheck, Upstream};
use streamgate_telemetry::Metrics;
use streamgate_telemetry::prometheus::IntCounter;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::probe::{AnyProbe, Outcome, Probe};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    service: String,
    region: String,
    address: SocketAddr,
}

#[derive(Debug)]
struct Prober {
    spec: HealthCheck,
    /// How the probe speaks to the backend (protocol, TLS settings).
    upstream: Upstream,
    /// The TLS configuration its probes were made with ([`tls_config`]).
    tls: Option<Arc<rustls::ClientConfig>>,
    state: Arc<BackendState>,
    task: JoinHandle<()>,
}

/// The shared TLS client configuration probes of `upstream` use now (`None`: no TLS, or one that
/// fails to build, which the probe reports itself). After a reload it is a new one only if the
/// CA or client certificate files changed: a prober made with another is made again.
fn tls_config(upstream: &Upstream) -> Option<Arc<rustls::ClientConfig>> {
    streamgate_tls::upstream_client_config(upstream.protocol, &upstream.tls)
        .ok()
        .flatten()
}

/// Whether a prober made with `held` still probes with the TLS configuration of `upstream`.
/// One that cannot be built now (a rejected reload left a bad CA file behind) keeps the prober
/// as it is: the running configuration is still the one it was made with.
fn same_tls(held: Option<&Arc<rustls::ClientConfig>>, upstream: &Upstream) -> bool {
    match streamgate_tls::upstream_client_config(upstream.protocol, &upstream.tls) {
        Ok(Some(now)) => held.is_some_and(|h| Arc::ptr_eq(h, &now)),
        Ok(None) => held.is_none(),
        Err(_) => true,
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The running probers, reconciled with every routing table published.
#[derive(Debug)]
pub struct HealthSupervisor {
    probers: HashMap<Key, Prober>,
    metrics: Arc<Metrics>,
    changed: Arc<Notify>,
}

impl HealthSupervisor {
    /// `changed` is notified on every backend transition.
    pub fn new(metrics: Arc<Metrics>, changed: Arc<Notify>) -> HealthSupervisor {
        HealthSupervisor {
            probers: HashMap::new(),
            metrics,
            changed,
        }
    }

    /// Starts probers for new backends or changed checks, stops those no longer configured.
    pub fn reconcile(&mut self, table: &RoutingTable) {
        let mut wanted: HashMap<Key, (HealthCheck, Upstream, Arc<BackendState>)> = HashMap::new();
        // Backends in the table without a check: a check removed leaves them up.
        let mut unchecked: std::collections::HashSet<Key> = Default::default();
        for service in &table.services {
            for region in &service.regions {
                for b in &region.backends {
                    let key = Key {
                        service: service.name.to_string(),
                        region: region.name.to_string(),
                        address: b.address,
                    };
                    if service.spec.health.is_none() {
                        unchecked.insert(key.clone());
                    }
                    match &service.spec.health {
                        Some(h) => {
                            let upstream = service.spec.upstream.clone();
                            wanted.insert(key, (h.clone(), upstream, b.state.clone()));
                        }
                        // Without a check a backend counts as up; passive health still applies.
                        None => {
                            b.state.set_up(true);
                        }
                    }
                }
            }
        }
        let mut gone = Vec::new();
        self.probers.retain(|k, p| {
            let keep = wanted.get(k).is_some_and(|(spec, upstream, state)| {
                *spec == p.spec
                    && *upstream == p.upstream
                    && Arc::ptr_eq(state, &p.state)
                    && same_tls(p.tls.as_ref(), upstream)
            });
            if !keep && !wanted.contains_key(k) {
                // A check that was removed leaves its backend up rather than stuck down; a
                // backend that left (a DNS answer without it) keeps the health it had, for
                // when it comes back (`streamgate_balance::departed`).
                if unchecked.contains(k) {
                    p.state.set_up(true);
                }
                gone.push(k.address);
            }
            keep
        });
        // The series of an address no longer probed go with it: a DNS name whose answers keep
        // changing would otherwise add two series per new address for ever.
        let probed: std::collections::HashSet<SocketAddr> = match gone.is_empty() {
            true => Default::default(),
            false => wanted.keys().map(|k| k.address).collect(),
        };
        for address in gone {
            if !probed.contains(&address) {
                let label = address.to_string();
                for result in ["success", "failure"] {
                    let _ = self
                        .metrics
                        .health_checks
                        .remove_label_values(&[&label, result]);
                }
            }
        }
        for (key, (spec, upstream, state)) in wanted {
            if self.probers.contains_key(&key) {
                continue;
            }
            let tls = tls_config(&upstream);
            let probe = AnyProbe::from_config(&spec.kind, &upstream);
            let label = key.address.to_string();
            let counters = Counters {
                success: self
                    .metrics
                    .health_checks
                    .with_label_values(&[&label, "success"]),
                failure: self
                    .metrics
                    .health_checks
                    .with_label_values(&[&label, "failure"]),
            };
            let task = tokio::spawn(run(
                probe,
                spec.clone(),
                key.clone(),
                state.clone(),
                counters,
                self.changed.clone(),
            ));
            self.probers.insert(
                key,
                Prober {
                    spec,
                    upstream,
                    tls,
                    state,
                    task,
                },
            );
        }
    }

    pub fn len(&self) -> usize {
        self.probers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.probers.is_empty()
    }
}

#[derive(Debug)]
struct Counters {
    success: IntCounter,
    failure: IntCounter,
}

/// Probes one backend forever: every `interval` (±10% jitter, first one at a random offset so
/// probes of many backends do not align).
async fn run<P: Probe>(
    probe: P,
    spec: HealthCheck,
    key: Key,
    state: Arc<BackendState>,
    counters: Counters,
    changed: Arc<Notify>,
) {
    let interval = spec.interval;
    tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let started = Instant::now();
        let outcome = probe.check(key.address, spec.timeout).await;
        match outcome {
            Outcome::Healthy { rtt } => {
                counters.success.inc();
                state.record_probe_rtt(rtt);
                successes += 1;
                failures = 0;
                if !state.is_up() && successes >= spec.rise.get() {
                    state.set_up(true);
                    state.clear_ejection();
                    info!(
                        service = %key.service, region = %key.region, backend = %key.address,
                        successes, "backend is up: passed {successes} consecutive health checks"
                    );
                    changed.notify_one();
                } else if !state.was_probed() {
                    state.set_up(true);
                }
            }
            Outcome::Unhealthy { reason } => {
                counters.failure.inc();
                failures += 1;
                successes = 0;
                if state.is_up() && failures >= spec.fall.get() {
                    state.set_up(false);
                    warn!(
                        service = %key.service, region = %key.region, backend = %key.address,
                        failures, reason = %reason, "backend is down: failed {failures} consecutive health checks"
                    );
                    changed.notify_one();
                }
            }
            Outcome::NotMade { reason } => {
                // This daemon's shortage, not the backend's: the counts stand as they were.
                debug!(
                    service = %key.service, region = %key.region, backend = %key.address,
                    reason = %reason, "health check not made: this process is short of resources"
                );
            }
        }
        let jitter = 0.9 + 0.2 * fastrand::f64();
        tokio::time::sleep_until(started + interval.mul_f64(jitter)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use streamgate_config::{UpstreamProtocol, UpstreamTls};

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["backend.test".to_string()]).unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_prober_is_made_again_only_when_its_tls_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem()).unwrap();
        let upstream = Upstream {
            protocol: UpstreamProtocol::Https,
            tls: UpstreamTls {
                ca_file: Some(ca.clone()),
                ..UpstreamTls::default()
            },
            ..Upstream::default()
        };
        let held = tls_config(&upstream);
        assert!(held.is_some());
        assert!(same_tls(held.as_ref(), &upstream));
        streamgate_tls::forget_client_configs();
        assert!(
            same_tls(held.as_ref(), &upstream),
            "a reload with the files unchanged"
        );
        std::fs::write(&ca, "not a certificate").unwrap();
        streamgate_tls::forget_client_configs();
        assert!(
            same_tls(held.as_ref(), &upstream),
            "a bad file a rejected reload left behind keeps the running prober"
        );
        std::fs::write(&ca, ca_pem()).unwrap();
        streamgate_tls::forget_client_configs();
        assert!(!same_tls(held.as_ref(), &upstream), "a CA rotated in place");
        let plain = Upstream::default();
        assert!(same_tls(None, &plain));
        assert!(!same_tls(held.as_ref(), &plain));
    }
}
