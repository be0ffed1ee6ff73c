//! Backends spoken to through hyper's clients: HTTP/2 cleartext (gRPC) and HTTP/2 over TLS
//! through hyper's HTTP/2 connections in our pools ([`H2Pools`]), HTTPS through hyper-util's
//! pooled client. TLS to backends trades our in-task HTTP/1.1 client's speed for one
//! well-tested path.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use streamgate_config::{UpstreamProtocol, UpstreamTls};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::RequestBody;
use super::answer_watch::AnswerReads;
use super::h2_pool::H2Pools;
use streamgate_tls::{self as tls, TlsError};

pub(super) type PooledClient = Client<Dialer, RequestBody>;

/// What makes two services share a client (and its connections).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ClientKey {
    pub protocol: UpstreamProtocol,
    pub tls: UpstreamTls,
    pub connect: Duration,
    pub idle: Duration,
}

/// Clients by what they are configured with, built when a config is loaded (so a bad CA file
/// fails the load, not a request) and kept across reloads that leave them unchanged: the same
/// settings, and the same files behind them (a CA or client certificate rotated in place makes
/// a new client at the reload).
#[derive(Debug, Default)]
pub(super) struct PooledClients {
    clients: ArcSwap<HashMap<ClientKey, Built>>,
}

/// A client, and the TLS configuration it dials with.
#[derive(Debug, Clone)]
pub(super) struct Built {
    sender: Sender,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// An HTTPS client's dialer, to build it anew ([`PooledClients::shed_idle`]).
    dialer: Option<Dialer>,
}

/// What sends a service's requests: hyper's pooled client (HTTPS), or our HTTP/2 pools (h2c,
/// h2; see [`H2Pools`]).
#[derive(Debug, Clone)]
pub(super) enum Sender {
    Client(Arc<PooledClient>),
    H2(Arc<H2Pools>),
}

impl PooledClients {
    pub fn get(&self, key: &ClientKey) -> Result<Sender, TlsError> {
        if let Some(c) = self.clients.load().get(key) {
            return Ok(c.sender.clone());
        }
        let built = build(key)?;
        let sender = built.sender.clone();
        self.clients.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(key.clone()).or_insert_with(|| built.clone());
            map
        });
        Ok(sender)
    }

    /// Builds the clients `keys` need, reusing those already built (and their connections)
    /// whose TLS configuration is still the current one. `keys` come with the service that
    /// needs them, for errors.
    pub fn prepare(&self, keys: &[(&str, ClientKey)]) -> Result<PreparedClients, TlsError> {
        let current = self.clients.load();
        let mut next: HashMap<ClientKey, Built> = HashMap::new();
        for (service, k) in keys {
            let failed = |e: TlsError| TlsError::Upstream {
                service: service.to_string(),
                source: Box::new(e),
            };
            let tls = tls::upstream_client_config(k.protocol, &k.tls).map_err(failed)?;
            let same = |b: &&Built| match (&b.tls, &tls) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            };
            let c = match next.get(k).or_else(|| current.get(k)).filter(same) {
                Some(c) => c.clone(),
                None => build(k).map_err(failed)?,
            };
            next.insert(k.clone(), c);
        }
        Ok(PreparedClients(next))
    }

    /// Puts prepared clients in use; clients no configuration needs any more are dropped.
    pub fn install(&self, prepared: PreparedClients) {
        self.clients.store(Arc::new(prepared.0));
    }

    /// Closes the idle connections of the HTTPS clients, for a process out of descriptors:
    /// hyper-util's pool cannot be emptied, so each client is replaced by a new one and the
    /// old one's idle connections close with it (those in use finish first). How many clients
    /// were replaced.
    pub fn shed_idle(&self) -> usize {
        let mut replaced = 0;
        self.clients.rcu(|map| {
            replaced = 0;
            let mut next = HashMap::clone(map);
            for (key, built) in next.iter_mut() {
                if let (Sender::Client(_), Some(dialer)) = (&built.sender, &built.dialer) {
                    let fresh = https_client(dialer.clone(), key.idle);
                    built.sender = Sender::Client(Arc::new(fresh));
                    replaced += 1;
                }
            }
            next
        });
        replaced
    }

    /// Closes HTTP/2 connections quiet for their `idle` (hyper's client closes its own).
    pub fn sweep(&self) {
        for built in self.clients.load().values() {
            if let Sender::H2(pools) = &built.sender {
                pools.sweep();
            }
        }
    }
}

/// Clients built for a configuration that is not in use yet.
#[derive(Debug)]
pub struct PreparedClients(HashMap<ClientKey, Built>);

/// What an HTTP/2 backend may send one stream ahead of its reader. Streams to a backend share
/// its connections, and hyper gives window back only as a body is read: a client that stops
/// reading keeps its stream's window used. With hyper's defaults (2 MiB a stream, 5 MiB
/// the connection) three stalled answers used up the connection's window and every other
/// request to that backend waited until they were given up, `idle` later
/// (`protocols::stalled_readers_do_not_stall_an_http2_backend_for_others`). So the bound is
/// per stream, as HAProxy keeps it (64 KiB there): 256 KiB, 12 MB/s a stream at 20 ms of
/// round trip, and the connection's window is as large as HTTP/2 allows, so that it is never
/// what runs out. What stalled streams can hold is the stream window times the streams a
/// backend's connections carry (see `h2_pool`: 200 MiB at 8 x 100).
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = (1 << 31) - 1;

