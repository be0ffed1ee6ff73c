//! L4: `tcp` listeners (one service each) and `tls_passthrough` listeners (services chosen by the
//! SNI of the ClientHello, TLS left to the backend). A connection goes through the same region
//! and backend selection as an HTTP request, then is a [`crate::tunnel`]: bytes copied both ways
//! (half-close kept) until both sides finish or nothing moves for `tunnel_idle`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use streamgate_balance::{ClientFacts, GeoHandle, Lease, Outcome, Pick, TableHandle};
use streamgate_config::{RegionPolicy, SendProxy};
use streamgate_telemetry::access_log::{AccessLog, AccessRecord};
use streamgate_telemetry::prometheus::IntCounter;
use streamgate_telemetry::{Metrics, code_class_index};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::accept::{Acceptor, client_behind_proxy};
use crate::http::ListenerLimits;
use crate::proxy_protocol;
use crate::sni::{HelloReader, MAX_HELLO, Sni};
use crate::tunnel::{Ended, Moved, TunnelMetrics};

/// Most backends one connection tries when connecting fails.
const MAX_TRIES: usize = 8;

/// Shared state of one L4 listener.
#[derive(Debug)]
pub struct TcpProxy {
    listener: Arc<str>,
    /// Route by the ClientHello's server name.
    passthrough: bool,
    /// Expect a PROXY header from trusted peers.
    proxy_protocol: bool,
    table: TableHandle,
    geo: GeoHandle,
    metrics: Arc<Metrics>,
    tunnels: TunnelMetrics,
    limited: crate::limits::LimitedCounters,
    per_client: Option<(usize, Arc<crate::limits::ClientConnections>)>,
    access_log: crate::http::AccessLogHandle,
    /// The process's connection budget and the splice pipes within it.
    descriptors: Arc<crate::descriptors::Budget>,
}

impl TcpProxy {
    pub fn new(
        listener: &str,
        passthrough: bool,
        proxy_protocol: bool,
        limits: &ListenerLimits,
        shared: &crate::http::Shared,
    ) -> Arc<TcpProxy> {
        Arc::new(TcpProxy {
            listener: listener.into(),
            passthrough,
            proxy_protocol,
            table: shared.table.clone(),
            geo: shared.geo.clone(),
            metrics: shared.metrics.clone(),
            tunnels: TunnelMetrics::of(&shared.metrics, listener),
            limited: crate::limits::LimitedCounters::of(&shared.metrics, listener),
            per_client: limits
                .max_connections_per_client
                .map(|n| (n, Arc::default())),
            access_log: shared.access_log.clone(),
            descriptors: shared.descriptors.clone(),
        })
    }
}

/// Serves an L4 listener until `shutdown`; open connections keep going until they end or the
/// caller's shutdown deadline aborts this future.
pub async fn serve_tcp(
    listener: TcpListener,
    proxy: Arc<TcpProxy>,
    limits: ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut acceptor = Acceptor::new(
        listener,
        proxy.listener.clone(),
        limits.max_connections,
        proxy.descriptors.clone(),
        &proxy.metrics,
    );
    let mut conns = JoinSet::new();
    while let Some(conn) = acceptor.next(&mut shutdown).await {
        while conns.try_join_next().is_some() {}
        let proxy = proxy.clone();
        conns.spawn(async move {
            proxy.handle(conn.stream, conn.peer).await;
            drop(conn.hold);
        });
    }
    drop(acceptor);
    while conns.join_next().await.is_some() {}
}

