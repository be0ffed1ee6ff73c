//! The file as written: serde types that mirror the TOML keys one to one.
//!
//! Every value that validation may reject is `Spanned` so its error can name a line. Unknown keys
//! and values of the wrong type are refused here (`deny_unknown_fields`, the field types);
//! everything else is checked in `validate`.
//!
//! Required keys are `Option` too, and `validate` reports them missing: serde would stop at a
//! missing key, and [`crate::read`] can go on past an error only by taking out the key it names,
//! which a missing key does not have.

use serde::Deserialize;
use toml::Spanned;

mod unit_text;
pub(crate) use unit_text::{DurationText, SizeText};

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    pub admin: Option<RawAdmin>,
    pub metrics: Option<RawMetrics>,
    pub geo: Option<S<RawGeo>>,
    pub access_log: Option<RawAccessLog>,
    pub snapshots: Option<S<RawSnapshots>>,
    pub dns: Option<S<RawDns>>,
    pub fleet: Option<S<RawFleet>>,
    #[serde(default)]
    pub listeners: Vec<S<RawListener>>,
    #[serde(default)]
    pub regions: Vec<S<RawRegion>>,
    #[serde(default)]
    pub services: Vec<S<RawService>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub workers: Option<S<i64>>,
    pub shutdown_timeout: Option<S<DurationText>>,
    pub max_connections: Option<S<i64>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub connect: Option<S<DurationText>>,
    pub request_header: Option<S<DurationText>>,
    pub idle: Option<S<DurationText>>,
    pub upstream_response: Option<S<DurationText>>,
    pub upstream_idle: Option<S<DurationText>>,
    pub tunnel_idle: Option<S<DurationText>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<S<String>>,
    pub token_file: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
    pub max_connections_per_client: Option<S<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub listen: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGeo {
    pub database: Option<S<String>>,
    pub default_region: Option<S<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub enabled: Option<bool>,
    pub path: Option<S<String>>,
    pub format: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSnapshots {
    pub dir: Option<S<String>>,
    pub interval: Option<S<DurationText>>,
    pub keep: Option<S<i64>>,
    pub max_age: Option<S<DurationText>>,
    pub max_increments: Option<S<i64>>,
    pub increment_share: Option<S<f64>>,
    pub write_rate: Option<S<SizeText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub servers: Option<S<Vec<S<String>>>>,
    pub credentials: Option<S<String>>,
    pub key_file: Option<S<String>>,
    pub pop: Option<S<String>>,
    pub region: Option<S<String>>,
    pub subject_prefix: Option<S<String>>,
    pub purge_retention: Option<S<DurationText>>,
    pub heartbeat: Option<S<DurationText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    #[serde(default)]
    pub servers: Vec<S<String>>,
    pub min_ttl: Option<S<DurationText>>,
    pub max_ttl: Option<S<DurationText>>,
    pub timeout: Option<S<DurationText>>,
    pub family: Option<S<String>>,
    pub allow_local: Option<bool>,
    pub max_addresses: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: Option<S<String>>,
    pub listen: Option<S<String>>,
    pub protocol: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
    pub max_connections_per_client: Option<S<i64>>,
    pub max_header_bytes: Option<S<SizeText>>,
    pub max_headers: Option<S<i64>>,
    pub certificates: Option<S<Vec<S<RawCert>>>>,
    pub strict_sni: Option<S<bool>>,
    pub proxy_protocol: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCert {
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub protocol: Option<S<String>>,
    pub send_proxy: Option<S<String>>,
    pub tls_ca_file: Option<S<String>>,
    pub tls_server_name: Option<S<String>>,
    pub tls_client_cert: Option<S<String>>,
    pub tls_client_key: Option<S<String>>,
    pub tls_verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegion {
    pub name: Option<S<String>>,
    pub location: Option<S<RawLocation>>,
    #[serde(default)]
    pub countries: Vec<S<String>>,
    pub backends: Option<S<Vec<S<RawBackend>>>>,
    pub min_healthy: Option<S<f64>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLocation {
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub address: Option<S<String>>,
    pub weight: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub name: Option<S<String>>,
    pub listeners: Option<S<Vec<S<String>>>>,
    pub hosts: Option<S<Vec<S<String>>>>,
    pub path_prefix: Option<S<String>>,
    pub regions: Option<S<Vec<S<String>>>>,
    pub region_policy: Option<S<String>>,
    pub backend_policy: Option<S<String>>,
    pub hash: Option<S<RawHash>>,
    pub timeouts: Option<RawTimeouts>,
    pub health: Option<S<RawHealth>>,
    pub outlier: Option<RawOutlier>,
    pub failover: Option<RawFailover>,
    pub retry: Option<RawRetry>,
    pub cache: Option<S<RawCache>>,
    pub upstream: Option<S<RawUpstream>>,
    pub limits: Option<S<RawLimits>>,
    pub access: Option<S<RawAccess>>,
    pub rules: Option<S<Vec<S<RawRule>>>>,
    pub compression: Option<S<RawCompression>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCompression {
    pub encodings: Option<S<Vec<S<String>>>>,
    pub types: Option<S<Vec<S<String>>>>,
    pub min_size: Option<S<SizeText>>,
    pub gzip_level: Option<S<i64>>,
    pub brotli_level: Option<S<i64>>,
    pub zstd_level: Option<S<i64>>,
    pub max_memory: Option<S<SizeText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub name: Option<S<String>>,
    #[serde(rename = "match")]
    pub when: Option<S<RawMatch>>,
    pub deny: Option<bool>,
    pub respond: Option<S<RawRespond>>,
    pub redirect: Option<S<RawRedirect>>,
    pub rewrite: Option<S<RawRewrite>>,
    pub request_headers: Option<S<RawHeaderEdits>>,
    pub response_headers: Option<S<RawHeaderEdits>>,
    pub last: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub scheme: Option<S<String>>,
    #[serde(default)]
    pub hosts: Vec<S<String>>,
    pub path: Option<S<String>>,
    pub path_prefix: Option<S<String>>,
    pub path_regex: Option<S<String>>,
    #[serde(default)]
    pub methods: Vec<S<String>>,
    pub headers: Option<S<toml::Table>>,
    #[serde(default)]
    pub clients: Vec<S<String>>,
    #[serde(default)]
    pub countries: Vec<S<String>>,
    #[serde(default)]
    pub regions: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRespond {
    pub status: Option<S<i64>>,
    pub body: Option<S<String>>,
    pub content_type: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirect {
    pub status: Option<S<i64>>,
    pub scheme: Option<S<String>>,
    pub host: Option<S<String>>,
    pub port: Option<S<i64>>,
    pub path: Option<S<String>>,
    pub keep_query: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRewrite {
    pub strip_prefix: Option<S<String>>,
    pub add_prefix: Option<S<String>>,
    pub path: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderEdits {
    pub set: Option<S<toml::Table>>,
    pub add: Option<S<toml::Table>>,
    #[serde(default)]
    pub remove: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHash {
    pub key: Option<S<String>>,
    pub cookie: Option<S<String>>,
    pub cookie_ttl: Option<S<DurationText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccess {
    #[serde(default)]
    pub allow: Vec<S<String>>,
    #[serde(default)]
    pub deny: Vec<S<String>>,
    #[serde(default)]
    pub allow_countries: Vec<S<String>>,
    #[serde(default)]
    pub deny_countries: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_body: Option<S<SizeText>>,
    pub rate: Option<S<i64>>,
    pub burst: Option<S<i64>>,
    pub client_rate: Option<S<i64>>,
    pub client_burst: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    pub max_size: Option<S<SizeText>>,
    pub max_object_size: Option<S<SizeText>>,
    pub default_ttl: Option<S<DurationText>>,
    pub heuristic_freshness: Option<bool>,
    pub key_query: Option<S<RawKeyQuery>>,
    #[serde(default)]
    pub key_headers: Vec<S<String>>,
    #[serde(default)]
    pub purge_from: Vec<S<String>>,
    pub status_header: Option<S<String>>,
    pub lock_timeout: Option<S<DurationText>>,
    pub max_variants: Option<S<i64>>,
    pub max_fill_bytes: Option<S<SizeText>>,
    pub targeted_field: Option<S<String>>,
    pub cdn_cache_control: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawKeyQuery {
    Mode(String),
    Params(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub kind: Option<S<String>>,
    pub path: Option<S<String>>,
    pub method: Option<S<String>>,
    pub host: Option<S<String>>,
    pub expect_status: Option<S<String>>,
    pub body_contains: Option<S<String>>,
    pub interval: Option<S<DurationText>>,
    pub timeout: Option<S<DurationText>>,
    pub rise: Option<S<i64>>,
    pub fall: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    pub consecutive_failures: Option<S<i64>>,
    pub consecutive_connect_failures: Option<S<i64>>,
    pub base_ejection: Option<S<DurationText>>,
    pub max_ejection: Option<S<DurationText>>,
    pub max_ejection_percent: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFailover {
    pub hold_down: Option<S<DurationText>>,
    pub ramp: Option<S<DurationText>>,
    pub when_all_down: Option<S<String>>,
    pub latency_tolerance: Option<S<DurationText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub attempts: Option<S<i64>>,
    pub budget_percent: Option<S<f64>>,
    pub min_per_second: Option<S<i64>>,
}
