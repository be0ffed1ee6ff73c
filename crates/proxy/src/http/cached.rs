//! The edge cache in front of the origin: fresh hits served from memory, stale ones revalidated
//! (or served while refreshing, or on origin error, as the response allows), concurrent misses
//! coalesced into one origin request, responses stored while they stream to the client, ranges
//! and conditional requests answered from stored objects, PURGE from trusted peers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use streamgate_balance::RoutingTable;
use streamgate_cache::entry::ServedHead;
use streamgate_cache::fill::{self, FillGuard, Role};
use streamgate_cache::key::{selectors, url_key, vary_names};
use streamgate_cache::policy::{self, Directives, Freshness, RequestUse, Rules, Timing, Usable};
use streamgate_cache::range::{RangeReply, range_reply};
use streamgate_cache::{ServiceCache, Variant};
use streamgate_telemetry::{DataType, code_class_index};
use tracing::{debug, warn};

use super::HttpProxy;
use super::body::{Completion, PendingLog, ProxyBody, RequestBody};
use super::forward::{Fetched, Outbound, error_response, host_str};
use super::headers::append_via;
use crate::io::ActiveRequest;

/// Request headers a cache fill must not pass on: the stored object has to be whole and
/// unconditional; the client's range and conditions are answered from it afterwards.
const CLIENT_ONLY: [HeaderName; 4] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// What the cache answered, for the status header and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheStatus {
    Hit,
    Miss,
    Stale,
    Expired,
    Bypass,
}

impl CacheStatus {
    fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

/// Copies a streaming origin response into the cache; stores it once it is complete.
#[derive(Debug)]
pub struct Recorder {
    cache: Arc<ServiceCache>,
    key: String,
    status: StatusCode,
    headers: HeaderMap,
    timing: Timing,
    freshness: Freshness,
    selectors: Vec<(HeaderName, Option<HeaderValue>)>,
    buf: BytesMut,
    /// Released when the recorder ends, stored or not, so coalesced waiters look again.
    _fill: Option<FillGuard>,
}

impl Recorder {
    /// Keeps a chunk; false once the object outgrew `max_object_size` (then nothing is stored).
    pub fn push(&mut self, data: &Bytes) -> bool {
        if (self.buf.len() + data.len()) as u64 > self.cache.spec.max_object_size {
            return false;
        }
        self.buf.extend_from_slice(data);
        true
    }

