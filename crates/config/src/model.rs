//! The validated configuration: every value parsed, every cross-reference resolved.
//!
//! Constructed only by [`crate::parse`]; holding a `Config` means the file was valid.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use crate::dns::{AddressFamily, Dns, NamedBackend};
pub use crate::host::HostPattern;
pub use access::Access;
pub use compression::{Compression, DEFAULT_TYPES, Encoding};
pub use hash::{HashKey, HashPolicy, StickyCookie};
pub use health::{Failover, HealthCheck, HealthKind, HttpProbe, Outlier, Retry};

mod access;
mod compression;
mod hash;
mod health;

/// A whole, valid configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the configuration came from, for logs and the admin API.
    pub source: Source,
    pub runtime: Runtime,
    /// Defaults for every service; a service's own `[services.timeouts]` overrides them.
    pub timeouts: Timeouts,
    pub admin: Admin,
    pub geo: Option<Geo>,
    pub access_log: AccessLog,
    /// `None`: no recovery points are written or restored.
    pub snapshots: Option<Snapshots>,
    /// How backends named by host name are resolved.
    pub dns: Dns,
    /// `None`: this daemon stands alone.
    pub fleet: Option<crate::fleet::Fleet>,
    pub listeners: Vec<Listener>,
    pub regions: Vec<Region>,
    pub services: Vec<Service>,
}

impl Config {
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// The file a configuration was read from and a digest of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    /// FNV-1a of the file's bytes: equal digests mean an unchanged file.
    pub digest: u64,
    /// The file's text as it validated (kept as the last known good copy).
    pub text: std::sync::Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// Worker threads; `None` means one per CPU.
    pub workers: Option<NonZeroUsize>,
    /// How long in-flight requests may run after SIGTERM before connections are closed.
    pub shutdown_timeout: Duration,
    /// Client connections open at once across every listener; `None`: what the descriptor
    /// limit allows (`streamgate_proxy::descriptors`).
    pub max_connections: Option<NonZeroUsize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to a backend.
    pub connect: Duration,
    /// A client must send the whole request head within this time.
    pub request_header: Duration,
    /// A client connection with no bytes moving for this long is closed.
    pub idle: Duration,
    /// A backend must send its response head within this time of the request.
    pub upstream_response: Duration,
    /// A pooled idle backend connection is closed after this long.
    pub upstream_idle: Duration,
    /// A tunnel (WebSocket and other upgrades, HTTP/2 extended CONNECT, TCP services) with no
    /// byte moving either way for this long is closed.
    pub tunnel_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            request_header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            upstream_response: Duration::from_secs(30),
            upstream_idle: Duration::from_secs(60),
            tunnel_idle: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// A listener of its own for `/metrics` only (no token), for scrapers off the machine.
    pub metrics_listen: Option<SocketAddr>,
    /// Connections the admin (and metrics) listener serves at once.
    pub max_connections: usize,
    /// Connections one client address (IPv6: its /64) may hold on either listener; `None`:
    /// 8 on a listener off loopback, no limit on one on loopback.
    pub max_connections_per_client: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geo {
    pub database: Option<PathBuf>,
    pub default_region: Option<String>,
    /// Peers whose X-Forwarded-For or PROXY header names the client.
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub enabled: bool,
    /// `None` writes to standard output.
    pub path: Option<PathBuf>,
    pub format: AccessLogFormat,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            enabled: false,
            path: None,
            format: AccessLogFormat::Json,
        }
    }
}

/// `[snapshots]`: cache recovery points written to disk and restored on start.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshots {
    pub dir: PathBuf,
    /// Time between recovery points (one is also written on a graceful stop).
    pub interval: Duration,
    /// Recovery points kept; older ones are deleted after a new one is written (never one a
    /// kept increment builds on).
    pub keep: NonZeroUsize,
    /// Points older than this are deleted too (the newest point and its chain always stay).
    pub max_age: Option<Duration>,
    /// Increments written after a full point before the next full point (0: every point full).
    pub max_increments: u32,
    /// The increments' total size, as a share of their full point's, past which the next point
    /// is full.
    pub increment_share: f64,
    /// Bytes per second a point is written at most (`None`: unpaced).
    pub write_rate: Option<u64>,
}

