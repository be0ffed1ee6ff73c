//! The accept loop every listener shares: connection limit, accept-error back-off, the
//! connection counters, and the PROXY header from trusted peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use streamgate_balance::RoutingTable;
use streamgate_telemetry::Metrics;
use streamgate_telemetry::prometheus::{IntCounter, IntGauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::warn;

use crate::proxy_protocol;

/// Hands out accepted connections until shutdown.
pub(crate) struct Acceptor {
    listener: TcpListener,
    name: Arc<str>,
    slots: Option<Arc<Semaphore>>,
    /// `[runtime] max_connections`, shared by every listener.
    budget: Arc<crate::descriptors::Budget>,
    accepted: IntCounter,
    open: IntGauge,
    limited: crate::limits::LimitedCounters,
}

/// A client connection and what it holds while open: a `connections_active` count, a slot
/// under the listener's `max_connections` and one under the process's, all given back when it
/// is dropped.
pub(crate) struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub hold: OpenConnection,
}

pub(crate) struct OpenConnection {
    open: IntGauge,
    _slot: Option<OwnedSemaphorePermit>,
    _process: OwnedSemaphorePermit,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Acceptor {
    pub fn new(
        listener: TcpListener,
        name: Arc<str>,
        max_connections: Option<usize>,
        budget: Arc<crate::descriptors::Budget>,
        metrics: &Metrics,
    ) -> Acceptor {
        Acceptor {
            accepted: metrics.connections.with_label_values(&[&*name]),
            open: metrics.connections_active.with_label_values(&[&*name]),
            slots: max_connections.map(|n| Arc::new(Semaphore::new(n))),
            budget,
            limited: crate::limits::LimitedCounters::of(metrics, &name),
            listener,
            name,
        }
    }

    /// The listener's `max_connections` slots, if it has a limit.
    pub fn slots(&self) -> Option<Arc<Semaphore>> {
        self.slots.clone()
    }

    /// The next connection, or `None` once `shutdown` turns. At the listener's connection limit
    /// this waits for a slot before accepting, so the kernel's backlog holds the excess; at the
    /// process's, it waits with the one client it accepted.
    pub async fn next(&mut self, shutdown: &mut watch::Receiver<bool>) -> Option<Accepted> {
        let slot = match &self.slots {
            Some(s) if s.available_permits() == 0 => {
                // At max_connections: the next client waits in the backlog (counted once per
                // wait).
                self.limited.count(crate::limits::Limit::Connections);
                tokio::select! {
                    p = s.clone().acquire_owned() => p.ok(),
                    _ = shutdown.changed() => return None,
                }
            }
            Some(s) => tokio::select! {
                p = s.clone().acquire_owned() => p.ok(),
                _ = shutdown.changed() => return None,
            },
            None => None,
        };
        let (stream, peer) = loop {
            tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => break x,
                    Err(e) if streamgate_balance::shortage::is_out_of_descriptors(&e) => {
                        // Out of descriptors (idle backend connections from a burst hold them
                        // for `upstream_idle`): close those and accept again at once, or back
                        // off instead of spinning.
                        self.limited.count(crate::limits::Limit::Descriptors);
                        if self.budget.shed() == 0 {
                            crate::descriptors::shortage_met(&e);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    Err(e) => {
                        warn!(listener = %self.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => return None,
            }
        };
        // Taken once a client is there, so that a listener nobody connects to holds none of
        // the process's slots; a client past them waits, accepted, with at most one a
        // listener, and the rest in the backlog.
        let process = match self.budget.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.limited.count(crate::limits::Limit::ProcessConnections);
                tokio::select! {
                    p = self.budget.connections.clone().acquire_owned() => p.ok()?,
                    _ = shutdown.changed() => return None,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        self.accepted.inc();
        self.open.inc();
        Some(Accepted {
            stream,
            peer,
            hold: OpenConnection {
                open: self.open.clone(),
                _slot: slot,
                _process: process,
            },
        })
    }
}

/// Who a connection is from, once its PROXY header (if any) has been read.
pub(crate) struct Behind {
    /// The client: the PROXY header's source, or the peer itself.
    pub client: SocketAddr,
    /// Bytes read past the header.
    pub rest: Bytes,
    /// A trusted balancer's header that named no client (`UNKNOWN`, `LOCAL`, an unspecified or
    /// unix-socket address): the client stays the balancer's address, as the PROXY protocol
    /// says, but what the connection's requests claim in their forwarding fields is the
    /// client's own, not the balancer's, and is not believed.
    pub unknown: bool,
    /// The address the client connected to, as a trusted balancer's header names it (the
    /// balancer's own listener), passed on in a PROXY header to a backend as HAProxy's
    /// `send-proxy` does; `None` without one.
    pub destination: Option<SocketAddr>,
}

/// On a listener that takes PROXY headers (`proxied` is then the routing table), reads the
/// header when `peer` is one of the trusted proxies; other peers connect as themselves and their
/// bytes are left alone, so an untrusted peer cannot spoof its address. Returns the client
/// address to use and the bytes read past the header, or `None` (logged) when the header is bad
/// and the connection should close.
pub(crate) async fn client_behind_proxy(
    stream: &mut TcpStream,
    peer: SocketAddr,
    listener: &str,
    proxied: Option<&RoutingTable>,
) -> Option<Behind> {
    let plain = |client| Behind {
        client,
        rest: Bytes::new(),
        unknown: false,
        destination: None,
    };
    let Some(table) = proxied else {
        return Some(plain(peer));
    };
    let trusted = table.config.geo.as_ref().is_some_and(|g| {
        g.trusted_proxies
            .iter()
            .any(|n| n.contains(&peer.ip().to_canonical()))
    });
    if !trusted {
        return Some(plain(peer));
    }
    match proxy_protocol::read_header(stream, table.config.timeouts.request_header).await {
        Ok((addrs, rest)) => Some(Behind {
            client: addrs.as_ref().map_or(peer, |a| a.source),
            rest,
            unknown: addrs.is_none(),
            destination: addrs.as_ref().map(|a| a.destination),
        }),
        Err(e) => {
            warn!(listener, peer = %peer, error = %e, "bad PROXY header; connection closed");
            None
        }
    }
}