impl TcpProxy {
    async fn handle(&self, mut stream: TcpStream, peer: SocketAddr) {
        let table = self.table.load_full();
        // Before a service is known (the ClientHello's read): the file's timeouts.
        let timeouts = table.config.timeouts;
        let proxied = self.proxy_protocol.then_some(&*table);
        // An L4 connection has no forwarding fields to believe or not: `unknown` is unused.
        let Some(crate::accept::Behind {
            client,
            rest,
            destination,
            ..
        }) = client_behind_proxy(&mut stream, peer, &self.listener, proxied).await
        else {
            return;
        };
        let _client_slot = match &self.per_client {
            Some((max, open)) => match open.try_open(client.ip().to_canonical(), *max) {
                Some(slot) => Some(slot),
                None => {
                    self.limited.count(crate::limits::Limit::ClientConnections);
                    debug!(listener = %self.listener, peer = %client, "max_connections_per_client reached; connection closed");
                    return;
                }
            },
            None => None,
        };
        // From here on every connection gets its access-log line and its count, however it ends.
        let mut log = ConnectionLog::new(self, client);
        let mut prefix = BytesMut::from(&rest[..]);
        let name = if self.passthrough {
            match read_sni(&mut stream, &mut prefix, timeouts.request_header).await {
                Ok(name) => name,
                Err(why) => {
                    debug!(listener = %self.listener, peer = %client, reason = why, "no usable ClientHello; connection closed");
                    log.status = 400;
                    return;
                }
            }
        } else {
            None
        };
        log.record.host =
            streamgate_telemetry::access_log::capped(name.clone().unwrap_or_default());
        let service = match table.route(&self.listener, name.as_deref().unwrap_or(""), "/") {
            Ok(s) => s,
            Err(_) => {
                debug!(listener = %self.listener, peer = %client, sni = ?name, "no service for this connection; closed");
                log.status = 404;
                return;
            }
        };
        log.record.service = Some(service.name.clone());
        if let Err(denied) = crate::access::check(&service.spec.access, client.ip(), || {
            let db = self.geo.load();
            let facts = db.as_ref()?.lookup(client.ip())?;
            Some(facts.country?.to_string())
        }) {
            self.metrics
                .access_denied
                .with_label_values(&[&service.name, denied.as_str()])
                .inc();
            debug!(service = %service.name, peer = %client, reason = denied.as_str(), "refused by the access list");
            log.status = 403;
            return;
        }
        // consistent_hash hashes the client address when facts carry no key of a request's.
        let mut facts = ClientFacts {
            ip: Some(client.ip()),
            ..ClientFacts::default()
        };
        if service.spec.region_policy == RegionPolicy::Geo
            && let Some(db) = self.geo.load().as_ref()
        {
            facts.geo = db.lookup(client.ip());
        }
        let local = stream.local_addr().unwrap_or(peer);
        if crate::own_connections::is_own(peer, local) {
            warn!(listener = %self.listener, service = %service.name, "a connection from this daemon itself: a backend address of this service is one of its own listeners (a loop); closed");
            log.status = 508;
            return;
        }
        let (mut backend, lease) = match self
            .connect(service, &facts, service.spec.timeouts.connect, &mut log)
            .await
        {
            Ok(c) => c,
            Err(status) => {
                log.status = status;
                return;
            }
        };
        let _own =
            crate::own_connections::Outgoing::register(backend.local_addr(), backend.peer_addr());
        // The address the client connected to: a trusted balancer's, or this listener's.
        let to = destination.unwrap_or(local);
        let header = match service.spec.upstream.send_proxy {
            SendProxy::Off => None,
            SendProxy::V1 => Some(proxy_protocol::encode_v1(client, to)),
            SendProxy::V2 => Some(proxy_protocol::encode_v2(client, to)),
        };
        if let Some(h) = header
            && let Err(e) = backend.write_all(&h).await
        {
            warn!(service = %service.name, error = %e, "could not send the PROXY header");
            log.status = 502;
            return;
        }
        // Relayed from here: a shutdown that cuts the tunnel off still logs what moved.
        log.status = 200;
        let ended = relay(
            stream,
            prefix,
            backend,
            service.spec.timeouts.tunnel_idle,
            &self.tunnels,
            &log.moved,
            &self.descriptors,
        );
        match ended.await {
            Ended::Closed { up, down } => {
                debug!(service = %service.name, up, down, "connection done");
            }
            Ended::Failed(e) => {
                debug!(service = %service.name, error = %e, "connection ended with an error");
            }
            Ended::Idle => {
                debug!(service = %service.name, idle = ?service.spec.timeouts.tunnel_idle, "idle connection closed");
            }
        }
        drop(lease);
    }

    /// Connects to a backend picked for `facts`, trying others when connecting fails.
    /// `Err`: the status logged (503 no usable backend or this process short of descriptors,
    /// 502 every connect failed).
    async fn connect(
        &self,
        service: &streamgate_balance::Service,
        facts: &ClientFacts,
        timeout: Duration,
        log: &mut ConnectionLog,
    ) -> Result<(TcpStream, Lease), u16> {
        // Backends that refused: filled only when one does, so a connection that gets through
        // at once allocates no list.
        let mut tried: Vec<SocketAddr> = Vec::new();
        loop {
            let Some(pick): Option<Pick<'_>> = service.pick(facts, &tried) else {
                warn!(service = %service.name, tried = tried.len(), "no usable backend for the connection; closed");
                return Err(if tried.is_empty() { 503 } else { 502 });
            };
            log.record.region = Some(pick.region.name.clone());
            log.record.backend = Some(pick.backend.address);
            log.counts = Some(pick.region.metrics.requests.clone());
            let lease = Lease::new(pick.backend.state.clone());
            match tokio::time::timeout(timeout, TcpStream::connect(pick.backend.address)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    lease.record_head_at(std::time::Instant::now());
                    pick.backend.state.record_outcome(
                        Outcome::Success,
                        &service.spec.outlier,
                        || true,
                    );
                    pick.region.metrics.routing[pick.reason.index()].inc();
                    return Ok((s, lease));
                }
                Ok(Err(e)) if streamgate_balance::shortage::is_local_shortage(&e) => {
                    // Out of descriptors: no backend's fault, and none would do better.
                    self.limited.count(crate::limits::Limit::Descriptors);
                    crate::descriptors::shortage_met(&e);
                    return Err(503);
                }
                failed => {
                    tried.push(pick.backend.address);
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("connect timed out after {timeout:?}"),
                    };
                    pick.backend.state.record_outcome(
                        Outcome::ConnectFailure,
                        &service.spec.outlier,
                        || true,
                    );
                    let kind = if why.contains("timed out") {
                        "timeout"
                    } else {
                        "connect"
                    };
                    self.metrics
                        .upstream_errors
                        .with_label_values(&[&pick.region.name, kind])
                        .inc();
                    warn!(service = %service.name, region = %pick.region.name, backend = %pick.backend.address, error = %why, "backend connect failed");
                    if tried.len() >= MAX_TRIES {
                        return Err(502);
                    }
                }
            }
        }
    }
}

