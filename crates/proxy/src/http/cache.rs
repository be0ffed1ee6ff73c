//! The edge cache in front of the origin: fresh hits served from memory; stale ones served
//! while refreshing, revalidated, or served on origin error, as the response allows; concurrent
//! misses and revalidations of one object coalesced into one origin request; unsafe methods
//! invalidating what they changed; PURGE from trusted peers.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderMap};
use http::{Response, StatusCode};
use streamgate_balance::RoutingTable;
use streamgate_cache::ServiceCache;
use streamgate_cache::ask::ClientAsk;
use streamgate_cache::decide::{CacheStatus, Decision, Request, decide};
use streamgate_cache::fill::{self, Outcome, Role};
use streamgate_cache::key::purge_keys;
use streamgate_cache::policy::{self, Directives, RequestUse};
use streamgate_telemetry::DataType;
use tracing::{debug, warn};

use super::HttpProxy;
use super::body::{Completion, PendingLog, ProxyBody};
use super::cache_fill::Next;
use super::cache_serve::{CacheRequest, Key, Served, set_log_cache, with_status_header};
use super::request::{Outbound, host_str};
use crate::io::ActiveRequest;

impl HttpProxy {
    /// The scheme clients reach this listener with: part of every cache key.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// Answers a request of a service with a cache.
    pub(crate) async fn cached(
        self: &Arc<Self>,
        table: &Arc<RoutingTable>,
        cache: Arc<ServiceCache>,
        out: &mut Outbound<'_>,
        active: ActiveRequest,
        log: &mut Option<Box<PendingLog>>,
    ) -> Response<ProxyBody> {
        let key = Key::url(
            self.scheme(),
            host_str(&out.host),
            out.path_and_query.as_str(),
            &cache.spec.key_query,
        );
        if out.parts.method.as_str() == "PURGE" {
            // Boxed, as the origin paths below: the hit path, which never suspends, would
            // otherwise carry their futures' size in every request's future.
            return Box::pin(self.purge_request(&cache, out, active)).await;
        }
        let req_dirs = Directives::of_request(&out.parts.headers);
        if let RequestUse::Bypass(why) = policy::request_use(
            &out.parts.method,
            &out.parts.headers,
            &req_dirs,
            // An HTTP/2 GET may end in an empty DATA frame; `content-length: 0` says so.
            !http_body::Body::is_end_stream(&out.body)
                && out
                    .parts
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .is_none_or(|v| v.as_bytes() != b"0"),
        ) {
            debug!(key = %key, why, "cache bypass");
            set_log_cache(log, CacheStatus::Bypass);
            let method = out.parts.method.clone();
            let (host, path) = (out.host.clone(), out.path_and_query.clone());
            let resp = Box::pin(self.pass(out, active, log)).await;
            if policy::invalidates(&method, resp.status()) {
                invalidate(&cache, host_str(&host), path.as_str(), resp.headers());
            }
            return with_status_header(resp, &cache, CacheStatus::Bypass);
        }
        let ask = ClientAsk::take_from(&mut out.parts.headers, &out.parts.method);
        let c = CacheRequest { cache, key, ask };
        let (cache, key) = (&c.cache, c.key.as_str());
        // When this request arrived: an object validated since then was validated for it.
        let arrived = SystemTime::now();
        let wait_until = out.started + cache.spec.lock_timeout;
        let mut waited: Option<Outcome> = None;
        let mut first = true;
        let next = loop {
            // The request's start time is recent enough for expiry; a look after waiting reads
            // the clock again.
            let (at, now) = if first {
                (out.started, arrived)
            } else {
                (Instant::now(), SystemTime::now())
            };
            first = false;
            let stored = cache.lookup_at(key, &out.parts.headers, at);
            let request = Request {
                dirs: &req_dirs,
                arrived,
            };
            let look = decide(stored.as_deref(), request, waited, now);
            let serve = |status, data_type| Served {
                status,
                data_type: Some(data_type),
                personal: None,
                age: look.age,
            };
            let stale = match (look.decision, stored) {
                (Decision::Hit, Some(v)) => {
                    let how = serve(CacheStatus::Hit, DataType::CacheHit);
                    // Done with the request's fields: their map's memory carries the answer's.
                    let spare = std::mem::take(&mut out.parts.headers);
                    return self.serve_stored(&c, &v, out, how, active, log, spare);
                }
                (Decision::StaleRefresh, Some(v)) => {
                    self.refresh_in_background(table.clone(), cache.clone(), key, out, &v);
                    let how = serve(CacheStatus::Stale, DataType::CacheStale);
                    // Done with the request's fields: their map's memory carries the answer's.
                    let spare = std::mem::take(&mut out.parts.headers);
                    return self.serve_stored(&c, &v, out, how, active, log, spare);
                }
                (Decision::StaleIfError, Some(v)) => {
                    warn!(key = %key, "origin failed for this object just now; serving the stale copy (stale-if-error)");
                    let how = serve(CacheStatus::Stale, DataType::CacheStale);
                    // Done with the request's fields: their map's memory carries the answer's.
                    let spare = std::mem::take(&mut out.parts.headers);
                    return self.serve_stored(&c, &v, out, how, active, log, spare);
                }
                (Decision::NotInCache, _) => return not_in_cache(cache, active, log),
                (Decision::Revalidate { if_error_for }, Some(v)) => Some((v, if_error_for)),
                // Nothing stored: fetch it.
                _ => None,
            };
            // The leader stored what it fetched, yet nothing serves this request (another
            // variant): it goes on its own rather than queueing behind the next fill (with
            // `Vary: Cookie` every client would wait for everyone before it).
            let join = if waited == Some(Outcome::Stored) {
                None
            } else if out.parts.method == http::Method::HEAD {
                // A HEAD fetches a HEAD, which stores nothing: it may wait for a GET's fill but
                // never lead one, or every GET behind it would be told "not stored" and go to
                // the origin on its own.
                fill::follow(&cache.fills, key).map(Role::Follower)
            } else {
                Some(fill::join(&cache.fills, key))
            };
            let guard = match join {
                None => None,
                Some(Role::Leader(g)) => Some(g),
                // Someone is fetching or revalidating this object: wait for it, then look again.
                Some(Role::Follower(rx)) => {
                    let left = wait_until.saturating_duration_since(Instant::now());
                    match fill::wait(rx, left).await {
                        Outcome::Pending => {
                            debug!(key = %key, "coalesced wait timed out; going to the origin");
                            None
                        }
                        // Not stored: queueing behind each other would only serialise it.
                        Outcome::Uncacheable => None,
                        o => {
                            waited = Some(o);
                            continue;
                        }
                    }
                }
            };
            break match stale {
                Some((v, if_error_for)) => Next::Revalidate {
                    stale: v,
                    if_error_for,
                    guard,
                },
                None => Next::Fill { guard },
            };
        };
        Box::pin(self.go_to_origin(c, out, next, active, log)).await
    }
}

