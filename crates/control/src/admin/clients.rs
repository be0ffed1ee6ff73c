//! Connections per client on the admin and metrics listeners.
//!
//! Their 64 slots face the network when they listen off loopback, and the token is checked
//! only once a request head has arrived: one client trickling heads on 64 connections, each
//! reopened as its `request_header` runs out, kept every operator and scraper waiting in the
//! backlog during an incident. nginx has `limit_conn` per address, HAProxy `src_conn_cur`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Connections a client may hold on a listener off loopback when the config says nothing.
pub const OFF_LOOPBACK: usize = 8;

/// The limit a listener bound to `listen` applies: `configured`, or [`OFF_LOOPBACK`] off
/// loopback; none on loopback, where every client is this machine.
pub fn per_client(configured: Option<usize>, listen: SocketAddr) -> Option<usize> {
    configured.or((!listen.ip().to_canonical().is_loopback()).then_some(OFF_LOOPBACK))
}

/// Open connections by client (an IPv6 client by its /64, which its network gives it whole).
#[derive(Debug, Default)]
pub struct Clients(Mutex<HashMap<IpAddr, usize>>);

/// One connection's count, given back on drop.
#[derive(Debug)]
pub struct Held {
    clients: Arc<Clients>,
    key: IpAddr,
}

impl Clients {
    /// Counts a connection of `peer`, or `None` when it holds `max` already.
    pub fn take(self: &Arc<Clients>, peer: IpAddr, max: usize) -> Option<Held> {
        let key = client_key(peer);
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Held {
            clients: self.clone(),
            key,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self.clients.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

fn client_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_by_listener_address() {
        let table = [
            (None, "127.0.0.1:9901", None),
            (None, "[::1]:9901", None),
            (None, "[::ffff:127.0.0.1]:9901", None),
            (None, "0.0.0.0:9901", Some(OFF_LOOPBACK)),
            (None, "10.0.0.5:9901", Some(OFF_LOOPBACK)),
            (Some(2), "127.0.0.1:9901", Some(2)),
            (Some(20), "0.0.0.0:9901", Some(20)),
        ];
        for (configured, listen, want) in table {
            assert_eq!(
                per_client(configured, listen.parse().unwrap()),
                want,
                "{listen}"
            );
        }
    }

    #[test]
    fn a_client_holds_at_most_max_and_gets_them_back() {
        let c = Arc::new(Clients::default());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let one = c.take(ip("192.0.2.1"), 2).unwrap();
        let _two = c
            .take(ip("::ffff:192.0.2.1"), 2)
            .expect("mapped is the same client");
        assert!(c.take(ip("192.0.2.1"), 2).is_none(), "a third");
        assert!(c.take(ip("192.0.2.2"), 2).is_some(), "another client");
        drop(one);
        assert!(c.take(ip("192.0.2.1"), 2).is_some(), "given back");
        let _a = c.take(ip("2001:db8:1:2::1"), 1).unwrap();
        assert!(
            c.take(ip("2001:db8:1:2::ffff"), 1).is_none(),
            "the same /64"
        );
    }
}
