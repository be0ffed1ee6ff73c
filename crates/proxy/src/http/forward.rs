//! One HTTP request, end to end: match a service ([`HttpProxy::prepare`]), then answer from the
//! cache ([`super::cached`]) or pick a region and backend and forward over a pooled connection,
//! retrying where safe ([`HttpProxy::fetch`]), and stream the answer back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use streamgate_balance::stats::nanos_at;
use streamgate_balance::{ClientFacts, Lease, NoRoute, Outcome, Pick, RoutingTable, Service};
use streamgate_config::{RegionPolicy, UpstreamProtocol};
use streamgate_telemetry::access_log::AccessRecord;
use streamgate_telemetry::prometheus::IntCounter;
use streamgate_telemetry::{DataType, code_class_index};
use tracing::{info, warn};

use super::HttpProxy;
use super::body::{Completion, PendingLog, ProxyBody, RequestBody, Upload};
use super::error::ProxyError;
use super::headers::{
    add_forwarding, append_via, client_ip, is_idempotent, is_trusted, lists_token,
    strip_client_forwarding, strip_hop_by_hop,
};
use crate::io::ActiveRequest;
use crate::limits::Limit;
use crate::tunnel::{Ended, relay};
use crate::upstream::{ExchangeTimeouts, UpstreamBody};

/// Most backends one request tries when connections fail.
const MAX_TRIES: usize = 8;

/// A request matched to its service and rewritten for the backend.
#[derive(Debug)]
pub(crate) struct Outbound<'t> {
    pub service: &'t Service,
    /// The client's address; its geo lookup waits for the first fetch (a cache hit needs none).
    pub facts: ClientFacts,
    /// The head as it goes upstream: hop-by-hop removed, HTTP/1.1; forwarding headers are added
    /// by the first fetch.
    pub parts: Parts,
    pub forwarded: bool,
    /// The client connection once upgraded (WebSocket), when the request asks for an upgrade.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    pub host: HeaderValue,
    pub path_and_query: PathAndQuery,
    pub body: RequestBody,
    pub client_version: Version,
    pub peer: SocketAddr,
    pub started: Instant,
}

/// A backend's answer (head read, body not yet) and where it came from.
#[derive(Debug)]
pub(crate) struct Fetched<'t> {
    pub resp: Response<UpstreamBody>,
    pub lease: Lease,
    pub pick: Pick<'t>,
    pub head_at: Instant,
}

