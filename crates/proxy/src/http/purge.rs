//! `PURGE` from a trusted peer (`purge_from`): every variant of the URL goes, under both
//! schemes. With `Purge-Scope: fleet` (and a `[fleet]` table) the purge is also published to
//! every PoP, as the admin API's `"scope": "fleet"` does.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;
use streamgate_cache::ServiceCache;
use streamgate_cache::key::purge_keys;
use tracing::{debug, info};

use super::HttpProxy;
use super::body::{Completion, ProxyBody};
use super::request::{Outbound, host_str};
use crate::io::ActiveRequest;

/// The request header that asks for a fleet-wide purge.
pub const SCOPE: &str = "purge-scope";

/// Where a PURGE applies, from its `Purge-Scope` header.
fn fleet_wide(out: &Outbound<'_>) -> Result<bool, String> {
    match out.parts.headers.get(SCOPE).map(HeaderValue::to_str) {
        None => Ok(false),
        Some(Ok(v)) if v.eq_ignore_ascii_case("local") => Ok(false),
        Some(Ok(v)) if v.eq_ignore_ascii_case("fleet") => Ok(true),
        Some(_) => Err("Purge-Scope is local (the default) or fleet".into()),
    }
}

impl HttpProxy {
    pub(super) async fn purge_request(
        &self,
        cache: &ServiceCache,
        out: &Outbound<'_>,
        active: ActiveRequest,
    ) -> Response<ProxyBody> {
        let peer: IpAddr = out.peer.ip().to_canonical();
        let target = format!("{}{}", host_str(&out.host), out.path_and_query.as_str());
        // A connection whose balancer did not say who the client is (PROXY UNKNOWN) is some
        // client's, not the balancer's: the balancer's place in purge_from is not its.
        let allowed =
            out.forwarded_for.vouched() && cache.spec.purge_from.iter().any(|n| n.contains(&peer));
        let (status, body) = if !allowed {
            debug!(peer = %peer, url = %target, "PURGE from an address not in purge_from; refused");
            (
                StatusCode::FORBIDDEN,
                json!({"error": "PURGE not allowed from this address"}),
            )
        } else {
            match fleet_wide(out) {
                Err(why) => (StatusCode::BAD_REQUEST, json!({ "error": why })),
                Ok(fleet) => {
                    let keys = purge_keys(&target, &cache.spec.key_query).unwrap_or_default();
                    // On disk before it is answered: a crash before the next recovery point
                    // would bring it back otherwise.
                    let mark = self.caches.journal_mark();
                    let purged: usize = keys
                        .into_iter()
                        .map(|k| {
                            let purge = streamgate_cache::Purge::Url(k);
                            self.caches.purge(&purge, Some(&out.service.name))
                        })
                        .sum();
                    let journaled = self.caches.purges_on_disk(mark).await;
                    // Published whether or not this PoP's journal took it: one PoP's disk must
                    // not keep a takedown from the others.
                    let (status, mut answer) = if fleet {
                        self.publish_purge(&out.service.name, target, purged).await
                    } else {
                        (StatusCode::OK, json!({ "purged": purged }))
                    };
                    if journaled {
                        (status, answer)
                    } else {
                        // Applied here; a restore after a crash would not know of it.
                        answer["journaled"] = json!(false);
                        answer["error"] = json!(streamgate_cache::NOT_JOURNALED);
                        (StatusCode::INTERNAL_SERVER_ERROR, answer)
                    }
                }
            }
        };
        let mut text = body.to_string();
        text.push('\n');
        let mut r = Response::new(ProxyBody::full(text, Completion::serving(active)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }

    /// Publishes a purge of `target` (applied here already) to every PoP; the answer says
    /// whether the other PoPs will get it.
    async fn publish_purge(
        &self,
        service: &str,
        target: String,
        purged: usize,
    ) -> (StatusCode, serde_json::Value) {
        let Some(fleet) = self.fleet.get() else {
            return (
                StatusCode::CONFLICT,
                json!({
                    "purged": purged,
                    "error": "Purge-Scope: fleet needs a [fleet] table in the config; purged here only",
                }),
            );
        };
        let what = streamgate_fleet::Target::Url(target.clone());
        match fleet.purge(Some(service.to_string()), what).await {
            Ok(p) => {
                info!(id = %p.id, url = %target, purged, "PURGE published to the fleet");
                (
                    StatusCode::OK,
                    json!({ "purged": purged, "fleet": { "id": p.id, "published": true } }),
                )
            }
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "purged": purged, "fleet": { "published": false, "error": e.to_string() } }),
            ),
        }
    }
}
