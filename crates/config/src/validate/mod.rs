//! Raw file -> typed model. Collects every error instead of stopping at the first.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::error::ConfigError;
use crate::model::*;
use crate::raw::*;
use crate::units::parse_duration;

mod cache;
mod limits;
use cache::cache;
use limits::limits;

pub(crate) struct Ctx<'a> {
    file: String,
    text: &'a str,
    /// Directory relative paths in the file are resolved against.
    base_dir: PathBuf,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(path: &Path, text: &'a str) -> Self {
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ctx {
            file: path.display().to_string(),
            text,
            base_dir,
            errors: Vec::new(),
        }
    }

    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub(crate) fn err(&mut self, span: Range<usize>, path: impl Display, message: impl Display) {
        let line = self.line_of(span.start);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            path: path.to_string(),
            message: message.to_string(),
        });
    }

    /// One of a named enum's values; an unknown name is an error naming the accepted ones, and
    /// `fallback` stands in so that checking goes on.
    fn named<E: Named>(
        &mut self,
        v: Option<&S<String>>,
        path: String,
        what: &str,
        fallback: E,
    ) -> E {
        let Some(v) = v else { return fallback };
        E::parse(v.get_ref()).unwrap_or_else(|| {
            self.err(
                v.span(),
                path,
                format!(
                    "unknown {what} \"{}\"; expected one of {}",
                    v.get_ref(),
                    E::expected()
                ),
            );
            fallback
        })
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn duration(
        &mut self,
        value: &Option<S<String>>,
        path: impl Display,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.err(v.span(), path, e);
                    default
                }
            },
        }
    }

    fn int_in(&mut self, value: &S<i64>, path: impl Display, min: i64, max: i64) -> Option<i64> {
        let n = *value.get_ref();
        if n < min || n > max {
            self.err(
                value.span(),
                path,
                format!("{n} is out of range; expected {min} to {max}"),
            );
            None
        } else {
            Some(n)
        }
    }

    fn existing_file(&mut self, value: &S<String>, path: impl Display, what: &str) -> PathBuf {
        let resolved = self.resolve(value.get_ref());
        if let Err(e) = std::fs::metadata(&resolved) {
            self.err(
                value.span(),
                path,
                format!("cannot read {what} {}: {e}", resolved.display()),
            );
        }
        resolved
    }
}

pub(crate) fn validate(raw: RawConfig, ctx: &mut Ctx<'_>) -> Config {
    let runtime = runtime(&raw.runtime, ctx);
    let timeouts = timeouts(&raw.timeouts, "timeouts", Timeouts::default(), ctx);
    let mut admin = admin(raw.admin.as_ref(), ctx);
    admin.metrics_listen = raw
        .metrics
        .as_ref()
        .and_then(|m| m.listen.as_ref())
        .and_then(|l| socket_addr(l, "metrics.listen", ctx));
    let access_log = access_log(raw.access_log.as_ref(), ctx);
    let snapshots = raw.snapshots.as_ref().map(|s| snapshots(s, ctx));
    let listeners = listeners(&raw.listeners, &admin, ctx);
    let regions = regions(&raw.regions, ctx);
    let geo = raw.geo.as_ref().map(|g| geo(g, &regions, ctx));
    let services = services(
        &raw.services,
        &listeners,
        &regions,
        geo.is_some(),
        &timeouts,
        ctx,
    );
    Config {
        source: Source {
            path: PathBuf::new(),
            digest: 0,
        },
        runtime,
        timeouts,
        admin,
        geo,
        access_log,
        snapshots,
        listeners,
        regions,
        services,
    }
}

fn runtime(raw: &RawRuntime, ctx: &mut Ctx<'_>) -> Runtime {
    let workers = raw.workers.as_ref().and_then(|w| {
        ctx.int_in(w, "runtime.workers", 1, 1024)
            .and_then(|n| NonZeroUsize::new(n as usize))
    });
    let shutdown_timeout = ctx.duration(
        &raw.shutdown_timeout,
        "runtime.shutdown_timeout",
        Duration::from_secs(30),
    );
    Runtime {
        workers,
        shutdown_timeout,
    }
}

fn timeouts(raw: &RawTimeouts, prefix: &str, base: Timeouts, ctx: &mut Ctx<'_>) -> Timeouts {
    let mut t = base;
    let fields: [(&Option<S<String>>, &str, &mut Duration); 6] = [
        (&raw.connect, "connect", &mut t.connect),
        (&raw.request_header, "request_header", &mut t.request_header),
        (&raw.idle, "idle", &mut t.idle),
        (
            &raw.upstream_response,
            "upstream_response",
            &mut t.upstream_response,
        ),
        (&raw.upstream_idle, "upstream_idle", &mut t.upstream_idle),
        (&raw.tunnel_idle, "tunnel_idle", &mut t.tunnel_idle),
    ];
    for (value, key, slot) in fields {
        let path = format!("{prefix}.{key}");
        let d = ctx.duration(value, &path, *slot);
        if let Some(v) = value
            && d.is_zero()
        {
            ctx.err(v.span(), &path, "must be longer than zero");
            continue;
        }
        *slot = d;
    }
    t
}

