//! The origin path: pick a region and backend, forward over a pooled connection, retry where
//! safe ([`HttpProxy::fetch`]), pass an answer through ([`HttpProxy::pass`]) or relay an
//! upgraded connection ([`HttpProxy::tunnel`]). Called by the service layer and by the cache;
//! calls neither.

use std::net::SocketAddr;
use std::time::Instant;

use http::header;
use http::{Response, StatusCode, Version};
use streamgate_balance::stats::nanos_at;
use streamgate_balance::{ClientFacts, Lease, Outcome, Pick, Service};
use streamgate_config::{RegionPolicy, UpstreamProtocol};
use streamgate_telemetry::prometheus::IntCounter;
use streamgate_telemetry::{DataType, code_class_index};
use tracing::{info, warn};

use super::HttpProxy;
use super::body::{Completion, PendingLog, ProxyBody, RequestBody, Upload};
use super::error::ProxyError;
use super::error::error_response;
use super::headers::{add_forwarding, append_via, is_idempotent, last_fields, strip_hop_by_hop};
use super::recording::Recording;
use super::request::{Outbound, ambiguous_framing};
use crate::io::ActiveRequest;
use crate::limits::Limit;
use crate::upstream::{ExchangeTimeouts, UpstreamBody, WholeReadError};

/// Most backends one request tries when connections fail.
const MAX_TRIES: usize = 8;

/// A backend's answer (head read, body not yet) and where it came from.
#[derive(Debug)]
pub(crate) struct Fetched<'t> {
    pub resp: Response<UpstreamBody>,
    pub lease: Lease,
    pub pick: Pick<'t>,
    pub head_at: Instant,
}

impl HttpProxy {
    /// Straight to the origin, no cache.
    pub(crate) async fn pass(
        &self,
        out: &mut Outbound<'_>,
        active: ActiveRequest,
        log: &mut Option<Box<PendingLog>>,
    ) -> Response<ProxyBody> {
        match self.fetch(out, log).await {
            Ok(f)
                if f.resp.status() == StatusCode::SWITCHING_PROTOCOLS && out.upgrade.is_some() =>
            {
                self.tunnel(f, out, active)
            }
            // An HTTP/2 extended CONNECT (RFC 8441) the backend did not upgrade: a 2xx would tell
            // the client its tunnel is open, with nothing behind it.
            Ok(f)
                if out.upgrade.is_some()
                    && out.client_version == Version::HTTP_2
                    && f.resp.status().is_success() =>
            {
                let e = ProxyError::Upstream {
                    backend: f.pick.backend.address,
                    reason: format!(
                        "answered the WebSocket handshake with {}, not 101",
                        f.resp.status().as_u16()
                    ),
                };
                error_response(&e, active)
            }
            Ok(f) => {
                self.origin_response(f, out, DataType::Pass, Completion::serving(active), None)
            }
            Err(e) => error_response(&e, active),
        }
    }

