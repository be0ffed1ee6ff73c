//! Operator actions on the live routing table: drain a backend, take a region out of service,
//! choose a service's primary region; each here (`scope=local`, the default) or at every PoP
//! (`?scope=fleet`, through the fleet's bucket), and `follow-fleet` to drop a word. This PoP's
//! word wins over the fleet's ([`crate::words`]).

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;
use streamgate_fleet::Word;
use tracing::info;

use super::{AdminResponse, error, json_response, refused, requests};
use crate::Control;
use crate::words::{DecidedBy, primary_by};

/// Where an operator's word goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    Local,
    Fleet,
}

impl Scope {
    /// The `scope=` of a query; the refusal's text otherwise.
    pub(super) fn of(query: &str) -> Result<Scope, String> {
        match query.split('&').find_map(|kv| kv.strip_prefix("scope=")) {
            None | Some("local") => Ok(Scope::Local),
            Some("fleet") => Ok(Scope::Fleet),
            Some(other) => Err(format!(
                "scope={other}: the scope is local (the default) or fleet"
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Fleet => "fleet",
        }
    }
}

/// Says `word` in `scope`. A fleet word is applied here when the bucket tells this PoP, like
/// the others; an error answer when it could not be said.
async fn say(control: &Control, word: Word, scope: Scope) -> Result<(), Box<AdminResponse>> {
    match scope {
        Scope::Local => {
            control.say_local(&word);
            info!(word = ?word, "operator word set by the admin API");
            // In force either way; the operator must know when a restart would undo it.
            control.save_overrides().await.map_err(|e| {
                Box::new(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("in force here, but not saved ({e}): a restart would lose it; check the [snapshots] directory"),
                ))
            })
        }
        Scope::Fleet => {
            let Some(fleet) = control.fleet() else {
                return Err(Box::new(error(
                    StatusCode::CONFLICT,
                    "scope=fleet needs a [fleet] table in the config",
                )));
            };
            fleet.say(&word).await.map_err(|e| {
                let status = match e {
                    streamgate_fleet::FleetError::Invalid(_) => StatusCode::BAD_REQUEST,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                Box::new(error(status, &e.to_string()))
            })?;
            // Stored: in force here now (the bucket's echo changes nothing), so the answer
            // shows it, as a fleet purge is applied here at once.
            control.say_fleet(&word);
            info!(word = ?word, "operator word published to the fleet");
            Ok(())
        }
    }
}

/// `POST /backends/drain|undrain|follow-fleet {"address": "IP:port"}`
pub(super) async fn drain(
    control: &Control,
    body: &Bytes,
    drained: Option<bool>,
    scope: Scope,
) -> AdminResponse {
    let addr = match requests::backend_address(body) {
        Ok(a) => a,
        Err(r) => return refused(r),
    };
    let flipped = |control: &Control| -> Vec<bool> {
        control
            .table
            .load()
            .backends_at(addr)
            .map(|(_, _, b)| b.state.is_drained())
            .collect()
    };
    let before = flipped(control);
    // The fleet's word on an address this PoP lacks can be withdrawn here all the same.
    let withdrawal = scope == Scope::Fleet && drained.is_none();
    if before.is_empty() && !withdrawal {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no backend {addr} in the running configuration"),
        );
    }
    if let Err(r) = say(control, Word::Backend(addr, drained), scope).await {
        return *r;
    }
    let after = flipped(control);
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let table = control.table.load();
    let in_flight: u32 = table
        .backends_at(addr)
        .map(|(_, _, b)| b.state.in_flight())
        .sum();
    let (local, fleet) = control.words();
    json_response(
        StatusCode::OK,
        json!({
            "address": addr.to_string(),
            "drained": after.first().copied().unwrap_or(false),
            "drained_by": DecidedBy::of(local.drains.get(&addr), fleet.drains.get(&addr)).as_str(),
            "scope": scope.as_str(),
            "services": before.len(),
            "changed": changed,
            "in_flight": in_flight,
        }),
    )
}

/// `POST /regions/{name}/activate|deactivate|follow-fleet`
pub(super) async fn region(
    control: &Control,
    name: &str,
    active: Option<bool>,
    scope: Scope,
) -> AdminResponse {
    let c = control.table.load().regions.get(name).cloned();
    let withdrawal = scope == Scope::Fleet && active.is_none();
    let before = match &c {
        Some(c) => c.is_active(),
        None if withdrawal => true,
        None => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no region named \"{name}\""),
            );
        }
    };
    if let Err(r) = say(control, Word::Region(name.to_string(), active), scope).await {
        return *r;
    }
    let (local, fleet) = c.as_ref().map_or((None, None), |c| c.words());
    let active = c.as_ref().is_none_or(|c| c.is_active());
    json_response(
        StatusCode::OK,
        json!({
            "region": name,
            "active": active,
            "changed": before != active,
            "active_by": DecidedBy::of(local, fleet).as_str(),
            "scope": scope.as_str(),
            "local": local,
            "fleet": fleet,
        }),
    )
}

/// `POST /services/{name}/primary {"region": "name"}` and `POST /services/{name}/follow-fleet`
pub(super) async fn primary(
    control: &Control,
    service: &str,
    body: Option<&Bytes>,
    scope: Scope,
) -> AdminResponse {
    let region = match body.map(|b| requests::region(b)).transpose() {
        Ok(r) => r,
        Err(r) => return refused(r),
    };
    let table = control.table.load();
    let withdrawal = scope == Scope::Fleet && region.is_none();
    let previous = match table.service(service) {
        Some(s) => Some(s.regions[s.primary_index()].name.clone()),
        None if withdrawal => None,
        None => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no service named \"{service}\""),
            );
        }
    };
    // The fleet's word may name a region only other PoPs give the service; said here it must
    // be one this service uses (a typo is caught before it reaches every PoP).
    if let (Some(region), Some(s)) = (&region, table.service(service))
        && s.region(region).is_none()
    {
        let listed: Vec<&str> = s.regions.iter().map(|r| &*r.name).collect();
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "service \"{service}\" does not use region \"{region}\"; its regions: {}",
                listed.join(", ")
            ),
        );
    }
    if let Err(r) = say(control, Word::Primary(service.to_string(), region), scope).await {
        return *r;
    }
    let (local, fleet) = control.words();
    let table = control.table.load();
    let now = table
        .service(service)
        .map(|s| s.regions[s.primary_index()].name.to_string());
    json_response(
        StatusCode::OK,
        json!({
            "service": service,
            "primary": now,
            "previous": previous.as_deref(),
            "primary_by": primary_by(&table, service, &local, &fleet).as_str(),
            "scope": scope.as_str(),
        }),
    )
}
