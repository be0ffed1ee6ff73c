//! Recovery-point endpoints of the admin API: list them, write one now, go back to one.

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::{Value, json};
use streamgate_cache::recovery::RecoveryError;
use streamgate_cache::snapshot::{RecoveryPoint, SnapshotError};

use super::{AdminResponse, error, json_response, requests};
use crate::Control;

fn ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64 / 1e3)
}

fn point_json(p: &RecoveryPoint, now: SystemTime) -> Value {
    json!({
        "file": p.name(),
        "kind": p.kind().as_str(),
        "base": ms(p.base),
        "parent": p.parent.map(ms),
        "path": p.path.display().to_string(),
        "created": ms(p.created),
        "age_seconds": now.duration_since(p.created).map_or(0.0, |d| d.as_secs_f64()),
        "objects": p.objects,
        "records": p.records,
        "bytes": p.bytes,
    })
}

fn failure(e: &RecoveryError) -> AdminResponse {
    let status = match e {
        RecoveryError::NotConfigured | RecoveryError::Unusable { .. } => StatusCode::CONFLICT,
        RecoveryError::Snapshot(SnapshotError::NotFound { .. }) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &e.to_string())
}

/// `GET /snapshots`
pub(super) async fn list(control: &Control) -> AdminResponse {
    match control.snapshots.list().await {
        Ok((settings, points)) => {
            let now = SystemTime::now();
            json_response(
                StatusCode::OK,
                json!({
                    "dir": settings.dir.display().to_string(),
                    "interval_seconds": settings.interval.as_secs_f64(),
                    "keep": settings.keep.get(),
                    "recovery_points": points.iter().map(|p| point_json(p, now)).collect::<Vec<_>>(),
                }),
            )
        }
        Err(e) => failure(&e),
    }
}

/// `POST /snapshots`: writes one now and answers with it.
pub(super) async fn create(control: &Control) -> AdminResponse {
    match control.snapshots.take().await {
        Ok(p) => json_response(StatusCode::CREATED, point_json(&p, SystemTime::now())),
        Err(e) => failure(&e),
    }
}

/// `POST /snapshots/restore {"point": "…"}`: the caches are replaced by that point (its chain
/// up to it), at once; the answer says what came back.
pub(super) async fn restore(control: &Control, body: &[u8]) -> AdminResponse {
    let name = match requests::point(body) {
        Ok(n) => n,
        Err(r) => return error(r.status, &r.message),
    };
    match control.snapshots.restore_point(Some(&name), true).await {
        Ok(Some(r)) => json_response(
            StatusCode::OK,
            json!({
                "restored": point_json(&r.point, SystemTime::now()),
                "chain": r.chain,
                "objects": r.restored,
                "expired": r.expired,
                "unclaimed": r.unclaimed,
                "damaged": r.damaged,
                "seconds": r.took.as_secs_f64(),
            }),
        ),
        Ok(None) => error(
            StatusCode::CONFLICT,
            &format!(
                "{name} does not restore: its chain is damaged (see `streamgate snapshot list`)"
            ),
        ),
        Err(e) => failure(&e),
    }
}
