//! L7: HTTP/1.1 and HTTP/2 (prior knowledge) on one listener, forwarded to the routing table's
//! backends.

pub mod body;
mod cached;
pub mod error;
mod forward;
pub mod headers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use streamgate_balance::{GeoHandle, TableHandle};
use streamgate_cache::CacheRegistry;
use streamgate_telemetry::Metrics;
use streamgate_telemetry::access_log::AccessLog;
use streamgate_telemetry::prometheus::IntCounter;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::debug;

use crate::io::{ActiveRequest, ClientTimeouts, ConnActivity, TimedIo};
use crate::upstream::Upstreams;

/// Shared state of one HTTP listener.
#[derive(Debug)]
pub struct HttpProxy {
    listener: Arc<str>,
    https: bool,
    table: TableHandle,
    geo: GeoHandle,
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<AccessLog>>,
    caches: Arc<CacheRegistry>,
    /// `cache_served_bytes_total{source="origin"}`
    served_origin: IntCounter,
}

impl HttpProxy {
    pub fn new(listener: &str, https: bool, shared: &Shared) -> Arc<HttpProxy> {
        Arc::new(HttpProxy {
            listener: listener.into(),
            https,
            table: shared.table.clone(),
            geo: shared.geo.clone(),
            upstreams: shared.upstreams.clone(),
            metrics: shared.metrics.clone(),
            access_log: shared.access_log.clone(),
            caches: shared.caches.clone(),
            served_origin: shared
                .metrics
                .cache_served_bytes
                .with_label_values(&["origin"]),
        })
    }
}

/// What every listener of the data plane shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub table: TableHandle,
    pub geo: GeoHandle,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub access_log: Option<Arc<AccessLog>>,
    pub caches: Arc<CacheRegistry>,
}

/// Limits of an HTTP listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub max_connections: Option<usize>,
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Head and idle deadlines are enforced by `TimedIo`; hyper's own would merge them.
        .header_read_timeout(None)
        .keep_alive(true)
        .half_close(false)
        // Request heads above this get 431; bodies are streamed and not limited by it.
        .max_buf_size(64 * 1024)
        .max_headers(128);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_header_list_size(64 * 1024)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
    b
}

/// Serves HTTP on `listener` until `shutdown` turns true, then stops accepting and lets open
/// connections finish their requests. Returns once every connection has closed; the caller
/// bounds that wait with the shutdown deadline.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<HttpProxy>,
    limits: ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let builder = builder();
    let slots = limits.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let accepted = proxy
        .metrics
        .connections
        .with_label_values(&[&*proxy.listener]);
    let open = proxy
        .metrics
        .connections_active
        .with_label_values(&[&*proxy.listener]);
    // Connection tasks live in this set so that aborting `serve` (shutdown deadline passed)
    // closes them too.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let permit = match &slots {
            Some(s) => tokio::select! {
                p = s.clone().acquire_owned() => p.ok(),
                _ = shutdown.changed() => break,
            },
            None => None,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(listener = %proxy.listener, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        accepted.inc();
        open.inc();
        let timeouts = {
            let t = proxy.table.load().config.timeouts;
            ClientTimeouts {
                request_header: t.request_header,
                idle: t.idle,
            }
        };
        let activity = ConnActivity::new();
        let io = TokioIo::new(TimedIo::new(stream, activity.clone(), timeouts));
        let svc_proxy = proxy.clone();
        let svc = service_fn(move |req| {
            let active = ActiveRequest::new(&activity);
            let p = svc_proxy.clone();
            async move { Ok::<_, Infallible>(p.handle(req, peer, active).await) }
        });
        let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
        let conn = graceful.watch(conn);
        let open = open.clone();
        let listener_name = proxy.listener.clone();
        conns.spawn(async move {
            if let Err(e) = conn.await {
                debug!(listener = %listener_name, peer = %peer, error = %e, "client connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    while conns.join_next().await.is_some() {}
}

/// Binds a listening socket with the options a proxy wants (address reuse, a deep backlog).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Used by tests and the demo: the address a bound listener ended up on.
pub fn local_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
