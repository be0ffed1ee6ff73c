//! Cache endpoints of the admin API: stats and purge (prefetch is in [`super::prefetch`]).

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use streamgate_cache::Purge;
use streamgate_cache::key::{purge_keys, purge_prefixes, split_url};
use tracing::info;

use super::{AdminResponse, error, json_response, parse_body};
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
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let service = v.get("service").and_then(Value::as_str);
    let table = control.table.load();
    let mut purged = 0;
    if let Some(url) = v.get("url").and_then(Value::as_str) {
        if split_url(url).is_none() {
            return error(
                StatusCode::BAD_REQUEST,
                "url must look like http://host/path (or host/path for both schemes)",
            );
        }
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
    } else if let Some(prefix) = v.get("prefix").and_then(Value::as_str) {
        let Some(prefixes) = purge_prefixes(prefix) else {
            return error(
                StatusCode::BAD_REQUEST,
                "prefix must look like http://host/path (or host/path for both schemes)",
            );
        };
        for p in prefixes {
            purged += control.caches.purge(&Purge::Prefix(p), service);
        }
    } else if let Some(tag) = v.get("tag").and_then(Value::as_str) {
        purged = control.caches.purge(&Purge::Tag(tag.to_string()), service);
    } else if v.get("all").and_then(Value::as_bool) == Some(true) {
        purged = control.caches.purge(&Purge::All, service);
    } else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected one of {\"url\": ...}, {\"prefix\": ...}, {\"tag\": ...}, {\"all\": true}",
        );
    }
    info!(request = %v, purged, "cache purge");
    json_response(StatusCode::OK, json!({ "purged": purged }))
}