impl HttpProxy {
    /// Answers one request. Never fails: every error becomes a response.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        active: ActiveRequest,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let table = self.table.load_full();
        let mut log = self.access_log.load().as_ref().map(|sink| {
            Box::new(PendingLog {
                record: self.log_skeleton(&req, peer),
                bytes_in: None,
                sink: sink.clone(),
                started,
            })
        });
        let mut resp = match self.prepare(&table, req, peer, started, &mut log) {
            Err(e) => error_response(&e, active),
            Ok(out) if let Err(e) = self.admit(&out) => error_response(&e, active),
            Ok(out) => match out.service.spec.cache.as_ref() {
                Some(spec) => {
                    let cache = self.caches.for_service(&out.service.name, spec);
                    self.cached(&table, cache, out, active, &mut log).await
                }
                None => self.pass(out, active, &mut log).await,
            },
        };
        if let Some(mut pending) = log {
            pending.record.status = resp.status().as_u16();
            resp.body_mut().log_when_done(pending);
        }
        resp
    }

    /// The service's limits: a body declared larger than `max_body` (413), the service's and
    /// the client's request rates (429 with Retry-After). Each refusal is counted.
    fn admit(&self, out: &Outbound<'_>) -> Result<(), ProxyError> {
        let limits = &out.service.spec.limits;
        let declared = out
            .parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limits.max_body) {
            self.limited.count(Limit::Body);
            return Err(ProxyError::PayloadTooLarge {
                max: limits.max_body,
            });
        }
        if limits.rate.is_none() && limits.client_rate.is_none() {
            return Ok(());
        }
        let rates = self
            .rates
            .of(&out.service.name, limits.rate, limits.client_rate);
        let now = nanos_at(out.started);
        if let Some(r) = &rates.rate
            && let Err(wait) = r.check(now)
        {
            self.limited.count(Limit::Rate);
            return Err(ProxyError::TooManyRequests { retry_after: wait });
        }
        if let (Some(r), Some(ip)) = (&rates.client_rate, out.facts.ip)
            && let Err(wait) = r.check(ip.to_canonical(), now)
        {
            self.limited.count(Limit::ClientRate);
            return Err(ProxyError::TooManyRequests { retry_after: wait });
        }
        Ok(())
    }

    /// Straight to the origin, no cache.
    pub(crate) async fn pass(
        &self,
        mut out: Outbound<'_>,
        active: ActiveRequest,
        log: &mut Option<Box<PendingLog>>,
    ) -> Response<ProxyBody> {
        match self.fetch(&mut out, log).await {
            Ok(f)
                if f.resp.status() == StatusCode::SWITCHING_PROTOCOLS && out.upgrade.is_some() =>
            {
                self.tunnel(f, &mut out, active)
            }
            Ok(f) => self.origin_response(f, &out, DataType::Pass, Completion::serving(active)),
            Err(e) => error_response(&e, active),
        }
    }

    /// A 101 from the backend: answer the client with it, then copy bytes both ways between the
    /// upgraded client connection and the backend connection (WebSocket and other upgrades).
    fn tunnel(
        &self,
        f: Fetched<'_>,
        out: &mut Outbound<'_>,
        active: ActiveRequest,
    ) -> Response<ProxyBody> {
        let Fetched {
            resp, lease, pick, ..
        } = f;
        let (mut parts, body) = resp.into_parts();
        let Some((backend, read_ahead)) = body.into_tunnel() else {
            let e = ProxyError::Upstream {
                backend: pick.backend.address,
                reason: "101 without a connection to tunnel".into(),
            };
            return error_response(&e, active);
        };
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if out.client_version == Version::HTTP_2 {
            // RFC 8441: the extended CONNECT succeeds with a 200; the accept key is HTTP/1.1's.
            parts.status = StatusCode::OK;
            parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        } else if let Some(p) = protocol {
            parts.headers.insert(header::UPGRADE, p);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        parts.version = out.client_version;
        let on_upgrade = out.upgrade.take();
        let (listener, service) = (self.listener.clone(), out.service.name.clone());
        let idle = out.service.spec.timeouts.tunnel_idle;
        let tunnels = self.tunnels.clone();
        // The tunnel keeps its connection active (no request-header or keep-alive deadline
        // applies to it) until it ends; it ends when the connection's task does.
        let hold = active.another();
        tokio::spawn(async move {
            let conn = hold.conn().clone();
            let Some(on_upgrade) = on_upgrade else { return };
            let upgraded = tokio::select! {
                u = on_upgrade => u,
                () = conn.closed() => return,
            };
            match upgraded {
                Ok(upgraded) => {
                    let client = hyper_util::rt::TokioIo::new(upgraded);
                    let backend = crate::io::Prefixed::new(read_ahead.freeze(), backend);
                    let ended = tokio::select! {
                        e = relay(client, backend, idle, &tunnels) => e,
                        () = conn.closed() => Ended::Failed(std::io::Error::other("shutting down")),
                    };
                    match ended {
                        Ended::Closed { up, down } => {
                            tracing::debug!(listener = %listener, service = %service, up, down, "tunnel closed")
                        }
                        Ended::Idle => {
                            tracing::debug!(listener = %listener, service = %service, idle = ?idle, "idle tunnel closed")
                        }
                        Ended::Failed(e) => {
                            tracing::debug!(listener = %listener, service = %service, error = %e, "tunnel ended with an error")
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(listener = %listener, error = %e, "client upgrade failed")
                }
            }
            drop(lease);
            drop(hold);
        });
        Response::from_parts(
            parts,
            ProxyBody::full(Bytes::new(), Completion::serving(active)),
        )
    }

    fn log_skeleton(&self, req: &Request<Incoming>, peer: SocketAddr) -> AccessRecord {
        AccessRecord {
            time: std::time::SystemTime::now(),
            listener: self.listener.clone(),
            client: peer.ip().to_canonical(),
            protocol: match req.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            method: req.method().as_str().to_string(),
            host: request_host(req)
                .ok()
                .map(|h| host_str(&h).to_string())
                .unwrap_or_default(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string()),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration: std::time::Duration::ZERO,
            service: None,
            region: None,
            backend: None,
            cache: None,
            retries: 0,
        }
    }

    /// Matches the request to a service and rewrites its head for the backend.
    pub(crate) fn prepare<'t>(
        &self,
        table: &'t RoutingTable,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        started: Instant,
        log: &mut Option<Box<PendingLog>>,
    ) -> Result<Outbound<'t>, ProxyError> {
        // RFC 8441: an HTTP/2 CONNECT with :protocol = websocket opens a WebSocket; it goes to
        // the backend as an HTTP/1.1 Upgrade. Plain CONNECT (forward proxying) is not served.
        let h2_websocket = req.method() == Method::CONNECT
            && req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if req.method() == Method::CONNECT && !h2_websocket {
            return Err(ProxyError::MethodNotAllowed {
                method: req.method().to_string(),
            });
        }
        let host = request_host(&req)?;
        // RFC 9112 §3.2: a valid authority. A Host with a path in it would make the cache key
        // of one URL the key of another.
        if !valid_authority(host.as_bytes()) {
            return Err(ProxyError::InvalidHost);
        }
        // Routed and forwarded as normalised (http::path): what matched is what the origin gets.
        let normal = super::path::normalize(req.uri().path());
        let route_path = normal.as_deref().unwrap_or(req.uri().path());
        let service = match table.route(&self.listener, host_str(&host), route_path) {
            Ok(s) => s,
            Err(NoRoute::Host) => {
                return Err(ProxyError::UnknownHost {
                    listener: self.listener.to_string(),
                });
            }
            Err(NoRoute::Path) => {
                return Err(ProxyError::UnknownPath {
                    listener: self.listener.to_string(),
                });
            }
        };
        service.state.note_request(nanos_at(started));

        let trusted = table
            .config
            .geo
            .as_ref()
            .map_or(&[][..], |g| &g.trusted_proxies[..]);
        let ip = client_ip(peer.ip(), req.headers(), trusted);
        let facts = ClientFacts {
            ip: Some(ip),
            geo: None,
        };
        if let Some(l) = log.as_mut() {
            l.record.service = Some(service.name.clone());
            l.record.client = ip.to_canonical();
        }

        // HTTP/1.1 Upgrade (WebSocket): the Upgrade header goes on to the backend.
        let upgrade_to = (req.version() == Version::HTTP_11
            && lists_token(req.headers(), &header::CONNECTION, "upgrade"))
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
        .or_else(|| h2_websocket.then(|| HeaderValue::from_static("websocket")));
        let upgrade = upgrade_to.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        strip_hop_by_hop(&mut parts.headers);
        if !is_trusted(peer.ip().to_canonical(), trusted) {
            strip_client_forwarding(&mut parts.headers);
        }
        if let Some(u) = upgrade_to {
            parts.headers.insert(header::UPGRADE, u);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        // After CONNECT the stream itself is the tunnel; no body goes ahead of the upgrade.
        let body_done = h2_websocket || body.is_end_stream();
        if h2_websocket {
            parts.method = Method::GET;
            // HTTP/2 has no key/accept handshake; HTTP/1.1 needs one.
            let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            if let Ok(v) = HeaderValue::from_str(&key) {
                parts.headers.insert(header::SEC_WEBSOCKET_KEY, v);
            }
            parts
                .headers
                .entry(header::SEC_WEBSOCKET_VERSION)
                .or_insert(HeaderValue::from_static("13"));
        }
        // The backend sees the host the client asked for (from the URI for HTTP/2 and
        // absolute-form requests).
        parts.headers.insert(header::HOST, host.clone());
        parts.version = Version::HTTP_11;
        let path_and_query = match normal {
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            Some(p) => {
                let pq = match parts.uri.query() {
                    Some(q) => format!("{p}?{q}"),
                    None => p,
                };
                PathAndQuery::from_maybe_shared(Bytes::from(pq))
                    .map_err(|_| ProxyError::InvalidPath)?
            }
        };
        let body = if body_done {
            RequestBody::Empty
        } else {
            let upload = Upload::new(service.spec.limits.max_body);
            if let Some(l) = log.as_mut() {
                l.bytes_in = Some(upload.clone());
            }
            RequestBody::Stream(body, upload)
        };
        Ok(Outbound {
            service,
            forwarded: false,
            upgrade,
            facts,
            parts,
            host,
            path_and_query,
            body,
            client_version,
            peer,
            started,
        })
    }

    /// Picks a backend and sends the request, retrying elsewhere where safe. Records the
    /// request's routing, status class and latency metrics.
    pub(crate) async fn fetch<'t>(
        &self,
        out: &mut Outbound<'t>,
        log: &mut Option<Box<PendingLog>>,
    ) -> Result<Fetched<'t>, ProxyError> {
        let service = out.service;
        if !out.forwarded {
            out.forwarded = true;
            let host = out.host.clone();
            add_forwarding(
                &mut out.parts.headers,
                out.peer.ip(),
                self.https,
                Some(host_str(&host)),
                out.client_version,
            );
            if service.spec.region_policy == RegionPolicy::Geo
                && let (Some(ip), Some(db)) = (out.facts.ip, self.geo.load().as_ref())
            {
                out.facts.geo = db.lookup(ip);
            }
        }
        let timeouts = service.spec.timeouts;
        let exchange_timeouts = ExchangeTimeouts {
            connect: timeouts.connect,
            idle: timeouts.upstream_idle,
            body_stall: timeouts.upstream_response,
        };
        let idempotent = is_idempotent(&out.parts.method);
        let max_sent_attempts = 1 + service.spec.retry.attempts;
        let Some(mut pick) = service.pick(&out.facts, &[]) else {
            warn!(service = %service.name, "no usable backend in any region: answering 503");
            self.metrics
                .requests
                .with_label_values(&[&*service.name, "none", "5xx"])
                .inc();
            return Err(ProxyError::NoBackend {
                service: service.name.to_string(),
            });
        };
        // Backends this request already failed on, so a retry goes elsewhere.
        let mut tried: Vec<SocketAddr> = Vec::new();
        // Attempts where the request (may have) reached a backend; a connect failure does not
        // count, as nginx tries every server when a connection is refused.
        let mut sent_attempts = 0;
        loop {
            // One clock read per attempt: the lease, the pool's idle check and the deadline share it.
            let attempt_at = if tried.is_empty() {
                out.started
            } else {
                Instant::now()
            };
            tried.push(pick.backend.address);
            if let Some(l) = log.as_mut() {
                l.record.region = Some(pick.region.name.clone());
                l.record.backend = Some(pick.backend.address);
                l.record.retries = tried.len() as u32 - 1;
            }
            let lease = Lease::starting_at(pick.backend.state.clone(), attempt_at);
            let upstream = &service.spec.upstream;
            let upload = match &out.body {
                RequestBody::Stream(_, u) => Some(u.clone()),
                RequestBody::Empty => None,
            };
            let exchange = async {
                if upstream.protocol != UpstreamProtocol::Http1 {
                    self.upstreams
                        .send_pooled(
                            pick.backend.address,
                            upstream,
                            &out.parts,
                            out.path_and_query.as_str(),
                            &mut out.body,
                            exchange_timeouts,
                        )
                        .await
                } else {
                    self.upstreams
                        .send(
                            pick.backend.address,
                            &out.parts,
                            out.path_and_query.as_str(),
                            &mut out.body,
                            exchange_timeouts,
                            attempt_at,
                        )
                        .await
                }
            };
            let answered = within_response_deadline(
                exchange,
                attempt_at,
                upload.as_deref(),
                timeouts.upstream_response,
            )
            .await;
            let failure = match answered {
                // Both framings at once (an HTTP/1.1 backend behind TLS, read by hyper): the
                // body's length is ambiguous, so the response is refused, never stored.
                // The upload was cut at max_body: whatever the backend made of the truncated
                // body is not the client's answer.
                Ok(Ok(_)) if upload.as_ref().is_some_and(|u| u.over_limit()) => {
                    ProxyError::PayloadTooLarge {
                        max: service.spec.limits.max_body,
                    }
                }
                Ok(Ok(resp)) if ambiguous_framing(resp.headers()) => ProxyError::Upstream {
                    backend: pick.backend.address,
                    reason: "response has both Transfer-Encoding and Content-Length".into(),
                },
                Ok(Ok(resp)) => {
                    sent_attempts += 1;
                    let head_at = Instant::now();
                    lease.record_head_at(head_at);
                    let status = resp.status();
                    let outcome = if status.as_u16() < 500 {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    };
                    self.note_outcome(service, &pick, outcome);
                    let retry_status = matches!(
                        status,
                        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                    );
                    if retry_status
                        && idempotent
                        && sent_attempts < max_sent_attempts
                        && matches!(out.body, RequestBody::Empty)
                        && let Some(next) = self.retry_target(service, &out.facts, &tried, true)
                    {
                        warn!(
                            service = %service.name, region = %pick.region.name, backend = %pick.backend.address,
                            next = %next.backend.address, status = status.as_u16(),
                            "backend answered {status}; retrying on another backend"
                        );
                        pick = next;
                        continue;
                    }
                    let m = &pick.region.metrics;
                    m.latency
                        .observe(head_at.saturating_duration_since(out.started).as_secs_f64());
                    m.routing[pick.reason.index()].inc();
                    m.requests[code_class_index(status.as_u16())].inc();
                    return Ok(Fetched {
                        resp,
                        lease,
                        pick,
                        head_at,
                    });
                }
                Ok(Err(e)) => ProxyError::from_upstream(pick.backend.address, e),
                Err(Late::Upload) => ProxyError::RequestBodyTimeout {
                    after: timeouts.upstream_response,
                },
                Err(Late::Response) => ProxyError::ResponseTimeout {
                    backend: pick.backend.address,
                    after: timeouts.upstream_response,
                },
            };
            drop(lease);
            let failure = if upload.as_ref().is_some_and(|u| u.over_limit()) {
                self.limited.count(Limit::Body);
                ProxyError::PayloadTooLarge {
                    max: service.spec.limits.max_body,
                }
            } else {
                failure
            };
            if failure.side() == super::error::Side::Downstream {
                // The client's fault (its body stopped or broke): not the backend's.
                pick.region.metrics.requests[code_class_index(failure.status().as_u16())].inc();
                return Err(failure);
            }
            let never_sent = failure.never_sent();
            if !never_sent {
                sent_attempts += 1;
            }
            self.note_outcome(
                service,
                &pick,
                if never_sent {
                    Outcome::ConnectFailure
                } else {
                    Outcome::Failure
                },
            );
            self.metrics
                .upstream_errors
                .with_label_values(&[&pick.region.name, failure.kind()])
                .inc();
            // A request that never left can go to any other backend (its body is still here); an
            // idempotent one without a body may be sent again, unless the backend was merely slow
            // (a retry would double the wait).
            let may_retry = if never_sent {
                tried.len() < MAX_TRIES
            } else {
                idempotent
                    && matches!(out.body, RequestBody::Empty)
                    && !matches!(failure, ProxyError::ResponseTimeout { .. })
                    && sent_attempts < max_sent_attempts
            };
            if may_retry
                && let Some(next) = self.retry_target(service, &out.facts, &tried, !never_sent)
            {
                warn!(
                    service = %service.name, region = %pick.region.name, backend = %pick.backend.address,
                    next = %next.backend.address, error = %failure, "backend failed; retrying on another backend"
                );
                pick = next;
                continue;
            }
            warn!(
                service = %service.name, region = %pick.region.name, backend = %pick.backend.address,
                status = failure.status().as_u16(), error = %failure, "request failed"
            );
            pick.region.metrics.routing[pick.reason.index()].inc();
            pick.region.metrics.requests[code_class_index(failure.status().as_u16())].inc();
            return Err(failure);
        }
    }

    /// The client's response streaming from a backend's; counts where its data came from.
    pub(crate) fn origin_response(
        &self,
        f: Fetched<'_>,
        out: &Outbound<'_>,
        data_type: DataType,
        mut done: Completion,
    ) -> Response<ProxyBody> {
        let m = &f.pick.region.metrics;
        m.locality[data_type.index()].inc();
        m.locality_latency[data_type.index()].observe(
            f.head_at
                .saturating_duration_since(out.started)
                .as_secs_f64(),
        );
        done.lease = Some(f.lease);
        let idle = out.service.spec.timeouts.idle;
        upstream_response(f.resp, &self.served_origin, out.client_version, done, idle)
    }

    /// Another backend for a retry, if there is one and, for a request that may have reached a
    /// backend (`resend`), the retry budget allows it. A refused connection sent nothing and
    /// costs its backend nothing: trying the next one is never a retry storm (nginx and HAProxy
    /// do the same), and a region cut off must not turn into 502s once the budget is spent.
    fn retry_target<'t>(
        &self,
        service: &'t Service,
        facts: &ClientFacts,
        tried: &[SocketAddr],
        resend: bool,
    ) -> Option<Pick<'t>> {
        let next = service.pick(facts, tried)?;
        if resend && !service.state.try_retry(&service.spec.retry) {
            tracing::debug!(service = %service.name, "retry budget spent; not retrying");
            return None;
        }
        service.retries.inc();
        Some(next)
    }

    fn note_outcome(&self, service: &Service, pick: &Pick<'_>, outcome: Outcome) {
        if let Some(cool_down) = pick
            .backend
            .state
            .record_outcome(outcome, &service.spec.outlier)
        {
            warn!(
                service = %service.name, region = %pick.region.name, backend = %pick.backend.address,
                cool_down = ?cool_down, "backend ejected after consecutive failures"
            );
        } else if outcome == Outcome::Success && pick.backend.state.is_ejected() {
            info!(service = %service.name, backend = %pick.backend.address, "ejected backend answered again");
        }
    }
}

