//! The tables of a configuration file, one builder type each.

use std::fmt;
use std::path::Path;

use super::{Raw, Table, TomlValue};
use crate::origin::Origin;

table!(
    /// `[timeouts]`, or a service's `[services.timeouts]`.
    struct Timeouts {
        connect: &str,
        request_header: &str,
        idle: &str,
        upstream_response: &str,
        upstream_idle: &str,
        tunnel_idle: &str,
    }
);

/// `[admin]`, always on `127.0.0.1:0` unless `listen` says otherwise.
#[derive(Debug, Clone)]
pub struct Admin {
    pub(super) table: Table,
}

impl Default for Admin {
    fn default() -> Admin {
        Admin::new()
    }
}

impl Admin {
    pub fn new() -> Admin {
        let mut table = Table::default();
        table.insert("listen", "127.0.0.1:0");
        Admin { table }
    }
}

table!(impl Admin {
    listen: &str,
    token_file: &Path,
    max_connections: i64,
    max_connections_per_client: i64,
});

/// A table whose constructor takes its one required key.
macro_rules! required {
    ($(#[$doc:meta])* $name:ident($key:ident: $ty:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pub(super) table: Table,
        }

        impl $name {
            pub fn new($key: $ty) -> $name {
                let mut table = Table::default();
                table.insert(stringify!($key), &$key);
                $name { table }
            }
        }
    };
}

required!(
    /// `[geo]`.
    Geo(database: &Path)
);

impl Geo {
    /// `[geo]` without a database: `trusted_proxies` alone needs none.
    pub fn without_database() -> Geo {
        Geo {
            table: Table::default(),
        }
    }

    /// A database under the repository's `fixtures/`.
    pub fn fixture(rel: &str) -> Geo {
        Geo::new(&crate::daemon::fixture(rel))
    }
}

table!(impl Geo {
    default_region: &str,
    trusted_proxies: &[&str],
});

required!(
    /// `[access_log]`.
    AccessLog(path: &Path)
);
table!(impl AccessLog { enabled: bool, format: &str });

required!(
    /// `[snapshots]`.
    Snapshots(dir: &Path)
);
table!(impl Snapshots {
    interval: &str,
    keep: i64,
    max_age: &str,
    max_increments: i64,
    increment_share: f64,
    write_rate: &str,
});

/// One `[[listeners]]` entry, on `127.0.0.1:0`.
#[derive(Debug, Clone)]
pub struct Listener {
    pub(super) table: Table,
}

impl Listener {
    fn on(name: &str, protocol: Option<&str>) -> Listener {
        let mut table = Table::default();
        table.insert("name", name);
        table.insert("listen", "127.0.0.1:0");
        if let Some(p) = protocol {
            table.insert("protocol", p);
        }
        Listener { table }
    }

    /// HTTP/1.1 and h2c (the default protocol, not written).
    pub fn http(name: &str) -> Listener {
        Listener::on(name, None)
    }

    /// TLS termination with these `(cert, key)` PEM files.
    pub fn https(name: &str, certificates: &[(&Path, &Path)]) -> Listener {
        let certs: Vec<Raw> = certificates
            .iter()
            .map(|(c, k)| {
                Raw(format!(
                    "{{ cert = {}, key = {} }}",
                    c.to_toml(),
                    k.to_toml()
                ))
            })
            .collect();
        let mut l = Listener::on(name, Some("https"));
        l.table.insert("certificates", &certs[..]);
        l
    }

    pub fn tcp(name: &str) -> Listener {
        Listener::on(name, Some("tcp"))
    }

    pub fn tls_passthrough(name: &str) -> Listener {
        Listener::on(name, Some("tls_passthrough"))
    }
}

table!(impl Listener {
    listen: &str,
    max_connections: i64,
    max_connections_per_client: i64,
    max_header_bytes: &str,
    max_headers: i64,
    proxy_protocol: bool,
});

/// One `[[regions]]` entry; backends are added with `backends`, `address` and `weighted`.
#[derive(Debug, Clone)]
pub struct Region {
    pub(super) table: Table,
    pub(super) backends: Vec<String>,
}

impl Region {
    pub fn new(name: &str) -> Region {
        let mut table = Table::default();
        table.insert("name", name);
        Region {
            table,
            backends: Vec::new(),
        }
    }

    /// Test origins with their weights.
    pub fn backends(mut self, list: &[(&Origin, u32)]) -> Region {
        for (o, w) in list {
            self = self.weighted(o.addr, *w);
        }
        self
    }

    /// Test origins, each with weight 1.
    pub fn origins(self, list: &[&Origin]) -> Region {
        let weighted: Vec<(&Origin, u32)> = list.iter().map(|o| (*o, 1)).collect();
        self.backends(&weighted)
    }

    /// A backend at `address` with the default weight.
    pub fn address(mut self, address: impl fmt::Display) -> Region {
        let address = address.to_string().to_toml();
        self.backends.push(format!("{{ address = {address} }}"));
        self
    }

