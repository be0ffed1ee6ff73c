//! Tunnels: bytes copied both ways between a client and a backend (a WebSocket or other HTTP/1.1
//! upgrade, an HTTP/2 extended CONNECT, a TCP or TLS-passthrough connection) until a side closes
//! or nothing moves either way for `tunnel_idle` (one hour by default: chat, dashboards and live
//! feeds stay quiet far longer than an HTTP request may). Half-closes are kept.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use streamgate_balance::stats::now_nanos;
use streamgate_telemetry::prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Copy buffer per direction.
const COPY_BUF: usize = 64 * 1024;

/// How a tunnel ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides finished: bytes client -> backend and backend -> client.
    Closed {
        up: u64,
        down: u64,
    },
    /// Nothing moved for the idle timeout.
    Idle,
    Failed(io::Error),
}

/// `tunnels_active{listener}` and `tunnels_total{listener}` of one listener.
#[derive(Debug, Clone)]
pub struct TunnelMetrics {
    pub active: IntGauge,
    pub total: IntCounter,
}

impl TunnelMetrics {
    pub fn of(m: &streamgate_telemetry::Metrics, listener: &str) -> TunnelMetrics {
        TunnelMetrics {
            active: m.tunnels_active.with_label_values(&[listener]),
            total: m.tunnels.with_label_values(&[listener]),
        }
    }
}

/// Counts a tunnel as open while it lives.
pub(crate) struct Open(pub(crate) IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Copies `client` <-> `backend` until both sides are done or `idle` passes without a byte.
pub async fn relay<C, B>(client: C, backend: B, idle: Duration, metrics: &TunnelMetrics) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay_counted(client, backend, idle, metrics, &Moved::default()).await
}

/// The bytes a tunnel moved each way so far, readable while it runs and after it was cut off
/// (for the access log of a connection a shutdown aborts).
#[derive(Debug, Default)]
pub struct Moved {
    /// Client -> backend.
    pub up: AtomicU64,
    /// Backend -> client.
    pub down: AtomicU64,
}

/// [`relay`], counting the bytes written to each side into `moved`.
pub async fn relay_counted<C, B>(
    client: C,
    backend: B,
    idle: Duration,
    metrics: &TunnelMetrics,
    moved: &Moved,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    metrics.total.inc();
    metrics.active.inc();
    let _open = Open(metrics.active.clone());
    // Borrowed by both sides and the idle check, all in this future: no allocation.
    let activity = AtomicU64::new(now_nanos());
    let mut a = Tracked {
        inner: client,
        activity: &activity,
        written: &moved.down,
    };
    let mut b = Tracked {
        inner: backend,
        activity: &activity,
        written: &moved.up,
    };
    let copy = crate::copy::copy_bidirectional(&mut a, &mut b, COPY_BUF, COPY_BUF);
    tokio::select! {
        r = copy => match r {
            Ok((up, down)) => Ended::Closed { up, down },
            Err(e) => Ended::Failed(e),
        },
        () = quiet_for(&activity, idle) => Ended::Idle,
    }
}

/// Resolves once no byte has moved either way for `idle`.
pub(crate) async fn quiet_for(activity: &AtomicU64, idle: Duration) {
    loop {
        let last = activity.load(Relaxed);
        let deadline = last.saturating_add(idle.as_nanos() as u64);
        let now = now_nanos();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_nanos(deadline - now)).await;
        if activity.load(Relaxed) == last {
            return;
        }
    }
}

/// Notes the time of every read and write that moved bytes.
struct Tracked<'m, T> {
    inner: T,
    activity: &'m AtomicU64,
    /// Bytes written to this side.
    written: &'m AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.store(now_nanos(), Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.written.fetch_add(n as u64, Relaxed);
            this.activity.store(now_nanos(), Relaxed);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn metrics() -> TunnelMetrics {
        TunnelMetrics {
            active: IntGauge::new("a", "a").unwrap(),
            total: IntCounter::new("t", "t").unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_lives_until_its_idle_timeout() {
        let (client, mut client_far) = tokio::io::duplex(1024);
        let (backend, mut backend_far) = tokio::io::duplex(1024);
        let m = metrics();
        let relay = tokio::spawn({
            let m = m.clone();
            async move { relay(client, backend, Duration::from_secs(3600), &m).await }
        });
        // Quiet for 59 minutes, then a message each way still goes through.
        tokio::time::sleep(Duration::from_secs(59 * 60)).await;
        assert!(!relay.is_finished());
        assert_eq!(m.active.get(), 1);
        client_far.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        backend_far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        backend_far.write_all(b"pong").await.unwrap();
        client_far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        // Then an hour of silence ends it.
        tokio::time::sleep(Duration::from_secs(3601)).await;
        assert!(matches!(relay.await.unwrap(), Ended::Idle));
        assert_eq!((m.active.get(), m.total.get()), (0, 1));
    }
}