    pub fn finish(self) {
        // A body that grew chunk by chunk may sit in a buffer up to twice its length; the store
        // counts its length, so it keeps an exact copy.
        let body = if self.buf.capacity() - self.buf.len() > self.buf.len() / 8 + 64 {
            Bytes::copy_from_slice(&self.buf)
        } else {
            self.buf.freeze()
        };
        let variant = Variant::new(
            self.status,
            self.headers,
            body,
            self.timing,
            self.freshness,
            self.selectors,
        );
        if !self.cache.insert(&self.key, variant) {
            debug!(key = %self.key, "object larger than max_object_size; not stored");
        }
    }
}

/// The parts of the client's request the cache answers itself.
#[derive(Debug, Default)]
struct ClientAsk {
    conditions: HeaderMap,
    range: Option<String>,
    method: Method,
}

impl ClientAsk {
    fn take_from(headers: &mut HeaderMap, method: &Method) -> ClientAsk {
        let mut conditions = HeaderMap::new();
        let mut range = None;
        // One pass over the (few) request fields instead of a lookup per name in the common case.
        if headers.keys().any(|k| CLIENT_ONLY.contains(k)) {
            for name in CLIENT_ONLY {
                if let Some(v) = headers.remove(&name) {
                    if name == header::RANGE {
                        range = v.to_str().ok().map(str::to_string);
                    }
                    conditions.insert(name, v);
                }
            }
        }
        ClientAsk {
            conditions,
            range,
            method: method.clone(),
        }
    }
}

impl HttpProxy {
    /// Answers a request of a service with a cache.
    pub(crate) async fn cached(
        self: &Arc<Self>,
        table: &Arc<RoutingTable>,
        cache: Arc<ServiceCache>,
        mut out: Outbound<'_>,
        active: ActiveRequest,
        log: &mut Option<Box<PendingLog>>,
    ) -> Response<ProxyBody> {
        let key = url_key(
            host_str(&out.host),
            out.path_and_query.as_str(),
            &cache.spec.key_query,
        );
        if out.parts.method.as_str() == "PURGE" {
            return self.purge_request(&cache, &key, &out, active);
        }
        let req_dirs = Directives::parse(&out.parts.headers);
        if let RequestUse::Bypass(why) =
            policy::request_use(&out.parts.method, &out.parts.headers, &req_dirs)
        {
            debug!(key = %key, why, "cache bypass");
            set_log_cache(log, CacheStatus::Bypass);
            let invalidate = policy::invalidates(&out.parts.method);
            let resp = self.pass(out, active, log).await;
            if invalidate && (resp.status().is_success() || resp.status().is_redirection()) {
                cache.purge_url(&key);
            }
            return with_status_header(resp, &cache, CacheStatus::Bypass);
        }
        let ask = ClientAsk::take_from(&mut out.parts.headers, &out.parts.method);
        let mut waited = false;
        let mut first = true;
        let guard = loop {
            let now = SystemTime::now();
            // The request's start time is recent enough for expiry; a retry after waiting reads
            // the clock again.
            let at = if first { out.started } else { Instant::now() };
            first = false;
            if let Some(v) = cache.lookup_at(&key, &out.parts.headers, at) {
                let age = v.timing.current_age(now);
                match policy::usability(&v.freshness, age, &req_dirs) {
                    Usable::Fresh => {
                        return self.serve_stored(
                            &cache,
                            &v,
                            age,
                            &out,
                            &ask,
                            CacheStatus::Hit,
                            DataType::CacheHit,
                            active,
                            log,
                        );
                    }
                    Usable::StaleWhileRevalidate => {
                        self.refresh_in_background(
                            table.clone(),
                            cache.clone(),
                            key,
                            &out,
                            v.clone(),
                        );
                        return self.serve_stored(
                            &cache,
                            &v,
                            age,
                            &out,
                            &ask,
                            CacheStatus::Stale,
                            DataType::CacheStale,
                            active,
                            log,
                        );
                    }
                    Usable::Stale { if_error_for } => {
                        return self
                            .revalidate(cache, key, out, ask, v, if_error_for, active, log)
                            .await;
                    }
                }
            }
            if req_dirs.only_if_cached {
                set_log_cache(log, CacheStatus::Miss);
                let mut r = Response::new(ProxyBody::full(
                    "504 Gateway Timeout: not in cache\n",
                    Completion::serving(active),
                ));
                *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                return with_status_header(r, &cache, CacheStatus::Miss);
            }
            match fill::join(&cache, &key) {
                Role::Leader(g) => break Some(g),
                // Someone is fetching this key: wait for it once, then look again.
                Role::Follower(rx) if !waited => {
                    waited = true;
                    if !fill::wait(rx, cache.spec.lock_timeout).await {
                        debug!(key = %key, "coalesced wait timed out; fetching");
                        break None;
                    }
                }
                Role::Follower(_) => break None,
            }
        };
        self.fill(cache, key, out, ask, guard, CacheStatus::Miss, active, log)
            .await
    }

    /// Fetches from the origin, stores the response if it may be stored, and answers the client.
    #[allow(clippy::too_many_arguments)]
    async fn fill(
        &self,
        cache: Arc<ServiceCache>,
        key: String,
        mut out: Outbound<'_>,
        ask: ClientAsk,
        guard: Option<FillGuard>,
        status: CacheStatus,
        active: ActiveRequest,
        log: &mut Option<Box<PendingLog>>,
    ) -> Response<ProxyBody> {
        set_log_cache(log, status);
        let request_time = SystemTime::now();
        let f = match self.fetch(&mut out, log).await {
            Ok(f) => f,
            Err(e) => return with_status_header(error_response(&e, active), &cache, status),
        };
        self.store_or_stream(cache, key, out, ask, f, request_time, guard, status, active)
            .await
    }