/// Which side kept an exchange from finishing in time.
#[derive(Debug)]
enum Late {
    /// The client's body stopped arriving mid-upload.
    Upload,
    /// The backend did not answer after the request was sent.
    Response,
}

/// Runs `exchange`, giving the backend `limit` to answer counted from the end of the request's
/// upload (from `started` without a body). While the upload moves, the deadline moves with it:
/// a large upload is not a slow backend. An upload with no progress for `limit` is the client's
/// stall.
async fn within_response_deadline<F: std::future::Future>(
    exchange: F,
    started: Instant,
    upload: Option<&Upload>,
    limit: std::time::Duration,
) -> Result<F::Output, Late> {
    let limit_nanos = limit.as_nanos() as u64;
    let start = nanos_at(started);
    let mut exchange = std::pin::pin!(exchange);
    loop {
        let from = upload.map_or(start, |u| u.last_progress().max(start));
        let now = streamgate_balance::stats::now_nanos();
        let left = (from + limit_nanos).saturating_sub(now);
        if left == 0 {
            return Err(match upload {
                Some(u) if !u.is_done() => Late::Upload,
                _ => Late::Response,
            });
        }
        if let Ok(r) =
            tokio::time::timeout(std::time::Duration::from_nanos(left), exchange.as_mut()).await
        {
            return Ok(r);
        }
    }
}