fn admin(raw: Option<&RawAdmin>, ctx: &mut Ctx<'_>) -> Admin {
    let default_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9901));
    let Some(raw) = raw else {
        return Admin {
            listen: default_listen,
            token_file: None,
            metrics_listen: None,
            max_connections: ADMIN_MAX_CONNECTIONS,
        };
    };
    let listen = raw
        .listen
        .as_ref()
        .and_then(|l| socket_addr(l, "admin.listen", ctx))
        .unwrap_or(default_listen);
    let token_file = raw
        .token_file
        .as_ref()
        .map(|t| ctx.existing_file(t, "admin.token_file", "token file"));
    if !listen.ip().is_loopback()
        && token_file.is_none()
        && let Some(l) = &raw.listen
    {
        ctx.err(
            l.span(),
            "admin.listen",
            format!(
                "{listen} is reachable off this machine; set admin.token_file to a file holding a bearer token"
            ),
        );
    }
    let max_connections = raw
        .max_connections
        .as_ref()
        .and_then(|v| ctx.int_in(v, "admin.max_connections", 1, 100_000))
        .map_or(ADMIN_MAX_CONNECTIONS, |n| n as usize);
    Admin {
        listen,
        token_file,
        metrics_listen: None,
        max_connections,
    }
}

/// Admin API and metrics connections served at once by default.
const ADMIN_MAX_CONNECTIONS: usize = 64;

fn access_log(raw: Option<&RawAccessLog>, ctx: &mut Ctx<'_>) -> AccessLog {
    let Some(raw) = raw else {
        return AccessLog::default();
    };
    let path = raw.path.as_ref().map(|p| ctx.resolve(p.get_ref()));
    let format = match &raw.format {
        None => AccessLogFormat::Json,
        Some(f) if f.get_ref() == "json" => AccessLogFormat::Json,
        Some(f) if f.get_ref().contains('$') => {
            for name in template_fields(f.get_ref()) {
                if !ACCESS_LOG_FIELDS.contains(&name) {
                    ctx.err(
                        f.span(),
                        "access_log.format",
                        format!(
                            "unknown field ${name}; expected one of {}",
                            ACCESS_LOG_FIELDS.join(", ")
                        ),
                    );
                }
            }
            AccessLogFormat::Template(f.get_ref().clone())
        }
        Some(f) => {
            ctx.err(
                f.span(),
                "access_log.format",
                format!(
                    "\"{}\" is neither \"json\" nor a template with $fields such as \"$client $method $path $status\"",
                    f.get_ref()
                ),
            );
            AccessLogFormat::Json
        }
    };
    AccessLog {
        enabled: raw.enabled.unwrap_or(true),
        path,
        format,
    }
}

fn snapshots(raw: &RawSnapshots, ctx: &mut Ctx<'_>) -> Snapshots {
    let dir = ctx.resolve(raw.dir.get_ref());
    if raw.dir.get_ref().is_empty() {
        ctx.err(raw.dir.span(), "snapshots.dir", "must name a directory");
    } else if let Ok(m) = std::fs::metadata(&dir)
        && !m.is_dir()
    {
        ctx.err(
            raw.dir.span(),
            "snapshots.dir",
            format!("{} exists and is not a directory", dir.display()),
        );
    }
    let interval = ctx.duration(
        &raw.interval,
        "snapshots.interval",
        Duration::from_secs(300),
    );
    if let Some(v) = &raw.interval
        && interval < Duration::from_secs(1)
    {
        ctx.err(v.span(), "snapshots.interval", "must be at least 1s");
    }
    let keep = raw
        .keep
        .as_ref()
        .and_then(|k| ctx.int_in(k, "snapshots.keep", 1, 10_000))
        .and_then(|n| NonZeroUsize::new(n as usize))
        .unwrap_or(NonZeroUsize::MIN.saturating_add(11));
    Snapshots {
        dir,
        interval,
        keep,
    }
}

/// The `$name` placeholders of a template (`$$` is a literal dollar).
fn template_fields(t: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            if b.get(i + 1) == Some(&b'$') {
                i += 2;
                continue;
            }
            let start = i + 1;
            let mut end = start;
            while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                end += 1;
            }
            out.push(&t[start..end]);
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

