//! The admin endpoints: state as JSON, operator actions on the live routing table.

use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};
use streamgate_balance::pick::distance_km;
use streamgate_balance::{ClientFacts, RoutingTable};
use streamgate_config::rules::Scheme;
use streamgate_config::{HashKey, RegionPolicy};

use super::{AdminResponse, error, json_response};
use crate::Control;
use crate::reload::ReloadOutcome;
use crate::words::{DecidedBy, primary_by};

fn ms(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        json!((d.as_secs_f64() * 1e6).round() / 1e3)
    })
}

pub(super) fn ready(control: &Control) -> AdminResponse {
    if control.is_ready() {
        json_response(
            StatusCode::OK,
            json!({"status": "ready", "version": control.table.load().version}),
        )
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "starting"}),
        )
    }
}

pub(super) fn metrics(control: &Control) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(control.metrics.render())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

pub(super) fn regions(control: &Control) -> AdminResponse {
    let table = control.table.load();
    let (local_words, fleet_words) = control.words();
    let mut names: Vec<&String> = table.config.regions.iter().map(|r| &r.name).collect();
    names.dedup();
    let list: Vec<Value> = names
        .iter()
        .map(|name| {
            let active = table.regions.get(*name).is_none_or(|c| c.is_active());
            // Whose word decides: this PoP's operator's wins over the fleet's.
            let (local, fleet) = table.regions.get(*name).map_or((None, None), |c| c.words());
            let decided_by = DecidedBy::of(local, fleet).as_str();
            let services: Vec<Value> = table
                .services
                .iter()
                .filter_map(|s| s.region(name).map(|(i, r)| (s, i, r)))
                .map(|(s, i, r)| {
                    let up = r.backends.iter().filter(|b| b.state.is_up()).count();
                    let available = r.backends.iter().filter(|b| b.state.is_available()).count();
                    let latency = r.health.latency_nanos();
                    let requests = served(r);
                    let total: u64 = s.regions.iter().map(served).sum();
                    json!({
                        "service": &*s.name,
                        "primary": s.primary_index() == i,
                        "primary_by": primary_by(&table, &s.name, &local_words, &fleet_words).as_str(),
                        "healthy": r.health.is_healthy(),
                        // The same answer as /explain: active, healthy and past the hold-down.
                        "eligible": r.is_eligible(),
                        "requests": requests,
                        "traffic_share": if total == 0 { Value::Null } else { json!(requests as f64 / total as f64) },
                        "failback_ramp": f64::from(r.health.share_permille()) / 1000.0,
                        "latency_ms": if latency == 0 { Value::Null } else { json!((latency as f64 / 1e3).round() / 1e3) },
                        "backends_up": up,
                        "backends_available": available,
                        "backends_total": r.backends.len(),
                        "backends_needed": r.needed_up(),
                    })
                })
                .collect();
            let location = table.config.region(name).and_then(|r| r.location);
            // Backends written as host:port, with the addresses they give the region now.
            let dns_names: Vec<Value> = table
                .config
                .region(name)
                .map(|r| r.named_backends.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|b| {
                    let addresses = table.resolved.get(&b.host).unwrap_or_default();
                    json!({
                        "name": b.to_string(),
                        "addresses": addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "name": name,
                "active": active,
                "active_by": decided_by,
                "fleet_override": fleet,
                "location": location.map(|l| json!({"lat": l.lat, "lon": l.lon})),
                "dns_names": dns_names,
                "services": services,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({ "version": table.version, "regions": list }),
    )
}

/// Requests the service's region answered since the daemon started (every status class): its
/// pre-resolved `global_load_balancer_requests_total` counters.
fn served(r: &streamgate_balance::ServiceRegion) -> u64 {
    r.metrics.requests.iter().map(|c| c.get()).sum()
}

pub(super) fn backends(control: &Control) -> AdminResponse {
    let table = control.table.load();
    let (local, fleet) = control.words();
    let mut list = Vec::new();
    for s in &table.services {
        for r in &s.regions {
            for b in &r.backends {
                let st = &b.state;
                list.push(json!({
                    "service": &*s.name,
                    "region": &*r.name,
                    "address": b.address.to_string(),
                    "name": b.name.as_deref(),
                    "weight": b.weight,
                    "up": st.is_up(),
                    "probed": st.was_probed(),
                    "drained": st.is_drained(),
                    "drained_by": DecidedBy::of(local.drains.get(&b.address), fleet.drains.get(&b.address)).as_str(),
                    "ejected": st.is_ejected(),
                    "available": st.is_available(),
                    "unavailable_because": st.unavailable_reason().map(|u| u.as_str()),
                    "in_flight": st.in_flight(),
                    "latency_ewma_ms": ms(st.latency()),
                    "probe_rtt_ms": ms(st.probe_rtt()),
                    "requests": st.requests.load(std::sync::atomic::Ordering::Relaxed),
                    "failures": st.failures.load(std::sync::atomic::Ordering::Relaxed),
                }));
            }
        }
    }
    json_response(
        StatusCode::OK,
        json!({ "version": table.version, "backends": list }),
    )
}

pub(super) async fn reload(control: &Control) -> AdminResponse {
    match control.reload(true).await {
        ReloadOutcome::Applied { version, changes } => json_response(
            StatusCode::OK,
            json!({
                "ok": true,
                "version": version,
                "services_added": changes.services_added,
                "services_removed": changes.services_removed,
                "services_changed": changes.services_changed,
                "regions_added": changes.regions_added,
                "regions_removed": changes.regions_removed,
                "backends_added": changes.backends_added.iter().map(|(r, a)| format!("{r}/{a}")).collect::<Vec<_>>(),
                "backends_removed": changes.backends_removed.iter().map(|(r, a)| format!("{r}/{a}")).collect::<Vec<_>>(),
                "needs_restart": changes.needs_restart,
            }),
        ),
        ReloadOutcome::Unchanged { version } => json_response(
            StatusCode::OK,
            json!({"ok": true, "version": version, "unchanged": true}),
        ),
        ReloadOutcome::Rejected { errors } => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"ok": false, "errors": errors, "version": control.table.load().version}),
        ),
    }
}

pub(super) fn config(control: &Control) -> AdminResponse {
    let table = control.table.load();
    let st = control.status();
    let secs = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json_response(
        StatusCode::OK,
        json!({
            "version": table.version,
            "file": table.config.source.path.display().to_string(),
            "digest": format!("{:016x}", table.config.source.digest),
            "loaded_at": secs(st.loaded_at),
            "last_reload_error": st.last_error,
            "last_reload_error_at": st.last_error_at.map(secs),
            // Changed in the file since the start, read only at start: waiting for a restart.
            "needs_restart": streamgate_config::diff::diff(&control.started, &table.config).needs_restart,
            "geo_database": control.geo.load().as_ref().map(|g| json!({
                "path": g.path().display().to_string(),
                "type": g.database_type(),
                "build_epoch": g.build_epoch(),
                "records": g.records_checked,
            })),
        }),
    )
}

fn query_param<'q>(query: &'q str, key: &str) -> Option<std::borrow::Cow<'q, str>> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') && !s.contains('+') {
        return std::borrow::Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// `GET /explain?ip=&host=&path=&listener=`: which region and backend this client would get now,
/// and why.
pub(super) fn explain(control: &Control, query: &str) -> AdminResponse {
    let table = control.table.load_full();
    let ip: IpAddr = match query_param(query, "ip")
        .as_deref()
        .unwrap_or("127.0.0.1")
        .parse()
    {
        Ok(ip) => ip,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ip= must be an IPv4 or IPv6 address",
            );
        }
    };
    let host = query_param(query, "host")
        .map(|h| h.into_owned())
        .unwrap_or_default();
    let path = query_param(query, "path")
        .map(|p| p.into_owned())
        .unwrap_or_else(|| "/".into());
    let listener = match query_param(query, "listener") {
        Some(l) => l.into_owned(),
        None => match table.config.listeners.iter().find(|l| l.protocol.is_http()) {
            Some(l) => l.name.clone(),
            None => return error(StatusCode::NOT_FOUND, "no HTTP listener configured"),
        },
    };
    let method =
        query_param(query, "method").map_or_else(|| "GET".into(), |m| m.to_ascii_uppercase());
    let scheme = match query_param(query, "scheme").as_deref() {
        Some("https") => Scheme::Https,
        Some("http") | None => Scheme::Http,
        Some(_) => return error(StatusCode::BAD_REQUEST, "scheme= is http or https"),
    };
    let asked = (method.as_str(), scheme);
    explain_in(control, &table, ip, &host, &path, &listener, asked)
}

