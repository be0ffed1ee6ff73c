//! HTTP/2 backends (h2c, h2): as many connections to each as its streams need.
//!
//! hyper-util's pooled client keeps one HTTP/2 connection per backend, and a request past the
//! backend's `SETTINGS_MAX_CONCURRENT_STREAMS` waits on it for a stream to end. One client that
//! opened as many streams as the backend allows (hyper's servers: 200; ours takes 256 a client
//! connection) and read nothing kept every other client's request to that backend waiting until
//! its streams were given up, `idle` later
//! (`protocols::one_client_cannot_take_every_stream_of_an_http2_backend`). Here a connection
//! carries at most [`STREAMS_PER_CONNECTION`] streams (the least RFC 9113 §6.5.2 asks servers
//! to allow), or fewer if the backend's SETTINGS say so (a new connection assumes what the
//! backend's newest said until its own come), and the next request opens another
//! connection beside it, as Envoy's HTTP/2 pool does. Requests fill the busiest connection that
//! has room, so that those opened for a burst fall quiet after it and are closed.
//!
//! What stalled answers can hold is bounded by the backend's connections: each stream has a
//! 256 KiB window (`pooled::H2_STREAM_WINDOW`), so [`CONNECTIONS_PER_BACKEND`] connections of
//! 100 streams hold at most 200 MiB, where hyper-util's one connection of the backend's 200
//! held 50 MiB and made everyone else wait.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use smallvec::SmallVec;
use streamgate_balance::stats::now_nanos;

use super::RequestBody;
use super::pooled::{Dialed, Dialer};

/// Streams one backend connection carries before the next request opens another.
pub(super) const STREAMS_PER_CONNECTION: usize = 100;

/// Connections to one backend at most; past them, requests wait on the least busy one. Eight
/// of 100 streams: 800 requests at once to one backend (Envoy's default circuit breaker allows
/// 1024 to a whole cluster).
const CONNECTIONS_PER_BACKEND: usize = 8;

/// Why a request to an HTTP/2 backend failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum H2Error {
    /// No connection could be made: nothing was sent.
    #[error("cannot connect")]
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
#[derive(Debug)]
struct Backend {
    conns: Mutex<Vec<Arc<Conn>>>,
    /// One connection is made at a time: requests that wait for it look again once it is up.
    dialing: tokio::sync::Mutex<()>,
    /// The streams the backend's newest connection allows, what a new one assumes until its
    /// own SETTINGS come (a burst that opened it would otherwise overrun a small limit).
    learned: AtomicUsize,
    /// `now_nanos()` of the last dial that failed: for a second after, requests that find
    /// every connection busy wait on one rather than each dialling in turn.
    failed_at: AtomicU64,
}

impl Default for Backend {
    fn default() -> Backend {
        Backend {
            conns: Mutex::default(),
            dialing: tokio::sync::Mutex::default(),
            learned: AtomicUsize::new(STREAMS_PER_CONNECTION),
            failed_at: AtomicU64::new(0),
        }
    }
}

/// Each connection's (streams, room), gathered for [`choose`] on every request: inline, since
/// a backend has at most [`CONNECTIONS_PER_BACKEND`] connections.
type Load = SmallVec<[(usize, usize); CONNECTIONS_PER_BACKEND]>;

/// hyper's HTTP/2 connection: the task that takes requests to the backend's connection.
type Task = hyper::client::conn::http2::Connection<TokioIo<Dialed>, RequestBody, TokioExecutor>;