fn socket_addr(value: &S<String>, path: impl Display, ctx: &mut Ctx<'_>) -> Option<SocketAddr> {
    match value.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            ctx.err(
                value.span(),
                path,
                format!(
                    "\"{}\" is not an address; expected IP:port such as \"127.0.0.1:8080\" or \"[::1]:8080\"",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

fn name(
    value: &S<String>,
    path: impl Display,
    seen: &mut HashSet<String>,
    what: &str,
    ctx: &mut Ctx<'_>,
) {
    let n = value.get_ref();
    let ok_chars = n
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if n.is_empty() || !ok_chars {
        ctx.err(
            value.span(),
            path,
            format!("invalid {what} name \"{n}\"; use letters, digits, '-', '_' and '.'"),
        );
    } else if !seen.insert(n.clone()) {
        ctx.err(value.span(), path, format!("duplicate {what} name \"{n}\""));
    }
}

fn listeners(raw: &[S<RawListener>], admin: &Admin, ctx: &mut Ctx<'_>) -> Vec<Listener> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
    addrs.insert(admin.listen, "admin.listen".into());
    for (i, l) in raw.iter().enumerate() {
        let l = l.get_ref();
        let p = format!("listeners[{i}]");
        name(&l.name, format!("{p}.name"), &mut names, "listener", ctx);
        let listen = socket_addr(&l.listen, format!("{p}.listen"), ctx);
        if let Some(a) = listen
            && a.port() != 0
            && let Some(other) = addrs.insert(a, format!("{p}.listen"))
        {
            ctx.err(
                l.listen.span(),
                format!("{p}.listen"),
                format!("{a} is already used by {other}"),
            );
        }
        let protocol = match &l.protocol {
            None => Protocol::Http,
            Some(v) => match Protocol::parse(v.get_ref()) {
                Some(p) => p,
                None => {
                    ctx.err(
                        v.span(),
                        format!("{p}.protocol"),
                        format!(
                            "unknown protocol \"{}\"; expected one of {}",
                            v.get_ref(),
                            Protocol::NAMES
                        ),
                    );
                    Protocol::Http
                }
            },
        };
        let max_connections = l.max_connections.as_ref().and_then(|m| {
            ctx.int_in(m, format!("{p}.max_connections"), 1, 10_000_000)
                .and_then(|n| NonZeroUsize::new(n as usize))
        });
        let max_connections_per_client = l.max_connections_per_client.as_ref().and_then(|m| {
            ctx.int_in(m, format!("{p}.max_connections_per_client"), 1, 10_000_000)
                .and_then(|n| NonZeroUsize::new(n as usize))
        });
        let max_header_bytes = match &l.max_header_bytes {
            None => 64 * 1024,
            Some(v) => match crate::units::parse_size(v.get_ref()) {
                Ok(n) if (8 * 1024..=1 << 20).contains(&n) => n as usize,
                Ok(_) => {
                    ctx.err(
                        v.span(),
                        format!("{p}.max_header_bytes"),
                        "must be 8KiB to 1MiB",
                    );
                    64 * 1024
                }
                Err(e) => {
                    ctx.err(v.span(), format!("{p}.max_header_bytes"), e);
                    64 * 1024
                }
            },
        };
        let max_headers = l
            .max_headers
            .as_ref()
            .and_then(|m| ctx.int_in(m, format!("{p}.max_headers"), 8, 1024))
            .map_or(128, |n| n as usize);
        let mut certificates = Vec::new();
        match (&l.certificates, protocol) {
            (Some(list), Protocol::Https) => {
                if list.get_ref().is_empty() {
                    ctx.err(list.span(), format!("{p}.certificates"), "an https listener needs at least one certificate");
                }
                for (j, c) in list.get_ref().iter().enumerate() {
                    let c = c.get_ref();
                    let cert = ctx.existing_file(&c.cert, format!("{p}.certificates[{j}].cert"), "certificate");
                    let key = ctx.existing_file(&c.key, format!("{p}.certificates[{j}].key"), "private key");
                    certificates.push(CertPair { cert, key });
                }
            }
            (Some(list), _) => ctx.err(list.span(), format!("{p}.certificates"), "only https listeners take certificates"),
            (None, Protocol::Https) => ctx.err(
                l.name.span(),
                format!("{p}.certificates"),
                "an https listener needs certificates = [{ cert = \"site.pem\", key = \"site.key\" }]",
            ),
            (None, _) => {}
        }
        out.push(Listener {
            name: l.name.get_ref().clone(),
            listen: listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            protocol,
            max_connections,
            max_connections_per_client,
            max_header_bytes,
            max_headers,
            certificates,
            proxy_protocol: l.proxy_protocol.unwrap_or(false),
        });
    }
    out
}

fn regions(raw: &[S<RawRegion>], ctx: &mut Ctx<'_>) -> Vec<Region> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let span = r.span();
        let r = r.get_ref();
        let p = format!("regions[{i}]");
        name(&r.name, format!("{p}.name"), &mut names, "region", ctx);
        let location = r.location.as_ref().and_then(|loc| {
            let l = *loc.get_ref();
            if !(-90.0..=90.0).contains(&l.lat) || !(-180.0..=180.0).contains(&l.lon) {
                ctx.err(
                    loc.span(),
                    format!("{p}.location"),
                    format!(
                        "lat {} / lon {} out of range; expected lat in -90..90, lon in -180..180",
                        l.lat, l.lon
                    ),
                );
                None
            } else {
                Some(Location {
                    lat: l.lat,
                    lon: l.lon,
                })
            }
        });
        let mut countries = Vec::new();
        for (j, c) in r.countries.iter().enumerate() {
            let code = c.get_ref().trim().to_ascii_uppercase();
            if code.len() == 2 && code.chars().all(|ch| ch.is_ascii_alphabetic()) {
                countries.push(code);
            } else {
                ctx.err(
                    c.span(),
                    format!("{p}.countries[{j}]"),
                    format!(
                        "\"{}\" is not a country code; expected ISO 3166-1 alpha-2 such as \"US\"",
                        c.get_ref()
                    ),
                );
            }
        }
        let mut backends = Vec::new();
        let mut seen = HashSet::new();
        match &r.backends {
            Some(list) if !list.get_ref().is_empty() => {
                for (j, b) in list.get_ref().iter().enumerate() {
                    let b = b.get_ref();
                    let bp = format!("{p}.backends[{j}]");
                    let Some(address) = socket_addr(&b.address, format!("{bp}.address"), ctx)
                    else {
                        continue;
                    };
                    if !seen.insert(address) {
                        ctx.err(
                            b.address.span(),
                            format!("{bp}.address"),
                            format!(
                                "duplicate backend {address} in region \"{}\"",
                                r.name.get_ref()
                            ),
                        );
                        continue;
                    }
                    let weight = match &b.weight {
                        None => NonZeroU32::MIN,
                        Some(w) => ctx
                            .int_in(w, format!("{bp}.weight"), 1, 10_000)
                            .and_then(|n| NonZeroU32::new(n as u32))
                            .unwrap_or(NonZeroU32::MIN),
                    };
                    backends.push(Backend { address, weight });
                }
            }
            other => {
                let at = other.as_ref().map(|b| b.span()).unwrap_or(span);
                ctx.err(
                    at,
                    format!("{p}.backends"),
                    format!(
                        "region \"{}\" has no backends; add backends = [{{ address = \"127.0.0.1:9001\" }}]",
                        r.name.get_ref()
                    ),
                );
            }
        }
        let min_healthy = match &r.min_healthy {
            None => 0.0,
            Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                ctx.err(
                    v.span(),
                    format!("{p}.min_healthy"),
                    format!("{} is not a fraction; expected 0.0 to 1.0", v.get_ref()),
                );
                0.0
            }
        };
        out.push(Region {
            name: r.name.get_ref().clone(),
            location,
            countries,
            backends,
            min_healthy,
        });
    }
    out
}

fn geo(raw: &S<RawGeo>, regions: &[Region], ctx: &mut Ctx<'_>) -> Geo {
    let g = raw.get_ref();
    let database = ctx.existing_file(&g.database, "geo.database", "geo database");
    let default_region = g.default_region.as_ref().map(|d| {
        if !regions.iter().any(|r| &r.name == d.get_ref()) {
            ctx.err(
                d.span(),
                "geo.default_region",
                format!(
                    "no region named \"{}\"; defined regions: {}",
                    d.get_ref(),
                    region_names(regions)
                ),
            );
        }
        d.get_ref().clone()
    });
    let mut trusted_proxies = Vec::new();
    for (i, t) in g.trusted_proxies.iter().enumerate() {
        let s = t.get_ref().trim();
        let net = s
            .parse::<IpNet>()
            .ok()
            .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from));
        match net {
            Some(n) => trusted_proxies.push(n.trunc()),
            None => ctx.err(
                t.span(),
                format!("geo.trusted_proxies[{i}]"),
                format!("\"{s}\" is not an address or CIDR; expected e.g. \"10.0.0.0/8\" or \"127.0.0.1\""),
            ),
        }
    }
    Geo {
        database,
        default_region,
        trusted_proxies,
    }
}

