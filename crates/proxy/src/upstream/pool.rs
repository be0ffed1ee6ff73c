//! Idle keep-alive connections to one backend, most recently used first.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// Most idle connections kept per backend.
const MAX_IDLE: usize = 1024;

/// A request head buffer larger than this is not kept with its connection.
const MAX_KEPT_HEAD: usize = 16 * 1024;

#[derive(Debug)]
struct Idle {
    conn: Pooled,
    since: Instant,
}

/// A keep-alive connection and the buffers its last exchange used, kept together: the next
/// request on it writes its head and reads its answer without allocating either (they were 3
/// of the 16 allocations of a proxied HTTP/1.1 request, with the share of the read buffer that
/// the response head's fields point into; benches/benches/allocs.rs).
#[derive(Debug)]
pub struct Pooled {
    pub stream: TcpStream,
    pub buffers: Buffers,
}

/// An exchange's buffers: the request head as written, and what was read from the backend.
#[derive(Debug, Default)]
pub struct Buffers {
    pub head: Vec<u8>,
    /// Empty whenever it is kept; its memory is reused once the fields and body chunks of the
    /// last response that point into it are gone.
    pub read: BytesMut,
    /// For the spans of an answer forwarded as the backend sent it (`codec::RawFields`).
    pub spans: Vec<[u16; 4]>,
}

impl Buffers {
    /// What is worth keeping: a read buffer that grew for a large body, or a large head, is
    /// let go rather than held by an idle connection.
    pub fn kept(mut self, read_grew: bool) -> Buffers {
        if read_grew {
            self.read = BytesMut::new();
        }
        if self.head.capacity() > MAX_KEPT_HEAD {
            self.head = Vec::new();
        }
        self
    }
}

/// The idle connections of one backend.
#[derive(Debug)]
pub struct Pool {
    pub addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    /// The idle timeout the last request to this backend asked for, in milliseconds.
    idle_timeout_ms: AtomicU64,
}

impl Pool {
    pub fn new(addr: SocketAddr) -> Pool {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
            idle_timeout_ms: AtomicU64::new(60_000),
        }
    }

    pub fn set_idle_timeout(&self, d: Duration) {
        self.idle_timeout_ms.store(d.as_millis() as u64, Relaxed);
    }

    /// A live idle connection younger than `max_idle`, if any.
    pub fn checkout(&self, max_idle: Duration, now: Instant) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if now.saturating_duration_since(c.since) < max_idle && still_open(&c.conn.stream) {
                return Some(c.conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request; `since` is when it was last used.
    pub fn put(&self, conn: Pooled, since: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle { conn, since });
        }
    }

    /// Closes connections idle past the timeout or closed by the backend.
    pub fn sweep(&self) -> usize {
        let max_idle = Duration::from_millis(self.idle_timeout_ms.load(Relaxed));
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|c| c.since.elapsed() < max_idle && still_open(&c.conn.stream));
        idle.len()
    }

    /// Closes every idle connection; how many there were.
    pub fn clear(&self) -> usize {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let n = idle.len();
        idle.clear();
        n
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }
}

/// An idle connection must have nothing to read: readable means the backend closed it (or sent
/// something unasked). The readiness check costs no system call unless the reactor saw an event.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}
