//! WebSockets over HTTP/2 (RFC 8441) against the connection limits.
//!
//! Over HTTP/1.1 a WebSocket is its connection: it holds the connection's slot under
//! `max_connections` and its client's under `max_connections_per_client` until it ends. Over
//! HTTP/2 one connection carries up to 256 streams, and each extended CONNECT opens a backend
//! connection and a relay that may live for `tunnel_idle` (an hour by default): counted per TCP
//! connection only, one client with a limit of one connection held 256 backend sockets. Here
//! the first tunnel of an HTTP/2 connection rides on the connection's own slots, as an HTTP/1.1
//! WebSocket does, and each further one takes a slot of both limits while it is open, or is
//! refused (429 past the client's limit, 503 past the listener's) before a backend is asked.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::{ClientConnections, ClientSlot, Limit};

/// The limits one client connection's tunnels count against, set as the connection starts.
/// The counting state ([`TunnelSlots`]) is made from them only when a first HTTP/2 tunnel asks:
/// most connections never do, and were paying an allocation each for it.
#[derive(Debug, Clone)]
pub(crate) struct TunnelLimits {
    pub listener: Option<Arc<Semaphore>>,
    pub client: Option<(usize, Arc<ClientConnections>, IpAddr)>,
}

/// The limits one client connection's tunnels are counted against, and the tunnels counted.
#[derive(Debug)]
pub(crate) struct TunnelSlots {
    /// `max_connections`: the listener's slots.
    listener: Option<Arc<Semaphore>>,
    /// `max_connections_per_client`: its limit, the listener's table and the client.
    client: Option<(usize, Arc<ClientConnections>, IpAddr)>,
    /// HTTP/2 tunnels asked for or open on the connection.
    open: AtomicU32,
    /// The tunnel riding on the connection's own slots is open: the next one takes slots.
    riding: AtomicBool,
}

/// One HTTP/2 tunnel's hold on the limits, given back when its last clone is dropped (the
/// tunnel ended, or its request was answered without one). Cloned because a request's
/// extensions are.
#[derive(Debug, Clone)]
pub(crate) struct TunnelTicket {
    _held: Arc<Held>,
}

#[derive(Debug)]
struct Held {
    slots: Arc<TunnelSlots>,
    /// This is the tunnel riding on the connection's slots.
    riding: bool,
    _client: Option<ClientSlot>,
    _listener: Option<OwnedSemaphorePermit>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slots.open.fetch_sub(1, Relaxed);
        if self.riding {
            self.slots.riding.store(false, Relaxed);
        }
    }
}

impl TunnelSlots {
    pub fn new(
        listener: Option<Arc<Semaphore>>,
        client: Option<(usize, Arc<ClientConnections>, IpAddr)>,
    ) -> Arc<TunnelSlots> {
        Arc::new(TunnelSlots {
            listener,
            client,
            open: AtomicU32::new(0),
            riding: AtomicBool::new(false),
        })
    }

    /// A hold for one more tunnel on this connection, or the limit that refuses it.
    pub fn take(self: &Arc<Self>) -> Result<TunnelTicket, Limit> {
        self.open.fetch_add(1, Relaxed);
        // Whichever tunnel rode on the connection's slots before, if it has ended the next
        // one rides: as two HTTP/1.1 WebSockets one after the other would.
        let riding = self
            .riding
            .compare_exchange(false, true, Relaxed, Relaxed)
            .is_ok();
        let mut held = Held {
            slots: self.clone(),
            riding,
            _client: None,
            _listener: None,
        };
        if !riding {
            if let Some((max, table, ip)) = &self.client {
                held._client = Some(table.try_open(*ip, *max).ok_or(Limit::ClientConnections)?);
            }
            if let Some(s) = &self.listener {
                held._listener = Some(
                    s.clone()
                        .try_acquire_owned()
                        .map_err(|_| Limit::Connections)?,
                );
            }
        }
        Ok(TunnelTicket {
            _held: Arc::new(held),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_tunnel_rides_on_its_connection_and_the_rest_take_slots() {
        let table = Arc::new(ClientConnections::default());
        let ip: IpAddr = [192, 0, 2, 1].into();
        // The connection itself holds its client's one slot of two, and one of three listener
        // slots.
        let _conn = table.try_open(ip, 2).unwrap();
        let listener = Arc::new(Semaphore::new(3));
        let _conn_permit = listener.clone().try_acquire_owned().unwrap();
        let slots = TunnelSlots::new(Some(listener.clone()), Some((2, table.clone(), ip)));
        let first = slots.take().unwrap();
        let second = slots.take().unwrap();
        assert_eq!(slots.take().unwrap_err(), Limit::ClientConnections);
        assert_eq!(listener.available_permits(), 1, "the second took one");
        drop(second);
        assert_eq!(listener.available_permits(), 2, "and gave it back");
        let again = slots.take().unwrap();
        // The riding one ends: the next rides in its place, taking nothing.
        drop(first);
        let rides = slots.take().unwrap();
        assert_eq!(listener.available_permits(), 1, "only `again` holds a slot");
        drop((again, rides));
        assert_eq!(slots.open.load(Relaxed), 0);

        // The listener's limit, with no per-client one.
        let listener = Arc::new(Semaphore::new(1));
        let _conn_permit = listener.clone().try_acquire_owned().unwrap();
        let slots = TunnelSlots::new(Some(listener), None);
        let _first = slots.take().unwrap();
        assert_eq!(slots.take().unwrap_err(), Limit::Connections);
        assert_eq!(slots.open.load(Relaxed), 1, "a refusal holds nothing");
    }
}
