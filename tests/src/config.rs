//! A typed builder for the configurations the end-to-end tests run: the keys of
//! docs/configuration.md as methods, written out as the TOML file the daemon reads.
//!
//! ```text
//! let text = Config::new()
//!     .listener(Listener::http("web"))
//!     .region(Region::new("origin").backends(&[(&origin, 1)]))
//!     .service(
//!         Service::new("cdn")
//!             .listeners(&["web"])
//!             .hosts(&["cdn.example.com"])
//!             .regions(&["origin"])
//!             .cache(Cache::new("64MiB").purge_from(&["127.0.0.1/32"])),
//!     )
//!     .to_toml();
//! ```
//!
//! Every table has `set(key, value)` for a key without a method of its own, and
//! [`Config::raw`] appends text as is (whole tables) after everything else. The file always has
//! an `[admin]` table listening on `127.0.0.1:0`, so tests never collide on the default port.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::daemon::TestDaemon;

/// A value as TOML writes it inline.
pub trait TomlValue {
    fn to_toml(&self) -> String;
}

/// TOML text used as a value as is: an inline table, an array of them.
#[derive(Debug, Clone)]
pub struct Raw(pub String);

impl TomlValue for Raw {
    fn to_toml(&self) -> String {
        self.0.clone()
    }
}