/// The fields an access log line carries, in order; a template may use any as `$name`.
pub const ACCESS_LOG_FIELDS: &[&str] = &[
    "time",
    "listener",
    "client",
    "protocol",
    "method",
    "host",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "service",
    "region",
    "backend",
    "cache",
    "retries",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogFormat {
    Json,
    /// A template with `$field` placeholders.
    Template(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    pub max_connections: Option<NonZeroUsize>,
    /// Connections one client address may hold open at once (`None`: no limit).
    pub max_connections_per_client: Option<NonZeroUsize>,
    /// Largest request head (431 past it).
    pub max_header_bytes: usize,
    /// Most request header fields (431 past it).
    pub max_headers: usize,
    /// https: certificate chains and keys; the SNI names come from the certificates, the first
    /// is the default.
    pub certificates: Vec<CertPair>,
    /// https: a handshake naming no server, or one no certificate covers, is refused
    /// (`unrecognized_name`) rather than given the first certificate.
    pub strict_sni: bool,
    /// Connections from `geo.trusted_proxies` start with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How a service talks to its backends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Upstream {
    pub protocol: UpstreamProtocol,
    pub send_proxy: SendProxy,
    pub tls: UpstreamTls,
}

/// TLS to backends (`https` and `h2` upstream protocols).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// PEM roots to verify backends with; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Name sent as SNI and verified against the certificate; default: the backend's IP address
    /// (verified against the certificate's IP names; no SNI is sent for an address).
    pub server_name: Option<String>,
    pub client_cert: Option<CertPair>,
    pub verify: bool,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls {
            ca_file: None,
            server_name: None,
            client_cert: None,
            verify: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
    Tcp,
    TlsPassthrough,
}

impl Protocol {
    pub const NAMES: &'static str = "http, https, tcp, tls_passthrough";

    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s {
            "http" => Protocol::Http,
            "https" => Protocol::Https,
            "tcp" => Protocol::Tcp,
            "tls_passthrough" => Protocol::TlsPassthrough,
            _ => return None,
        })
    }

    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub name: String,
    pub location: Option<Location>,
    /// Upper-case ISO 3166-1 alpha-2 codes mapped to this region explicitly.
    pub countries: Vec<String>,
    pub backends: Vec<Backend>,
    /// Backends written as `host:port`: each address the name resolves to is one more backend.
    pub named_backends: Vec<NamedBackend>,
    /// Fraction of backends that must be up for the region to count as healthy, in (0, 1].
    pub min_healthy: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    pub address: SocketAddr,
    pub weight: NonZeroU32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub listeners: Vec<String>,
    pub hosts: Vec<HostPattern>,
    pub path_prefix: String,
    /// Region names in priority order: the first is the primary.
    pub regions: Vec<String>,
    pub region_policy: RegionPolicy,
    pub backend_policy: BackendPolicy,
    /// `Some` exactly when `backend_policy` is `consistent_hash`.
    pub hash: Option<HashPolicy>,
    pub timeouts: Timeouts,
    pub health: Option<HealthCheck>,
    pub outlier: Outlier,
    pub failover: Failover,
    pub retry: Retry,
    /// `None`: the service does not cache.
    pub cache: Option<CacheSpec>,
    /// Request body size and request rates.
    pub limits: Limits,
    /// Who may use the service, by client address and country.
    pub access: Access,
    /// `[[services.rules]]`, in file order.
    pub rules: crate::rules::Rules,
    /// `None`: responses go out as the backend sent them.
    pub compression: Option<Compression>,
    pub upstream: Upstream,
    /// What the service's listeners carry.
    pub kind: ServiceKind,
}

/// HTTP (routed by host and path), raw TCP, or TLS passed through by SNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Http,
    Tcp,
    TlsPassthrough,
}

