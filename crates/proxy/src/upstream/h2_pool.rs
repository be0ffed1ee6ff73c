//! HTTP/2 backends (h2c, h2): as many connections to each as its streams need.
//!
//! hyper-util's pooled client keeps one HTTP/2 connection per backend, and a request past the
//! backend's `SETTINGS_MAX_CONCURRENT_STREAMS` waits on it for a stream to end. One client that
//! opened as many streams as the backend allows (hyper's servers: 200; ours takes 256 a client
//! connection) and read nothing kept every other client's request to that backend waiting until
//! its streams were given up, `idle` later
//! (`protocols::one_client_cannot_take_every_stream_of_an_http2_backend`). Here a connection
//! carries at most [`STREAMS_PER_CONNECTION`] streams, and the next request opens another
//! connection beside it, as Envoy's HTTP/2 pool does. hyper does not tell a client what the
//! backend's setting is, so the bound is the least RFC 9113 §6.5.2 asks servers to allow.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use streamgate_balance::stats::now_nanos;

use super::RequestBody;
use super::pooled::Dialer;

/// Streams one backend connection carries before the next request opens another.
pub(super) const STREAMS_PER_CONNECTION: usize = 100;

/// Connections to one backend at most; past them, requests share the least busy one.
const CONNECTIONS_PER_BACKEND: usize = 64;

/// Why a request to an HTTP/2 backend failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum H2Error {
    /// No connection could be made: nothing was sent.
    #[error("{0}")]
    Connect(#[source] io::Error),
    #[error(transparent)]
    Send(#[from] hyper::Error),
}

/// The HTTP/2 connections of one client configuration, by backend.
#[derive(Debug)]
pub(super) struct H2Pools {
    dialer: Dialer,
    stream_window: u32,
    connection_window: u32,
    /// Connections with no stream for this long are closed.
    idle: Duration,
    backends: Mutex<HashMap<SocketAddr, Arc<Backend>>>,
}

/// The connections to one backend.
#[derive(Debug, Default)]
struct Backend {
    conns: Mutex<Vec<Arc<Conn>>>,
    /// One connection is made at a time: requests that wait for it look again once it is up.
    dialing: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Conn {
    send: SendRequest<RequestBody>,
    streams: AtomicUsize,
    /// `now_nanos()` when its last stream ended (or it opened).
    quiet_since: AtomicU64,
}

/// A stream's place on its connection, given back when dropped (with the answer's body).
#[derive(Debug)]
pub(super) struct StreamSlot(Arc<Conn>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.quiet_since.store(now_nanos(), Relaxed);
        self.0.streams.fetch_sub(1, Relaxed);
    }
}

/// What a request takes: a place on connection `i`, or a new connection.
#[derive(Debug, PartialEq, Eq)]
enum Choice {
    Use(usize),
    Dial,
}

/// The connection with the fewest streams, if one has room; else a new connection, if the
/// backend has room for one; else the least busy (its streams wait there for a free one).
/// `streams`: each open connection's streams.
fn choose(streams: &[usize]) -> Choice {
    let least = streams
        .iter()
        .enumerate()
        .min_by_key(|(_, n)| **n)
        .map(|(i, n)| (i, *n));
    match least {
        Some((i, n)) if n < STREAMS_PER_CONNECTION => Choice::Use(i),
        Some((i, _)) if streams.len() >= CONNECTIONS_PER_BACKEND => Choice::Use(i),
        _ => Choice::Dial,
    }
}

impl Backend {
    /// A place on an open connection with room, if there is one (see [`choose`]).
    fn try_take(&self, idle: Duration) -> Option<(SendRequest<RequestBody>, StreamSlot)> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut conns, idle);
        let streams: Vec<usize> = conns.iter().map(|c| c.streams.load(Relaxed)).collect();
        match choose(&streams) {
            Choice::Use(i) => Some(take(&conns[i])),
            Choice::Dial => None,
        }
    }
}

