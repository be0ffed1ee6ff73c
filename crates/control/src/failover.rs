//! Region state of every service, decided by one task: healthy while enough backends are up;
//! an unhealthy region loses its traffic at once, a recovered one gets it back only after the
//! hold-down (and, optionally, over a ramp). Every change of where a region's clients go is
//! logged with its reason and counted in `failovers_total{service,from,to}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamgate_balance::pick::distance_km;
use streamgate_balance::{ClientFacts, RoutingTable, Service, TableHandle};
use streamgate_config::RegionPolicy;
use streamgate_telemetry::Metrics;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// How often hold-downs, ramps and latency estimates advance.
const TICK: Duration = Duration::from_millis(100);
/// A request latency sample younger than this is the region's latency; older ones fade toward
/// the probe round trip, so a region that lost its traffic for being slow is tried again later.
const FRESH_SAMPLE: Duration = Duration::from_secs(5);
const FADE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Track {
    healthy: bool,
    /// When the region last turned healthy; eligibility waits for the hold-down from here.
    healthy_since: Option<Instant>,
    /// When the region last became eligible; its share ramps up from here.
    eligible_since: Option<Instant>,
}

/// The evaluator's memory between ticks: region tracks and where each region's clients went.
/// Keyed by the table's own names (shared, not copied): a tick every 100 ms that copied them
/// made 5 allocations per region of a service on a proxy thread, 0.3 per proxied request in
/// the allocation bench (benches/benches/allocs.rs).
#[derive(Debug, Default)]
pub struct Evaluator {
    tracks: HashMap<RegionKey, Track>,
    /// (service, home region) -> region serving its clients (`None`: every region is down).
    targets: HashMap<RegionKey, Option<Arc<str>>>,
}

/// (service, region), by the routing table's names.
type RegionKey = (Arc<str>, Arc<str>);

impl Evaluator {
    /// One pass over the table.
    pub fn evaluate(&mut self, table: &RoutingTable, metrics: &Metrics, now: Instant) {
        for service in &table.services {
            for region in &service.regions {
                let up = region.backends.iter().filter(|b| b.state.is_up()).count();
                let healthy = up >= region.needed_up();
                region.health.set_healthy(healthy);
                let key = (service.name.clone(), region.name.clone());
                let track = self.tracks.entry(key).or_insert(Track {
                    healthy: true,
                    healthy_since: None,
                    eligible_since: None,
                });
                let f = &service.spec.failover;
                if healthy != track.healthy {
                    track.healthy = healthy;
                    if healthy {
                        track.healthy_since = Some(now);
                        info!(
                            service = %service.name, region = %region.name, up, needed = region.needed_up(),
                            hold_down = ?f.hold_down, "region is healthy again; it gets traffic back after the hold-down"
                        );
                    } else {
                        track.healthy_since = None;
                        track.eligible_since = None;
                        warn!(
                            service = %service.name, region = %region.name, up, needed = region.needed_up(),
                            "region is unhealthy: {up} of {} backends up, {} needed", region.backends.len(), region.needed_up()
                        );
                    }
                }
                let eligible = match (healthy, track.healthy_since) {
                    (false, _) => false,
                    // Healthy since start-up (never failed): no hold-down.
                    (true, None) => true,
                    (true, Some(since)) => now.duration_since(since) >= f.hold_down,
                };
                if eligible && !region.health.is_eligible() {
                    track.eligible_since = Some(now);
                }
                region.health.set_eligible(eligible);
                let share = match (eligible, track.eligible_since) {
                    (false, _) => 0,
                    (true, Some(since)) if !f.ramp.is_zero() => {
                        let done = now.duration_since(since).as_secs_f64() / f.ramp.as_secs_f64();
                        (done.min(1.0) * 1000.0) as u32
                    }
                    (true, _) => 1000,
                };
                region
                    .health
                    .set_share_permille(share.max(if eligible { 1 } else { 0 }));
                region
                    .health
                    .set_latency_nanos(region_latency_nanos(region));
            }
            self.account(service, metrics);
        }
        self.tracks
            .retain(|(s, r), _| table.service(s).is_some_and(|svc| svc.region(r).is_some()));
    }