/// Why a request matches no service, naming what to give /explain.
fn no_route_why(
    table: &RoutingTable,
    listener: &str,
    host: &str,
    path: &str,
    e: streamgate_balance::NoRoute,
) -> String {
    let served: Vec<String> = table
        .config
        .services
        .iter()
        .filter(|s| s.listeners.iter().any(|l| l == listener))
        .flat_map(|s| s.hosts.iter().map(|h| format!("{h}{}", s.path_prefix)))
        .collect();
    let what = match (e, host.is_empty()) {
        (streamgate_balance::NoRoute::Host, true) => {
            "no host= was given, and no service on this listener takes requests without a Host; \
             add host=, the Host header a client would send"
                .to_string()
        }
        (streamgate_balance::NoRoute::Host, false) => {
            format!("no service on listener \"{listener}\" serves host \"{host}\"")
        }
        (streamgate_balance::NoRoute::Path, _) => {
            format!("host \"{host}\" is served, but not path \"{path}\" (path=)")
        }
    };
    format!(
        "{what}: the request would get 404 and is never forwarded. Listener \"{listener}\" \
         serves: {}",
        if served.is_empty() {
            "nothing".to_string()
        } else {
            served.join(", ")
        }
    )
}

fn explain_in(
    control: &Control,
    table: &RoutingTable,
    ip: IpAddr,
    host: &str,
    path: &str,
    listener: &str,
    (method, scheme): (&str, Scheme),
) -> AdminResponse {
    let route_path = path.split_once('?').map_or(path, |(p, _)| p);
    // As the data path routes it, and refuses it.
    let normal = match streamgate_policy::path::normalize(route_path) {
        Ok(normal) => normal,
        Err(why) => {
            return json_response(
                StatusCode::OK,
                json!({
                    "listener": listener, "host": host, "path": path,
                    "service": Value::Null,
                    "decision": Value::Null,
                    "why": format!("the path is refused (400): it has {why}"),
                }),
            );
        }
    };
    let route_path = normal.as_deref().unwrap_or(route_path);
    let service = match table.route(listener, host, route_path) {
        Ok(s) => s,
        Err(e) => {
            return json_response(
                StatusCode::OK,
                json!({
                    "listener": listener, "host": host, "path": path,
                    "service": Value::Null,
                    "decision": Value::Null,
                    "why": no_route_why(table, listener, host, path, e),
                }),
            );
        }
    };
    let geo_db = control.geo.load_full();
    let geo = geo_db.as_ref().and_then(|db| db.lookup(ip));
    let facts = ClientFacts {
        ip: Some(ip),
        geo: if service.spec.region_policy == RegionPolicy::Geo {
            geo
        } else {
            None
        },
        // consistent_hash: /explain has no request headers, so only a URI key is hashed as a
        // request's would be; header and cookie keys fall back to the client address, as a
        // request without them does.
        key: service
            .spec
            .hash
            .as_ref()
            .filter(|h| h.key == HashKey::Uri)
            .map(|_| {
                // As the data path hashes it: normalised (rules' rewrites are not run here).
                let uri = streamgate_policy::path::normalize_target(path)
                    .ok()
                    .flatten();
                streamgate_balance::select::key_hash(uri.as_deref().unwrap_or(path).as_bytes())
            }),
        ..ClientFacts::default()
    };
    let hash = service.spec.hash.as_ref().map(|h| {
        json!({
            "key": h.key.to_string(),
            "hashed": if facts.key.is_some() { "uri" } else { "client_ip" },
            "sticky_cookie": h.cookie.as_ref().map(|c| c.name.clone()),
        })
    });
    let order = service.region_order(&facts);
    let mut regions = Vec::new();
    for (rank, &i) in order.as_slice().iter().enumerate() {
        let r = &service.regions[i as usize];
        let available = r.backends.iter().filter(|b| b.state.is_available()).count();
        let excluded = if !r.control.is_active() {
            Some("deactivated by an operator")
        } else if !r.health.is_healthy() {
            Some("unhealthy: too few backends pass health checks")
        } else if !r.health.is_eligible() {
            Some("recovering: waiting out the failback hold-down")
        } else if available == 0 {
            Some("no available backend (down, drained or ejected)")
        } else {
            None
        };
        let distance = match (facts.geo.and_then(|g| g.location), r.location) {
            (Some(a), Some(b)) => json!(distance_km(a, b).round()),
            _ => Value::Null,
        };
        let country_match = facts
            .geo
            .and_then(|g| g.country)
            .is_some_and(|c| r.countries.iter().any(|x| x == c.as_str()));
        let latency = r.health.latency_nanos();
        regions.push(json!({
            "rank": rank + 1,
            "name": &*r.name,
            "eligible": r.is_eligible(),
            "excluded_because": excluded,
            "country_match": country_match,
            "distance_km": distance,
            "latency_ms": if latency == 0 { Value::Null } else { json!((latency as f64 / 1e3).round() / 1e3) },
            "failback_ramp": f64::from(r.health.share_permille()) / 1000.0,
            "backends_available": available,
            "backends_total": r.backends.len(),
        }));
    }
    let pick = service.pick(&facts, &[]);
    let why = match (&pick, service.spec.region_policy) {
        (None, _) => "no usable backend in any region: the request would get 503".to_string(),
        (Some(p), _) if p.reason == streamgate_balance::RouteReason::FailOpen => {
            format!("every region is down; failing open to {}", p.region.name)
        }
        (Some(p), RegionPolicy::Geo) => match &facts.geo {
            None => format!(
                "the geo database has no data for {ip}: default region {} then priority order; chose {} ({})",
                service
                    .default_region
                    .map_or("(none)", |d| &*service.regions[d].name),
                p.region.name,
                p.reason.as_str()
            ),
            Some(g) => format!(
                "client in {} ({}): {} region {} ({})",
                g.country
                    .map_or("unknown country".into(), |c| c.to_string()),
                g.located_by.as_str(),
                if p.reason == streamgate_balance::RouteReason::Geo {
                    "nearest eligible"
                } else {
                    "next eligible"
                },
                p.region.name,
                p.reason.as_str()
            ),
        },
        (Some(p), _) => format!(
            "{} policy chose region {} ({})",
            service.spec.region_policy,
            p.region.name,
            p.reason.as_str()
        ),
    };
    json_response(
        StatusCode::OK,
        json!({
            "listener": listener,
            "host": host,
            "path": path,
            "service": &*service.name,
            "client": {
                "ip": ip.to_string(),
                "geo": geo.map(|g| json!({
                    "country": g.country.map(|c| c.to_string()),
                    "lat": g.location.map(|l| l.lat),
                    "lon": g.location.map(|l| l.lon),
                    "located_by": g.located_by.as_str(),
                })),
            },
            "policy": { "region": service.spec.region_policy.as_str(), "backend": service.spec.backend_policy.as_str() },
            "hash": hash,
            "regions": regions,
            "decision": pick.map(|p| json!({
                "region": &*p.region.name,
                "backend": p.backend.address.to_string(),
                "reason": p.reason.as_str(),
            })),
            "why": why,
            "rules": super::explain_rules::rules(service, ip, host, path, &super::explain_rules::Asked {
                method,
                scheme,
                country: geo.and_then(|g| g.country).as_ref().map(|c| c.as_str()),
                region: order.as_slice().first().map(|&i| &*service.regions[usize::from(i)].name),
            }),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param("ip=1.2.3.4&host=a.b", "host").as_deref(),
            Some("a.b")
        );
        assert_eq!(
            query_param("path=%2Fv%2Fx+y", "path").as_deref(),
            Some("/v/x y")
        );
        assert_eq!(query_param("ip=%zz", "ip").as_deref(), Some("%zz"));
        assert_eq!(query_param("ip=%", "ip").as_deref(), Some("%"));
        assert_eq!(query_param("x=1", "ip"), None);
    }
}
