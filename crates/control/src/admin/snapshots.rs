//! Recovery-point endpoints of the admin API: list them, write one now.

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::{Value, json};
use streamgate_cache::recovery::RecoveryError;
use streamgate_cache::snapshot::RecoveryPoint;

use super::{AdminResponse, error, json_response};
use crate::Control;

fn point_json(p: &RecoveryPoint, now: SystemTime) -> Value {
    json!({
        "file": p.path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "path": p.path.display().to_string(),
        "created": p.created.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_millis() as f64 / 1e3),
        "age_seconds": now.duration_since(p.created).map_or(0.0, |d| d.as_secs_f64()),
        "objects": p.records,
        "bytes": p.bytes,
    })
}

fn failure(e: &RecoveryError) -> AdminResponse {
    let status = match e {
        RecoveryError::NotConfigured => StatusCode::CONFLICT,
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