    /// Where each region's clients go now; counts and logs every change.
    fn account(&mut self, service: &Service, metrics: &Metrics) {
        for (i, home) in service.regions.iter().enumerate() {
            let target_region = target_of(service, i).map(|t| &service.regions[t].name);
            let key = (service.name.clone(), home.name.clone());
            let previous = self.targets.insert(key, target_region.cloned());
            let target = region_name(target_region);
            match previous {
                Some(prev) if region_name(prev.as_ref()) != target => {
                    let prev = region_name(prev.as_ref());
                    // Only serving regions move real traffic under failover/latency policies.
                    let serves = service.spec.region_policy == RegionPolicy::Geo
                        || i == first_choice(service);
                    if !serves {
                        continue;
                    }
                    metrics
                        .failovers
                        .with_label_values(&[&*service.name, prev, target])
                        .inc();
                    let why = if target == &*home.name {
                        "failback: the region is eligible again"
                    } else if target == "none" {
                        "every region is down"
                    } else if !home.control.is_active() {
                        "region deactivated by an operator"
                    } else {
                        "region unhealthy"
                    };
                    warn!(service = %service.name, region = %home.name, from = %prev, to = %target, reason = why, "traffic moved");
                }
                _ => {}
            }
        }
    }
}

/// A target's name in logs and metrics.
fn region_name(target: Option<&Arc<str>>) -> &str {
    target.map_or("none", |n| n)
}

/// The region the policy puts first for a client with no location (the serving region of the
/// failover and latency policies).
fn first_choice(service: &Service) -> usize {
    match service.spec.region_policy {
        RegionPolicy::Geo => service.primary_index(),
        _ => service
            .region_order(&ClientFacts::default())
            .as_slice()
            .first()
            .map_or(0, |&i| i as usize),
    }
}

/// Where clients of region `home` are served: the region itself while eligible; otherwise the
/// policy's next choice (nearest for geo, next in order for the others).
fn target_of(service: &Service, home: usize) -> Option<usize> {
    let home_region = &service.regions[home];
    if home_region.is_eligible() {
        return Some(home);
    }
    match service.spec.region_policy {
        RegionPolicy::Geo => {
            let mut best: Option<(f64, usize)> = None;
            for (i, r) in service.regions.iter().enumerate() {
                if i == home || !r.is_eligible() {
                    continue;
                }
                let d = match (home_region.location, r.location) {
                    (Some(a), Some(b)) => distance_km(a, b),
                    _ => 1e9 + i as f64,
                };
                if best.is_none_or(|(bd, _)| d < bd) {
                    best = Some((d, i));
                }
            }
            best.map(|(_, i)| i)
        }
        _ => service
            .region_order(&ClientFacts::default())
            .as_slice()
            .iter()
            .map(|&i| i as usize)
            .find(|&i| service.regions[i].is_eligible()),
    }
}

/// Mean latency of the region's up backends: recent request samples, fading toward the probe
/// round trip (or, unprobed, toward nothing) as they age. 0 when nothing is known.
fn region_latency_nanos(region: &streamgate_balance::ServiceRegion) -> u64 {
    let mut sum = 0.0;
    let mut n = 0u32;
    for b in region.backends.iter().filter(|b| b.state.is_up()) {
        let probe = b.state.probe_rtt().map(|d| d.as_nanos() as f64);
        let request = b.state.latency().map(|d| d.as_nanos() as f64);
        let age = b.state.latency_age().unwrap_or(Duration::MAX);
        let fade = || (-(age - FRESH_SAMPLE).as_secs_f64() / FADE.as_secs_f64()).exp();
        let estimate = match (request, probe) {
            (Some(r), _) if age < FRESH_SAMPLE => Some(r),
            (Some(r), Some(p)) => Some(p + (r - p) * fade()),
            // Without probes, toward nothing: kept whole, one slow sample (an upload, a slow
            // page) kept a region that no longer gets requests priced out for good.
            (Some(r), None) => Some(r * fade()),
            (None, Some(p)) => Some(p),
            (None, None) => None,
        };
        if let Some(e) = estimate {
            sum += e;
            n += 1;
        }
    }
    if n == 0 {
        0
    } else {
        (sum / f64::from(n)).max(1.0) as u64
    }
}

