//! Limits on what clients may take: request rates (per service and per client address) and
//! connections per client address. Each refusal is counted in
//! `streamgate_limited_total{listener,limit}`.
//!
//! Rates use GCRA (the generic cell rate algorithm, a token bucket kept as one "theoretical
//! arrival time" per key): one integer per client instead of a bucket's two, updated with a
//! compare-and-swap, and a decision that is a pure function of that time and `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamgate_config::Rate;
use streamgate_telemetry::Metrics;
use streamgate_telemetry::prometheus::IntCounter;

/// Values of the `limit` label.
pub const LIMITS: [&str; 10] = [
    "connections",
    "process_connections",
    "descriptors",
    "client_connections",
    "header",
    "body",
    "rate",
    "client_rate",
    "compression",
    "resets",
];

/// A limit that refused something, indexed into [`LIMITS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connections,
    /// `[runtime] max_connections`, across every listener (counted on the one that waited).
    ProcessConnections,
    /// Out of descriptors (or socket memory): an accept that failed, or a request or L4
    /// connection answered 503 because its backend connect did.
    Descriptors,
    ClientConnections,
    Header,
    Body,
    Rate,
    ClientRate,
    /// A response sent uncompressed: the encoders at work held `max_memory`.
    Compression,
    /// An HTTP/2 connection sent GOAWAY: its client reset most of its streams as soon as it
    /// opened them (see `stream_resets`).
    Resets,
}

/// `limited_total{listener,limit}` of one listener, every label present from the start.
#[derive(Debug, Clone)]
pub struct LimitedCounters([IntCounter; 10]);

impl LimitedCounters {
    pub fn of(m: &Metrics, listener: &str) -> LimitedCounters {
        LimitedCounters(LIMITS.map(|l| m.limited.with_label_values(&[listener, l])))
    }

    pub fn count(&self, which: Limit) {
        self.0[which as usize].inc();
    }
}

/// GCRA parameters of a rate: the interval between requests at the rate, and how far ahead of
/// it a burst may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval: u64,
    tolerance: u64,
}

impl Gcra {
    pub fn new(rate: Rate) -> Gcra {
        let interval = 1_000_000_000 / u64::from(rate.per_second.max(1));
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(rate.burst.max(1)).saturating_sub(1)),
        }
    }

    /// Decides one request at `now` (nanoseconds) against the key's theoretical arrival time
    /// `tat`: `Ok(new tat)` to admit it, or `Err(wait)`, how long until one would be admitted.
    pub fn decide(&self, tat: u64, now: u64) -> Result<u64, Duration> {
        let tat = tat.max(now);
        let allowed_at = tat.saturating_sub(self.tolerance);
        if now < allowed_at {
            return Err(Duration::from_nanos(allowed_at - now));
        }
        Ok(tat.saturating_add(self.interval))
    }
}

/// One rate shared by every request of a service.
#[derive(Debug)]
pub struct SharedRate {
    gcra: Gcra,
    tat: AtomicU64,
}

impl SharedRate {
    pub fn new(rate: Rate) -> SharedRate {
        SharedRate {
            gcra: Gcra::new(rate),
            tat: AtomicU64::new(0),
        }
    }

    pub fn check(&self, now: u64) -> Result<(), Duration> {
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            let next = self.gcra.decide(current, now)?;
            match self
                .tat
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }
}

/// Shards of the per-client maps: requests of different clients rarely wait on each other.
const SHARDS: usize = 16;
/// Keys kept per shard before the ones that no longer hold anything back are dropped: memory
/// stays bounded whatever addresses clients come from.
const SHARD_KEYS: usize = 16_384;

/// A rate per client address.
#[derive(Debug)]
pub struct ClientRate {
    gcra: Gcra,
    shards: Vec<Mutex<HashMap<IpAddr, u64>>>,
}

