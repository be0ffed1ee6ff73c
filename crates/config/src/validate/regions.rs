//! Regions, their backends, and the geo database.

use super::*;

pub(super) fn regions(raw: &[S<RawRegion>], ctx: &mut Ctx<'_>) -> Vec<Region> {
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

pub(super) fn geo(raw: &S<RawGeo>, regions: &[Region], ctx: &mut Ctx<'_>) -> Geo {
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

pub(super) fn region_names(regions: &[Region]) -> String {
    if regions.is_empty() {
        return "(none)".into();
    }
    regions
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
