//! The `rules` part of `/explain`: which of the service's `[[services.rules]]` a request
//! would match and what they would do, from the same evaluation the data path runs.

use std::net::IpAddr;

use http::HeaderMap;
use serde_json::{Value, json};
use streamgate_balance::Service;
use streamgate_config::rules::{Piece, Scheme, Template};
use streamgate_policy::{Answer, Edit};

/// The request /explain describes, beyond its host, path and client.
pub(super) struct Asked<'a> {
    pub method: &'a str,
    pub scheme: Scheme,
    pub country: Option<&'a str>,
    /// The region the service's policy ranks first for this client.
    pub region: Option<&'a str>,
}

pub(super) fn rules(
    service: &Service,
    ip: IpAddr,
    host: &str,
    path: &str,
    asked: &Asked<'_>,
) -> Value {
    let spec = &service.spec.rules;
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    // A path the data path refuses (400) is explained as it was written.
    let normal = streamgate_policy::path::normalize(path).ok().flatten();
    let path = normal.as_deref().unwrap_or(path);
    let (name, port) = streamgate_policy::split_port(host);
    let headers = HeaderMap::new();
    let view = streamgate_policy::Request {
        scheme: asked.scheme,
        method: asked.method,
        host: name,
        port,
        path,
        query,
        headers: &headers,
        client: ip,
        country: asked.country,
        region: asked.region,
        service: &service.name,
    };
    let out = streamgate_policy::evaluate(spec, &view);
    let answer = out.answer.as_ref().map(|a| match a {
        Answer::Deny { rule } => json!({ "deny": 403, "rule": rule }),
        Answer::Respond { status, .. } => json!({ "respond": status }),
        Answer::Redirect { status, location } => {
            json!({ "redirect": status, "location": location })
        }
    });
    let shown = |t: &Template| -> String {
        t.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(s) => s.clone(),
                Piece::Var(v) => format!("${}", v.name()),
                Piece::Capture(n) => format!("${n}"),
            })
            .collect()
    };
    let edit = |e: &Edit<String>| match e {
        Edit::Remove(n) => json!({ "remove": n }),
        Edit::Set(n, v) => json!({ "set": n, "value": v }),
        Edit::Add(n, v) => json!({ "add": n, "value": v }),
    };
    json!({
        "count": spec.list.len(),
        "matched": out.matched.iter().map(|&i| &spec.list[i].name).collect::<Vec<_>>(),
        "answer": answer,
        "rewritten_path": out.path,
        "request_headers": out.request.iter().map(edit).collect::<Vec<_>>(),
        "response_headers": out.response.iter().map(|e| match e {
            Edit::Remove(n) => json!({ "remove": n }),
            Edit::Set(n, t) => json!({ "set": n, "value": shown(t) }),
            Edit::Add(n, t) => json!({ "add": n, "value": shown(t) }),
        }).collect::<Vec<_>>(),
        "note": "evaluated without request headers: rules that match on headers show as unmatched",
    })
}
