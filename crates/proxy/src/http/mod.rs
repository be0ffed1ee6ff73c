//! L7: HTTP/1.1 and HTTP/2 (prior knowledge) on one listener, forwarded to the routing table's
//! backends.

pub mod body;
mod cache;
mod cache_fill;
mod cache_serve;
mod compress;
pub mod error;
mod forward;
pub mod h1;
mod hash_key;
pub mod headers;
mod origin;
mod pump;
mod purge;
mod read_ahead;
mod recording;
mod request;
mod rules;
mod switch;
mod upgraded;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use streamgate_balance::{GeoHandle, TableHandle};
use streamgate_cache::CacheRegistry;
use streamgate_telemetry::Metrics;
use streamgate_telemetry::access_log::AccessLog;
use streamgate_telemetry::prometheus::IntCounter;
use tokio::net::{TcpListener, TcpStream};

use crate::accept::{Acceptor, client_behind_proxy};
use crate::io::Prefixed;
use streamgate_tls::TlsHandle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use crate::coalesce::CoalescedWrites;
use crate::drain::Drain;
use crate::io::{ActiveRequest, ClientTimeouts, ConnActivity, TimedIo};
use crate::upstream::Upstreams;

/// Shared state of one HTTP listener.
#[derive(Debug)]
pub struct HttpProxy {
    listener: Arc<str>,
    https: bool,
    tls: Option<TlsHandle>,
    accept_proxy: bool,
    table: TableHandle,
    geo: GeoHandle,
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
    access_log: AccessLogHandle,
    caches: Arc<CacheRegistry>,
    /// `cache_served_bytes_total{source="origin"}`
    served_origin: IntCounter,
    tunnels: crate::tunnel::TunnelMetrics,
    pub(crate) limited: crate::limits::LimitedCounters,
    /// `loops_detected_total{listener}`
    loops: IntCounter,
    rates: Arc<crate::limits::RateLimits>,
    encoders: Arc<crate::upstream::EncoderMemory>,
    /// The link to the other PoPs, once `[fleet]`'s is started (fleet-wide PURGE).
    fleet: FleetHandle,
    per_client: Option<(usize, Arc<crate::limits::ClientConnections>)>,
    /// `max_headers`: HTTP/1.1 heads are held to it as they are parsed; HTTP/2 requests are
    /// counted here.
    max_headers: usize,
    /// `max_header_bytes`: the largest HTTP/1.1 head our own server reads (hyper takes larger
    /// ones, to answer 431).
    max_header_bytes: usize,
    /// The process's connection budget, shared by every listener.
    descriptors: Arc<crate::descriptors::Budget>,
}

impl HttpProxy {
    /// `tls`: the listener terminates TLS (https). `accept_proxy`: trusted peers send a PROXY
    /// header first.
    pub fn new(
        listener: &str,
        tls: Option<TlsHandle>,
        accept_proxy: bool,
        limits: &ListenerLimits,
        shared: &Shared,
    ) -> Arc<HttpProxy> {
        Arc::new(HttpProxy {
            listener: listener.into(),
            https: tls.is_some(),
            tls,
            accept_proxy,
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
            tunnels: crate::tunnel::TunnelMetrics::of(&shared.metrics, listener),
            limited: crate::limits::LimitedCounters::of(&shared.metrics, listener),
            loops: shared.metrics.loops.with_label_values(&[listener]),
            rates: shared.rates.clone(),
            encoders: shared.encoders.clone(),
            fleet: shared.fleet.clone(),
            per_client: limits
                .max_connections_per_client
                .map(|n| (n, Arc::default())),
            max_headers: limits.max_headers,
            max_header_bytes: limits.max_header_bytes,
            descriptors: shared.descriptors.clone(),
        })
    }
}

/// The access log in use, swapped by a reload that changes `[access_log]`.
pub type AccessLogHandle = Arc<arc_swap::ArcSwapOption<AccessLog>>;

