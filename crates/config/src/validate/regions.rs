//! Regions, their backends, and the geo database.

use super::dns::{Written, backend_address};
use super::*;

pub(super) fn regions(raw: &[S<RawRegion>], ctx: &mut Ctx<'_>) -> Vec<Region> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let span = r.span();
        let r = r.get_ref();
        let p = format!("regions[{i}]");
        let region_name = ctx.required(&r.name, &span, format!("{p}.name"));
        if let Some(n) = region_name {
            name(n, format!("{p}.name"), &mut names, "region", ctx);
        }
        let region_name = region_name.map(|n| n.get_ref().clone()).unwrap_or_default();
        let location = r.location.as_ref().and_then(|loc| {
            let l = *loc.get_ref();
            let at = loc.span();
            let mut coordinate = |value: Option<f64>, key: &str| {
                if value.is_none() {
                    ctx.missing(&at, format!("{p}.location.{key}"));
                }
                value
            };
            let (lat, lon) = (coordinate(l.lat, "lat"), coordinate(l.lon, "lon"));
            let (lat, lon) = (lat?, lon?);
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                ctx.err(
                    at,
                    format!("{p}.location"),
                    format!(
                        "lat {lat} / lon {lon} out of range; expected lat in -90..90, lon in -180..180"
                    ),
                );
                None
            } else {
                Some(Location { lat, lon })
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
        let mut named_backends: Vec<NamedBackend> = Vec::new();
        let mut seen = HashSet::new();
        match &r.backends {
            Some(list) if !list.get_ref().is_empty() => {
                for (j, b) in list.get_ref().iter().enumerate() {
                    let bp = format!("{p}.backends[{j}]");
                    let Some(written) =
                        ctx.required(&b.get_ref().address, &b.span(), format!("{bp}.address"))
                    else {
                        continue;
                    };
                    let b = b.get_ref();
                    let Some(address) = backend_address(written, &format!("{bp}.address"), ctx)
                    else {
                        continue;
                    };
                    let shown = match &address {
                        Written::Ip(a) => a.to_string(),
                        Written::Name { host, port } => format!("{host}:{port}"),
                    };
                    if !seen.insert(shown.clone()) {
                        ctx.err(
                            written.span(),
                            format!("{bp}.address"),
                            format!("duplicate backend {shown} in region \"{region_name}\""),
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
                    match address {
                        Written::Ip(address) => backends.push(Backend { address, weight }),
                        Written::Name { host, port } => {
                            named_backends.push(NamedBackend { host, port, weight })
                        }
                    }
                }
            }
            other => {
                let at = other.as_ref().map(|b| b.span()).unwrap_or(span);
                ctx.err(
                    at,
                    format!("{p}.backends"),
                    format!(
                        "region \"{region_name}\" has no backends; add backends = [{{ address = \"127.0.0.1:9001\" }}]"
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
            name: region_name,
            location,
            countries,
            backends,
            named_backends,
            min_healthy,
        });
    }
    out
}

pub(super) fn geo(raw: &S<RawGeo>, regions: &[Region], ctx: &mut Ctx<'_>) -> Geo {
    let g = raw.get_ref();
    // Optional: a [geo] table may be there only for trusted_proxies (PROXY headers and
    // X-Forwarded-For); services with the geo policy check that there is one.
    let database = g
        .database
        .as_ref()
        .map(|d| ctx.existing_file(d, "geo.database", "geo database"));
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
        let net = super::parse_net(s);
        match net {
            Some(n) => trusted_proxies.push(n),
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
