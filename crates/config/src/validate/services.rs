//! Services: listeners, hosts and paths, regions, and their per-service tables.

use super::health::{failover, health, outlier};
use super::regions::region_names;
use super::upstream::{retry, upstream};
use super::*;

/// Whether services may use the geo policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GeoDatabase {
    NoTable,
    /// A [geo] table for trusted_proxies only.
    Missing {
        table_line: usize,
    },
    Present,
}

pub(super) fn services(
    raw: &[S<RawService>],
    listeners: &[Listener],
    regions: &[Region],
    geo_database: GeoDatabase,
    default_timeouts: &Timeouts,
    ctx: &mut Ctx<'_>,
) -> Vec<Service> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    // (listener, host pattern, path prefix) -> the service that claimed it first.
    let mut routes: HashMap<(String, HostPattern, String), String> = HashMap::new();
    for (i, s) in raw.iter().enumerate() {
        let span = s.span();
        let s = s.get_ref();
        let p = format!("services[{i}]");
        let svc_name = ctx.required(&s.name, &span, format!("{p}.name"));
        if let Some(n) = svc_name {
            name(n, format!("{p}.name"), &mut names, "service", ctx);
        }
        // Where errors about the service as a whole point: its name, else its table.
        let name_span = svc_name.map_or(span.clone(), |n| n.span());
        let svc_name = svc_name.map(|n| n.get_ref().clone()).unwrap_or_default();
        let listed = ctx.required(&s.listeners, &span, format!("{p}.listeners"));
        let listeners_span = listed.map_or(span.clone(), |l| l.span());
        let listed = listed.map_or(&[][..], |l| l.get_ref());

        let mut svc_listeners = Vec::new();
        if listed.is_empty() && s.listeners.is_some() {
            ctx.err(
                listeners_span.clone(),
                format!("{p}.listeners"),
                "no listeners; name at least one [[listeners]] entry",
            );
        }
        for (j, l) in listed.iter().enumerate() {
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
            Some(v) if v.get_ref().starts_with('/') => {
                if let Some(why) = crate::path::not_as_matched(v.get_ref()) {
                    ctx.err(v.span(), format!("{p}.path_prefix"), why);
                }
                v.get_ref().clone()
            }
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
                        .unwrap_or(name_span.clone());
                    ctx.err(
                        at,
                        format!("{p}.path_prefix"),
                        format!(
                            "listener \"{l}\", host \"{h}\", path \"{path_prefix}\" is already routed to service \"{other}\""
                        ),
                    );
                } else {
                    routes.insert(key, svc_name.clone());
                }
            }
        }

        let mut svc_regions = Vec::new();
        let listed_regions = ctx.required(&s.regions, &span, format!("{p}.regions"));
        if let Some(list) = listed_regions
            && list.get_ref().is_empty()
        {
            ctx.err(
                list.span(),
                format!("{p}.regions"),
                format!(
                    "no regions; name at least one of: {}",
                    region_names(regions)
                ),
            );
        }
        for (j, r) in listed_regions
            .map_or(&[][..], |l| l.get_ref())
            .iter()
            .enumerate()
        {
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
                Some(RegionPolicy::Geo) if geo_database != GeoDatabase::Present => {
                    let why = match geo_database {
                        GeoDatabase::Missing { table_line } => format!(
                            "policy \"geo\" needs geo.database; the [geo] table at line {table_line} has none"
                        ),
                        _ => "policy \"geo\" needs a [geo] table with a database".to_string(),
                    };
                    ctx.err(v.span(), format!("{p}.region_policy"), why);
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
        let access = s.access.as_ref().map_or_else(Access::default, |a| {
            super::access::access(a, &p, geo_database == GeoDatabase::Present, ctx)
        });
        let compression = s
            .compression
            .as_ref()
            .map(|c| super::compression::compression(c, &p, ctx));
        let rules = s.rules.as_ref().map_or_else(Default::default, |r| {
            let geo = geo_database == GeoDatabase::Present;
            super::rules::rules(r, &p, geo, &svc_regions, ctx)
        });
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
                    listeners_span.clone(),
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
            if let Some(c) = &s.compression {
                ctx.err(
                    c.span(),
                    format!("{p}.compression"),
                    format!("{what} copies bytes; it cannot compress responses"),
                );
            }
            if let Some(r) = &s.rules {
                ctx.err(
                    r.span(),
                    format!("{p}.rules"),
                    format!("{what} has no requests for rules; use [services.access]"),
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
                name_span.clone(),
                format!("{p}.hosts"),
                "a tls_passthrough service needs hosts: the SNI names it takes",
            ),
            _ => {}
        }

        let hash = super::hash::hash(s.hash.as_ref(), backend_policy, kind, &p, ctx);

        out.push(Service {
            name: svc_name,
            listeners: svc_listeners,
            hosts,
            path_prefix,
            regions: svc_regions,
            region_policy,
            backend_policy,
            hash,
            timeouts,
            health,
            outlier,
            failover,
            retry,
            cache,
            limits,
            access,
            rules,
            compression,
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
            let second = &raw[users[1]];
            let span = second
                .get_ref()
                .listeners
                .as_ref()
                .map_or(second.span(), |l| l.span());
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