fn build(key: &ClientKey) -> Result<Built, TlsError> {
    let config = tls::upstream_client_config(key.protocol, &key.tls)?;
    let tls = match &config {
        Some(config) => Some(TlsDial {
            config: config.clone(),
            server_name: key
                .tls
                .server_name
                .as_deref()
                .map(|n| {
                    ServerName::try_from(n.to_string())
                        .map_err(|e| TlsError::Setup(format!("tls_server_name \"{n}\": {e}")))
                })
                .transpose()?,
        }),
        None => None,
    };
    let dialer = Dialer {
        tls: tls.map(Arc::new),
        connect_timeout: key.connect,
    };
    if matches!(key.protocol, UpstreamProtocol::H2c | UpstreamProtocol::H2) {
        let pools = H2Pools::new(dialer, H2_STREAM_WINDOW, H2_CONNECTION_WINDOW, key.idle);
        return Ok(Built {
            sender: Sender::H2(Arc::new(pools)),
            tls: config,
            dialer: None,
        });
    }
    Ok(Built {
        sender: Sender::Client(Arc::new(https_client(dialer.clone(), key.idle))),
        tls: config,
        dialer: Some(dialer),
    })
}

/// hyper-util's pooled client over `dialer`, its connections closed after `idle` unused.
fn https_client(dialer: Dialer, idle: Duration) -> PooledClient {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(idle)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        // The request carries the Host the client asked for.
        .set_host(false);
    b.build(dialer)
}

#[derive(Debug)]
struct TlsDial {
    config: Arc<rustls::ClientConfig>,
    /// SNI and the name verified; `None`: the backend's IP address (no SNI is sent for an IP).
    server_name: Option<ServerName<'static>>,
}

/// Connects to the backend address in the request URI, then TLS if configured.
#[derive(Debug, Clone)]
pub(super) struct Dialer {
    tls: Option<Arc<TlsDial>>,
    connect_timeout: Duration,
}

/// A connection to a backend, plain or TLS.
#[derive(Debug)]
pub(super) enum Dialed {
    Plain(TcpStream),
    /// With the reads that brought answer bytes, for [`AnswerWatch`](super::answer_watch).
    Tls(Box<TlsStream<TcpStream>>, AnswerReads),
}

impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<Dialed>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Dialed>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| io::Error::other(format!("not a backend address: {uri}")))?;
            this.dial(addr).await
        })
    }
}

impl Dialer {
    /// Connects to `addr`, then TLS if configured, within the connect timeout (each).
    pub(super) async fn dial(&self, addr: SocketAddr) -> io::Result<TokioIo<Dialed>> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(TokioIo::new(Dialed::Plain(stream)));
        };
        let name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let s = tokio::time::timeout(self.connect_timeout, connector.connect(name, stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(TokioIo::new(Dialed::Tls(
            Box::new(s),
            AnswerReads::default(),
        )))
    }
}

impl Connection for Dialed {
    fn connected(&self) -> Connected {
        match self {
            Dialed::Plain(_) => Connected::new(),
            Dialed::Tls(s, reads) => {
                let c = Connected::new();
                if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c.extra(reads.clone())
                }
            }
        }
    }
}

impl AsyncRead for Dialed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Dialed::Tls(s, reads) => {
                let before = buf.filled().len();
                let read = Pin::new(s).poll_read(cx, buf);
                if buf.filled().len() > before {
                    reads.count();
                }
                read
            }
        }
    }
}

impl AsyncWrite for Dialed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Dialed::Tls(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Dialed::Tls(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Dialed::Plain(s) => s.is_write_vectored(),
            Dialed::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_flush(cx),
            Dialed::Tls(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Dialed::Tls(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Whether hyper's HTTP/1 client reads `resp`'s body until the connection closes, on a status
/// that has a body: a Transfer-Encoding whose last coding is not chunked (`gzip`, `identity`:
/// RFC 9112 §6.3), or neither it nor Content-Length. hyper keeps both fields in its map.
pub(super) fn read_until_close<B>(resp: &http::Response<B>) -> bool {
    let h = resp.headers();
    let codings = h.get_all(http::header::TRANSFER_ENCODING);
    let chunked = codings
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
    let framed = if codings.iter().next().is_some() {
        chunked
    } else {
        h.contains_key(http::header::CONTENT_LENGTH)
    };
    resp.version() < http::Version::HTTP_2
        && !matches!(resp.status().as_u16(), 100..=199 | 204 | 304)
        && !framed
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies_read_until_close_by_hyper_are_told() {
        type Case = (&'static [(&'static str, &'static str)], u16, bool);
        let cases: [Case; 8] = [
            (&[], 200, true),
            (&[("content-length", "5")], 200, false),
            (&[("transfer-encoding", "chunked")], 200, false),
            (&[("transfer-encoding", "gzip, chunked")], 200, false),
            (&[("transfer-encoding", "gzip")], 200, true),
            (
                &[("transfer-encoding", "identity"), ("content-length", "5")],
                200,
                true,
            ),
            (&[], 204, false),
            (&[], 304, false),
        ];
        for (fields, status, want) in cases {
            let mut r = http::Response::new(());
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            for (k, v) in fields {
                r.headers_mut().append(*k, v.parse().unwrap());
            }
            assert_eq!(super::read_until_close(&r), want, "{fields:?} {status}");
        }
    }
}