    /// Streams an origin response to the client, recording it into the cache when storable. A
    /// client that asked for a range or a condition is answered from the stored object instead.
    #[allow(clippy::too_many_arguments)]
    async fn store_or_stream(
        &self,
        cache: Arc<ServiceCache>,
        key: String,
        out: Outbound<'_>,
        ask: ClientAsk,
        f: Fetched<'_>,
        request_time: SystemTime,
        guard: Option<FillGuard>,
        status: CacheStatus,
        active: ActiveRequest,
    ) -> Response<ProxyBody> {
        let now = SystemTime::now();
        let resp_dirs = Directives::parse(f.resp.headers());
        let rules = Rules {
            default_ttl: cache.spec.default_ttl,
            heuristic: cache.spec.heuristic_freshness,
        };
        let head_ok = out.parts.method == Method::GET;
        let storable = head_ok
            .then(|| {
                policy::storable(
                    &out.parts.method,
                    &out.parts.headers,
                    f.resp.status(),
                    f.resp.headers(),
                    &resp_dirs,
                    rules,
                    now,
                )
            })
            .and_then(Result::ok)
            .filter(|_| {
                f.resp
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_none_or(|n| n <= cache.spec.max_object_size)
            });
        // A refetch after expiry and a first fetch both bring the data from the origin.
        let data_type = DataType::CacheMiss;
        let Some(freshness) = storable else {
            drop(guard);
            let resp = self.origin_response(f, &out, data_type, Completion::serving(active));
            return with_status_header(resp, &cache, status);
        };
        let mut names: Vec<HeaderName> = cache
            .spec
            .key_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        for n in vary_names(f.resp.headers()) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let sel = selectors(&names, &out.parts.headers);
        let timing = Timing::of(f.resp.headers(), request_time, now);
        let mut stored_headers = f.resp.headers().clone();
        super::headers::strip_hop_by_hop(&mut stored_headers);
        stored_headers.remove(header::AGE);

        if ask.range.is_some() || !ask.conditions.is_empty() {
            // Read the whole object, store it, then answer the range or condition from it.
            let status_code = f.resp.status();
            let pick_metrics = &f.pick.region.metrics;
            pick_metrics.locality[data_type.index()].inc();
            let (_parts, body) = f.resp.into_parts();
            let limit = cache.spec.max_object_size as usize;
            let collected = http_body_util::Limited::new(body, limit).collect().await;
            drop(f.lease);
            let Ok(collected) = collected else {
                drop(guard);
                let e = super::error::ProxyError::Upstream {
                    backend: f.pick.backend.address,
                    reason: "object too large or body failed".into(),
                };
                return with_status_header(error_response(&e, active), &cache, status);
            };
            let variant = Variant::new(
                status_code,
                stored_headers,
                collected.to_bytes(),
                timing,
                freshness,
                sel,
            );
            cache.insert(&key, variant.clone());
            drop(guard);
            let age = variant.timing.current_age(now);
            return self.serve_stored_with(&cache, &variant, age, &out, &ask, status, None, active);
        }
        // Sized from Content-Length (up to 1 MiB ahead of the data) so a body is usually one
        // allocation of its length.
        let expected = f
            .resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map_or(0, |n| n.min(cache.spec.max_object_size).min(1 << 20));
        let recorder = Recorder {
            cache: cache.clone(),
            key,
            status: f.resp.status(),
            headers: stored_headers,
            timing,
            freshness,
            selectors: sel,
            buf: BytesMut::with_capacity(expected as usize),
            _fill: guard,
        };
        let mut resp = self.origin_response(f, &out, data_type, Completion::serving(active));
        resp.body_mut().record_into(recorder);
        with_status_header(resp, &cache, status)
    }