/// The host a request is for: the URI authority (HTTP/2, absolute-form) or the Host header.
fn request_host(req: &Request<Incoming>) -> Result<HeaderValue, ProxyError> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::InvalidHost);
    }
    // One lookup for the field and for a second line of it (RFC 9112 §3.2: 400).
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => Ok(h.clone()),
        (Some(_), Some(_)) => Err(ProxyError::InvalidHost),
        // HTTP/1.0 may omit Host; only a catch-all service can take it.
        (None, _) if req.version() == Version::HTTP_10 => Ok(HeaderValue::from_static("")),
        (None, _) => Err(ProxyError::MissingHost),
    }
}

/// `host [":" port]` as RFC 3986 allows it: a bracketed IP literal or a reg-name (unreserved,
/// percent-encoded and sub-delims characters), then digits for the port. Empty is allowed (an
/// HTTP/1.0 request without Host).
fn valid_authority(h: &[u8]) -> bool {
    let (name, port) = if h.first() == Some(&b'[') {
        let Some(end) = h.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &h[1..end];
        if !inner
            .iter()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'))
        {
            return false;
        }
        match &h[end + 1..] {
            [] => (&h[..0], None),
            [b':', port @ ..] => (&h[..0], Some(port)),
            _ => return false,
        }
    } else {
        match h.iter().rposition(|&b| b == b':') {
            Some(i) => (&h[..i], Some(&h[i + 1..])),
            None => (h, None),
        }
    };
    let name_ok = name.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    name_ok && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

fn ambiguous_framing(h: &http::HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH)
}

