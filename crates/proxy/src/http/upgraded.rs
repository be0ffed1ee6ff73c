//! A backend's `101 Switching Protocols`, once `switch` has found it answers what the request
//! asked for: the answer to the client, then the tunnel that copies bytes both ways between the
//! upgraded client connection and the backend connection (WebSocket and other upgrades).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Version};

use super::HttpProxy;
use super::body::{Completion, ProxyBody};
use super::error::{ProxyError, error_response};
use super::headers::strip_hop_by_hop;
use super::origin::Fetched;
use super::request::Outbound;
use crate::io::ActiveRequest;
use crate::tunnel::{Ended, relay};
use crate::tunnel_slots::TunnelTicket;

impl HttpProxy {
    /// A 101 from the backend: answer the client with it, then copy bytes both ways between the
    /// upgraded client connection and the backend connection (WebSocket and other upgrades).
    pub(super) fn tunnel(
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
        let tunnel = (
            hold.conn().tunnel(),
            out.parts.extensions.remove::<TunnelTicket>(),
        );
        tokio::spawn(async move {
            let _tunnel = tunnel;
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
}
