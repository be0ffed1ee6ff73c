//! The addresses of this process's own L4 connections to backends, while they last. A
//! connection accepted from one of them comes from this process: a backend address that is one
//! of its own listeners (a name that resolves to this host, a copied config). HTTP services
//! refuse such a loop by their `Via` (508); an L4 connection carries nothing to tell, and each
//! hop would open the next, without end, until the process ran out of file descriptors.
//!
//! A connection is known by both of its ends, never by its local address alone: Linux shares an
//! ephemeral port between connections to different destinations, so a local client's
//! connection to our listener can come from the very address our connection to a backend
//! uses. Matched by the local address alone, such a client was refused as a loop (CI saw it
//! once in a run of 100 connections each way: the client got a reset mid-upload).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

/// One connection's ends: (the side that connected, the side that accepted), as seen by both.
type Ends = (SocketAddr, SocketAddr);

fn own() -> &'static Mutex<HashSet<Ends>> {
    static OWN: OnceLock<Mutex<HashSet<Ends>>> = OnceLock::new();
    OWN.get_or_init(Mutex::default)
}

/// `a` with an IPv4-mapped IPv6 address as the IPv4 address it maps: a dual-stack listener
/// sees `::ffff:127.0.0.1` where the connecting side used `127.0.0.1`.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// One of this process's backend connections, known by its two ends until dropped.
#[derive(Debug)]
pub(crate) struct Outgoing(Option<Ends>);

impl Outgoing {
    /// Registers the connection from `local` to `remote` (the socket's `local_addr` and
    /// `peer_addr`); one that cannot name both ends is not registered.
    pub(crate) fn register(
        local: std::io::Result<SocketAddr>,
        remote: std::io::Result<SocketAddr>,
    ) -> Outgoing {
        let (Ok(local), Ok(remote)) = (local, remote) else {
            return Outgoing(None);
        };
        let ends = (canonical(local), canonical(remote));
        own().lock().unwrap_or_else(|e| e.into_inner()).insert(ends);
        Outgoing(Some(ends))
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if let Some(ends) = self.0 {
            own()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ends);
        }
    }
}

/// Whether the connection accepted from `peer` on `local` is one of this process's backend
/// connections. Checked just before the accepted connection would connect onwards, by when the
/// hop that opened it has registered (it does so as soon as its connect returns); a hop missed
/// by that race is caught at the next.
pub(crate) fn is_own(peer: SocketAddr, local: SocketAddr) -> bool {
    own()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&(canonical(peer), canonical(local)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_accepted_connection_is_ours_only_when_both_ends_match() {
        // Our connection to a backend, from an ephemeral port shared (as Linux does) with a
        // local client's connection to one of our listeners.
        let _ours = Outgoing::register(Ok(a("127.0.0.1:40001")), Ok(a("127.0.0.1:9000")));
        let table = [
            // (peer, the accepted connection's local address, ours?)
            ("127.0.0.1:40001", "127.0.0.1:9000", true),
            ("[::ffff:127.0.0.1]:40001", "[::ffff:127.0.0.1]:9000", true),
            // Same port, another destination: a client of ours, not a loop.
            ("127.0.0.1:40001", "127.0.0.1:8443", false),
            ("127.0.0.1:40002", "127.0.0.1:9000", false),
            ("127.0.0.2:40001", "127.0.0.1:9000", false),
        ];
        for (peer, local, want) in table {
            assert_eq!(is_own(a(peer), a(local)), want, "{peer} -> {local}");
        }
    }

    #[test]
    fn a_closed_connection_is_forgotten() {
        let ours = Outgoing::register(Ok(a("127.0.0.1:40101")), Ok(a("127.0.0.1:9100")));
        assert!(is_own(a("127.0.0.1:40101"), a("127.0.0.1:9100")));
        drop(ours);
        assert!(!is_own(a("127.0.0.1:40101"), a("127.0.0.1:9100")));
    }
}
