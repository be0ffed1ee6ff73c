//! Cache endpoints of the admin API: stats and purge (prefetch is in [`super::prefetch`]).

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use tracing::info;

use super::requests;
use super::{AdminResponse, error, json_response, refused};
use crate::Control;

pub(super) fn stats(control: &Control) -> AdminResponse {
    let list: Vec<Value> = control
        .caches
        .services()
        .into_iter()
        // Not settled here: a sweep walks the whole cache, and a client asking in a loop
        // would keep the runtime's threads on it; the gauge refresher settles every second.
        .map(|(name, c)| {
            json!({
                "service": name,
                "bytes": c.bytes(),
                "objects": c.objects(),
                "max_size": c.spec.max_size,
                "max_object_size": c.spec.max_object_size,
                "max_variants": c.spec.max_variants,
                "max_fill_bytes": c.spec.max_fill_bytes,
                "fill_bytes": c.fill_budget.used(),
            })
        })
        .collect();
    json_response(StatusCode::OK, json!({ "caches": list }))
}

/// `POST /cache/purge {"url"|"prefix"|"tag": "...", "all": true, "service": "..."}`
pub(super) async fn purge(control: &Control, body: &Bytes) -> AdminResponse {
    let request = match requests::purge(body) {
        Ok(r) => r,
        Err(r) => return refused(r),
    };
    let service = request.service.as_deref();
    if let Some(name) = service {
        let table = control.table.load();
        let why = match table.services.iter().find(|s| &*s.name == name) {
            None => Some(format!("no service named \"{name}\"")),
            Some(s) if s.spec.cache.is_none() => Some(format!(
                "service \"{name}\" has no cache (add [services.cache] to cache its responses)"
            )),
            Some(_) => None,
        };
        if let Some(why) = why {
            return error(StatusCode::NOT_FOUND, &why);
        }
    }
    let mark = control.caches.journal_mark();
    let purged = crate::fleet::purge_local(control, &request.what, service);
    info!(request = ?request, purged, "cache purge");
    let journaled = control.caches.purges_on_disk(mark).await;
    let (status, mut answer) = match request.fleet {
        None => (StatusCode::OK, json!({ "purged": purged })),
        Some(target) => {
            let Some(fleet) = control.fleet() else {
                return error(
                    StatusCode::CONFLICT,
                    &format!(
                        "purged {purged} here; \"scope\": \"fleet\" needs a [fleet] table in the config"
                    ),
                );
            };
            // Published whether or not this PoP's journal took it: one PoP's disk must not
            // keep a takedown from the others.
            match fleet.purge(request.service.clone(), target).await {
                Ok(p) => (
                    StatusCode::OK,
                    json!({ "purged": purged, "fleet": { "id": p.id, "published": true } }),
                ),
                // Applied here; the other PoPs did not get it: the operator must know.
                Err(e) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "purged": purged, "fleet": { "published": false, "error": e.to_string() } }),
                ),
            }
        }
    };
    if !journaled {
        // Applied here; a restore after a crash would not know of it: the operator must know.
        answer["journaled"] = json!(false);
        answer["error"] = json!(streamgate_cache::NOT_JOURNALED);
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, answer);
    }
    json_response(status, answer)
}