fn region_names(regions: &[Region]) -> String {
    if regions.is_empty() {
        return "(none)".into();
    }
    regions
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn services(
    raw: &[S<RawService>],
    listeners: &[Listener],
    regions: &[Region],
    has_geo: bool,
    default_timeouts: &Timeouts,
    ctx: &mut Ctx<'_>,
) -> Vec<Service> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    // (listener, host pattern, path prefix) -> the service that claimed it first.
    let mut routes: HashMap<(String, HostPattern, String), String> = HashMap::new();
    for (i, s) in raw.iter().enumerate() {
        let s = s.get_ref();
        let p = format!("services[{i}]");
        name(&s.name, format!("{p}.name"), &mut names, "service", ctx);

        let mut svc_listeners = Vec::new();
        if s.listeners.get_ref().is_empty() {
            ctx.err(
                s.listeners.span(),
                format!("{p}.listeners"),
                "no listeners; name at least one [[listeners]] entry",
            );
        }
        for (j, l) in s.listeners.get_ref().iter().enumerate() {
            if listeners.iter().any(|x| &x.name == l.get_ref()) {
                svc_listeners.push(l.get_ref().clone());
            } else {
                let defined: Vec<_> = listeners.iter().map(|x| x.name.as_str()).collect();
                ctx.err(
                    l.span(),
                    format!("{p}.listeners[{j}]"),
                    format!(
                        "no listener named \"{}\"; defined listeners: {}",
                        l.get_ref(),
                        if defined.is_empty() {
                            "(none)".to_string()
                        } else {
                            defined.join(", ")
                        }
                    ),
                );
            }
        }

        let hosts = match &s.hosts {
            None => vec![HostPattern::Any],
            Some(list) => {
                if list.get_ref().is_empty() {
                    ctx.err(
                        list.span(),
                        format!("{p}.hosts"),
                        "empty; use [\"*\"] to match any host",
                    );
                }
                let mut hosts = Vec::new();
                for (j, h) in list.get_ref().iter().enumerate() {
                    match HostPattern::parse(h.get_ref()) {
                        Ok(pat) => hosts.push((pat, h.span())),
                        Err(e) => ctx.err(h.span(), format!("{p}.hosts[{j}]"), e),
                    }
                }
                hosts.into_iter().map(|(pat, _)| pat).collect()
            }
        };

        let path_prefix = match &s.path_prefix {
            None => "/".to_string(),
            Some(v) if v.get_ref().starts_with('/') => v.get_ref().clone(),
            Some(v) => {
                ctx.err(
                    v.span(),
                    format!("{p}.path_prefix"),
                    format!("\"{}\" must start with '/'", v.get_ref()),
                );
                "/".to_string()
            }
        };

        for l in &svc_listeners {
            for h in &hosts {
                let key = (l.clone(), h.clone(), path_prefix.clone());
                if let Some(other) = routes.get(&key) {
                    let at = s
                        .path_prefix
                        .as_ref()
                        .map(|v| v.span())
                        .unwrap_or(s.name.span());
                    ctx.err(
                        at,
                        format!("{p}.path_prefix"),
                        format!(
                            "listener \"{l}\", host \"{h}\", path \"{path_prefix}\" is already routed to service \"{other}\""
                        ),
                    );
                } else {
                    routes.insert(key, s.name.get_ref().clone());
                }
            }
        }

        let mut svc_regions = Vec::new();
        if s.regions.get_ref().is_empty() {
            ctx.err(
                s.regions.span(),
                format!("{p}.regions"),
                format!(
                    "no regions; name at least one of: {}",
                    region_names(regions)
                ),
            );
        }
        for (j, r) in s.regions.get_ref().iter().enumerate() {
            if !regions.iter().any(|x| &x.name == r.get_ref()) {
                ctx.err(
                    r.span(),
                    format!("{p}.regions[{j}]"),
                    format!(
                        "no region named \"{}\"; defined regions: {}",
                        r.get_ref(),
                        region_names(regions)
                    ),
                );
            } else if svc_regions.contains(r.get_ref()) {
                ctx.err(
                    r.span(),
                    format!("{p}.regions[{j}]"),
                    format!("region \"{}\" is listed twice", r.get_ref()),
                );
            } else {
                svc_regions.push(r.get_ref().clone());
            }
        }

        let region_policy = match &s.region_policy {
            None => RegionPolicy::Failover,
            Some(v) => match RegionPolicy::parse(v.get_ref()) {
                Some(RegionPolicy::Geo) if !has_geo => {
                    ctx.err(
                        v.span(),
                        format!("{p}.region_policy"),
                        "policy \"geo\" needs a [geo] table with a database",
                    );
                    RegionPolicy::Geo
                }
                Some(policy) => policy,
                None => {
                    ctx.err(
                        v.span(),
                        format!("{p}.region_policy"),
                        format!(
                            "unknown policy \"{}\"; expected one of {}",
                            v.get_ref(),
                            RegionPolicy::expected()
                        ),
                    );
                    RegionPolicy::Failover
                }
            },
        };
        let backend_policy = ctx.named(
            s.backend_policy.as_ref(),
            format!("{p}.backend_policy"),
            "policy",
            BackendPolicy::RoundRobin,
        );

        let timeouts = match &s.timeouts {
            None => *default_timeouts,
            Some(t) => timeouts(t, &format!("{p}.timeouts"), *default_timeouts, ctx),
        };
        let health = s.health.as_ref().map(|h| health(h, &p, ctx));
        let outlier = outlier(s.outlier.as_ref(), &p, ctx);
        let failover = failover(s.failover.as_ref(), &p, ctx);
        let retry = retry(s.retry.as_ref(), &p, ctx);
        let cache = s.cache.as_ref().map(|c| cache(c, &p, ctx));
        let limits = s
            .limits
            .as_ref()
            .map_or_else(Limits::default, |l| limits(l, &p, ctx));
        let upstream = s
            .upstream
            .as_ref()
            .map(|u| upstream(u, &p, ctx))
            .unwrap_or_default();

        let kinds: HashSet<Protocol> = svc_listeners
            .iter()
            .filter_map(|n| listeners.iter().find(|l| &l.name == n))
            .map(|l| {
                if l.protocol == Protocol::Https {
                    Protocol::Http
                } else {
                    l.protocol
                }
            })
            .collect();
        let mut health = health;
        let kind = match kinds.iter().next() {
            _ if kinds.len() > 1 => {
                ctx.err(
                    s.listeners.span(),
                    format!("{p}.listeners"),
                    "mixes HTTP, TCP and TLS passthrough listeners; a service serves one kind",
                );
                ServiceKind::Http
            }
            Some(Protocol::Tcp) => ServiceKind::Tcp,
            Some(Protocol::TlsPassthrough) => ServiceKind::TlsPassthrough,
            _ => ServiceKind::Http,
        };
        if kind != ServiceKind::Http {
            let what = if kind == ServiceKind::Tcp {
                "a tcp service"
            } else {
                "a tls_passthrough service"
            };
            if let Some(v) = &s.path_prefix {
                ctx.err(
                    v.span(),
                    format!("{p}.path_prefix"),
                    format!("{what} has no paths"),
                );
            }
            if let Some(c) = &s.cache {
                ctx.err(
                    c.span(),
                    format!("{p}.cache"),
                    format!("{what} cannot cache"),
                );
            }
            if let Some(l) = &s.limits {
                ctx.err(
                    l.span(),
                    format!("{p}.limits"),
                    format!("{what} has no requests to limit; use the listener's max_connections"),
                );
            }
            if upstream.protocol != UpstreamProtocol::Http1
                && let Some(u) = &s.upstream
            {
                ctx.err(
                    u.span(),
                    format!("{p}.upstream.protocol"),
                    format!("{what} copies bytes; the upstream protocol does not apply"),
                );
            }
        }
        if kind == ServiceKind::Http
            && upstream.send_proxy != SendProxy::Off
            && let Some(v) = s
                .upstream
                .as_ref()
                .and_then(|u| u.get_ref().send_proxy.as_ref())
        {
            ctx.err(
                v.span(),
                format!("{p}.upstream.send_proxy"),
                "only tcp and tls_passthrough services send PROXY headers; HTTP services name the \
                 client in X-Forwarded-For and Forwarded",
            );
        }
        // TCP services are probed by connecting unless told otherwise.
        if kind != ServiceKind::Http
            && let (Some(h), Some(raw)) = (health.as_mut(), &s.health)
            && raw.get_ref().kind.is_none()
        {
            h.kind = HealthKind::Tcp;
        }
        match (kind, &s.hosts) {
            (ServiceKind::Tcp, Some(h)) if hosts != vec![HostPattern::Any] => {
                ctx.err(
                    h.span(),
                    format!("{p}.hosts"),
                    "a tcp service has no hosts; one service per tcp listener",
                );
            }
            (ServiceKind::TlsPassthrough, None) => ctx.err(
                s.name.span(),
                format!("{p}.hosts"),
                "a tls_passthrough service needs hosts: the SNI names it takes",
            ),
            _ => {}
        }

        out.push(Service {
            name: s.name.get_ref().clone(),
            listeners: svc_listeners,
            hosts,
            path_prefix,
            regions: svc_regions,
            region_policy,
            backend_policy,
            timeouts,
            health,
            outlier,
            failover,
            retry,
            cache,
            limits,
            upstream,
            kind,
        });
    }
    // A plain TCP listener carries no name to route by: one service each.
    for l in listeners.iter().filter(|l| l.protocol == Protocol::Tcp) {
        let users: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, s)| s.listeners.contains(&l.name))
            .map(|(i, _)| i)
            .collect();
        if users.len() > 1 {
            let span = raw[users[1]].get_ref().listeners.span();
            ctx.err(
                span,
                format!("services[{}].listeners", users[1]),
                format!(
                    "tcp listener \"{}\" already serves service \"{}\"",
                    l.name, out[users[0]].name
                ),
            );
        }
    }
    out
}

