//! The cache's trips to the origin: a miss filled, a stale object revalidated (or refetched), a
//! background refresh (stale-while-revalidate). Each goes through the same forwarding step as a
//! client's request ([`HttpProxy::fetch`]: X-Forwarded-*, Via, region choice, retries); each
//! response is recorded into the cache while it streams, and the client gets its own view of it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::request::Parts;
use http::{Request, Response, StatusCode};
use streamgate_balance::RoutingTable;
use streamgate_cache::decide::CacheStatus;
use streamgate_cache::fill::{self, FillGuard, Outcome, Role};
use streamgate_cache::put::{
    Answer, add_validators, origin_should_cut_range, record_head, revalidated, strip_validators,
    validates,
};
use streamgate_cache::record::{RecordHead, Recorder};
use streamgate_cache::{ServiceCache, Variant};
use streamgate_telemetry::DataType;
use tracing::warn;

use super::HttpProxy;
use super::body::{Completion, PendingLog, ProxyBody, RequestBody};
use super::cache_serve::{CacheRequest, Served, narrow_to_ask, set_log_cache, with_status_header};
use super::error::{ProxyError, error_response};
use super::headers::strip_hop_by_hop;
use super::origin::Fetched;
use super::recording::{Recording, finish_recording};
use super::request::Outbound;
use crate::io::ActiveRequest;

/// Why the cache goes to the origin.
#[derive(Debug)]
pub(crate) enum Next {
    /// Nothing usable is stored.
    Fill { guard: Option<FillGuard> },
    /// A stored object must be revalidated first; it may stand in on origin error for
    /// `if_error_for` more.
    Revalidate {
        stale: Arc<Variant>,
        if_error_for: Duration,
        guard: Option<FillGuard>,
    },
}

