//! Two-level selection: a region by the service's region policy, then a backend inside it by the
//! backend policy. Pure functions of the table, the client's facts and the live stats.

use std::net::{IpAddr, SocketAddr};

use streamgate_config::{AllDownPolicy, Location, RegionPolicy};

use crate::geo::GeoInfo;
use crate::table::{Backend, RouteReason, Service, ServiceRegion};

/// Most regions one service may list; region orders live on the stack.
pub const MAX_REGIONS: usize = 64;

/// What selection knows about the client.
#[derive(Debug, Clone, Default)]
pub struct ClientFacts {
    pub ip: Option<IpAddr>,
    /// From the geo database, looked up only for services with the geo policy.
    pub geo: Option<GeoInfo>,
    /// `consistent_hash`: the hash ([`crate::select::key_hash`]) of the request's key (header,
    /// cookie, URI); `None` hashes `ip` instead.
    pub key: Option<u64>,
    /// `consistent_hash`: the backend the client's sticky cookie names
    /// ([`crate::select::sticky_id`]), tried first while usable.
    pub sticky: Option<u64>,
}

impl ClientFacts {
    /// The key `consistent_hash` maps: the request's own, else the client address's.
    #[inline]
    pub fn hash_key(&self) -> Option<u64> {
        self.key.or_else(|| self.ip.map(crate::select::ip_hash))
    }
}

/// The outcome of a pick: where the request goes and why.
#[derive(Debug, Clone, Copy)]
pub struct Pick<'t> {
    pub region_index: usize,
    pub region: &'t ServiceRegion,
    pub backend_index: usize,
    pub backend: &'t Backend,
    pub reason: RouteReason,
}

/// Region indexes in the order the policy prefers them, without allocating.
#[derive(Debug, Clone, Copy)]
pub struct RegionOrder {
    order: [u8; MAX_REGIONS],
    len: usize,
}

impl RegionOrder {
    pub fn as_slice(&self) -> &[u8] {
        &self.order[..self.len]
    }
}

