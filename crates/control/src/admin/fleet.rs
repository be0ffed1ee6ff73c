//! Fleet endpoints of the admin API: `GET /fleet` (every PoP's last heartbeat), region
//! overrides made fleet-wide (`?scope=fleet`), and giving a region back to the fleet's word.

use http::StatusCode;
use serde_json::json;
use tracing::info;

use super::{AdminResponse, error, json_response};
use crate::Control;

/// `GET /fleet`
pub(super) fn view(control: &Control) -> AdminResponse {
    let Some(fleet) = control.fleet() else {
        return error(
            StatusCode::NOT_FOUND,
            "this daemon stands alone: add a [fleet] table to join one",
        );
    };
    let stale_after = fleet.stale_after();
    let peers: Vec<_> = fleet
        .peers()
        .into_iter()
        .map(|(h, age)| {
            json!({
                "pop": h.pop,
                "region": h.region,
                "config_version": h.config_version,
                "snapshot_age_seconds": h.snapshot_age_seconds,
                "last_heartbeat_seconds": (age * 10.0).round() / 10.0,
                "stale": age > stale_after,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "pop": fleet.pop(),
            "region": fleet.region(),
            "connected": fleet.connected(),
            "pops": peers,
        }),
    )
}

/// `POST /regions/{name}/activate|deactivate?scope=fleet`: the word goes to every PoP through
/// the overrides bucket (this one applies it when the bucket tells it, like the others).
pub(super) async fn region(control: &Control, name: &str, active: bool) -> AdminResponse {
    let Some(fleet) = control.fleet() else {
        return error(
            StatusCode::CONFLICT,
            "scope=fleet needs a [fleet] table in the config",
        );
    };
    if !control.table.load().regions.contains_key(name) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no region named \"{name}\" here"),
        );
    }
    match fleet.set_region(name, Some(active)).await {
        Ok(()) => {
            info!(region = %name, active, "region override published to the fleet");
            json_response(
                StatusCode::OK,
                json!({ "region": name, "active": active, "scope": "fleet" }),
            )
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /regions/{name}/follow-fleet[?scope=fleet]`: drops this PoP's own word on the region
/// (the fleet's decides again); with `scope=fleet`, withdraws the fleet's word everywhere.
pub(super) async fn follow(control: &Control, name: &str, fleet_wide: bool) -> AdminResponse {
    let table = control.table.load();
    let Some(c) = table.regions.get(name) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no region named \"{name}\""),
        );
    };
    if fleet_wide {
        let Some(fleet) = control.fleet() else {
            return error(
                StatusCode::CONFLICT,
                "scope=fleet needs a [fleet] table in the config",
            );
        };
        if let Err(e) = fleet.set_region(name, None).await {
            return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        }
    } else if c.clear_local() {
        control.changed.notify_one();
        control.persist_overrides();
    }
    let (local, fleet) = c.words();
    json_response(
        StatusCode::OK,
        json!({ "region": name, "active": c.is_active(), "local": local, "fleet": fleet }),
    )
}