/// What every listener of the data plane shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub table: TableHandle,
    pub geo: GeoHandle,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLogHandle,
    pub caches: Arc<CacheRegistry>,
    pub rates: Arc<crate::limits::RateLimits>,
    pub fleet: FleetHandle,
    /// What the daemon's response encoders hold (`[services.compression] max_memory`).
    pub encoders: Arc<crate::upstream::EncoderMemory>,
    /// `[runtime] max_connections` and the splice pipes within it.
    pub descriptors: Arc<crate::descriptors::Budget>,
}

/// The fleet link, set once when the daemon joins its fleet (after the listeners exist).
pub type FleetHandle = Arc<std::sync::OnceLock<streamgate_fleet::Fleet>>;

/// Limits of an HTTP listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// `[timeouts] idle`: also the HTTP/2 keep-alive PING interval.
    pub idle: std::time::Duration,
}

impl ListenerLimits {
    pub fn of(
        l: &streamgate_config::Listener,
        timeouts: &streamgate_config::Timeouts,
    ) -> ListenerLimits {
        ListenerLimits {
            idle: timeouts.idle,
            max_connections: l.max_connections.map(|n| n.get()),
            max_connections_per_client: l.max_connections_per_client.map(|n| n.get()),
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
        }
    }
}

/// Spawns hyper's HTTP/2 tasks, one per stream, each holding its request's future (3.7 KiB).
/// Spawned as it stands, that future is copied into the task as well as built; moved once into
/// a box, the task is small. Per h2c request, against the binary just before (callgrind with
/// its cache simulation, 10 000 requests): proxied 56 164 -> 52 792 instructions, L1 read
/// misses 637 -> 411, write misses 688 -> 344; cache hits 42 974 -> 40 407, 519 -> 325,
/// 590 -> 264. One allocation more per stream. HTTP/1.1 spawns nothing per request (hyper
/// keeps its future in the connection); boxing that future instead cost HTTP/1.1 300
/// instructions and 48 write misses a request.
#[derive(Clone, Copy, Debug)]
struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}

fn client_timeouts(t: &streamgate_config::Timeouts) -> ClientTimeouts {
    ClientTimeouts {
        request_header: t.request_header,
        idle: t.idle,
    }
}

/// What h2 may queue per stream beyond what the socket took. hyper's default, 400 KiB, let an
/// HTTP/2 client that grants every window and reads nothing pin 124 MiB with one connection of
/// 256 streams (`cli::an_http2_client_that_reads_nothing_pins_little_memory`).
const H2_SEND_BUFFER: usize = 64 * 1024;

fn builder(limits: &ListenerLimits) -> auto::Builder<StreamExecutor> {
    let mut b = auto::Builder::new(StreamExecutor);
    b.http1()
        .timer(TokioTimer::new())
        // Head and idle deadlines are enforced by `TimedIo`; hyper's own would merge them.
        .header_read_timeout(None)
        .keep_alive(true)
        .half_close(false)
        // Request heads above these get 431; bodies are streamed and not limited by them.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_send_buf_size(H2_SEND_BUFFER)
        .max_header_list_size(limits.max_header_bytes as u32)
        // A peer that stops answering PINGs is gone (a stream may be waiting on a slow backend
        // while the client machine vanished): every `idle`, a PING; no answer within
        // `idle` (at most 20 s), the connection is closed.
        .keep_alive_interval(Some(limits.idle))
        .keep_alive_timeout(limits.idle.min(std::time::Duration::from_secs(20)))
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256))
        // RFC 8441: WebSocket over HTTP/2 (extended CONNECT).
        .enable_connect_protocol();
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
    let drain = Arc::new(Drain::default());
    let builder = builder(&limits);
    let mut acceptor = Acceptor::new(
        listener,
        proxy.listener.clone(),
        limits.max_connections,
        proxy.descriptors.clone(),
        &proxy.metrics,
    );
    // Connection tasks live in this set so that aborting `serve` (shutdown deadline passed)
    // closes them too.
    let mut conns = JoinSet::new();
    while let Some(conn) = acceptor.next(&mut shutdown).await {
        while conns.try_join_next().is_some() {}
        let (proxy, builder, drain) = (proxy.clone(), builder.clone(), drain.clone());
        let listener_slots = acceptor.slots();
        conns.spawn(async move {
            let activity = ConnActivity::new();
            // Aborted at the shutdown deadline: the connection's tunnels end with it.
            let _close = activity.close_on_drop();
            proxy
                .connection(
                    conn.stream,
                    conn.peer,
                    builder,
                    &drain,
                    &activity,
                    listener_slots,
                )
                .await;
            // An upgraded connection (WebSocket) lives on as a tunnel after hyper is done with
            // it: it keeps its slot and graceful shutdown waits for it.
            activity.until_idle().await;
            drop(conn.hold);
        });
    }
    drop(acceptor);
    drain.start();
    while conns.join_next().await.is_some() {}
}

