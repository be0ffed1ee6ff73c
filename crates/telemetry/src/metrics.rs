//! Typed metric families. The names are a contract with dashboards and alert rules (DESIGN.md):
//! change them only together with deploy/.

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Histogram buckets in seconds, suited to an edge: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Values of the `code_class` label, indexed by [`code_class_index`].
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Where a response's data came from: the `data_type` label of the data-locality metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    CacheHit,
    CacheMiss,
    CacheStale,
    /// Not cacheable, or the service has no cache: straight from the origin.
    Pass,
}

impl DataType {
    pub const ALL: [DataType; 4] = [
        DataType::CacheHit,
        DataType::CacheMiss,
        DataType::CacheStale,
        DataType::Pass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::CacheHit => "cache_hit",
            DataType::CacheMiss => "cache_miss",
            DataType::CacheStale => "cache_stale",
            DataType::Pass => "pass",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Index into [`CODE_CLASSES`] for an HTTP status code.
pub fn code_class_index(status: u16) -> usize {
    match status {
        0..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// Every metric family StreamGate exports, registered in one registry with the `streamgate_` prefix.
///
/// Labels are bounded: service, region, backend and listener names come from the config; client
/// addresses, hosts and paths are never label values.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `global_load_balancer_requests_total{service,region,code_class}`
    pub requests: IntCounterVec,
    /// `latency_by_region_seconds{region}`: request start to response head.
    pub latency_by_region: HistogramVec,
    /// `traffic_routing_requests_total{region,reason}`
    pub routing: IntCounterVec,
    /// `data_locality_requests_total{region,data_type}`
    pub locality_requests: IntCounterVec,
    /// `data_locality_latency_seconds{region,data_type}`
    pub locality_latency: HistogramVec,
    /// `failovers_total{service,from,to}`
    pub failovers: IntCounterVec,
    /// `health_checks_total{backend,result}`
    pub health_checks: IntCounterVec,
    /// `upstream_errors_total{region,kind}`: connect, timeout, protocol.
    pub upstream_errors: IntCounterVec,
    /// `retries_total{service}`
    pub retries: IntCounterVec,
    /// `unrouted_requests_total{listener}`: requests for a host or path no service claims.
    pub unrouted: IntCounterVec,
    /// `loops_detected_total{listener}`: requests refused with 508 because their Via shows
    /// they already passed through StreamGate too often (a backend that leads back to it).
    pub loops: IntCounterVec,
    /// `connections_total{listener}` and `connections_active{listener}`
    pub connections: IntCounterVec,
    pub connections_active: IntGaugeVec,
    /// `connections_limit`: client connections the daemon holds at once across its listeners
    /// (`[runtime] max_connections`, by default what the descriptor limit leaves room for).
    pub connections_limit: IntGauge,
    /// `tunnels_total{listener}` and `tunnels_active{listener}`: WebSocket and other upgrades,
    /// HTTP/2 extended CONNECT, TCP and TLS-passthrough connections.
    pub tunnels: IntCounterVec,
    pub tunnels_active: IntGaugeVec,
    /// `limited_total{listener,limit}`: requests and connections refused by a limit.
    pub limited: IntCounterVec,
    /// `access_denied_total{service,reason}`: refused by `[services.access]` (403).
    pub access_denied: IntCounterVec,
    /// `config_reloads_total{result}`
    pub config_reloads: IntCounterVec,
    /// `regional_deployments_total{region}`: config versions applied (at start or by a
    /// reload) that changed the region's backend set.
    pub regional_deployments: IntCounterVec,
    /// `config_last_reload_success_timestamp_seconds`
    pub config_last_reload_success: Gauge,
    pub cache_bytes: IntGauge,
    pub cache_objects: IntGauge,
    /// `cache_served_bytes_total{source}`: source = cache | origin.
    pub cache_served_bytes: IntCounterVec,
    pub cache_evictions: IntCounter,
    /// `cache_variant_evictions_total`: variants dropped because their URL had `max_variants`.
    pub cache_variant_evictions: IntCounter,
    /// `access_log_dropped_total`: access log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// `cache_fill_bytes`: bytes held by responses being recorded into the cache.
    pub cache_fill_bytes: IntGauge,
    /// `cache_fills_dropped_total{reason}`: recordings given up (memory, size, error, orphaned).
    pub cache_fills_dropped: IntCounterVec,
    /// `recovery_point_age_seconds`
    pub recovery_point_age: Gauge,
    /// `recovery_restore_seconds`: how long the last restore took (the recovery time).
    pub recovery_restore_seconds: Gauge,
    /// `recovery_point_verified{result}`: 1 for the outcome of re-reading the newest point
    /// written (`ok`, `damaged`), 0 for the other.
    pub recovery_point_verified: IntGaugeVec,
    /// `recovery_points_damaged_total`: points found damaged (at restore or re-read).
    pub recovery_points_damaged: IntCounter,
    /// `dns_resolutions_total{name,result}`: resolutions of backend names by outcome
    /// ([`DNS_RESULTS`]); `name` is a host name written in the config, so the set is bounded.
    pub dns_resolutions: IntCounterVec,
    /// `dns_addresses{name}`: addresses a backend name gives its regions now (the last good
    /// answer while resolution fails).
    pub dns_addresses: IntGaugeVec,
    /// `replication_lag_seconds{region}`: from a fleet message's publication at one PoP to its
    /// application here; `region` is this PoP's (`[fleet] region`).
    pub replication_lag: HistogramVec,
    /// `fleet_connected`: 1 while the link to NATS is up.
    pub fleet_connected: IntGauge,
    /// `fleet_messages_total{kind,result}`: fleet messages by kind (`purge`, `override`,
    /// `heartbeat`) and result ([`FLEET_RESULTS`]).
    pub fleet_messages: IntCounterVec,
    /// `dns_addresses_dropped_total{name,reason}`: addresses of answers not used as backends
    /// ([`DNS_DROPPED`]).
    pub dns_addresses_dropped: IntCounterVec,
}

/// Values of the `result` label of `fleet_messages_total`.
pub const FLEET_RESULTS: [&str; 6] = [
    "applied",
    "duplicate",
    "malformed",
    "published",
    "unsigned",
    "stale",
];

/// Values of the `result` label of `dns_resolutions_total`.
pub const DNS_RESULTS: [&str; 6] = [
    "success",
    "nxdomain",
    "no_records",
    "timeout",
    "error",
    "filtered",
];

/// Values of the `reason` label of `dns_addresses_dropped_total`.
pub const DNS_DROPPED: [&str; 3] = ["unusable", "local", "over_cap"];

impl Metrics {
    /// Exports every counter whose label values the config names at 0, so that alert rules
    /// built on `increase()` or `rate()` see the first event (a series that appears with 1
    /// has no increase). Called at start and after every reload (new names).
    pub fn declare(&self, config: &streamgate_config::Config) {
        for s in &config.services {
            let name = s.name.as_str();
            self.retries.with_label_values(&[name]);
            if !s.access.is_open() {
                for reason in ["address", "country", "not_allowed"] {
                    self.access_denied.with_label_values(&[name, reason]);
                }
            }
            if s.rules.list.iter().any(|r| r.deny) {
                self.access_denied.with_label_values(&[name, "rule"]);
            }
            for r in &s.regions {
                for class in CODE_CLASSES {
                    self.requests.with_label_values(&[name, r, class]);
                }
                for to in s.regions.iter().filter(|t| *t != r) {
                    self.failovers.with_label_values(&[name, r, to]);
                }
            }
        }
        if let Some(f) = &config.fleet {
            self.replication_lag.with_label_values(&[&f.region]);
            for kind in ["purge", "override"] {
                for result in FLEET_RESULTS {
                    self.fleet_messages.with_label_values(&[kind, result]);
                }
            }
        }
        for r in &config.regions {
            for kind in ["connect", "timeout", "protocol"] {
                self.upstream_errors.with_label_values(&[&r.name, kind]);
            }
            self.regional_deployments.with_label_values(&[&r.name]);
        }
        for l in &config.listeners {
            self.unrouted.with_label_values(&[&l.name]);
            self.loops.with_label_values(&[&l.name]);
        }
        for b in config.regions.iter().flat_map(|r| &r.named_backends) {
            for result in DNS_RESULTS {
                self.dns_resolutions.with_label_values(&[&b.host, result]);
            }
            self.dns_addresses.with_label_values(&[&b.host]);
            for reason in DNS_DROPPED {
                self.dns_addresses_dropped
                    .with_label_values(&[&b.host, reason]);
            }
        }
        for result in ["success", "failure"] {
            self.config_reloads.with_label_values(&[result]);
        }
        for source in ["cache", "origin"] {
            self.cache_served_bytes.with_label_values(&[source]);
        }
    }

    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("streamgate".into()), None)
            .expect("a static prefix is a valid registry prefix");
        let r = &registry;
        Metrics {
            requests: counter_vec(
                r,
                "global_load_balancer_requests_total",
                "HTTP requests answered, by service, region and status class",
                &["service", "region", "code_class"],
            ),
            latency_by_region: histogram_vec(
                r,
                "latency_by_region_seconds",
                "Time from request to response head, by serving region",
                &["region"],
            ),
            routing: counter_vec(
                r,
                "traffic_routing_requests_total",
                "Routing decisions by chosen region and reason (geo, latency, failover, primary, retry, fail_open)",
                &["region", "reason"],
            ),
            locality_requests: counter_vec(
                r,
                "data_locality_requests_total",
                "Requests by where their data came from (cache_hit, cache_miss, cache_stale, pass)",
                &["region", "data_type"],
            ),
            locality_latency: histogram_vec(
                r,
                "data_locality_latency_seconds",
                "Time to response head by where the data came from",
                &["region", "data_type"],
            ),
            failovers: counter_vec(
                r,
                "failovers_total",
                "Times a service's traffic moved from one region to another",
                &["service", "from", "to"],
            ),
            health_checks: counter_vec(
                r,
                "health_checks_total",
                "Active health probes by backend and result",
                &["backend", "result"],
            ),
            upstream_errors: counter_vec(
                r,
                "upstream_errors_total",
                "Failed backend attempts by region and kind (connect, timeout, protocol)",
                &["region", "kind"],
            ),
            retries: counter_vec(
                r,
                "retries_total",
                "Requests retried on another backend",
                &["service"],
            ),
            unrouted: counter_vec(
                r,
                "unrouted_requests_total",
                "Requests no service claims (answered 404 or 421, never forwarded)",
                &["listener"],
            ),
            loops: counter_vec(
                r,
                "loops_detected_total",
                "Requests refused with 508 Loop Detected: their Via already named StreamGate too often (never forwarded)",
                &["listener"],
            ),
            connections: counter_vec(
                r,
                "connections_total",
                "Accepted client connections",
                &["listener"],
            ),
            connections_active: gauge_vec(
                r,
                "connections_active",
                "Open client connections",
                &["listener"],
            ),
            connections_limit: int_gauge(
                r,
                "connections_limit",
                "Client connections held at once across every listener; more wait in the backlog",
            ),
            tunnels: counter_vec(
                r,
                "tunnels_total",
                "Tunnels opened (WebSocket and other upgrades, HTTP/2 extended CONNECT, TCP and TLS passthrough)",
                &["listener"],
            ),
            tunnels_active: gauge_vec(r, "tunnels_active", "Open tunnels", &["listener"]),
            limited: counter_vec(
                r,
                "limited_total",
                "Requests and connections refused by a limit (connections, client_connections, header, body, rate, client_rate)",
                &["listener", "limit"],
            ),
            access_denied: counter_vec(
                r,
                "access_denied_total",
                "Requests and connections refused by a service's access list (403), by reason",
                &["service", "reason"],
            ),
            regional_deployments: counter_vec(
                r,
                "regional_deployments_total",
                "Config versions applied (start or reload) that changed the region's backend set",
                &["region"],
            ),
            config_reloads: counter_vec(
                r,
                "config_reloads_total",
                "Config reloads by result (success, failure)",
                &["result"],
            ),
            config_last_reload_success: gauge(
                r,
                "config_last_reload_success_timestamp_seconds",
                "Unix time of the last configuration that was applied",
            ),
            cache_bytes: int_gauge(r, "cache_bytes", "Bytes held by the edge cache"),
            cache_objects: int_gauge(r, "cache_objects", "Objects held by the edge cache"),
            cache_served_bytes: counter_vec(
                r,
                "cache_served_bytes_total",
                "Response body bytes served, by source (cache, origin)",
                &["source"],
            ),
            cache_evictions: int_counter(
                r,
                "cache_evictions_total",
                "Cache entries evicted for space or expiry",
            ),
            cache_variant_evictions: int_counter(
                r,
                "cache_variant_evictions_total",
                "Stored variants dropped because their URL already had max_variants",
            ),
            access_log_dropped: int_counter(
                r,
                "access_log_dropped_total",
                "Access log lines dropped because the writer fell behind (64 Ki lines or 32 MiB queued)",
            ),
            cache_fill_bytes: int_gauge(
                r,
                "cache_fill_bytes",
                "Bytes held by responses being recorded into the cache (bounded by max_fill_bytes)",
            ),
            cache_fills_dropped: counter_vec(
                r,
                "cache_fills_dropped_total",
                "Responses streamed to their client but not stored, by reason (memory: max_fill_bytes reached, size: over max_object_size, error: the origin's body failed, orphaned: the client left while 256 fills of the service ran without theirs)",
                &["reason"],
            ),
            recovery_point_age: gauge(
                r,
                "recovery_point_age_seconds",
                "Age of the newest verified recovery point (snapshot)",
            ),
            recovery_restore_seconds: gauge(
                r,
                "recovery_restore_seconds",
                "How long the last restore of a recovery point took (the recovery time)",
            ),
            recovery_point_verified: gauge_vec(
                r,
                "recovery_point_verified",
                "Re-reading the newest recovery point written: 1 for its outcome (ok, damaged)",
                &["result"],
            ),
            recovery_points_damaged: int_counter(
                r,
                "recovery_points_damaged_total",
                "Recovery points found damaged (at restore, or re-read after writing)",
            ),
            dns_resolutions: counter_vec(
                r,
                "dns_resolutions_total",
                "Resolutions of backend host names by result (success, nxdomain, no_records, timeout, error, filtered)",
                &["name", "result"],
            ),
            dns_addresses: gauge_vec(
                r,
                "dns_addresses",
                "Addresses a backend host name currently gives its regions (the last good answer while resolution fails)",
                &["name"],
            ),
            replication_lag: histogram_vec(
                r,
                "replication_lag_seconds",
                "Fleet messages: seconds from publication at one PoP to application at this one",
                &["region"],
            ),
            fleet_connected: int_gauge(
                r,
                "fleet_connected",
                "1 while this PoP's link to the fleet (NATS) is up",
            ),
            fleet_messages: counter_vec(
                r,
                "fleet_messages_total",
                "Fleet messages by kind (purge, override, heartbeat) and result (applied, duplicate, malformed, published)",
                &["kind", "result"],
            ),
            dns_addresses_dropped: counter_vec(
                r,
                "dns_addresses_dropped_total",
                "Addresses of backend host names' answers not used, by reason (unusable, local, over_cap)",
                &["name", "reason"],
            ),
            registry,
        }
    }

    /// The whole registry in Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::with_capacity(16 * 1024);
        let encoder = prometheus::TextEncoder::new();
        // Encoding into a Vec cannot fail for text; a family that fails is skipped, not fatal.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    register(r, HistogramVec::new(opts, labels).expect("valid metric"))
}

fn gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    register(r, Gauge::new(name, help).expect("valid metric"))
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

fn int_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_names() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["video", "us-east", "2xx"])
            .inc();
        let text = m.render();
        assert!(
            text.contains(
                "streamgate_global_load_balancer_requests_total{code_class=\"2xx\",region=\"us-east\",service=\"video\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn code_classes() {
        assert_eq!(CODE_CLASSES[code_class_index(204)], "2xx");
        assert_eq!(CODE_CLASSES[code_class_index(503)], "5xx");
        assert_eq!(CODE_CLASSES[code_class_index(404)], "4xx");
    }
}