impl ClientRate {
    pub fn new(rate: Rate) -> ClientRate {
        ClientRate {
            gcra: Gcra::new(rate),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// One request of `client` (counted by [`client_key`]) at `now`.
    pub fn check(&self, client: IpAddr, now: u64) -> Result<(), Duration> {
        let client = client_key(client);
        let mut shard = self.shards[shard_of(client)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let tat = shard.get(&client).copied().unwrap_or(0);
        let next = self.gcra.decide(tat, now)?;
        if shard.len() >= SHARD_KEYS && !shard.contains_key(&client) {
            // A key whose time has passed admits as if it were new: dropping it changes nothing.
            shard.retain(|_, t| *t > now);
            // Under a flood of addresses every key may still be limiting. Forget some down
            // to 3/4 full, so the scan above runs once per SHARD_KEYS/4 new clients, not on
            // every one: scanning on each made a flood of 500 000 addresses take 300 s in
            // this module's unit test. The ones closest to their time go (the least held
            // back, whose fresh burst changes least): forgotten at random, a client being held
            // back hardest, the one flooding, got its whole burst again (nginx's limit_req
            // drops its least recently used; HAProxy's stick tables the oldest).
            let excess = shard.len().saturating_sub(SHARD_KEYS * 3 / 4);
            if excess > 0 {
                let mut by_time: Vec<(u64, IpAddr)> = shard.iter().map(|(k, t)| (*t, *k)).collect();
                by_time.select_nth_unstable(excess - 1);
                for (_, k) in &by_time[..excess] {
                    shard.remove(k);
                }
            }
        }
        shard.insert(client, next);
        Ok(())
    }
}

/// The key a client is counted by: an IPv4 address as it is (an IPv4-mapped IPv6 address as
/// its IPv4 one), an IPv6 address by its /64. One subscriber, host or virtual machine is given a
/// whole /64 (RFC 6177, mobile networks included) and may pick any address in it for each
/// connection: counted by address, one client would have 2^64 separate limits. Cloudflare's rate
/// limits count IPv6 clients by /64 too; with HAProxy it takes `ipmask(32,64)`.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

fn shard_of(ip: IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let b = u128::from(a);
            (b as u64) ^ ((b >> 64) as u64)
        }
    };
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

/// Connections open per client address on one listener.
#[derive(Debug, Default)]
pub struct ClientConnections {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A client's connection, counted until dropped.
#[derive(Debug)]
pub struct ClientSlot {
    table: Arc<ClientConnections>,
    client: IpAddr,
}

impl ClientConnections {
    /// A slot for one more connection of `client` (counted by [`client_key`]), if it has fewer
    /// than `max` open.
    pub fn try_open(self: &Arc<Self>, client: IpAddr, max: usize) -> Option<ClientSlot> {
        let client = client_key(client);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(client).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: self.clone(),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_by_ipv4_address_and_ipv6_slash_64() {
        let table = [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2::ffff", "2001:db8:1:2::"),
            ("2001:db8:1:3::1", "2001:db8:1:3::"),
            ("::1", "::"),
        ];
        for (ip, key) in table {
            let want: IpAddr = key.parse().unwrap();
            assert_eq!(client_key(ip.parse().unwrap()), want, "{ip}");
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn gcra_admits_the_rate_and_its_burst() {
        // 10/s with a burst of 3: three at once, then one every 100 ms.
        let g = Gcra::new(Rate {
            per_second: 10,
            burst: 3,
        });
        let mut tat = 0;
        let now = 5 * S;
        for i in 0..3 {
            tat = g
                .decide(tat, now)
                .unwrap_or_else(|_| panic!("burst request {i}"));
        }
        let wait = g.decide(tat, now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(g.decide(tat, now + S / 10 - 1).is_err());
        tat = g.decide(tat, now + S / 10).unwrap();
        assert!(g.decide(tat, now + S / 10).is_err());
        // After a quiet second the whole burst is back.
        let later = now + 2 * S;
        for _ in 0..3 {
            tat = g.decide(tat, later).unwrap();
        }
        assert!(g.decide(tat, later).is_err());
    }

    #[test]
    fn per_client_rates_are_separate_and_bounded() {
        let r = ClientRate::new(Rate {
            per_second: 1,
            burst: 1,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(r.check(a, S).is_ok());
        assert!(r.check(a, S).is_err());
        assert!(r.check(b, S).is_ok(), "another client has its own rate");
        assert!(r.check(a, 2 * S).is_ok());
        // A flood of addresses does not grow the map past its bound.
        for i in 0..(SHARDS * SHARD_KEYS * 2) as u32 {
            let _ = r.check(IpAddr::from(i.to_be_bytes()), 3 * S);
        }
        let total: usize = r.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= SHARDS * SHARD_KEYS, "{total}");
    }

    #[test]
    fn a_full_shard_forgets_the_clients_least_held_back_first() {
        let r = ClientRate::new(Rate {
            per_second: 1,
            burst: 5,
        });
        // One shard's worth of clients: every other one has used its whole burst.
        let mut one_shard = (0..u32::MAX)
            .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
            .filter(|ip| shard_of(*ip) == 0);
        let clients: Vec<IpAddr> = one_shard.by_ref().take(SHARD_KEYS).collect();
        for (i, c) in clients.iter().enumerate() {
            let requests = if i % 2 == 0 { 5 } else { 1 };
            for _ in 0..requests {
                assert!(r.check(*c, S).is_ok());
            }
        }
        // One more client: a quarter of the shard is forgotten.
        assert!(r.check(one_shard.next().unwrap(), S).is_ok());
        assert!(r.shards[0].lock().unwrap().len() <= SHARD_KEYS * 3 / 4 + 1);
        let held = clients.iter().step_by(2);
        let given_back = held.filter(|c| r.check(**c, S).is_ok()).count();
        assert_eq!(given_back, 0, "clients held back got their burst again");
    }

    #[test]
    fn client_connections_are_counted_and_given_back() {
        let t = Arc::new(ClientConnections::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let one = t.try_open(a, 2).unwrap();
        let two = t.try_open(a, 2).unwrap();
        assert!(t.try_open(a, 2).is_none());
        drop(one);
        let _three = t.try_open(a, 2).unwrap();
        drop(two);
        assert_eq!(t.open.lock().unwrap().get(&a), Some(&1));
    }
}

/// The rate limiters of every service, kept across reloads while a service's rates stay the
/// same (a reload that changes them starts them afresh).
#[derive(Debug, Default)]
pub struct RateLimits {
    by_service: arc_swap::ArcSwap<Vec<ServiceRates>>,
    write: Mutex<()>,
}

/// One service's limiters.
#[derive(Debug, Clone)]
pub struct ServiceRates {
    name: Arc<str>,
    spec: (Option<Rate>, Option<Rate>),
    pub rate: Option<Arc<SharedRate>>,
    pub client_rate: Option<Arc<ClientRate>>,
}

impl RateLimits {
    pub fn new() -> Arc<RateLimits> {
        Arc::new(RateLimits::default())
    }

    /// The limiters of `service` with these rates, created on first use (a lock-free lookup
    /// afterwards; services are few, a short scan beats hashing the name).
    pub fn of(
        &self,
        service: &Arc<str>,
        rate: Option<Rate>,
        client_rate: Option<Rate>,
    ) -> ServiceRates {
        let spec = (rate, client_rate);
        let find = |list: &[ServiceRates]| {
            list.iter()
                .find(|s| s.name == *service && s.spec == spec)
                .cloned()
        };
        if let Some(s) = find(&self.by_service.load()) {
            return s;
        }
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.by_service.load_full();
        if let Some(s) = find(&current) {
            return s;
        }
        let made = ServiceRates {
            name: service.clone(),
            spec,
            rate: rate.map(|r| Arc::new(SharedRate::new(r))),
            client_rate: client_rate.map(|r| Arc::new(ClientRate::new(r))),
        };
        let mut next: Vec<ServiceRates> = current
            .iter()
            .filter(|s| s.name != *service)
            .cloned()
            .collect();
        next.push(made.clone());
        self.by_service.store(Arc::new(next));
        made
    }
}