/// Who a connection is from, as its requests will say, and the deadlines its reads get.
struct Client {
    peer: SocketAddr,
    forwarded_for: headers::ForwardedFor,
    timeouts: ClientTimeouts,
}

impl HttpProxy {
    /// One client connection: PROXY header (from trusted peers, if the listener takes them),
    /// TLS (https listeners), then HTTP until the connection ends.
    async fn connection(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        builder: auto::Builder<StreamExecutor>,
        drain: &Drain,
        activity: &Arc<ConnActivity>,
        listener_slots: Option<Arc<tokio::sync::Semaphore>>,
    ) {
        let timeouts = client_timeouts(&self.table.load().config.timeouts);
        let proxied = self.accept_proxy.then(|| self.table.load_full());
        let Some(crate::accept::Behind {
            client: peer,
            rest: prefix,
            unknown,
            ..
        }) = client_behind_proxy(&mut stream, peer, &self.listener, proxied.as_deref()).await
        else {
            return;
        };
        // Made once for the connection: every request on it forwards the same value.
        let mut forwarded_for = headers::ForwardedFor::new(peer.ip());
        if unknown {
            forwarded_for = forwarded_for.unvouched();
        }
        // Counted by the client address (the PROXY header's, from a trusted balancer).
        let client_slot = match &self.per_client {
            Some((max, open)) => match open.try_open(peer.ip().to_canonical(), *max) {
                Some(slot) => Some(slot),
                None => {
                    self.limited.count(crate::limits::Limit::ClientConnections);
                    debug!(listener = %self.listener, peer = %peer, "max_connections_per_client reached; connection closed");
                    return;
                }
            },
            None => None,
        };
        let per_client = self
            .per_client
            .as_ref()
            .map(|(max, open)| (*max, open.clone(), peer.ip().to_canonical()));
        activity.set_tunnel_limits(crate::tunnel_slots::TunnelLimits {
            listener: listener_slots,
            client: per_client,
        });
        let io = Prefixed::new(prefix, stream);
        let client = Client {
            peer,
            forwarded_for,
            timeouts,
        };
        match &self.tls {
            None => self.serve_io(io, client, &builder, drain, activity).await,
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
                match tokio::time::timeout(timeouts.request_header, acceptor.accept(io)).await {
                    Ok(Ok(s)) => self.serve_io(s, client, &builder, drain, activity).await,
                    Ok(Err(e)) => {
                        debug!(listener = %self.listener, peer = %peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => {
                        debug!(listener = %self.listener, peer = %peer, "TLS handshake timed out")
                    }
                }
            }
        }
        // An upgraded connection (WebSocket) lives on as a tunnel after the server is done
        // with it: the client's slot is held until it ends too, or one client could open
        // tunnels past max_connections_per_client. Not for an answer still being recorded
        // after its client left: that client is gone, and may come back.
        activity.until_no_tunnels().await;
        drop(client_slot);
    }

    async fn serve_io<I>(
        self: &Arc<Self>,
        io: I,
        client: Client,
        builder: &auto::Builder<StreamExecutor>,
        drain: &Drain,
        activity: &Arc<ConnActivity>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Client {
            peer,
            forwarded_for,
            timeouts,
        } = client;
        let activity = activity.clone();
        let mut io = CoalescedWrites::new(
            TimedIo::new(io, activity.clone(), timeouts),
            activity.clone(),
        );
        let mut seat = drain.seat();
        // Plain HTTP/1.1 requests are ours; from the first that is not, hyper serves the
        // connection, reading first what was read for it.
        let read = match h1::serve(self, &mut io, peer, &forwarded_for, &activity, &mut seat).await
        {
            h1::Ended::Closed => return,
            h1::Ended::HandOver(read) => read,
        };
        let io = TokioIo::new(Prefixed::new(read, io));
        let proxy = self.clone();
        let conn_activity = activity.clone();
        let svc = service_fn(move |req| {
            let active = ActiveRequest::new(&activity);
            let watch = crate::stream_resets::StreamWatch::open(&activity);
            let conn = activity.clone();
            let p = proxy.clone();
            let forwarded_for = forwarded_for.clone();
            async move {
                if conn.resets.flood() {
                    // Cut for resetting its streams (see `stream_resets`): what it opens
                    // while its GOAWAY is on the way goes no further.
                    let mut refused = http::Response::new(body::ProxyBody::empty());
                    *refused.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    return Ok(refused);
                }
                let mut handling =
                    std::pin::pin!(p.handle(req.map(Some), peer, forwarded_for, active, false));
                let mut at_once = true;
                let response = std::future::poll_fn(|cx| {
                    let r = handling.as_mut().poll(cx);
                    at_once &= r.is_ready();
                    r
                })
                .await;
                watch.answered();
                conn.note_answer(at_once);
                Ok::<_, Infallible>(response)
            }
        });
        let mut conn = std::pin::pin!(builder.serve_connection_with_upgrades(io, svc));
        // Told to drain, hyper finishes the request in hand and closes; an idle connection
        // closes at once.
        let mut told = false;
        // A client cut for resetting its streams has ten seconds to take its GOAWAY and finish
        // its other streams: hyper's graceful shutdown waits for a PING's answer, which such a
        // client may never send.
        let mut cut: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let ended = std::future::poll_fn(|cx| {
            if !told && seat.poll_draining(cx) {
                told = true;
                conn.as_mut().graceful_shutdown();
            }
            if cut.is_none() && conn_activity.resets.flood() {
                told = true;
                self.limited.count(crate::limits::Limit::Resets);
                debug!(listener = %self.listener, peer = %peer, "HTTP/2 client reset most of its streams as it opened them; GOAWAY");
                conn.as_mut().graceful_shutdown();
                cut = Some(Box::pin(tokio::time::sleep(std::time::Duration::from_secs(10))));
            }
            if let Some(c) = cut.as_mut()
                && c.as_mut().poll(cx).is_ready()
            {
                return std::task::Poll::Ready(Ok(()));
            }
            conn.as_mut().poll(cx)
        })
        .await;
        if let Err(e) = ended {
            if let Some(e) = e.downcast_ref::<hyper::Error>() {
                self.refused_head(e, peer);
            }
            debug!(listener = %self.listener, peer = %peer, error = %e, "client connection ended with an error");
        }
    }

    /// hyper answers a head it cannot take (400, 414, 431) itself, before any handler runs, and
    /// then ends the connection with the error: counted and access-logged here, as nginx logs
    /// its 400s and HAProxy its `<BADREQ>`. Method and path are `-`: the head was not read.
    fn refused_head(&self, e: &hyper::Error, peer: SocketAddr) {
        let Some(status) = error::refused_head_status(e) else {
            return;
        };
        if e.is_parse_too_large() {
            self.limited.count(crate::limits::Limit::Header);
        }
        if let Some(sink) = self.access_log.load().as_ref() {
            let mut record = streamgate_telemetry::access_log::AccessRecord::arriving(
                self.listener.clone(),
                peer.ip().to_canonical(),
                "HTTP/1.1",
                "-".to_string(),
                String::new(),
                "-".to_string(),
            );
            // hyper's answer has no body: bytes_out stays 0.
            record.status = status.as_u16();
            sink.log(record);
        }
    }
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