/// `[services.limits]`: what one service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body (413 past it).
    pub max_body: u64,
    /// Requests per second for the whole service (429 past it).
    pub rate: Option<Rate>,
    /// Requests per second per client address, the one geo routing uses (429 past it).
    pub client_rate: Option<Rate>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1 << 30,
            rate: None,
            client_rate: None,
        }
    }
}

/// A token bucket: `per_second` requests on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// `[services.cache]`: the edge cache of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    /// Bytes of responses (headers and bodies) kept at most.
    pub max_size: u64,
    /// Larger responses are passed through, not stored.
    pub max_object_size: u64,
    /// Freshness for responses that carry none (opt-in: zero keeps strict RFC 9111 behaviour).
    pub default_ttl: Duration,
    /// 10% of the time since Last-Modified for statuses RFC 9111 allows (at most a day).
    pub heuristic_freshness: bool,
    pub key_query: KeyQuery,
    /// Request headers whose values are part of the key (lower case).
    pub key_headers: Vec<String>,
    /// Peers allowed to send PURGE.
    pub purge_from: Vec<IpNet>,
    /// Response header telling HIT, MISS, STALE, EXPIRED or BYPASS.
    pub status_header: String,
    /// Concurrent misses of one key wait this long for the first one's response.
    pub lock_timeout: Duration,
    /// Variants kept per URL (Vary); storing one more drops the oldest.
    pub max_variants: usize,
    /// Bytes held at most by responses being recorded into the cache (fills in progress); a
    /// fill that would pass it streams to its client without being stored.
    pub max_fill_bytes: u64,
    /// Response fields that override Cache-Control for this cache, in precedence order (RFC
    /// 9213): the configured StreamGate field, then CDN-Cache-Control. Lower case.
    pub targeted_fields: Vec<String>,
}

/// Which query parameters are part of a cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyQuery {
    /// The whole query string as sent.
    All,
    /// None: `/a?x=1` and `/a?x=2` are one object.
    Ignore,
    /// Only these parameters, sorted, so their order does not matter.
    Only(Vec<String>),
}

/// An enum spelled in the config as one of a fixed set of names.
pub trait Named: Sized + Copy {
    fn parse(s: &str) -> Option<Self>;
    /// The accepted names, comma separated, for error messages.
    fn expected() -> &'static str;
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const NAMES: &'static str = concat!($($text, ", "),+);

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// The accepted names, comma separated, for error messages.
            pub fn expected() -> &'static str {
                Self::NAMES.trim_end_matches(", ")
            }
        }

        impl Named for $name {
            fn parse(s: &str) -> Option<Self> {
                Self::parse(s)
            }
            fn expected() -> &'static str {
                Self::expected()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// How a service picks a region.
    RegionPolicy { Geo = "geo", Latency = "latency", Failover = "failover" }
);
named_enum!(
    /// How a service picks a backend inside a region.
    BackendPolicy {
        RoundRobin = "round_robin",
        LeastConn = "least_conn",
        Latency = "latency",
        Random = "random",
        ConsistentHash = "consistent_hash",
    }
);
named_enum!(
    /// The protocol spoken to backends.
    UpstreamProtocol { Http1 = "http1", H2c = "h2c", Https = "https", H2 = "h2" }
);
named_enum!(
    /// PROXY protocol header sent to backends at the start of each connection.
    SendProxy { Off = "off", V1 = "v1", V2 = "v2" }
);

// The enums come from `named_enum!`, which cannot carry `#[default]`.
#[allow(clippy::derivable_impls)]
impl Default for UpstreamProtocol {
    fn default() -> Self {
        UpstreamProtocol::Http1
    }
}

#[allow(clippy::derivable_impls)]
impl Default for SendProxy {
    fn default() -> Self {
        SendProxy::Off
    }
}

impl UpstreamProtocol {
    pub fn is_tls(self) -> bool {
        matches!(self, UpstreamProtocol::Https | UpstreamProtocol::H2)
    }

    pub fn is_h2(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2)
    }
}

named_enum!(
    /// What a service does when no region is healthy.
    AllDownPolicy { FailOpen = "fail_open", FailClosed = "fail_closed" }
);