#[derive(Debug)]
struct Conn {
    send: SendRequest<RequestBody>,
    streams: AtomicUsize,
    /// Its task, run by a spawned future that locks it only to poll it, and read here for the
    /// backend's `SETTINGS_MAX_CONCURRENT_STREAMS` (hyper's own connection task applies them
    /// as they come; the request task is polled only when a request comes, too late to place
    /// it).
    /// `None` once it has ended: dropped then, which closes `send`.
    task: Arc<Mutex<Option<Pin<Box<Task>>>>>,
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

/// The busiest connection that has room, if one has; else a new connection, if the backend
/// has room for one; else the least busy (its streams wait there for a free one).
/// `conns`: each open connection's (streams, room).
fn choose(conns: &[(usize, usize)]) -> Choice {
    let fullest_with_room = conns
        .iter()
        .enumerate()
        .filter(|(_, (n, room))| n < room)
        .max_by_key(|(_, (n, _))| *n);
    if let Some((i, _)) = fullest_with_room {
        return Choice::Use(i);
    }
    match least_busy(conns) {
        Some(i) if conns.len() >= CONNECTIONS_PER_BACKEND => Choice::Use(i),
        _ => Choice::Dial,
    }
}

/// The least busy connection, among those that take streams at all (a backend may say 0 for
/// a while) if any do.
fn least_busy(conns: &[(usize, usize)]) -> Option<usize> {
    conns
        .iter()
        .enumerate()
        .min_by_key(|(_, (n, room))| (*room == 0, *n))
        .map(|(i, _)| i)
}

impl Conn {
    /// Streams it takes: [`STREAMS_PER_CONNECTION`], or fewer if the backend says so.
    fn room(&self) -> usize {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        task.as_ref().map_or(0, |t| {
            t.as_ref()
                .get_ref()
                .current_max_send_streams()
                .min(STREAMS_PER_CONNECTION)
        })
    }
}

impl Backend {
    /// A place on an open connection with room, if there is one (see [`choose`]).
    fn try_take(&self, idle: Duration) -> Option<(SendRequest<RequestBody>, StreamSlot)> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut conns, idle);
        let load: Load = conns
            .iter()
            .map(|c| (c.streams.load(Relaxed), c.room()))
            .collect();
        if let Some((_, room)) = load.last() {
            self.learned.store(*room, Relaxed);
        }
        match choose(&load) {
            Choice::Use(i) => Some(take(&conns[i])),
            Choice::Dial => None,
        }
    }

    /// A place on the least busy open connection, full or not: where a request waits when no
    /// new connection can be made.
    fn take_least_busy(&self) -> Option<(SendRequest<RequestBody>, StreamSlot)> {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let open = || conns.iter().filter(|c| !c.send.is_closed());
        let load: Load = open()
            .map(|c| (c.streams.load(Relaxed), c.room()))
            .collect();
        least_busy(&load).and_then(|i| open().nth(i)).map(take)
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
    /// or a place on one made meanwhile. When none can be made, a busy connection still open
    /// takes the request (it waits there for a stream, as it did on hyper-util's one
    /// connection): a backend refusing more connections is not a failed request.
    async fn dial(
        &self,
        backend: &Backend,
        addr: SocketAddr,
    ) -> Result<(SendRequest<RequestBody>, StreamSlot), H2Error> {
        let _one = backend.dialing.lock().await;
        if let Some(taken) = backend.try_take(self.idle) {
            return Ok(taken);
        }
        let failed_at = backend.failed_at.load(Relaxed);
        let recently_failed =
            failed_at != 0 && now_nanos().saturating_sub(failed_at) < 1_000_000_000;
        if recently_failed && let Some(taken) = backend.take_least_busy() {
            return Ok(taken);
        }
        match self.connect(addr, backend.learned.load(Relaxed)).await {
            Ok(conn) => {
                let taken = take(&conn);
                backend
                    .conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
                Ok(taken)
            }
            Err(e) => {
                backend.failed_at.store(now_nanos(), Relaxed);
                backend.take_least_busy().ok_or(e)
            }
        }
    }

    /// A new connection to `addr`, its task running, taken to allow `room` streams until the
    /// backend's SETTINGS say.
    async fn connect(&self, addr: SocketAddr, room: usize) -> Result<Arc<Conn>, H2Error> {
        let io = self.dialer.dial(addr).await.map_err(H2Error::Connect)?;
        let (send, task) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .initial_max_send_streams(room)
            .handshake(io)
            .await
            .map_err(|e| H2Error::Connect(io::Error::other(e)))?;
        let task = Arc::new(Mutex::new(Some(Box::pin(task))));
        let run = task.clone();
        tokio::spawn(std::future::poll_fn(move |cx| {
            let mut slot = run.lock().unwrap_or_else(|e| e.into_inner());
            let Some(task) = slot.as_mut() else {
                return Poll::Ready(());
            };
            let ended = task.as_mut().poll(cx).is_ready();
            if ended {
                *slot = None;
                return Poll::Ready(());
            }
            Poll::Pending
        }));
        Ok(Arc::new(Conn {
            send,
            streams: AtomicUsize::new(0),
            task,
            quiet_since: AtomicU64::new(now_nanos()),
        }))
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
    fn a_request_takes_the_busiest_connection_with_room_or_a_new_one() {
        let full = STREAMS_PER_CONNECTION;
        let table: &[(&[(usize, usize)], Choice)] = &[
            (&[], Choice::Dial),
            (&[(0, full)], Choice::Use(0)),
            (&[(5, full), (2, full), (9, full)], Choice::Use(2)),
            (&[(full - 1, full)], Choice::Use(0)),
            (&[(full, full)], Choice::Dial),
            (&[(full, full), (full + 3, full)], Choice::Dial),
            (&[(full, full), (7, full)], Choice::Use(1)),
            // The backend's SETTINGS allow fewer streams.
            (&[(32, 32), (3, 32)], Choice::Use(1)),
            (&[(32, 32)], Choice::Dial),
            // A backend may say 0 for a while: that connection takes nothing.
            (&[(0, 0)], Choice::Dial),
            (&[(0, 0), (4, full)], Choice::Use(1)),
        ];
        for (conns, choice) in table {
            assert_eq!(choose(conns), *choice, "{conns:?}");
        }
        // At the most connections a backend gets, the least busy one takes the request.
        let mut at_most = vec![(full + 2, full); CONNECTIONS_PER_BACKEND];
        at_most[5] = (full, full);
        assert_eq!(choose(&at_most), Choice::Use(5));
        // ... among those that take streams at all.
        at_most[2] = (0, 0);
        assert_eq!(choose(&at_most), Choice::Use(5));
    }
}
