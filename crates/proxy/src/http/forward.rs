//! One HTTP request, end to end: match a service ([`super::request`]), admit it (limits), then
//! answer from the cache ([`super::cache`]) or from the origin ([`super::origin`]), and stream
//! the answer back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::Response;
use http::header::{self};
use streamgate_balance::stats::nanos_at;

use super::HttpProxy;
use super::body::{PendingLog, ProxyBody};
use super::error::ProxyError;
use super::error::error_response;
use super::headers::ForwardedFor;
use super::request::ClientRequest;
use super::request::{Outbound, Prepared};
use crate::io::ActiveRequest;
use crate::limits::Limit;
use streamgate_config::rules::Template;
use streamgate_policy::Edit;

impl HttpProxy {
    /// Answers one request. Never fails: every error becomes a response. `raw_ok`: the
    /// answer is written by our own HTTP/1.1 server, which can forward a backend's fields
    /// as they came ([`crate::upstream::codec::RawFields`]).
    pub async fn handle(
        self: Arc<Self>,
        req: ClientRequest,
        peer: SocketAddr,
        forwarded_for: ForwardedFor,
        active: ActiveRequest,
        raw_ok: bool,
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
        // The match ends before the first await, so the request's preparation (640 bytes) is
        // not kept in the future across it. Every await of this future below borrows `out`
        // rather than taking it: an async fn keeps its by-value arguments twice over (as
        // captured and as a local), and the future is moved into place per request (hyper's
        // dispatch copied the 9.7 KB future per request: 2% of the proxy's CPU under perf).
        let (mut out, response_edits, active) =
            match self.prepare(&table, req, peer, forwarded_for, started, &mut log) {
                Err(e) => return finish(error_response(&e, active), &[], log),
                Ok(Prepared::Answer {
                    answer,
                    response_edits,
                }) => return finish(super::rules::answer(answer, active), &response_edits, log),
                Ok(Prepared::Forward {
                    out,
                    response_edits,
                }) => (out, response_edits, active),
            };
        let resp = if let Err(e) = self
            .admit(&out)
            .and_then(|()| self.admit_tunnel(&mut out, &active))
        {
            error_response(&e, active)
        } else if let Some(spec) = out.service.spec.cache.as_ref() {
            let cache = self.caches.for_service(&out.service.name, spec);
            self.cached(&table, cache, &mut out, active, &mut log).await
        } else {
            if out.parts.method.as_str() == "PURGE" {
                // Asked of this tier's cache only: a StreamGate behind it that trusts
                // this tier must not take a client's word for a fleet-wide purge.
                out.parts.headers.remove(super::purge::SCOPE);
            }
            // Nothing on the way reads the answer's fields: no cache (above), no compression,
            // no response rules, no upgrade (a 101 is never raw anyway), and HEAD keeps the
            // map path's Content-Length handling.
            out.raw_answer = raw_ok
                && response_edits.is_empty()
                && out.service.spec.compression.is_none()
                && out.upgrade.is_none()
                && out.parts.method != http::Method::HEAD;
            self.pass(&mut out, active, &mut log).await
        };
        // An HTTP/1.1 request's map, as large as the next backend answer's, is kept for it. An
        // HTTP/2 request's is not: its Cookie crumbs (about a byte each on the wire) were
        // joined into one field, and the memory that held them would be kept with it.
        if out.client_version == http::Version::HTTP_11 {
            crate::spare_maps::give(std::mem::take(&mut out.parts.headers));
        }
        finish(resp, &response_edits, log)
    }

    /// An HTTP/2 WebSocket past the first on its connection takes a slot of the connection
    /// limits while it is open (see `tunnel_slots`); the hold goes with the request's
    /// extensions into the tunnel, or is given back with the request.
    fn admit_tunnel(
        &self,
        out: &mut Outbound<'_>,
        active: &ActiveRequest,
    ) -> Result<(), ProxyError> {
        if out.upgrade.is_none() || out.client_version != http::Version::HTTP_2 {
            return Ok(());
        }
        let Some(slots) = active.conn().tunnel_slots() else {
            return Ok(());
        };
        match slots.take() {
            Ok(ticket) => {
                out.parts.extensions.insert(ticket);
                Ok(())
            }
            Err(limit) => {
                self.limited.count(limit);
                Err(ProxyError::TunnelLimit {
                    per_client: limit == Limit::ClientConnections,
                })
            }
        }
    }

    /// The service's limits: a body declared larger than `max_body` (413), the service's and
    /// the client's request rates (429 with Retry-After). Each refusal is counted.
    fn admit(&self, out: &Outbound<'_>) -> Result<(), ProxyError> {
        let limits = &out.service.spec.limits;
        // The length the body will have, as the server read its framing; the field is only a
        // fallback. A `Connection` line may have removed the field by now.
        let declared = http_body::Body::size_hint(&out.body).exact().or_else(|| {
            out.parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        });
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
}

/// The rules' response edits and the access log's record, for every answer.
fn finish(
    mut resp: Response<ProxyBody>,
    response_edits: &[Edit<Template>],
    log: Option<Box<PendingLog>>,
) -> Response<ProxyBody> {
    if !response_edits.is_empty() {
        super::rules::edit_response(&mut resp, response_edits);
    }
    if let Some(mut pending) = log {
        pending.record.status = resp.status().as_u16();
        resp.body_mut().log_when_done(pending);
    }
    resp
}