    /// A stale object: ask the origin whether it changed (or refetch it without validators).
    #[allow(clippy::too_many_arguments)]
    async fn revalidate(
        &self,
        cache: Arc<ServiceCache>,
        key: String,
        mut out: Outbound<'_>,
        ask: ClientAsk,
        stale: Arc<Variant>,
        if_error_for: Duration,
        active: ActiveRequest,
        log: &mut Option<Box<PendingLog>>,
    ) -> Response<ProxyBody> {
        add_validators(&mut out.parts.headers, &stale);
        let request_time = SystemTime::now();
        set_log_cache(log, CacheStatus::Expired);
        let failure = match self.fetch(&mut out, log).await {
            Ok(f) if f.resp.status() == StatusCode::NOT_MODIFIED && stale.has_validators() => {
                let now = SystemTime::now();
                let refreshed = refresh(
                    &cache,
                    &stale,
                    f.resp.headers(),
                    &out.parts,
                    request_time,
                    now,
                );
                drop(f);
                cache.insert(&key, refreshed.clone());
                let age = refreshed.timing.current_age(now);
                return self.serve_stored(
                    &cache,
                    &Arc::new(refreshed),
                    age,
                    &out,
                    &ask,
                    CacheStatus::Expired,
                    DataType::CacheHit,
                    active,
                    log,
                );
            }
            Ok(f) if f.resp.status().is_server_error() && !if_error_for.is_zero() => {
                format!("origin failed with status {}", f.resp.status().as_u16())
            }
            Ok(f) => {
                strip_validators(&mut out.parts.headers);
                return self
                    .store_or_stream(
                        cache,
                        key,
                        out,
                        ask,
                        f,
                        request_time,
                        None,
                        CacheStatus::Expired,
                        active,
                    )
                    .await;
            }
            Err(e) if !if_error_for.is_zero() => format!("origin unreachable: {e}"),
            Err(e) => {
                return with_status_header(
                    error_response(&e, active),
                    &cache,
                    CacheStatus::Expired,
                );
            }
        };
        warn!(key = %key, "{failure}; serving the stale copy (stale-if-error)");
        set_log_cache(log, CacheStatus::Stale);
        self.serve_stored(
            &cache,
            &stale,
            stale.timing.current_age(SystemTime::now()),
            &out,
            &ask,
            CacheStatus::Stale,
            DataType::CacheStale,
            active,
            log,
        )
    }

    /// stale-while-revalidate: one background refresh per key; the stale copy is served now.
    fn refresh_in_background(
        self: &Arc<Self>,
        table: Arc<RoutingTable>,
        cache: Arc<ServiceCache>,
        key: String,
        out: &Outbound<'_>,
        stale: Arc<Variant>,
    ) {
        let Role::Leader(guard) = fill::join(&cache, &key) else {
            return;
        };
        let proxy = self.clone();
        let service = out.service.name.clone();
        let mut parts = clone_head(&out.parts);
        add_validators(&mut parts.headers, &stale);
        let (facts, host, pq, client_version, peer) = (
            out.facts.clone(),
            out.host.clone(),
            out.path_and_query.clone(),
            out.client_version,
            out.peer,
        );
        tokio::spawn(async move {
            let _guard = guard;
            let Some(service) = table.service(&service) else {
                return;
            };
            let mut o = Outbound {
                service,
                forwarded: true,
                upgrade: None,
                facts,
                parts,
                host,
                path_and_query: pq,
                body: RequestBody::Empty,
                client_version,
                peer,
                started: Instant::now(),
            };
            let request_time = SystemTime::now();
            let Ok(f) = proxy.fetch(&mut o, &mut None).await else {
                return;
            };
            let now = SystemTime::now();
            if f.resp.status() == StatusCode::NOT_MODIFIED {
                let refreshed = refresh(
                    &cache,
                    &stale,
                    f.resp.headers(),
                    &o.parts,
                    request_time,
                    now,
                );
                cache.insert(&key, refreshed);
                return;
            }
            let dirs = Directives::parse(f.resp.headers());
            let rules = Rules {
                default_ttl: cache.spec.default_ttl,
                heuristic: cache.spec.heuristic_freshness,
            };
            let Ok(freshness) = policy::storable(
                &Method::GET,
                &o.parts.headers,
                f.resp.status(),
                f.resp.headers(),
                &dirs,
                rules,
                now,
            ) else {
                return;
            };
            let status = f.resp.status();
            let mut headers = f.resp.headers().clone();
            super::headers::strip_hop_by_hop(&mut headers);
            headers.remove(header::AGE);
            let timing = Timing::of(&headers, request_time, now);
            let (_, body) = f.resp.into_parts();
            if let Ok(b) = http_body_util::Limited::new(body, cache.spec.max_object_size as usize)
                .collect()
                .await
            {
                let sel = stale.selectors.clone();
                cache.insert(
                    &key,
                    Variant::new(status, headers, b.to_bytes(), timing, freshness, sel),
                );
            }
        });
    }