/// Drops closed connections, and open ones quiet for `idle` (hyper closes a connection once
/// its last handle is gone).
fn prune(conns: &mut Vec<Arc<Conn>>, idle: Duration) {
    let now = now_nanos();
    let idle = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
    conns.retain(|c| {
        !c.send.is_closed()
            && (c.streams.load(Relaxed) > 0
                || now.saturating_sub(c.quiet_since.load(Relaxed)) < idle)
    });
}

fn take(conn: &Arc<Conn>) -> (SendRequest<RequestBody>, StreamSlot) {
    conn.streams.fetch_add(1, Relaxed);
    (conn.send.clone(), StreamSlot(conn.clone()))
}

impl H2Pools {
    pub fn new(
        dialer: Dialer,
        stream_window: u32,
        connection_window: u32,
        idle: Duration,
    ) -> H2Pools {
        H2Pools {
            dialer,
            stream_window,
            connection_window,
            idle,
            backends: Mutex::default(),
        }
    }

    fn backend(&self, addr: SocketAddr) -> Arc<Backend> {
        let mut backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        backends.entry(addr).or_default().clone()
    }

    /// Sends `req` to `addr` on a connection with room, made if needed. The slot goes with the
    /// answer's body: the stream counts until that is dropped. A request the connection gave
    /// back unsent (it was closing: the backend's GOAWAY, or its end) goes once more, on
    /// another connection, as hyper-util's client retries it.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, StreamSlot), H2Error> {
        let backend = self.backend(addr);
        let mut again = true;
        loop {
            let (mut send, slot) = match backend.try_take(self.idle) {
                Some(taken) => taken,
                None => self.dial(&backend, addr).await?,
            };
            // Closed since it was chosen: the next look leaves it out.
            if send.ready().await.is_err() && again {
                again = false;
                continue;
            }
            match send.try_send_request(req).await {
                Ok(resp) => return Ok((resp, slot)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if again => {
                        again = false;
                        req = unsent;
                    }
                    _ => return Err(H2Error::Send(e.into_error())),
                },
            }
        }
    }

    /// Makes a connection to `addr` (one at a time per backend) and takes its first place;
    /// or a place on one made meanwhile.
    async fn dial(
        &self,
        backend: &Backend,
        addr: SocketAddr,
    ) -> Result<(SendRequest<RequestBody>, StreamSlot), H2Error> {
        let _one = backend.dialing.lock().await;
        if let Some(taken) = backend.try_take(self.idle) {
            return Ok(taken);
        }
        let io = self.dialer.dial(addr).await.map_err(H2Error::Connect)?;
        let (send, conn) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .handshake(io)
            .await
            .map_err(|e| H2Error::Connect(io::Error::other(e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let conn = Arc::new(Conn {
            send,
            streams: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(now_nanos()),
        });
        let taken = take(&conn);
        backend
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        Ok(taken)
    }

    /// Closes connections quiet for `idle` and forgets backends left with none.
    pub fn sweep(&self) {
        let mut backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        backends.retain(|_, b| {
            let mut conns = b.conns.lock().unwrap_or_else(|e| e.into_inner());
            prune(&mut conns, self.idle);
            !conns.is_empty() || Arc::strong_count(b) > 1
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_takes_the_least_busy_connection_with_room_or_a_new_one() {
        let full = STREAMS_PER_CONNECTION;
        let table: &[(&[usize], Choice)] = &[
            (&[], Choice::Dial),
            (&[0], Choice::Use(0)),
            (&[5, 2, 9], Choice::Use(1)),
            (&[full - 1], Choice::Use(0)),
            (&[full], Choice::Dial),
            (&[full, full + 3], Choice::Dial),
            (&[full, 7], Choice::Use(1)),
        ];
        for (streams, choice) in table {
            assert_eq!(choose(streams), *choice, "{streams:?}");
        }
        // At the most connections a backend gets, the least busy one takes the request.
        let mut at_most = vec![full + 2; CONNECTIONS_PER_BACKEND];
        at_most[9] = full;
        assert_eq!(choose(&at_most), Choice::Use(9));
    }
}