/// One L4 connection's access-log line and its count in
/// `global_load_balancer_requests_total`, written when the connection ends, however it ends.
/// The status follows nginx's stream module: 200 relayed, 400 no usable ClientHello, 403
/// refused by the access list, 404 no service for the name, 502 no backend accepted the
/// connection, 503 no usable backend.
struct ConnectionLog {
    record: AccessRecord,
    started: Instant,
    status: u16,
    /// The picked region's request counters.
    counts: Option<[IntCounter; 5]>,
    log: Option<Arc<AccessLog>>,
    /// Counted by the relay, which borrows it: the connection's task owns both, so a shutdown
    /// that aborts the task still logs what moved.
    moved: Moved,
}

impl ConnectionLog {
    fn new(proxy: &TcpProxy, client: SocketAddr) -> ConnectionLog {
        ConnectionLog {
            // "-" is filled in when the line is written: most connections log no line.
            record: AccessRecord::arriving(
                proxy.listener.clone(),
                client.ip().to_canonical(),
                if proxy.passthrough { "TLS" } else { "TCP" },
                String::new(),
                String::new(),
                String::new(),
            ),
            started: Instant::now(),
            // A connection dropped before it reached a decision (shutdown) was cut short.
            status: 499,
            counts: None,
            log: proxy.access_log.load_full(),
            moved: Moved::default(),
        }
    }
}

impl Drop for ConnectionLog {
    fn drop(&mut self) {
        if let Some(c) = &self.counts {
            c[code_class_index(self.status)].inc();
        }
        if let Some(log) = &self.log {
            let mut record = self.record.clone();
            record.method = "-".into();
            record.status = self.status;
            record.duration = self.started.elapsed();
            record.bytes_in = self.moved.up.load(Relaxed);
            record.bytes_out = self.moved.down.load(Relaxed);
            log.log(record);
        }
    }
}

/// Reads until the ClientHello is complete; its server name, lower case.
async fn read_sni(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<Option<String>, &'static str> {
    let mut hello = HelloReader::default();
    let read = async {
        loop {
            match hello.advance(buf) {
                Sni::Found(name) => return Ok(name),
                Sni::NotTls => return Err("not a TLS ClientHello"),
                Sni::Incomplete if buf.len() >= MAX_HELLO => return Err("ClientHello too large"),
                Sni::Incomplete => match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => return Err("connection closed before the ClientHello ended"),
                    Ok(_) => {}
                },
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err("no ClientHello in time"))
}

/// Relays a connection whose first bytes (`prefix`, read to find the SNI) are in hand: sent to
/// the backend first, then the sockets are spliced (Linux) or copied.
async fn relay(
    client: TcpStream,
    prefix: BytesMut,
    mut backend: TcpStream,
    idle: std::time::Duration,
    metrics: &TunnelMetrics,
    moved: &Moved,
    descriptors: &Arc<crate::descriptors::Budget>,
) -> Ended {
    // Past a quarter of the connections splicing, the pipes' descriptors are not there to
    // take: the connection is copied.
    #[cfg(target_os = "linux")]
    match descriptors.pipes().map(crate::splice::Pipes::open) {
        None => {}
        Some(Ok(pipes)) => {
            if !prefix.is_empty() {
                if let Err(e) = backend.write_all(&prefix).await {
                    return Ended::Failed(e);
                }
                moved
                    .up
                    .fetch_add(prefix.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            return crate::splice::relay_spliced(&client, &backend, pipes, idle, metrics, moved)
                .await;
        }
        // Out of descriptors (EMFILE, ENFILE) or pipe memory: the sockets are open already,
        // and a copy needs nothing more.
        Some(Err(e)) => pipes_refused(&e),
    }
    let client = crate::io::Prefixed::new(prefix.freeze(), client);
    crate::tunnel::relay_counted(client, backend, idle, metrics, moved).await
}

/// Logs, at most once a minute, that connections are copied because pipes cannot be made.
#[cfg(target_os = "linux")]
fn pipes_refused(e: &std::io::Error) {
    static LAST: streamgate_telemetry::Throttle = streamgate_telemetry::Throttle::new();
    if LAST.ready(crate::descriptors::MINUTE) {
        warn!(error = %e, "cannot make pipes for splice(2); TCP connections are copied instead (raise LimitNOFILE)");
    }
}