    pub fn weighted(mut self, address: impl fmt::Display, weight: u32) -> Region {
        let address = address.to_string().to_toml();
        self.backends
            .push(format!("{{ address = {address}, weight = {weight} }}"));
        self
    }

    pub fn location(mut self, lat: f64, lon: f64) -> Region {
        let at = Raw(format!(
            "{{ lat = {}, lon = {} }}",
            lat.to_toml(),
            lon.to_toml()
        ));
        self.table.insert("location", &at);
        self
    }
}

table!(impl Region { countries: &[&str], min_healthy: f64 });

table!(
    /// `[services.health]`.
    struct Health {
        kind: &str,
        path: &str,
        method: &str,
        host: &str,
        expect_status: &str,
        body_contains: &str,
        interval: &str,
        timeout: &str,
        rise: i64,
        fall: i64,
    }
);

table!(
    /// `[services.outlier]`.
    struct Outlier {
        consecutive_failures: i64,
        consecutive_connect_failures: i64,
        base_ejection: &str,
        max_ejection: &str,
        max_ejection_percent: i64,
    }
);

table!(
    /// `[services.failover]`.
    struct Failover {
        hold_down: &str,
        ramp: &str,
        when_all_down: &str,
        latency_tolerance: &str,
    }
);

table!(
    /// `[services.retry]`.
    struct Retry {
        attempts: i64,
        budget_percent: f64,
        min_per_second: i64,
    }
);

required!(
    /// `[services.cache]`.
    Cache(max_size: &str)
);

table!(impl Cache {
    max_size: &str,
    max_object_size: &str,
    default_ttl: &str,
    heuristic_freshness: bool,
    key_headers: &[&str],
    purge_from: &[&str],
    status_header: &str,
    lock_timeout: &str,
    max_variants: i64,
    max_fill_bytes: &str,
    targeted_field: &str,
    cdn_cache_control: bool,
});

table!(
    /// `[services.upstream]`.
    struct Upstream {
        protocol: &str,
        send_proxy: &str,
        tls_ca_file: &Path,
        tls_server_name: &str,
        tls_client_cert: &Path,
        tls_client_key: &Path,
        tls_verify: bool,
    }
);

table!(
    /// `[services.access]`.
    struct Access {
        allow: &[&str],
        deny: &[&str],
        allow_countries: &[&str],
        deny_countries: &[&str],
    }
);

table!(
    /// `[services.limits]`.
    struct Limits {
        max_body: &str,
        rate: i64,
        burst: i64,
        client_rate: i64,
        client_burst: i64,
    }
);

table!(
    /// `[services.hash]`.
    struct Hash {
        key: &str,
        cookie: &str,
        cookie_ttl: &str,
    }
);

/// One `[[services]]` entry and its sub-tables.
#[derive(Debug, Clone)]
pub struct Service {
    pub(super) table: Table,
    pub(super) subtables: Vec<(&'static str, Table)>,
}

impl Service {
    pub fn new(name: &str) -> Service {
        let mut table = Table::default();
        table.insert("name", name);
        Service {
            table,
            subtables: Vec::new(),
        }
    }

    fn sub(mut self, name: &'static str, table: Table) -> Service {
        self.subtables.retain(|(n, _)| *n != name);
        self.subtables.push((name, table));
        self
    }

    pub fn timeouts(self, t: Timeouts) -> Service {
        self.sub("timeouts", t.table)
    }

    pub fn health(self, h: Health) -> Service {
        self.sub("health", h.table)
    }

    pub fn outlier(self, o: Outlier) -> Service {
        self.sub("outlier", o.table)
    }

    pub fn failover(self, f: Failover) -> Service {
        self.sub("failover", f.table)
    }

    pub fn retry(self, r: Retry) -> Service {
        self.sub("retry", r.table)
    }

    pub fn cache(self, c: Cache) -> Service {
        self.sub("cache", c.table)
    }

    pub fn upstream(self, u: Upstream) -> Service {
        self.sub("upstream", u.table)
    }

    pub fn limits(self, l: Limits) -> Service {
        self.sub("limits", l.table)
    }

    pub fn access(self, a: Access) -> Service {
        self.sub("access", a.table)
    }

    /// `rules = [ … ]`: each rule an inline table, e.g.
    /// `{ match = { scheme = "http" }, redirect = { scheme = "https" } }`.
    pub fn rules(self, rules: &[&str]) -> Service {
        self.set("rules", Raw(format!("[ {} ]", rules.join(", "))))
    }

    pub fn hash(self, h: Hash) -> Service {
        self.sub("hash", h.table)
    }
}

table!(impl Service {
    listeners: &[&str],
    hosts: &[&str],
    path_prefix: &str,
    regions: &[&str],
    region_policy: &str,
    backend_policy: &str,
});
