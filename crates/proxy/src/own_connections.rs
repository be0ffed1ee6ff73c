//! The local addresses of this process's own L4 connections to backends, while they last. A
//! connection accepted from one of them comes from this process: a backend address that is one
//! of its own listeners (a name that resolves to this host, a copied config). HTTP services
//! refuse such a loop by their `Via` (508); an L4 connection carries nothing to tell, and each
//! hop would open the next, without end, until the process ran out of file descriptors.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

fn own() -> &'static Mutex<HashSet<SocketAddr>> {
    static OWN: OnceLock<Mutex<HashSet<SocketAddr>>> = OnceLock::new();
    OWN.get_or_init(Mutex::default)
}

/// One of this process's backend connections, known by its local address until dropped.
#[derive(Debug)]
pub(crate) struct Outgoing(Option<SocketAddr>);

impl Outgoing {
    pub(crate) fn register(local: std::io::Result<SocketAddr>) -> Outgoing {
        let Ok(local) = local else {
            return Outgoing(None);
        };
        own()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(local);
        Outgoing(Some(local))
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if let Some(local) = self.0 {
            own()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&local);
        }
    }
}

/// Whether `peer` is the local end of one of this process's backend connections. Checked just
/// before the accepted connection would connect onwards, by when the hop that opened it has
/// registered (it does so as soon as its connect returns); a hop missed by that race is caught
/// at the next.
pub(crate) fn is_own(peer: SocketAddr) -> bool {
    own()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&peer)
}