/// Runs the evaluator until `shutdown`: on every backend transition and every tick.
pub async fn run(
    table: TableHandle,
    metrics: Arc<Metrics>,
    changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut evaluator = Evaluator::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let t = table.load_full();
        evaluator.evaluate(&t, &metrics, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table(failover: &str) -> RoutingTable {
        let text = format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
             [[regions]]\nname = \"a\"\nbackends = [ {{ address = \"10.0.0.1:80\" }}, {{ address = \"10.0.0.2:80\" }} ]\nmin_healthy = 0.5\n\
             [[regions]]\nname = \"b\"\nbackends = [ {{ address = \"10.0.1.1:80\" }} ]\n\
             [[services]]\nname = \"s\"\nlisteners = [\"web\"]\nregions = [\"a\", \"b\"]\n[services.failover]\n{failover}\n"
        );
        let config = streamgate_config::parse(Path::new("t.toml"), &text).unwrap();
        RoutingTable::build(Arc::new(config), None, &Metrics::new())
    }

    #[test]
    fn unhealthy_at_once_eligible_after_hold_down_then_ramps() {
        let metrics = Metrics::new();
        let t = table("hold_down = \"10s\"\nramp = \"20s\"");
        let a = &t.services[0].regions[0];
        let mut ev = Evaluator::default();
        let t0 = Instant::now();
        ev.evaluate(&t, &metrics, t0);
        assert!(a.health.is_eligible());
        assert_eq!(
            a.health.share_permille(),
            1000,
            "healthy since start: no hold-down, no ramp"
        );

        // One of two backends down still meets min_healthy = 0.5; both down does not.
        a.backends[0].state.set_up(false);
        ev.evaluate(&t, &metrics, t0);
        assert!(a.health.is_healthy());
        a.backends[1].state.set_up(false);
        ev.evaluate(&t, &metrics, t0 + Duration::from_secs(1));
        assert!(!a.health.is_healthy() && !a.health.is_eligible());
        let text = metrics.render();
        assert!(
            text.contains("streamgate_failovers_total{from=\"a\",service=\"s\",to=\"b\"} 1"),
            "{text}"
        );

        // Back up at t0+2s: not eligible until the 10 s hold-down has passed.
        a.backends[0].state.set_up(true);
        a.backends[1].state.set_up(true);
        let up = t0 + Duration::from_secs(2);
        ev.evaluate(&t, &metrics, up);
        assert!(a.health.is_healthy() && !a.health.is_eligible());
        ev.evaluate(&t, &metrics, up + Duration::from_secs(9));
        assert!(!a.health.is_eligible());
        ev.evaluate(&t, &metrics, up + Duration::from_secs(10));
        assert!(a.health.is_eligible());
        assert!(a.health.share_permille() <= 1, "the ramp starts near zero");
        ev.evaluate(&t, &metrics, up + Duration::from_secs(20));
        assert!(
            (480..=520).contains(&a.health.share_permille()),
            "{}",
            a.health.share_permille()
        );
        ev.evaluate(&t, &metrics, up + Duration::from_secs(31));
        assert_eq!(a.health.share_permille(), 1000);
        assert!(
            metrics
                .render()
                .contains("streamgate_failovers_total{from=\"b\",service=\"s\",to=\"a\"} 1")
        );
    }

    #[test]
    fn a_deactivated_region_moves_its_clients() {
        let metrics = Metrics::new();
        let t = table("hold_down = \"1s\"");
        let mut ev = Evaluator::default();
        let t0 = Instant::now();
        ev.evaluate(&t, &metrics, t0);
        t.regions["a"].set_words(Some(false), None);
        ev.evaluate(&t, &metrics, t0);
        assert!(
            metrics
                .render()
                .contains("streamgate_failovers_total{from=\"a\",service=\"s\",to=\"b\"} 1")
        );
    }
}