pub(crate) fn host_str(h: &HeaderValue) -> &str {
    h.to_str().unwrap_or("")
}

fn upstream_response(
    resp: Response<UpstreamBody>,
    served: &IntCounter,
    client_version: Version,
    done: Completion,
    idle: std::time::Duration,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    append_via(&mut parts.headers, parts.version);
    // The client gets our protocol version, whatever the backend spoke.
    parts.version = client_version;
    let body = if client_version == Version::HTTP_2 {
        ProxyBody::upstream_h2(body, done, served.clone(), idle)
    } else {
        ProxyBody::upstream(body, done, served.clone())
    };
    Response::from_parts(parts, body)
}

pub(crate) fn error_response(e: &ProxyError, active: ActiveRequest) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(
        e.client_message(),
        Completion::serving(active),
    ));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if e.status() == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let ProxyError::TooManyRequests { retry_after } = e {
        // Whole seconds (RFC 9110 §10.2.3), rounded up so a client that waits is admitted.
        let secs = retry_after.as_nanos().div_ceil(1_000_000_000).max(1);
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::valid_authority;

    #[test]
    fn hosts_are_authorities() {
        let good = [
            "app.test",
            "app.test:8080",
            "APP.test.",
            "[::1]:80",
            "[::1]",
            "10.0.0.1",
            "",
            "h:",
        ];
        for ok in good {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        let bad = [
            "a.example/evil",
            "a b",
            "a@b",
            "a.test:80x",
            "[::1",
            "[::1]x",
            "a?b",
            "a#b",
        ];
        for bad in bad {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }
}
