//! `GET /fleet`: every PoP's last heartbeat and the fleet's words as this PoP holds them
//! (operator actions with `?scope=fleet` are in [`super::words`]).

use http::StatusCode;
use serde_json::json;

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
    let (_, words) = control.words();
    json_response(
        StatusCode::OK,
        json!({
            "pop": fleet.pop(),
            "region": fleet.region(),
            "connected": fleet.connected(),
            "pops": peers,
            // What the fleet's bucket says, whether or not this PoP's word wins.
            "overrides": {
                "regions": words.regions,
                "drains": words.drains.iter().map(|(a, d)| (a.to_string(), *d)).collect::<std::collections::BTreeMap<_, _>>(),
                "primaries": words.primaries,
            },
        }),
    )
}