fn upstream(raw: &S<RawUpstream>, svc: &str, ctx: &mut Ctx<'_>) -> Upstream {
    let u = raw.get_ref();
    let p = format!("{svc}.upstream");
    let protocol = ctx.named(
        u.protocol.as_ref(),
        format!("{p}.protocol"),
        "protocol",
        UpstreamProtocol::Http1,
    );
    let send_proxy = ctx.named(
        u.send_proxy.as_ref(),
        format!("{p}.send_proxy"),
        "PROXY version",
        SendProxy::Off,
    );
    let ca_file = u
        .tls_ca_file
        .as_ref()
        .map(|f| ctx.existing_file(f, format!("{p}.tls_ca_file"), "CA file"));
    let client_cert = match (&u.tls_client_cert, &u.tls_client_key) {
        (Some(c), Some(k)) => Some(CertPair {
            cert: ctx.existing_file(c, format!("{p}.tls_client_cert"), "certificate"),
            key: ctx.existing_file(k, format!("{p}.tls_client_key"), "private key"),
        }),
        (Some(c), None) => {
            ctx.err(
                c.span(),
                format!("{p}.tls_client_key"),
                "tls_client_cert needs tls_client_key",
            );
            None
        }
        (None, Some(k)) => {
            ctx.err(
                k.span(),
                format!("{p}.tls_client_cert"),
                "tls_client_key needs tls_client_cert",
            );
            None
        }
        (None, None) => None,
    };
    let tls_keys = [
        &u.tls_ca_file,
        &u.tls_server_name,
        &u.tls_client_cert,
        &u.tls_client_key,
    ];
    if !protocol.is_tls()
        && let Some(v) = tls_keys.into_iter().flatten().next()
    {
        ctx.err(
            v.span(),
            format!("{p}.protocol"),
            "TLS settings need protocol = \"https\" or \"h2\"",
        );
    }
    Upstream {
        protocol,
        send_proxy,
        tls: UpstreamTls {
            ca_file,
            server_name: u.tls_server_name.as_ref().map(|s| s.get_ref().clone()),
            client_cert,
            verify: u.tls_verify.unwrap_or(true),
        },
    }
}