/// `only-if-cached` and nothing usable is stored (RFC 9111 §5.2.1.7).
fn not_in_cache(
    cache: &ServiceCache,
    active: ActiveRequest,
    log: &mut Option<Box<PendingLog>>,
) -> Response<ProxyBody> {
    set_log_cache(log, CacheStatus::Miss);
    let mut r = Response::new(ProxyBody::full(
        "504 Gateway Timeout: not in cache\n",
        Completion::serving(active),
    ));
    *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    with_status_header(r, cache, CacheStatus::Miss)
}

/// RFC 9111 §4.4: after a non-error response to an unsafe method, the target URI and the
/// Location and Content-Location URIs on the same host are stale (under both schemes).
fn invalidate(cache: &ServiceCache, host: &str, path_and_query: &str, resp: &HeaderMap) {
    let mut targets = vec![format!("{host}{path_and_query}")];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        if let Some(path) = resp
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|loc| same_host_path(host, path_and_query, loc))
        {
            targets.push(format!("{host}{path}"));
        }
    }
    for t in targets {
        for k in purge_keys(&t, &cache.spec.key_query).unwrap_or_default() {
            cache.purge_url(&k);
        }
    }
}

/// The path of `reference` resolved against the request, if it names the same host.
fn same_host_path(host: &str, request_path: &str, reference: &str) -> Option<String> {
    let rest = reference
        .strip_prefix("http://")
        .or_else(|| reference.strip_prefix("https://"))
        .or_else(|| reference.strip_prefix("//"));
    if let Some(rest) = rest {
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let same = |a: &str| a.trim_end_matches('.').to_ascii_lowercase();
        return (same(authority) == same(host)).then(|| strip_fragment(path).to_string());
    }
    if reference.starts_with('/') {
        return Some(strip_fragment(reference).to_string());
    }
    if reference.is_empty() || reference.contains(':') {
        return None;
    }
    // A relative reference: against the request path's directory.
    let path = request_path.split('?').next().unwrap_or("/");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    Some(format!("{dir}{}", strip_fragment(reference)))
}

fn strip_fragment(s: &str) -> &str {
    s.split('#').next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::same_host_path;

    #[test]
    fn locations_on_the_same_host_only() {
        let cases = [
            ("/posts/9", Some("/posts/9")),
            ("http://app.test/posts/9#top", Some("/posts/9")),
            ("https://APP.test/posts/9?x=1", Some("/posts/9?x=1")),
            ("//app.test/a", Some("/a")),
            ("http://other.test/posts/9", None),
            ("9", Some("/posts/9")),
            ("mailto:x@app.test", None),
            ("", None),
        ];
        for (loc, want) in cases {
            assert_eq!(
                same_host_path("app.test", "/posts/new?draft=1", loc).as_deref(),
                want,
                "{loc}"
            );
        }
    }
}