    /// PURGE from a trusted peer invalidates every variant of the URL.
    fn purge_request(
        &self,
        cache: &ServiceCache,
        key: &str,
        out: &Outbound<'_>,
        active: ActiveRequest,
    ) -> Response<ProxyBody> {
        let peer: IpAddr = out.peer.ip().to_canonical();
        let (status, body) = if cache.spec.purge_from.iter().any(|n| n.contains(&peer)) {
            let n = cache.purge_url(key);
            (StatusCode::OK, format!("{{\"purged\": {n}}}\n"))
        } else {
            warn!(peer = %peer, key, "PURGE from an address not in purge_from; refused");
            (
                StatusCode::FORBIDDEN,
                "{\"error\": \"PURGE not allowed from this address\"}\n".to_string(),
            )
        };
        let mut r = Response::new(ProxyBody::full(body, Completion::serving(active)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn serve_stored(
        &self,
        cache: &ServiceCache,
        v: &Variant,
        age: Duration,
        out: &Outbound<'_>,
        ask: &ClientAsk,
        status: CacheStatus,
        data_type: DataType,
        active: ActiveRequest,
        log: &mut Option<Box<PendingLog>>,
    ) -> Response<ProxyBody> {
        set_log_cache(log, status);
        if let Some(l) = log.as_mut() {
            l.record.region = Some(streamgate_cache::EDGE.into());
        }
        self.serve_stored_with(cache, v, age, out, ask, status, Some(data_type), active)
    }

    /// Builds a response from a stored object: 304 for a matching condition, 206/416 for a
    /// range, headers only for HEAD.
    #[allow(clippy::too_many_arguments)]
    fn serve_stored_with(
        &self,
        cache: &ServiceCache,
        v: &Variant,
        age: Duration,
        out: &Outbound<'_>,
        ask: &ClientAsk,
        status: CacheStatus,
        data_type: Option<DataType>,
        active: ActiveRequest,
    ) -> Response<ProxyBody> {
        let name = cache.status_header.as_ref();
        let head = v.served_head(|stored| prepare_head(v.status, stored, name));
        let mut headers = if head.status_header.as_ref() == name {
            head.headers.clone()
        } else {
            prepare_head(v.status, &v.headers, name).headers
        };
        let age = HeaderValue::from(age.as_secs());
        replace_or_insert(&mut headers, &header::AGE, age);
        let mut code = v.status;
        let mut body = v.body.clone();
        if v.status == StatusCode::OK {
            if v.not_modified_for(&ask.conditions) {
                code = StatusCode::NOT_MODIFIED;
                body = Bytes::new();
                headers.retain_304();
            } else if ask.method == Method::GET
                && let Some(range) = ask.range.as_deref()
                && if_range_holds(&ask.conditions, v)
            {
                let len = v.body.len() as u64;
                match range_reply(Some(range), len) {
                    RangeReply::Full => {}
                    RangeReply::Partial { start, end } => {
                        code = StatusCode::PARTIAL_CONTENT;
                        body = v.body.slice(start as usize..=end as usize);
                        headers.insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
                                .unwrap_or(HeaderValue::from_static("")),
                        );
                        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                    }
                    RangeReply::Unsatisfiable => {
                        code = StatusCode::RANGE_NOT_SATISFIABLE;
                        body = Bytes::new();
                        headers.insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes */{len}"))
                                .unwrap_or(HeaderValue::from_static("")),
                        );
                        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                    }
                }
            }
        }
        if ask.method == Method::HEAD {
            body = Bytes::new();
        }
        let m = &cache.metrics;
        m.requests[code_class_index(code.as_u16())].inc();
        if let Some(d) = data_type {
            m.locality[d.index()].inc();
            m.locality_latency[d.index()].observe(out.started.elapsed().as_secs_f64());
        }
        let mut resp = Response::new(ProxyBody::stored(
            body,
            Completion::serving(active),
            m.served.clone(),
        ));
        if let Some(name) = name {
            replace_or_insert(
                &mut headers,
                name,
                HeaderValue::from_static(status.as_str()),
            );
        }
        *resp.status_mut() = code;
        *resp.headers_mut() = headers;
        *resp.version_mut() = out.client_version;
        resp
    }
}

/// Sets a field the prepared head has a placeholder for. `insert` would first make room for
/// one more field, which a cloned map (filled to its capacity) does by rebuilding its index.
fn replace_or_insert(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    match headers.get_mut(name) {
        Some(v) => *v = value,
        None => {
            headers.insert(name.clone(), value);
        }
    }
}

/// The head every answer from a stored object starts from: its stored headers, Via, and for a
/// 200 Accept-Ranges (ranges are served from it), with placeholders for Age and the cache-status
/// header that each answer replaces.
fn prepare_head(
    status: StatusCode,
    stored: &HeaderMap,
    status_header: Option<&HeaderName>,
) -> ServedHead {
    let mut headers = stored.clone();
    headers.insert(header::AGE, HeaderValue::from_static("0"));
    append_via(&mut headers, Version::HTTP_11);
    if status == StatusCode::OK && !headers.contains_key(header::ACCEPT_RANGES) {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if let Some(name) = status_header {
        headers.insert(
            name.clone(),
            HeaderValue::from_static(CacheStatus::Hit.as_str()),
        );
    }
    ServedHead {
        status_header: status_header.cloned(),
        // Kept for the object's lifetime: without the room `insert` left for more fields.
        headers: headers.clone(),
    }
}

/// 304 carries only the fields that describe the representation's cache state (RFC 9110 §15.4.5).
trait Retain304 {
    fn retain_304(&mut self);
}

impl Retain304 for HeaderMap {
    fn retain_304(&mut self) {
        let keep = [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::AGE,
            header::VIA,
            header::LAST_MODIFIED,
        ];
        let mut out = HeaderMap::new();
        for k in keep {
            for v in self.get_all(&k) {
                out.append(k.clone(), v.clone());
            }
        }
        *self = out;
    }
}

/// If-Range: the range applies only if the validator still matches (strong ETag or date).
fn if_range_holds(conditions: &HeaderMap, v: &Variant) -> bool {
    let Some(cond) = conditions
        .get(header::IF_RANGE)
        .and_then(|c| c.to_str().ok())
    else {
        return true;
    };
    if cond.starts_with('"') {
        return v.etag.as_ref().and_then(|e| e.to_str().ok()) == Some(cond);
    }
    match (policy::parse_http_date(cond), v.last_modified) {
        (Some(d), Some(lm)) => lm <= d,
        _ => false,
    }
}

fn add_validators(headers: &mut HeaderMap, v: &Variant) {
    if let Some(etag) = &v.etag {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = v.headers.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

fn strip_validators(headers: &mut HeaderMap) {
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
}

/// The stored object updated by a 304 (RFC 9111 §4.3.4).
fn refresh(
    cache: &ServiceCache,
    stale: &Variant,
    not_modified: &HeaderMap,
    req: &Parts,
    request_time: SystemTime,
    now: SystemTime,
) -> Variant {
    let merged = stale.refreshed(
        not_modified,
        Timing::of(not_modified, request_time, now),
        stale.freshness,
    );
    let dirs = Directives::parse(&merged.headers);
    let rules = Rules {
        default_ttl: cache.spec.default_ttl,
        heuristic: cache.spec.heuristic_freshness,
    };
    match policy::storable(
        &Method::GET,
        &req.headers,
        stale.status,
        &merged.headers,
        &dirs,
        rules,
        now,
    ) {
        Ok(f) => Variant::new(
            merged.status,
            merged.headers,
            merged.body,
            merged.timing,
            f,
            merged.selectors,
        ),
        Err(_) => merged,
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

fn set_log_cache(log: &mut Option<Box<PendingLog>>, status: CacheStatus) {
    if let Some(l) = log.as_mut() {
        l.record.cache = Some(status.as_str());
    }
}

fn with_status_header(
    mut resp: Response<ProxyBody>,
    cache: &ServiceCache,
    status: CacheStatus,
) -> Response<ProxyBody> {
    if let Some(name) = &cache.status_header {
        resp.headers_mut()
            .insert(name.clone(), HeaderValue::from_static(status.as_str()));
    }
    resp
}