impl TomlValue for str {
    fn to_toml(&self) -> String {
        let mut out = String::with_capacity(self.len() + 2);
        out.push('"');
        for c in self.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
}

impl TomlValue for String {
    fn to_toml(&self) -> String {
        self.as_str().to_toml()
    }
}

impl TomlValue for Path {
    fn to_toml(&self) -> String {
        self.display().to_string().to_toml()
    }
}

impl TomlValue for PathBuf {
    fn to_toml(&self) -> String {
        self.as_path().to_toml()
    }
}

impl TomlValue for bool {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for i64 {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for f64 {
    fn to_toml(&self) -> String {
        // Always with a fraction, so TOML reads a float.
        format!("{self:?}")
    }
}

impl<T: TomlValue + ?Sized> TomlValue for &T {
    fn to_toml(&self) -> String {
        (**self).to_toml()
    }
}

impl<T: TomlValue> TomlValue for [T] {
    fn to_toml(&self) -> String {
        let items: Vec<String> = self.iter().map(TomlValue::to_toml).collect();
        format!("[{}]", items.join(", "))
    }
}

/// Keys in the order they were set; setting a key again replaces its value in place.
#[derive(Debug, Clone, Default)]
pub struct Table {
    entries: Vec<(String, String)>,
}

impl Table {
    pub fn insert(&mut self, key: &str, value: &(impl TomlValue + ?Sized)) {
        let value = value.to_toml();
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn write(&self, out: &mut String, header: &str) {
        out.push_str(header);
        out.push('\n');
        for (k, v) in &self.entries {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push('\n');
    }
}

/// One builder method per named key (`key: type`), and `set` for any key. `struct` also
/// declares the table type with `new()`, for tables without required keys.
macro_rules! table {
    ($(#[$doc:meta])* struct $name:ident { $($key:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default)]
        pub struct $name {
            pub(super) table: Table,
        }

        impl $name {
            pub fn new() -> Self {
                Self::default()
            }
        }

        table!(impl $name { $($key: $ty),* });
    };
    (impl $name:ident { $($key:ident: $ty:ty),* $(,)? }) => {
        impl $name {
            /// Any key of this table, for keys without a method.
            pub fn set(mut self, key: &str, value: impl TomlValue) -> Self {
                self.table.insert(key, &value);
                self
            }
            $(
                pub fn $key(mut self, value: $ty) -> Self {
                    self.table.insert(stringify!($key), &value);
                    self
                }
            )*
        }
    };
}

mod tables;

pub use tables::*;

/// A whole configuration file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    runtime: Table,
    timeouts: Timeouts,
    admin: Admin,
    metrics: Option<Table>,
    geo: Option<Geo>,
    access_log: Option<AccessLog>,
    snapshots: Option<Snapshots>,
    listeners: Vec<Listener>,
    regions: Vec<Region>,
    services: Vec<Service>,
    raw: String,
}

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    /// The shape most cache tests use: a listener "web", one region "origin" at `backend`, and
    /// a service "cdn" for `hosts` with `cache`.
    pub fn cdn(backend: impl fmt::Display, hosts: &[&str], cache: Cache) -> Config {
        Config::new()
            .listener(Listener::http("web"))
            .region(Region::new("origin").address(backend))
            .service(
                Service::new("cdn")
                    .listeners(&["web"])
                    .hosts(hosts)
                    .regions(&["origin"])
                    .cache(cache),
            )
    }

    /// `[runtime] workers`.
    pub fn workers(mut self, n: i64) -> Config {
        self.runtime.insert("workers", &n);
        self
    }

    /// `[runtime] shutdown_timeout`.
    pub fn shutdown_timeout(mut self, d: &str) -> Config {
        self.runtime.insert("shutdown_timeout", d);
        self
    }

    pub fn timeouts(mut self, t: Timeouts) -> Config {
        self.timeouts = t;
        self
    }

    pub fn admin(mut self, a: Admin) -> Config {
        self.admin = a;
        self
    }

    /// `[metrics] listen`.
    pub fn metrics_listen(mut self, addr: &str) -> Config {
        let mut t = Table::default();
        t.insert("listen", addr);
        self.metrics = Some(t);
        self
    }

    pub fn geo(mut self, g: Geo) -> Config {
        self.geo = Some(g);
        self
    }

    pub fn access_log(mut self, a: AccessLog) -> Config {
        self.access_log = Some(a);
        self
    }

    pub fn snapshots(mut self, s: Snapshots) -> Config {
        self.snapshots = Some(s);
        self
    }

    pub fn listener(mut self, l: Listener) -> Config {
        self.listeners.push(l);
        self
    }

    pub fn region(mut self, r: Region) -> Config {
        self.regions.push(r);
        self
    }

    pub fn service(mut self, s: Service) -> Config {
        self.services.push(s);
        self
    }

    /// TOML appended as is after everything else: whole tables, for what has no method.
    pub fn raw(mut self, text: &str) -> Config {
        self.raw.push_str(text);
        self.raw.push('\n');
        self
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if !self.runtime.is_empty() {
            self.runtime.write(&mut out, "[runtime]");
        }
        if !self.timeouts.table.is_empty() {
            self.timeouts.table.write(&mut out, "[timeouts]");
        }
        self.admin.table.write(&mut out, "[admin]");
        let tables = [
            ("[metrics]", self.metrics.as_ref()),
            ("[geo]", self.geo.as_ref().map(|g| &g.table)),
            ("[access_log]", self.access_log.as_ref().map(|a| &a.table)),
            ("[snapshots]", self.snapshots.as_ref().map(|s| &s.table)),
        ];
        for (header, table) in tables {
            if let Some(t) = table {
                t.write(&mut out, header);
            }
        }
        for l in &self.listeners {
            l.table.write(&mut out, "[[listeners]]");
        }
        for r in &self.regions {
            let mut t = r.table.clone();
            t.insert("backends", &Raw(format!("[{}]", r.backends.join(", "))));
            t.write(&mut out, "[[regions]]");
        }
        for s in &self.services {
            s.table.write(&mut out, "[[services]]");
            for (name, t) in &s.subtables {
                t.write(&mut out, &format!("[services.{name}]"));
            }
        }
        out.push_str(&self.raw);
        out
    }

    /// Starts an in-process daemon on this configuration.
    pub async fn start(&self) -> TestDaemon {
        TestDaemon::start(&self.to_toml()).await
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(c: &Config) -> streamgate_config::Config {
        let (_dir, path) = crate::daemon::write_config(&c.to_toml());
        streamgate_config::load(&path).unwrap_or_else(|e| panic!("{e}\n{}", c.to_toml()))
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!("a\"b\\c\nd\u{1}".to_toml(), r#""a\"b\\c\nd\u0001""#);
        assert_eq!(1.0f64.to_toml(), "1.0");
        assert_eq!(["a", "b"][..].to_toml(), r#"["a", "b"]"#);
    }

    #[test]
    fn a_minimal_config_parses_with_an_admin_on_a_free_port() {
        let c = Config::new()
            .listener(Listener::http("web"))
            .region(Region::new("r").address("127.0.0.1:9"))
            .service(Service::new("s").listeners(&["web"]).regions(&["r"]));
        let text = c.to_toml();
        assert!(
            text.starts_with("[admin]\nlisten = \"127.0.0.1:0\"\n"),
            "{text}"
        );
        let parsed = load(&c);
        assert_eq!(parsed.listeners.len(), 1);
        assert_eq!(parsed.regions[0].backends.len(), 1);
        assert_eq!(parsed.services[0].name, "s");
    }

    #[test]
    fn every_key_with_a_method_parses() {
        let dir = tempfile::tempdir().unwrap();
        let cert = crate::tls::make_cert(&["a.example"]);
        let (cp, kp) = crate::tls::write_cert(dir.path(), "a", &cert);
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        let c = Config::new()
            .workers(1)
            .shutdown_timeout("10s")
            .timeouts(
                Timeouts::new()
                    .connect("1s")
                    .request_header("2s")
                    .idle("3s")
                    .upstream_response("4s")
                    .upstream_idle("5s")
                    .tunnel_idle("6s"),
            )
            .admin(Admin::new().token_file(&token).max_connections(3))
            .metrics_listen("127.0.0.1:0")
            .geo(
                Geo::fixture("geo/streamgate-synthetic-city.mmdb")
                    .default_region("a")
                    .trusted_proxies(&["127.0.0.1/32"]),
            )
            .access_log(
                AccessLog::new(&dir.path().join("access.log"))
                    .enabled(true)
                    .format("$status"),
            )
            .snapshots(Snapshots::new(dir.path()).interval("1h").keep(2))
            .listener(
                Listener::http("web")
                    .max_connections(5)
                    .max_connections_per_client(2)
                    .max_header_bytes("8KiB")
                    .max_headers(16)
                    .proxy_protocol(true),
            )
            .listener(Listener::https("tls", &[(&cp, &kp)]))
            .listener(Listener::tcp("l4"))
            .listener(Listener::tls_passthrough("pt"))
            .region(
                Region::new("a")
                    .location(39.0, -77.5)
                    .countries(&["CA"])
                    .min_healthy(0.5)
                    .weighted("127.0.0.1:9", 3)
                    .address("127.0.0.1:10"),
            )
            .region(Region::new("b").address("127.0.0.1:11"))
            .service(
                Service::new("web")
                    .listeners(&["web", "tls"])
                    .hosts(&["a.example", "*.b.example"])
                    .path_prefix("/v/")
                    .regions(&["a", "b"])
                    .region_policy("geo")
                    .backend_policy("least_conn")
                    .timeouts(Timeouts::new().upstream_response("1s"))
                    .health(
                        Health::new()
                            .kind("http")
                            .path("/healthz")
                            .method("OPTIONS")
                            .host("h.example")
                            .expect_status("2xx")
                            .body_contains("ok")
                            .interval("200ms")
                            .timeout("150ms")
                            .rise(2)
                            .fall(3),
                    )
                    .outlier(
                        Outlier::new()
                            .consecutive_failures(5)
                            .consecutive_connect_failures(1)
                            .base_ejection("10s")
                            .max_ejection("5m"),
                    )
                    .failover(
                        Failover::new()
                            .hold_down("2s")
                            .ramp("1s")
                            .when_all_down("fail_closed")
                            .latency_tolerance("20ms"),
                    )
                    .retry(
                        Retry::new()
                            .attempts(3)
                            .budget_percent(20.0)
                            .min_per_second(200),
                    )
                    .cache(
                        Cache::new("64MiB")
                            .max_size("32MiB")
                            .max_object_size("1MiB")
                            .default_ttl("30s")
                            .heuristic_freshness(false)
                            .key_headers(&["x-v"])
                            .purge_from(&["127.0.0.1/32"])
                            .status_header("X-Edge")
                            .lock_timeout("1s")
                            .max_variants(4)
                            .max_fill_bytes("3MiB")
                            .targeted_field("Edge-Control")
                            .cdn_cache_control(false)
                            .set("key_query", "ignore"),
                    )
                    .upstream(
                        Upstream::new()
                            .protocol("https")
                            .tls_ca_file(&cp)
                            .tls_server_name("a.example")
                            .tls_client_cert(&cp)
                            .tls_client_key(&kp)
                            .tls_verify(true),
                    )
                    .limits(
                        Limits::new()
                            .max_body("1KiB")
                            .rate(5)
                            .burst(5)
                            .client_rate(1)
                            .client_burst(2),
                    ),
            )
            .service(
                Service::new("echo")
                    .listeners(&["l4"])
                    .regions(&["b"])
                    .upstream(Upstream::new().send_proxy("v2")),
            )
            .service(
                Service::new("pass")
                    .listeners(&["pt"])
                    .hosts(&["pass.example"])
                    .regions(&["b"]),
            )
            .raw("[services.retry]\nattempts = 2");
        let parsed = load(&c);
        assert_eq!(parsed.listeners.len(), 4);
        assert_eq!(parsed.services.len(), 3);
        let web = &parsed.services[0];
        assert_eq!(web.regions.len(), 2);
        assert_eq!(parsed.regions[0].backends[0].weight.get(), 3);
        assert_eq!(parsed.regions[0].backends[1].weight.get(), 1);
        // `raw` comes last: its table belongs to the last service.
        assert_eq!(parsed.services[2].retry.attempts, 2);
        assert_eq!(web.retry.attempts, 3);
    }

    #[test]
    fn setting_a_key_again_replaces_it() {
        let c = Config::new()
            .listener(Listener::http("web"))
            .region(Region::new("r").address("127.0.0.1:9"))
            .service(
                Service::new("s")
                    .listeners(&["web"])
                    .regions(&["r"])
                    .cache(Cache::new("64MiB").max_size("1MiB"))
                    .cache(Cache::new("2MiB")),
            );
        let text = c.to_toml();
        assert_eq!(text.matches("max_size").count(), 1, "{text}");
        assert!(text.contains("max_size = \"2MiB\""), "{text}");
        load(&c);
    }
}
