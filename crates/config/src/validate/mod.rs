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

mod access;
mod cache;
mod compression;
mod dns;
mod fleet;
mod hash;
mod health;
mod limits;
mod listeners;
mod regions;
mod rule_match;
mod rules;
mod services;
mod upstream;
use cache::cache;
use limits::limits;
use listeners::listeners;
use regions::{geo, regions};
use services::{GeoDatabase, services};

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

    /// A key its table must have. Absent, it is reported at the table (`table` is the table's
    /// span, `key_path` the key's path), and `None` lets checking go on without it.
    fn required<'v, T>(
        &mut self,
        value: &'v Option<S<T>>,
        table: &Range<usize>,
        key_path: impl Display,
    ) -> Option<&'v S<T>> {
        if value.is_none() {
            self.missing(table, key_path);
        }
        value.as_ref()
    }

    /// Serde's wording, which this replaces (see `raw`).
    fn missing(&mut self, table: &Range<usize>, key_path: impl Display) {
        let key_path = key_path.to_string();
        let key = key_path.rsplit('.').next().unwrap_or_default().to_string();
        self.err(table.clone(), key_path, format!("missing field `{key}`"));
    }

    fn duration(
        &mut self,
        value: &Option<S<DurationText>>,
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
    let dns = dns::dns(raw.dns.as_ref(), ctx);
    let fleet = raw.fleet.as_ref().and_then(|f| fleet::fleet(f, ctx));
    let listeners = listeners(&raw.listeners, &admin, ctx);
    let regions = regions(&raw.regions, ctx);
    let geo = raw.geo.as_ref().map(|g| geo(g, &regions, ctx));
    let geo_database = match (&raw.geo, &geo) {
        (Some(table), Some(Geo { database: None, .. })) => GeoDatabase::Missing {
            table_line: ctx.line_of(table.span().start),
        },
        (_, Some(_)) => GeoDatabase::Present,
        (_, None) => GeoDatabase::NoTable,
    };
    let services = services(
        &raw.services,
        &listeners,
        &regions,
        geo_database,
        &timeouts,
        ctx,
    );
    Config {
        source: Source {
            path: PathBuf::new(),
            digest: 0,
            text: "".into(),
        },
        runtime,
        timeouts,
        admin,
        geo,
        access_log,
        snapshots,
        dns,
        fleet,
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
    let max_connections = raw.max_connections.as_ref().and_then(|m| {
        ctx.int_in(m, "runtime.max_connections", 1, 10_000_000)
            .and_then(|n| NonZeroUsize::new(n as usize))
    });
    Runtime {
        workers,
        shutdown_timeout,
        max_connections,
    }
}

fn timeouts(raw: &RawTimeouts, prefix: &str, base: Timeouts, ctx: &mut Ctx<'_>) -> Timeouts {
    let mut t = base;
    let fields: [(&Option<S<DurationText>>, &str, &mut Duration); 6] = [
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
            max_connections_per_client: None,
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
    let max_connections_per_client = raw
        .max_connections_per_client
        .as_ref()
        .and_then(|v| ctx.int_in(v, "admin.max_connections_per_client", 1, 100_000))
        .map(|n| n as usize);
    Admin {
        listen,
        token_file,
        metrics_listen: None,
        max_connections,
        max_connections_per_client,
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

fn snapshots(table: &S<RawSnapshots>, ctx: &mut Ctx<'_>) -> Snapshots {
    let raw = table.get_ref();
    let dir = match ctx.required(&raw.dir, &table.span(), "snapshots.dir") {
        None => PathBuf::new(),
        Some(d) if d.get_ref().is_empty() => {
            ctx.err(d.span(), "snapshots.dir", "must name a directory");
            PathBuf::new()
        }
        Some(d) => {
            let dir = ctx.resolve(d.get_ref());
            if let Ok(m) = std::fs::metadata(&dir)
                && !m.is_dir()
            {
                ctx.err(
                    d.span(),
                    "snapshots.dir",
                    format!("{} exists and is not a directory", dir.display()),
                );
            }
            dir
        }
    };
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
    let max_age = Some(ctx.duration(&raw.max_age, "snapshots.max_age", Duration::ZERO))
        .filter(|d| !d.is_zero());
    let max_increments = raw
        .max_increments
        .as_ref()
        .and_then(|k| ctx.int_in(k, "snapshots.max_increments", 0, 10_000))
        .map_or(23, |n| n as u32);
    let increment_share = match &raw.increment_share {
        None => 0.5,
        Some(v) if (0.0..=100.0).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            ctx.err(
                v.span(),
                "snapshots.increment_share",
                format!("{} is out of range; expected 0.0 to 100.0 (0.5: the increments may grow to half the full point)", v.get_ref()),
            );
            0.5
        }
    };
    // A size per second; "0" writes as fast as the disk takes it.
    let write_rate = match &raw.write_rate {
        None => Some(256 << 20),
        Some(v) => match crate::units::parse_size(v.get_ref()) {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(e) => {
                ctx.err(v.span(), "snapshots.write_rate", e);
                Some(256 << 20)
            }
        },
    };
    Snapshots {
        dir,
        interval,
        keep,
        max_age,
        max_increments,
        increment_share,
        write_rate,
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

/// An address or CIDR of an address list, its host bits cleared. An IPv4-mapped IPv6 network
/// (`::ffff:203.0.113.0/120`) is the IPv4 network it maps: clients are compared by their IPv4
/// address (a dual-stack listener sees them mapped), so as written it would never match.
fn parse_net(s: &str) -> Option<IpNet> {
    let net = s
        .parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))?;
    let mapped = match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => n.addr().to_ipv4_mapped().and_then(|v4| {
            ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
                .ok()
                .map(IpNet::V4)
        }),
        _ => None,
    };
    Some(mapped.unwrap_or(net).trunc())
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