fn health(raw: &S<RawHealth>, svc: &str, ctx: &mut Ctx<'_>) -> HealthCheck {
    let h = raw.get_ref();
    let p = format!("{svc}.health");
    let kind_name = h
        .kind
        .as_ref()
        .map(|k| k.get_ref().as_str())
        .unwrap_or("http");
    let kind = match kind_name {
        "tcp" => {
            for (key, v) in [
                ("path", &h.path),
                ("method", &h.method),
                ("host", &h.host),
                ("expect_status", &h.expect_status),
                ("body_contains", &h.body_contains),
            ] {
                if let Some(v) = v {
                    ctx.err(
                        v.span(),
                        format!("{p}.{key}"),
                        "only http health checks take this key",
                    );
                }
            }
            HealthKind::Tcp
        }
        "http" => {
            let path = match &h.path {
                None => "/".to_string(),
                Some(v) if v.get_ref().starts_with('/') => v.get_ref().clone(),
                Some(v) => {
                    ctx.err(
                        v.span(),
                        format!("{p}.path"),
                        format!("\"{}\" must start with '/'", v.get_ref()),
                    );
                    "/".to_string()
                }
            };
            let method = match &h.method {
                None => "GET".to_string(),
                Some(v) => {
                    let m = v.get_ref().to_ascii_uppercase();
                    if !["GET", "HEAD", "OPTIONS"].contains(&m.as_str()) {
                        ctx.err(
                            v.span(),
                            format!("{p}.method"),
                            format!("method \"{}\" not allowed for probes; expected one of GET, HEAD, OPTIONS", v.get_ref()),
                        );
                    }
                    m
                }
            };
            let expect_status = match &h.expect_status {
                None => (200, 399),
                Some(v) => parse_status_range(v.get_ref()).unwrap_or_else(|| {
                    ctx.err(
                        v.span(),
                        format!("{p}.expect_status"),
                        format!("\"{}\" is not a status range; expected e.g. \"200\", \"200-399\" or \"2xx\"", v.get_ref()),
                    );
                    (200, 399)
                }),
            };
            HealthKind::Http(HttpProbe {
                method,
                path,
                host: h.host.as_ref().map(|v| v.get_ref().clone()),
                expect_status,
                body_contains: h.body_contains.as_ref().map(|v| v.get_ref().clone()),
            })
        }
        other => {
            let span = h.kind.as_ref().map(|k| k.span()).unwrap_or(raw.span());
            ctx.err(
                span,
                format!("{p}.kind"),
                format!("unknown kind \"{other}\"; expected one of http, tcp"),
            );
            HealthKind::Tcp
        }
    };
    let interval = ctx.duration(&h.interval, format!("{p}.interval"), Duration::from_secs(2));
    let timeout = ctx.duration(&h.timeout, format!("{p}.timeout"), Duration::from_secs(1));
    for (key, v, d) in [
        ("interval", &h.interval, interval),
        ("timeout", &h.timeout, timeout),
    ] {
        if let Some(v) = v
            && d < Duration::from_millis(10)
        {
            ctx.err(v.span(), format!("{p}.{key}"), "must be at least 10ms");
        }
    }
    let count = |v: &Option<S<i64>>, key: &str, default: u32, ctx: &mut Ctx<'_>| -> NonZeroU32 {
        v.as_ref()
            .and_then(|v| ctx.int_in(v, format!("{p}.{key}"), 1, 100))
            .and_then(|n| NonZeroU32::new(n as u32))
            .or(NonZeroU32::new(default))
            .unwrap_or(NonZeroU32::MIN)
    };
    let rise = count(&h.rise, "rise", 2, ctx);
    let fall = count(&h.fall, "fall", 3, ctx);
    HealthCheck {
        kind,
        interval,
        timeout,
        rise,
        fall,
    }
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let s = s.trim();
    let (lo, hi) = if let Some(class) = s.strip_suffix("xx") {
        let c: u16 = class.parse().ok()?;
        (c * 100, c * 100 + 99)
    } else if let Some((a, b)) = s.split_once('-') {
        (a.trim().parse().ok()?, b.trim().parse().ok()?)
    } else {
        let n = s.parse().ok()?;
        (n, n)
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

fn outlier(raw: Option<&RawOutlier>, svc: &str, ctx: &mut Ctx<'_>) -> Outlier {
    let d = Outlier::default();
    let Some(o) = raw else { return d };
    let p = format!("{svc}.outlier");
    let consecutive_failures = match &o.consecutive_failures {
        None => d.consecutive_failures,
        Some(v) => ctx
            .int_in(v, format!("{p}.consecutive_failures"), 0, 1000)
            .map(|n| NonZeroU32::new(n as u32))
            .unwrap_or(d.consecutive_failures),
    };
    let consecutive_connect_failures = match &o.consecutive_connect_failures {
        None => d.consecutive_connect_failures,
        Some(v) => ctx
            .int_in(v, format!("{p}.consecutive_connect_failures"), 0, 1000)
            .map(|n| NonZeroU32::new(n as u32))
            .unwrap_or(d.consecutive_connect_failures),
    };
    let base_ejection = ctx.duration(
        &o.base_ejection,
        format!("{p}.base_ejection"),
        d.base_ejection,
    );
    let max_ejection = ctx.duration(
        &o.max_ejection,
        format!("{p}.max_ejection"),
        d.max_ejection.max(base_ejection),
    );
    if max_ejection < base_ejection
        && let Some(v) = &o.max_ejection
    {
        ctx.err(
            v.span(),
            format!("{p}.max_ejection"),
            "must be at least base_ejection",
        );
    }
    Outlier {
        consecutive_failures,
        consecutive_connect_failures,
        base_ejection,
        max_ejection,
    }
}

fn failover(raw: Option<&RawFailover>, svc: &str, ctx: &mut Ctx<'_>) -> Failover {
    let d = Failover::default();
    let Some(f) = raw else { return d };
    let p = format!("{svc}.failover");
    let when_all_down = ctx.named(
        f.when_all_down.as_ref(),
        format!("{p}.when_all_down"),
        "policy",
        d.when_all_down,
    );
    Failover {
        hold_down: ctx.duration(&f.hold_down, format!("{p}.hold_down"), d.hold_down),
        ramp: ctx.duration(&f.ramp, format!("{p}.ramp"), d.ramp),
        when_all_down,
        latency_tolerance: ctx.duration(
            &f.latency_tolerance,
            format!("{p}.latency_tolerance"),
            d.latency_tolerance,
        ),
    }
}

fn retry(raw: Option<&RawRetry>, svc: &str, ctx: &mut Ctx<'_>) -> Retry {
    let d = Retry::default();
    let Some(r) = raw else { return d };
    let p = format!("{svc}.retry");
    let attempts = r
        .attempts
        .as_ref()
        .and_then(|v| ctx.int_in(v, format!("{p}.attempts"), 0, 5))
        .map_or(d.attempts, |n| n as u32);
    let budget_ratio = match &r.budget_percent {
        None => d.budget_ratio,
        Some(v) if (0.0..=100.0).contains(v.get_ref()) => v.get_ref() / 100.0,
        Some(v) => {
            ctx.err(
                v.span(),
                format!("{p}.budget_percent"),
                format!("{} is out of range; expected 0 to 100", v.get_ref()),
            );
            d.budget_ratio
        }
    };
    let min_per_second = r
        .min_per_second
        .as_ref()
        .and_then(|v| ctx.int_in(v, format!("{p}.min_per_second"), 0, 1_000_000))
        .map_or(d.min_per_second, |n| n as u32);
    Retry {
        attempts,
        budget_ratio,
        min_per_second,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_status_range;

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200"), Some((200, 200)));
        assert_eq!(parse_status_range("200-399"), Some((200, 399)));
        assert_eq!(parse_status_range("2xx"), Some((200, 299)));
        assert_eq!(parse_status_range("399-200"), None);
        assert_eq!(parse_status_range("700"), None);
        assert_eq!(parse_status_range("ok"), None);
    }
}
