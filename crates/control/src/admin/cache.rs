//! Cache endpoints of the admin API: stats, purge, prefetch.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use streamgate_cache::Purge;
use streamgate_cache::key::{purge_keys, purge_prefixes, split_url};
use tokio::net::TcpStream;
use tracing::info;

use super::{AdminResponse, error, json_response, parse_body};
use crate::Control;

/// Most URLs one prefetch call takes.
const MAX_PREFETCH: usize = 10_000;

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

/// `POST /cache/prefetch {"urls": [...]}`: each URL is requested through the daemon's own
/// listener (the normal path: routing, cache fill, coalescing) and its outcome reported.
pub(super) async fn prefetch(control: &Control, body: &Bytes) -> AdminResponse {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let Some(urls) = v.get("urls").and_then(Value::as_array) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"urls\": [\"http://host/path\", ...]}",
        );
    };
    if urls.len() > MAX_PREFETCH {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("at most {MAX_PREFETCH} URLs per call"),
        );
    }
    let listener = {
        let table = control.table.load();
        let names: Vec<&str> = table
            .config
            .listeners
            .iter()
            .filter(|l| l.protocol == streamgate_config::Protocol::Http)
            .map(|l| l.name.as_str())
            .collect();
        control
            .listeners()
            .into_iter()
            .find(|(n, _)| names.contains(&n.as_str()))
    };
    let Some((_, addr)) = listener else {
        return error(
            StatusCode::CONFLICT,
            "no plain HTTP listener to prefetch through",
        );
    };
    let mut results = Vec::with_capacity(urls.len());
    // A few at a time: prefetch warms the cache, it should not flood the origin.
    for chunk in urls.chunks(8) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, u) in chunk.iter().enumerate() {
            let url = u.as_str().unwrap_or("").to_string();
            tasks.spawn(async move { (i, url.clone(), fetch_one(addr, &url).await) });
        }
        let mut out: Vec<(usize, Value)> = Vec::new();
        while let Some(Ok((i, url, r))) = tasks.join_next().await {
            out.push((
                i,
                match r {
                    Ok((status, cache, bytes)) => {
                        json!({"url": url, "status": status, "cache": cache, "bytes": bytes})
                    }
                    Err(e) => json!({"url": url, "error": e}),
                },
            ));
        }
        out.sort_by_key(|(i, _)| *i);
        results.extend(out.into_iter().map(|(_, v)| v));
    }
    let ok = results
        .iter()
        .filter(|r| {
            r.get("status")
                .and_then(Value::as_u64)
                .is_some_and(|s| s < 400)
        })
        .count();
    info!(urls = results.len(), ok, "cache prefetch");
    json_response(StatusCode::OK, json!({ "results": results, "ok": ok }))
}

async fn fetch_one(
    addr: std::net::SocketAddr,
    url: &str,
) -> Result<(u16, Option<String>, usize), String> {
    let (_, host, path) = split_url(url).ok_or("not an http://host/path URL")?;
    let run = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(header::HOST, host)
            .header(header::USER_AGENT, "streamgate-prefetch")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let cache = resp
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, cache, body.len()))
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| "timed out after 60 s".to_string())?
}