impl Service {
    /// Picks a region and backend for a new request; `avoid` lists backends that already failed
    /// this request (a retry).
    pub fn pick<'t>(&'t self, client: &ClientFacts, avoid: &[SocketAddr]) -> Option<Pick<'t>> {
        let order = self.region_order(client);
        let retry = !avoid.is_empty();
        let not_avoided = |b: &Backend| !avoid.contains(&b.address);
        let usable = |b: &Backend| b.state.is_available() && not_avoided(b);

        let mut ramping: Option<usize> = None;
        for (rank, &i) in order.as_slice().iter().enumerate() {
            let i = i as usize;
            let region = &self.regions[i];
            if !region.is_eligible() {
                continue;
            }
            let share = region.health.share_permille();
            if share < 1000 && fastrand::u32(..1000) >= share {
                // A recovering region takes back only part of its traffic while it ramps up.
                ramping.get_or_insert(i);
                continue;
            }
            if let Some(b) = region.selector.select_for(client, &region.backends, usable) {
                let reason = match (retry, rank) {
                    (true, _) => RouteReason::Retry,
                    (false, 0) => self.policy_reason(),
                    (false, _) => RouteReason::Failover,
                };
                return Some(self.finish(i, b, reason));
            }
        }
        if let Some(i) = ramping {
            let region = &self.regions[i];
            if let Some(b) = region.selector.select_for(client, &region.backends, usable) {
                let reason = if retry {
                    RouteReason::Retry
                } else {
                    RouteReason::Failover
                };
                return Some(self.finish(i, b, reason));
            }
        }

        // Nothing healthy anywhere.
        if self.spec.failover.when_all_down == AllDownPolicy::FailClosed {
            self.note_all_down();
            return None;
        }
        let drained_or_avoided = |b: &Backend| !b.state.is_drained() && not_avoided(b);
        for &i in order.as_slice() {
            let region = &self.regions[i as usize];
            if !region.control.is_active() {
                continue;
            }
            if let Some(b) =
                region
                    .selector
                    .select_for(client, &region.backends, drained_or_avoided)
            {
                self.note_all_down();
                return Some(self.finish(i as usize, b, RouteReason::FailOpen));
            }
        }
        self.note_all_down();
        None
    }

    fn finish(&self, region_index: usize, backend_index: usize, reason: RouteReason) -> Pick<'_> {
        if reason != RouteReason::FailOpen
            && self
                .state
                .all_down
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.state
                .all_down
                .store(false, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(service = %self.name, "a region is healthy again; normal routing resumed");
        }
        let region = &self.regions[region_index];
        Pick {
            region_index,
            region,
            backend_index,
            backend: &region.backends[backend_index],
            reason,
        }
    }

    fn note_all_down(&self) {
        if !self
            .state
            .all_down
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let policy = self.spec.failover.when_all_down;
            tracing::warn!(
                service = %self.name,
                policy = %policy,
                "every region of the service is down; {}",
                match policy {
                    AllDownPolicy::FailOpen => "sending to backends regardless of health (fail_open)",
                    AllDownPolicy::FailClosed => "answering 503 (fail_closed)",
                }
            );
        }
    }

    fn policy_reason(&self) -> RouteReason {
        match self.spec.region_policy {
            RegionPolicy::Failover => RouteReason::Primary,
            RegionPolicy::Geo => RouteReason::Geo,
            RegionPolicy::Latency => RouteReason::Latency,
        }
    }

    /// Regions in the order this client should try them.
    pub fn region_order(&self, client: &ClientFacts) -> RegionOrder {
        let n = self.regions.len().min(MAX_REGIONS);
        let mut order = RegionOrder {
            order: [0; MAX_REGIONS],
            len: n,
        };
        for (i, slot) in order.order[..n].iter_mut().enumerate() {
            *slot = i as u8;
        }
        let primary = self.primary_index();
        match self.spec.region_policy {
            RegionPolicy::Failover => move_to_front(&mut order.order[..n], primary),
            RegionPolicy::Geo => self.geo_order(client, &mut order.order[..n], primary),
            RegionPolicy::Latency => self.latency_order(&mut order.order[..n]),
        }
        order
    }

    fn geo_order(&self, client: &ClientFacts, order: &mut [u8], primary: usize) {
        let Some(geo) = &client.geo else {
            // Unknown address: the default region, else the primary, then priority order.
            move_to_front(order, self.default_region.unwrap_or(primary));
            return;
        };
        // Sort key: explicit country mapping first (priority order), then distance, then regions
        // without a location in priority order.
        let key = |i: usize| -> (u8, f64) {
            let r = &self.regions[i];
            if let Some(c) = geo.country
                && r.countries.iter().any(|x| x == c.as_str())
            {
                return (0, i as f64);
            }
            match (geo.unit, r.unit) {
                // The larger the dot product of unit vectors, the shorter the great circle.
                (Some(a), Some(b)) => (1, -(a[0] * b[0] + a[1] * b[1] + a[2] * b[2])),
                _ => (2, i as f64),
            }
        };
        let mut keys = [(0u8, 0f64); MAX_REGIONS];
        for (k, &i) in order.iter().enumerate() {
            keys[k] = key(i as usize);
        }
        insertion_sort_by_key(order, &mut keys[..order.len()]);
        if keys[0].0 == 2 {
            // Nothing located this client relative to any region.
            move_to_front(order, self.default_region.unwrap_or(primary));
        }
    }

    fn latency_order(&self, order: &mut [u8]) {
        let mut keys = [(0u8, 0f64); MAX_REGIONS];
        for (k, &i) in order.iter().enumerate() {
            let nanos = self.regions[i as usize].health.latency_nanos();
            keys[k] = if nanos == 0 {
                (1, i as f64)
            } else {
                (0, nanos as f64)
            };
        }
        insertion_sort_by_key(order, &mut keys[..order.len()]);
        // Stay on the current choice unless the best is faster by more than the tolerance, so
        // traffic does not flap between nearly equal regions.
        let current = self
            .state
            .latency_choice
            .load(std::sync::atomic::Ordering::Relaxed);
        let best = order[0] as usize;
        if current < self.regions.len() && current != best {
            let cur = &self.regions[current];
            let cur_nanos = cur.health.latency_nanos();
            let best_nanos = self.regions[best].health.latency_nanos();
            let tolerance = self.spec.failover.latency_tolerance.as_nanos() as u64;
            if cur.is_eligible()
                && cur_nanos != 0
                && cur_nanos <= best_nanos.saturating_add(tolerance)
            {
                move_to_front(order, current);
                return;
            }
        }
        if current != best {
            self.state
                .latency_choice
                .store(best, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn move_to_front(order: &mut [u8], index: usize) {
    if let Some(pos) = order.iter().position(|&i| i as usize == index) {
        order[..=pos].rotate_right(1);
    }
}

/// Stable sort of `order` by `keys` (parallel arrays); n is small.
fn insertion_sort_by_key(order: &mut [u8], keys: &mut [(u8, f64)]) {
    for i in 1..order.len() {
        let mut j = i;
        while j > 0 && keys[j] < keys[j - 1] {
            keys.swap(j, j - 1);
            order.swap(j, j - 1);
            j -= 1;
        }
    }
}

/// Great-circle distance in kilometres (haversine).
pub fn distance_km(a: Location, b: Location) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        let frankfurt = Location {
            lat: 50.11,
            lon: 8.68,
        };
        let virginia = Location {
            lat: 39.04,
            lon: -77.49,
        };
        let d = distance_km(frankfurt, virginia);
        assert!((6500.0..6700.0).contains(&d), "{d}");
        assert_eq!(distance_km(frankfurt, frankfurt), 0.0);
    }

    #[test]
    fn front_and_sort() {
        let mut o = [0u8, 1, 2, 3];
        move_to_front(&mut o, 2);
        assert_eq!(o, [2, 0, 1, 3]);
        let mut o = [0u8, 1, 2];
        let mut k = [(1u8, 5.0), (1, 1.0), (0, 9.0)];
        insertion_sort_by_key(&mut o, &mut k);
        assert_eq!(o, [2, 1, 0]);
    }
}
