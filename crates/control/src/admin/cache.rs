//! Cache endpoints of the admin API: stats and purge (prefetch is in [`super::prefetch`]).

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use streamgate_cache::Purge;
use streamgate_cache::key::purge_keys;
use tracing::info;

use super::requests::{self, PurgeWhat};
use super::{AdminResponse, error, json_response, refused};
use crate::Control;

pub(super) fn stats(control: &Control) -> AdminResponse {
    let list: Vec<Value> = control
        .caches
        .services()
        .into_iter()
        .map(|(name, c)| {
            c.settle();
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
pub(super) fn purge(control: &Control, body: &Bytes) -> AdminResponse {
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
    let purged = match &request.what {
        PurgeWhat::Url(url) => {
            let table = control.table.load();
            let mut purged = 0;
            // Each service keys URLs by its own query rules.
            for s in &table.services {
                let Some(spec) = &s.spec.cache else { continue };
                if service.is_some_and(|x| x != &*s.name) {
                    continue;
                }
                for key in purge_keys(url, &spec.key_query).unwrap_or_default() {
                    purged += control.caches.purge(&Purge::Url(key), Some(&s.name));
                }
            }
            purged
        }
        PurgeWhat::Prefixes(prefixes) => prefixes
            .iter()
            .map(|p| control.caches.purge(&Purge::Prefix(p.clone()), service))
            .sum(),
        PurgeWhat::Tag(tag) => control.caches.purge(&Purge::Tag(tag.clone()), service),
        PurgeWhat::All => control.caches.purge(&Purge::All, service),
    };
    info!(request = ?request, purged, "cache purge");
    json_response(StatusCode::OK, json!({ "purged": purged }))
}