    /// Picks a backend and sends the request, retrying elsewhere where safe. Records the
    /// request's routing, status class and latency metrics.
    pub(crate) async fn fetch<'t>(
        &self,
        out: &mut Outbound<'t>,
        log: &mut Option<Box<PendingLog>>,
    ) -> Result<Fetched<'t>, ProxyError> {
        let service = out.service;
        let upstream = &service.spec.upstream;
        // Without a cache nothing reads the forwarding fields from the map (a cache would, for
        // Vary): to an HTTP/1.1 backend they are written after the map's fields.
        let forwarding_last =
            service.spec.cache.is_none() && upstream.protocol == UpstreamProtocol::Http1;
        if !out.forwarded && !forwarding_last {
            add_forwarding(
                &mut out.parts.headers,
                &out.forwarded_for,
                self.https,
                Some(&out.host),
                out.client_version,
            );
        }
        if !out.forwarded {
            out.forwarded = true;
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
        // A small body is all in before a backend is asked, as nginx buffers request bodies: a
        // client that trickles it (one in each of an HTTP/2 connection's 256 streams) holds no
        // backend connection meanwhile, and it can go to the next backend after a failure.
        if let Err(e) = out.body.read_whole(timeouts.upstream_response).await {
            self.metrics
                .requests
                .with_label_values(&[&*service.name, "none", "4xx"])
                .inc();
            return Err(match e {
                WholeReadError::Stalled => ProxyError::RequestBodyTimeout {
                    after: timeouts.upstream_response,
                },
                WholeReadError::Broke(reason) => ProxyError::ClientAborted { reason },
            });
        }
        // The first attempt starts now if the client took time over its body: a pooled
        // connection's idle time and the backend's latency sample count from here.
        let first_at = match out.body {
            RequestBody::Whole(..) => Instant::now(),
            _ => out.started,
        };
        // Read before the first attempt: a streaming body goes with the attempt that sends it
        // (the client's stream cannot be read twice), so `out.body` is empty afterwards, and a
        // PUT replayed from it went out with none. One read whole stays for the next attempt.
        let resendable = out.body.resendable();
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
        // Backends this request already failed on, so a retry goes elsewhere. Filled only when
        // an attempt fails: a request answered at the first try allocates no list.
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempts: u32 = 0;
        // Attempts where the request (may have) reached a backend; a connect failure does not
        // count, as nginx tries every server when a connection is refused.
        let mut sent_attempts = 0;
        loop {
            // One clock read per attempt: the lease, the pool's idle check and the deadline share it.
            let attempt_at = if attempts == 0 {
                first_at
            } else {
                Instant::now()
            };
            attempts += 1;
            if let Some(l) = log.as_mut() {
                l.record.region = Some(pick.region.name.clone());
                l.record.backend = Some(pick.backend.address);
                l.record.retries = attempts - 1;
            }
            let lease = Lease::starting_at(pick.backend.state.clone(), attempt_at);
            let upload = out.body.upload().cloned();
            let answered = {
                // Pinned here, and borrowed below: an exchange passed by value would sit in this
                // future twice (as the deadline's argument and its pinned local).
                let exchange = std::pin::pin!(async {
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
                                out.raw_answer,
                                forwarding_last
                                    .then(|| {
                                        last_fields(
                                            &out.forwarded_for,
                                            self.https,
                                            &out.host,
                                            out.client_version,
                                        )
                                    })
                                    .as_ref(),
                            )
                            .await
                    }
                });
                within_response_deadline(
                    exchange,
                    attempt_at,
                    upload.as_deref(),
                    timeouts.upstream_response,
                )
                .await
            };
            // A 101 must answer the upgrade the request asked for (see `switch`).
            let switch_refused = match &answered {
                Ok(Ok(r)) if r.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    let asked = out.upgrade.is_some();
                    let h = &out.parts.headers;
                    super::switch::refusal(
                        asked.then(|| h.get(header::UPGRADE)).flatten(),
                        r.headers(),
                        (asked && out.client_version == Version::HTTP_2)
                            .then(|| h.get(header::SEC_WEBSOCKET_KEY))
                            .flatten(),
                    )
                }
                _ => None,
            };
            let failure = match answered {
                Ok(Ok(_)) if switch_refused.is_some() => ProxyError::Upstream {
                    backend: pick.backend.address,
                    reason: switch_refused.unwrap_or_default().into(),
                },
                // Both framings at once (an HTTP/1.1 backend behind TLS, read by hyper): the
                // body's length is ambiguous, so the response is refused, never stored.
                // The upload was cut at max_body: whatever the backend made of the truncated
                // body is not the client's answer.
                Ok(Ok(_)) if upload.as_ref().is_some_and(|u| u.over_limit()) => {
                    ProxyError::PayloadTooLarge {
                        max: service.spec.limits.max_body,
                    }
                }
                // The client's body broke off (a bad chunk, a closed or reset connection),
                // and the backend answered what it got: often a 500 from an application that
                // hit EOF. That is the client's doing, and never a mark against the backend.
                Ok(Ok(_)) if upload.as_ref().is_some_and(|u| u.client_broke()) => {
                    ProxyError::ClientAborted {
                        reason: "request body broke off before its end".into(),
                    }
                }
                Ok(Ok(resp)) if ambiguous_framing(resp.headers()) => ProxyError::Upstream {
                    backend: pick.backend.address,
                    reason: "response has both Transfer-Encoding and Content-Length".into(),
                },
                Ok(Ok(resp)) => {
                    sent_attempts += 1;
                    let head_at = Instant::now();
                    // Counted from the request's last byte: a client's slow upload is not the
                    // backend's latency. An answer before the upload's end (a chunk still
                    // trickling) counts from the start.
                    let sent = upload
                        .as_ref()
                        .filter(|u| u.is_done())
                        .map_or(0, |u| u.last_progress());
                    lease.record_head_after(sent, head_at);
                    let status = resp.status();
                    // 501 and 505 are the backend's answer to what the client asked (a
                    // method or version it does not serve), not its failure: HAProxy's
                    // `observe layer7` leaves them out for that reason.
                    let outcome = match status.as_u16() {
                        0..=499 | 501 | 505 => Outcome::Success,
                        _ => Outcome::Failure,
                    };
                    self.note_outcome(service, &pick, outcome);
                    let retry_status = matches!(
                        status,
                        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                    );
                    if retry_status && idempotent && sent_attempts < max_sent_attempts && resendable
                    {
                        tried.push(pick.backend.address);
                        if let Some(next) = self.retry_target(service, &out.facts, &tried, true) {
                            warn!(
                                service = %service.name, region = %pick.region.name, backend = %pick.backend.address,
                                next = %next.backend.address, status = status.as_u16(),
                                "backend answered {status}; retrying on another backend"
                            );
                            pick = next;
                            continue;
                        }
                    }
                    let m = &pick.region.metrics;
                    m.latency
                        .observe(head_at.saturating_duration_since(out.started).as_secs_f64());
                    m.routing[pick.reason.index()].inc();
                    m.requests[code_class_index(status.as_u16())].inc();
                    let mut resp = match &service.spec.compression {
                        // A 101 is the tunnel's: its Upgrade and Connection are for the client.
                        Some(c) if status != StatusCode::SWITCHING_PROTOCOLS => {
                            super::compress::response(
                                resp,
                                super::compress::accepted(&out.parts.headers),
                                c,
                                &self.encoders,
                                out.facts.ip.unwrap_or(out.peer.ip()),
                                out.parts.method == http::Method::HEAD,
                            )
                        }
                        _ => resp,
                    };
                    if resp
                        .extensions()
                        .get::<super::compress::Uncompressed>()
                        .is_some()
                    {
                        self.limited.count(crate::limits::Limit::Compression);
                    }
                    // Only for rules that may read it: an extension costs an allocation.
                    if out.served_by {
                        resp.extensions_mut().insert(super::rules::ServedBy {
                            backend: pick.backend.address,
                            region: pick.region.name.clone(),
                        });
                    }
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
            tried.push(pick.backend.address);
            let failure = if upload.as_ref().is_some_and(|u| u.over_limit()) {
                self.limited.count(Limit::Body);
                ProxyError::PayloadTooLarge {
                    max: service.spec.limits.max_body,
                }
            } else if upload.as_ref().is_some_and(|u| u.client_broke()) {
                // Seen by an HTTP/2 backend's client as its body's error, or by the backend as
                // a connection closed mid-body: still the client's.
                ProxyError::ClientAborted {
                    reason: "request body broke off before its end".into(),
                }
            } else {
                failure
            };
            if failure.side() != super::error::Side::Upstream {
                // The client's fault (its body stopped or broke), or this process's shortage
                // (out of descriptors or socket memory, which any other backend would meet as well):
                // not the backend's, and no cause to eject it.
                if failure.side() == super::error::Side::Internal {
                    self.limited.count(Limit::Descriptors);
                    crate::descriptors::shortage_met(&failure);
                }
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
                    && resendable
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
        recording: Option<Recording>,
    ) -> Response<ProxyBody> {
        let m = &f.pick.region.metrics;
        m.locality[data_type.index()].inc();
        m.locality_latency[data_type.index()].observe(
            f.head_at
                .saturating_duration_since(out.started)
                .as_secs_f64(),
        );
        let mut resp = f.resp;
        // consistent_hash's sticky cookie, when the client's did not name the backend that
        // answered (none, stale, or its backend unusable). Added after the cache took its copy
        // of the head, so no stored response carries it.
        if let Some(c) = out
            .service
            .spec
            .hash
            .as_ref()
            .and_then(|h| h.cookie.as_ref())
            && out.facts.sticky != Some(f.pick.backend.sticky_id)
            && let Some(v) = super::hash_key::set_cookie(c, f.pick.backend.sticky_id, self.https)
        {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        done.lease = Some(f.lease);
        let idle = out.service.spec.timeouts.idle;
        upstream_response(
            resp,
            &self.served_origin,
            (out.client_version, idle),
            done,
            recording,
        )
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
        let policy = &service.spec.outlier;
        // A client can provoke failed answers (a path that answers 500, one slower than the
        // deadline): one that could eject every backend of a region in turn, a few requests
        // each, would take the region down. No ejection for them once `max_ejection_percent`
        // of it is out of service for any reason (ejected, down, drained), at least one
        // backend. (Two failing at the same instant may both take the last room.)
        let room = || {
            let backends = &pick.region.backends;
            let most = (backends.len() * usize::from(policy.max_ejection_percent) / 100).max(1);
            backends.iter().filter(|b| !b.state.is_available()).count() < most
        };
        if let Some(cool_down) = pick.backend.state.record_outcome(outcome, policy, room) {
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
    mut exchange: std::pin::Pin<&mut F>,
    started: Instant,
    upload: Option<&Upload>,
    limit: std::time::Duration,
) -> Result<F::Output, Late> {
    let limit_nanos = limit.as_nanos() as u64;
    let start = nanos_at(started);
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

/// The answer to the client: a fill's body recorded on its way (`recording`).
fn upstream_response(
    resp: Response<UpstreamBody>,
    served: &IntCounter,
    (client_version, idle): (Version, std::time::Duration),
    done: Completion,
    recording: Option<Recording>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    // Raw fields have no hop-by-hop field, and the HTTP/1.1 server writes their Via hop
    // after them (an insert into the empty map was 700 instructions a request).
    if !body.has_raw_fields() {
        strip_hop_by_hop(&mut parts.headers);
        append_via(&mut parts.headers, parts.version);
    }
    // The client gets our protocol version, whatever the backend spoke.
    parts.version = client_version;
    let body = if let Some(r) = recording {
        ProxyBody::recorded(body, done, served.clone(), (client_version, idle), r)
    } else if client_version == Version::HTTP_2 {
        ProxyBody::upstream_h2(body, done, served.clone(), idle)
    } else {
        ProxyBody::upstream(body, done, served.clone())
    };
    Response::from_parts(parts, body)
}