impl HttpProxy {
    /// [`HttpProxy::fetch`] for the cache, which sees the response without its hop-by-hop
    /// fields.
    async fn fetch_for_cache<'t>(
        &self,
        out: &mut Outbound<'t>,
        log: &mut Option<Box<PendingLog>>,
    ) -> Result<Fetched<'t>, ProxyError> {
        let mut fetched = self.fetch(out, log).await;
        if let Ok(f) = &mut fetched {
            strip_hop_by_hop(f.resp.headers_mut());
        }
        fetched
    }

    pub(crate) async fn go_to_origin(
        &self,
        c: CacheRequest,
        out: &mut Outbound<'_>,
        next: Next,
        active: ActiveRequest,
        log: &mut Option<Box<PendingLog>>,
    ) -> Response<ProxyBody> {
        let (stale, if_error_for, guard) = match next {
            Next::Fill { guard } => (None, Duration::ZERO, guard),
            Next::Revalidate {
                stale,
                if_error_for,
                guard,
            } => (Some(stale), if_error_for, guard),
        };
        let cache = &c.cache;
        let status = if stale.is_some() {
            CacheStatus::Expired
        } else {
            CacheStatus::Miss
        };
        set_log_cache(log, status);
        if let Some(s) = &stale {
            add_validators(&mut out.parts.headers, s);
        }
        let mut request_time = SystemTime::now();
        let mut fetched = self.fetch_for_cache(out, log).await;
        // A 304 that cannot refresh the stored object (no validators were sent, or its strong
        // ETag names another representation, RFC 9111 §4.3.4): ask once more, unconditionally.
        if let (Ok(f), Some(s)) = (&fetched, &stale)
            && f.resp.status() == StatusCode::NOT_MODIFIED
            && !validates(s, f.resp.headers())
        {
            strip_validators(&mut out.parts.headers);
            request_time = SystemTime::now();
            fetched = self.fetch_for_cache(out, log).await;
        }
        let failure = match (fetched, &stale) {
            (Ok(f), Some(s)) if f.resp.status() == StatusCode::NOT_MODIFIED => {
                let now = SystemTime::now();
                let r = revalidated(cache, s, f.resp.headers(), request_time, now);
                drop(f);
                if r.stored {
                    cache.insert(&c.key, r.merged.clone());
                } else {
                    cache.remove_variant(&c.key, s);
                }
                if let Some(g) = &guard {
                    g.set(if r.stored {
                        Outcome::Stored
                    } else {
                        Outcome::Uncacheable
                    });
                }
                let how = Served {
                    status: CacheStatus::Expired,
                    data_type: Some(DataType::CacheHit),
                    personal: Some(&r.personal),
                    age: r.merged.timing.current_age(now),
                };
                // Done with the request's fields: their map's memory carries the answer's.
                let spare = std::mem::take(&mut out.parts.headers);
                return self.serve_stored(&c, &r.merged, out, how, active, log, spare);
            }
            (Ok(f), Some(s)) if f.resp.status().is_server_error() && !if_error_for.is_zero() => {
                let why = format!("origin failed with status {}", f.resp.status().as_u16());
                (s.clone(), why)
            }
            (Ok(f), _) => {
                strip_validators(&mut out.parts.headers);
                let recorder = recorder_for(&c, out, &f, request_time, guard);
                if recorder.is_none() && origin_should_cut_range(&c.ask, answer(&f)) {
                    // Not stored: reading (and dropping) everything before the client's range
                    // would cost more than asking the origin for the range itself.
                    drop(f);
                    c.ask.restore_into(&mut out.parts.headers);
                    let resp = match self.fetch(out, log).await {
                        Ok(f) => self.origin_response(
                            f,
                            out,
                            DataType::Pass,
                            Completion::serving(active),
                            None,
                        ),
                        Err(e) => error_response(&e, active),
                    };
                    return with_status_header(resp, cache, status);
                }
                let recording = recorder.map(|recorder| Recording {
                    recorder,
                    drain_stall: out.service.spec.timeouts.upstream_response,
                });
                let mut resp = self.origin_response(
                    f,
                    out,
                    DataType::CacheMiss,
                    Completion::serving(active),
                    recording,
                );
                narrow_to_ask(&mut resp, &c.ask);
                return with_status_header(resp, cache, status);
            }
            (Err(e), Some(s)) if !if_error_for.is_zero() => {
                (s.clone(), format!("origin unreachable: {e}"))
            }
            (Err(e), _) => {
                return with_status_header(error_response(&e, active), cache, status);
            }
        };
        let (stale, failure) = failure;
        warn!(key = %c.key, "{failure}; serving the stale copy (stale-if-error)");
        drop(guard);
        let how = Served {
            status: CacheStatus::Stale,
            data_type: Some(DataType::CacheStale),
            personal: None,
            age: stale.timing.current_age(SystemTime::now()),
        };
        // Done with the request's fields: their map's memory carries the answer's.
        let spare = std::mem::take(&mut out.parts.headers);
        self.serve_stored(&c, &stale, out, how, active, log, spare)
    }

    /// stale-while-revalidate: one background refresh per object, made like a client's
    /// request; the stale copy is served now.
    pub(crate) fn refresh_in_background(
        self: &Arc<Self>,
        table: Arc<RoutingTable>,
        cache: Arc<ServiceCache>,
        key: &str,
        out: &Outbound<'_>,
        stale: &Arc<Variant>,
    ) {
        let Role::Leader(guard) = fill::join(&cache.fills, key) else {
            return;
        };
        let proxy = self.clone();
        let service = out.service.name.clone();
        // The client's head as it arrived (its forwarding fields from untrusted peers already
        // gone); `fetch` adds ours, as for the client's own request.
        let mut parts = clone_head(&out.parts);
        add_validators(&mut parts.headers, stale);
        let (facts, host, pq, client_version, peer, forwarded_for) = (
            out.facts.clone(),
            out.host.clone(),
            out.path_and_query.clone(),
            out.client_version,
            out.peer,
            out.forwarded_for.clone(),
        );
        let (key, stale) = (key.to_string(), stale.clone());
        tokio::spawn(async move {
            let Some(service) = table.service(&service) else {
                return;
            };
            let mut o = Outbound {
                service,
                forwarded: false,
                upgrade: None,
                facts,
                parts,
                host,
                path_and_query: pq,
                body: RequestBody::Empty,
                client_version,
                peer,
                forwarded_for,
                started: Instant::now(),
                served_by: false,
                raw_answer: false,
            };
            let request_time = SystemTime::now();
            let Ok(f) = proxy.fetch_for_cache(&mut o, &mut None).await else {
                return;
            };
            if f.resp.status() == StatusCode::NOT_MODIFIED {
                if !validates(&stale, f.resp.headers()) {
                    // A refresh that cannot apply: the next client's revalidation asks again.
                    guard.set(Outcome::Uncacheable);
                    return;
                }
                let now = SystemTime::now();
                let r = revalidated(&cache, &stale, f.resp.headers(), request_time, now);
                if r.stored {
                    cache.insert(&key, r.merged);
                    guard.set(Outcome::Stored);
                } else {
                    cache.remove_variant(&key, &stale);
                    guard.set(Outcome::Uncacheable);
                }
                return;
            }
            let stall = o.service.spec.timeouts.upstream_response;
            let Some((head, length)) = storable_head(&cache, &o, &f, request_time) else {
                guard.set(Outcome::Uncacheable);
                return;
            };
            let Fetched { resp, lease, .. } = f;
            if let Ok(r) = Recorder::start(cache.clone(), key, head, length, Some(guard)) {
                finish_recording(resp.into_body(), r, stall).await;
            }
            drop(lease);
        });
    }
}

