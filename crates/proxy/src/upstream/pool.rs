//! Idle keep-alive connections to one backend, most recently used first.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Most idle connections kept per backend.
const MAX_IDLE: usize = 1024;

#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    since: Instant,
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
    pub fn checkout(&self, max_idle: Duration, now: Instant) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if now.saturating_duration_since(c.since) < max_idle && still_open(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Keeps `stream` for the next request; `since` is when it was last used.
    pub fn put(&self, stream: TcpStream, since: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle { stream, since });
        }
    }

    /// Closes connections idle past the timeout or closed by the backend.
    pub fn sweep(&self) -> usize {
        let max_idle = Duration::from_millis(self.idle_timeout_ms.load(Relaxed));
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|c| c.since.elapsed() < max_idle && still_open(&c.stream));
        idle.len()
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
