//! One HTTP request, end to end: match a service, pick a region and backend, forward over a pooled
//! connection, retry once where safe, stream the answer back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use streamgate_balance::{ClientFacts, Lease, NoRoute, Pick, RoutingTable, Service};
use streamgate_config::RegionPolicy;
use streamgate_telemetry::code_class_index;
use tracing::{info, warn};

use super::HttpProxy;
use super::body::{Completion, ProxyBody, RequestBody};
use super::error::ProxyError;
use super::headers::{add_forwarding, append_via, client_ip, is_idempotent, strip_hop_by_hop};
use crate::io::ActiveRequest;
use crate::upstream::{ExchangeTimeouts, UpstreamBody};

impl HttpProxy {
    /// Answers one request. Never fails: every error becomes a response.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        active: ActiveRequest,
    ) -> Response<ProxyBody> {
        let table = self.table.load_full();
        match self.forward(&table, req, peer, active).await {
            Ok(resp) => resp,
            Err((e, active)) => error_response(&e, active),
        }
    }

    async fn forward(
        &self,
        table: &Arc<RoutingTable>,
        req: Request<Incoming>,
        peer: SocketAddr,
        active: ActiveRequest,
    ) -> Result<Response<ProxyBody>, (ProxyError, ActiveRequest)> {
        let started = Instant::now();
        if req.method() == Method::CONNECT {
            let method = req.method().to_string();
            return Err((ProxyError::MethodNotAllowed { method }, active));
        }
        let Some(host) = request_host(&req) else {
            return Err((ProxyError::MissingHost, active));
        };
        let service = match table.route(&self.listener, host_str(&host), req.uri().path()) {
            Ok(s) => s,
            Err(NoRoute::Host) => {
                return Err((
                    ProxyError::UnknownHost {
                        listener: self.listener.to_string(),
                    },
                    active,
                ));
            }
            Err(NoRoute::Path) => {
                return Err((
                    ProxyError::UnknownPath {
                        listener: self.listener.to_string(),
                    },
                    active,
                ));
            }
        };
        service.state.note_request();

        let trusted = table
            .config
            .geo
            .as_ref()
            .map_or(&[][..], |g| &g.trusted_proxies[..]);
        let ip = client_ip(peer.ip(), req.headers(), trusted);
        let mut facts = ClientFacts {
            ip: Some(ip),
            geo: None,
        };
        if service.spec.region_policy == RegionPolicy::Geo
            && let Some(db) = self.geo.load().as_ref()
        {
            facts.geo = db.lookup(ip);
        }

        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        strip_hop_by_hop(&mut parts.headers);
        add_forwarding(
            &mut parts.headers,
            peer.ip(),
            self.https,
            Some(host_str(&host)),
            client_version,
        );
        // The backend sees the host the client asked for (from the URI for HTTP/2 and
        // absolute-form requests).
        parts.headers.insert(header::HOST, host);
        parts.version = Version::HTTP_11;
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut body = if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Stream(body)
        };

        let timeouts = service.spec.timeouts;
        let exchange_timeouts = ExchangeTimeouts {
            connect: timeouts.connect,
            idle: timeouts.upstream_idle,
            body_stall: timeouts.upstream_response,
        };
        let idempotent = is_idempotent(&parts.method);
        let max_attempts = 1 + service.spec.retry.attempts;
        let Some(mut pick) = service.pick(&facts, None) else {
            let e = ProxyError::NoBackend {
                service: service.name.to_string(),
            };
            warn!(service = %service.name, "no usable backend in any region: answering 503");
            self.metrics
                .requests
                .with_label_values(&[&*service.name, "none", "5xx"])
                .inc();
            return Err((e, active));
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let can_retry = attempt < max_attempts && matches!(body, RequestBody::Empty);
            let this_body = std::mem::replace(&mut body, RequestBody::Empty);
            let lease = Lease::new(pick.backend.state.clone());
            let exchange = self.upstreams.send(
                pick.backend.address,
                &parts,
                path_and_query.as_str(),
                this_body,
                exchange_timeouts,
            );
            let sent = tokio::time::timeout(timeouts.upstream_response, exchange).await;
            let failure = match sent {
                Ok(Ok(resp)) => {
                    lease.record_head();
                    let status = resp.status();
                    self.note_outcome(service, &pick, status.as_u16() < 500);
                    let retry_status = matches!(
                        status,
                        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                    );
                    if retry_status
                        && idempotent
                        && can_retry
                        && let Some(next) = self.retry_target(service, &facts, &pick)
                    {
                        warn!(
                            service = %service.name, region = %pick.region.name, backend = %pick.backend.address,
                            next = %next.backend.address, status = status.as_u16(),
                            "backend answered {status}; retrying on another backend"
                        );
                        pick = next;
                        continue;
                    }
                    pick.region
                        .metrics
                        .latency
                        .observe(started.elapsed().as_secs_f64());
                    pick.region.metrics.routing[pick.reason.index()].inc();
                    pick.region.metrics.requests[code_class_index(status.as_u16())].inc();
                    return Ok(upstream_response(
                        resp,
                        client_version,
                        Completion {
                            lease: Some(lease),
                            active: Some(active),
                        },
                    ));
                }
                Ok(Err(e)) => ProxyError::from_upstream(pick.backend.address, e),
                Err(_) => ProxyError::ResponseTimeout {
                    backend: pick.backend.address,
                    after: timeouts.upstream_response,
                },
            };
            drop(lease);
            self.note_outcome(service, &pick, false);
            self.metrics
                .upstream_errors
                .with_label_values(&[&pick.region.name, failure.kind()])
                .inc();
            // A request that never left can go elsewhere; an idempotent one may be sent again
            // unless the backend was merely slow (a retry would double the wait).
            let safe = failure.never_sent()
                || (idempotent && !matches!(failure, ProxyError::ResponseTimeout { .. }));
            if safe
                && can_retry
                && let Some(next) = self.retry_target(service, &facts, &pick)
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
            return Err((failure, active));
        }
    }

    /// Another backend for a retry, if there is one and the retry budget allows it.
    fn retry_target<'t>(
        &self,
        service: &'t Service,
        facts: &ClientFacts,
        failed: &Pick<'t>,
    ) -> Option<Pick<'t>> {
        let next = service.pick(facts, Some(failed.backend))?;
        if !service.state.try_retry(&service.spec.retry) {
            tracing::debug!(service = %service.name, "retry budget spent; not retrying");
            return None;
        }
        service.retries.inc();
        Some(next)
    }

    fn note_outcome(&self, service: &Service, pick: &Pick<'_>, ok: bool) {
        if let Some(cool_down) = pick.backend.state.record_outcome(ok, &service.spec.outlier) {
            warn!(
                service = %service.name, region = %pick.region.name, backend = %pick.backend.address,
                cool_down = ?cool_down, "backend ejected after consecutive failures"
            );
        } else if ok && pick.backend.state.is_ejected() {
            info!(service = %service.name, backend = %pick.backend.address, "ejected backend answered again");
        }
    }
}

/// The host a request is for: the URI authority (HTTP/2, absolute-form) or the Host header.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    match req.headers().get(header::HOST) {
        Some(h) => Some(h.clone()),
        // HTTP/1.0 may omit Host; only a catch-all service can take it.
        None if req.version() == Version::HTTP_10 => Some(HeaderValue::from_static("")),
        None => None,
    }
}

fn host_str(h: &HeaderValue) -> &str {
    h.to_str().unwrap_or("")
}

fn upstream_response(
    resp: Response<UpstreamBody>,
    client_version: Version,
    done: Completion,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    append_via(&mut parts.headers, parts.version);
    // The client gets our protocol version, whatever the backend spoke.
    parts.version = client_version;
    Response::from_parts(parts, ProxyBody::upstream(body, done))
}

fn error_response(e: &ProxyError, active: ActiveRequest) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(
        e.client_message(),
        Completion {
            lease: None,
            active: Some(active),
        },
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
    resp
}