/// The recording of a fetched response, if it may be stored; otherwise the fill's waiters are
/// told so (they go to the origin on their own instead of queueing).
fn recorder_for(
    c: &CacheRequest,
    out: &Outbound<'_>,
    f: &Fetched<'_>,
    request_time: SystemTime,
    guard: Option<FillGuard>,
) -> Option<Recorder> {
    match storable_head(&c.cache, out, f, request_time) {
        Some((head, length)) => {
            Recorder::start(c.cache.clone(), c.key.to_string(), head, length, guard).ok()
        }
        None => {
            if let Some(g) = &guard {
                g.set(Outcome::Uncacheable);
            }
            None
        }
    }
}

/// The head to record of a fetched response the cache may store. Not one sent uncompressed
/// only because the encoders were busy ([`Uncompressed`]): stored, it would stand for the
/// coding's copy for its whole lifetime. Not one whose body ends when the backend closes
/// ([`UpstreamBody::until_close`]): a backend that died mid-body looks the same, and the cut
/// copy would be served to everyone.
///
/// [`UpstreamBody::until_close`]: crate::upstream::UpstreamBody::until_close
///
/// [`Uncompressed`]: super::compress::Uncompressed
fn storable_head(
    cache: &ServiceCache,
    out: &Outbound<'_>,
    f: &Fetched<'_>,
    request_time: SystemTime,
) -> Option<(RecordHead, Option<u64>)> {
    if f.resp
        .extensions()
        .get::<super::compress::Uncompressed>()
        .is_some()
        || f.resp.body().until_close()
    {
        return None;
    }
    let (method, req) = (&out.parts.method, &out.parts.headers);
    record_head(
        cache,
        method,
        req,
        answer(f),
        request_time,
        SystemTime::now(),
    )
}

fn answer<'a>(f: &'a Fetched<'_>) -> Answer<'a> {
    Answer {
        status: f.resp.status(),
        headers: f.resp.headers(),
    }
}

fn clone_head(p: &Parts) -> Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = p.method.clone();
    parts.uri = p.uri.clone();
    parts.version = p.version;
    parts.headers = p.headers.clone();
    parts
}
