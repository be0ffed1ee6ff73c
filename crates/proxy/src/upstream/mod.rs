//! HTTP/1.1 to backends over pooled keep-alive connections, driven in the request's own task.
//!
//! hyper's pooled client runs each connection as a task of its own and passes requests,
//! responses and body chunks between tasks through channels. A proxy request already has a task;
//! writing the request and reading the response in it saves those hand-offs (measured in the
//! commit that introduced this module), and tells exactly whether a failed request could have
//! reached the backend.

mod answer_watch;
mod body;
pub mod codec;
mod compress;
mod exchange;
pub mod fuzzing;
mod h2_pool;
mod last_fields;
mod pool;
mod pooled;
mod raw_head;
mod request_body;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body::Body;
use tokio::net::TcpStream;

pub use body::H1Body;
use codec::{BodyDecoder, HeadError, RequestFraming, ResponseHead};
pub use compress::{Compressing, Encoder, EncoderMemory, NotStarted};
pub(crate) use exchange::Conn;
use exchange::{Failure, connect, exchange, is_stale_connection};
use h2_pool::{H2Error, StreamSlot};
pub use pool::{Buffers, Pool, Pooled};
pub use pooled::PreparedClients;
use pooled::{ClientKey, PooledClients, Sender};
pub use request_body::{BodyTooLarge, BoxError, RequestBody, Upload, WholeReadError};
use streamgate_config::{Config, Upstream, UpstreamProtocol};
use streamgate_tls::TlsError;

/// A backend's response body: read by our HTTP/1.1 client, or by hyper's HTTP/2 one.
#[derive(Debug)]
pub enum UpstreamBody {
    /// Boxed: one allocation per answer, against an answer of 496 bytes rather than 272 in
    /// every move on its way to the client. Boxing alone took proxied HTTP/1.1 from 25 691 to
    /// 24 726 instructions a request and from 303 to 231 L1 write misses, and h2c from 53 484
    /// to 52 424 (callgrind).
    H1(Box<H1Body>),
    Pooled(PooledBody),
    /// Either of the above, compressed for the client (`[services.compression]`).
    Compressed(Box<Compressing>),
}

/// A body read by hyper's client (h2c, HTTPS, h2), with the same stall timer as [`H1Body`]: a
/// backend that sends nothing for `stall` in the middle of it is given up on.
#[derive(Debug)]
pub struct PooledBody {
    body: hyper::body::Incoming,
    /// The stall in milliseconds: a `Duration` would take the 8 bytes the slot needs, and a
    /// proxied answer is kept within 256 bytes (`http::body::size`).
    stall_ms: u32,
    /// Armed while waiting for data; reset by every frame.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// An HTTP/2 answer's place on its connection, until the body is dropped.
    _slot: Option<StreamSlot>,
    /// See [`UpstreamBody::until_close`].
    until_close: bool,
}

impl PooledBody {
    fn new(
        body: hyper::body::Incoming,
        stall: Duration,
        slot: Option<StreamSlot>,
        until_close: bool,
    ) -> PooledBody {
        PooledBody {
            body,
            stall_ms: u32::try_from(stall.as_millis()).unwrap_or(u32::MAX),
            timer: None,
            _slot: slot,
            until_close,
        }
    }
}

impl UpstreamBody {
    /// The answer's fields as the backend sent them, when `send` was asked to keep them so
    /// and the head allowed it; the response's own map then holds only what was added to it.
    pub(crate) fn take_raw_fields(&mut self) -> Option<codec::RawFields> {
        match self {
            UpstreamBody::H1(b) => b.take_raw_fields(),
            UpstreamBody::Pooled(_) | UpstreamBody::Compressed(_) => None,
        }
    }

    /// Whether the body ends only when the backend closes its connection (HTTP/1 without
    /// Content-Length or chunking). Such an end cannot be told from a backend that died
    /// mid-body (RFC 9112 §6.3), so a cache must not take the body for whole: one cut short
    /// would be served to everyone for its lifetime.
    pub(crate) fn until_close(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.until_close(),
            UpstreamBody::Pooled(p) => p.until_close,
            UpstreamBody::Compressed(c) => c.inner().until_close(),
        }
    }

    /// The answer's fields are kept as the backend sent them (see `take_raw_fields`).
    pub(crate) fn has_raw_fields(&self) -> bool {
        matches!(self, UpstreamBody::H1(b) if b.has_raw_fields())
    }

    /// Gives back what [`UpstreamBody::take_raw_fields`] took, once the head is encoded: the
    /// connection keeps the vector for its next answer.
    pub(crate) fn put_back(&mut self, raw: codec::RawFields) {
        if let UpstreamBody::H1(b) = self {
            b.put_back(raw);
        }
    }

    /// The tunnel of a 101 response (HTTP/1.1 upgrades only).
    pub(crate) fn into_tunnel(self) -> Option<(TcpStream, BytesMut)> {
        match self {
            UpstreamBody::H1(b) => b.into_tunnel(),
            UpstreamBody::Pooled(_) | UpstreamBody::Compressed(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => std::pin::Pin::new(b).poll_frame(cx),
            UpstreamBody::Compressed(b) => b.poll_frame(cx),
            UpstreamBody::Pooled(b) => match std::pin::Pin::new(&mut b.body).poll_frame(cx) {
                std::task::Poll::Pending => {
                    let stall = Duration::from_millis(u64::from(b.stall_ms));
                    let timer = b
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return std::task::Poll::Ready(Some(Err(UpstreamError::Stalled {
                            after: stall,
                        })));
                    }
                    std::task::Poll::Pending
                }
                ready => {
                    b.timer = None;
                    ready.map_err(|e| UpstreamError::Client(e.to_string()))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::Pooled(b) => b.body.is_end_stream(),
            UpstreamBody::Compressed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::Pooled(b) => b.body.size_hint(),
            // The compressed length is known only at the end.
            UpstreamBody::Compressed(_) => http_body::SizeHint::default(),
        }
    }
}

/// Why a backend exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("{stage}: {source}")]
    Io {
        stage: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("backend closed the connection before the {stage} was complete")]
    Closed { stage: &'static str },
    #[error("{0}")]
    Protocol(#[from] HeadError),
    #[error("backend sent nothing for {after:?} in the middle of a body")]
    Stalled { after: Duration },
    #[error("the client's request body failed: {0}")]
    ClientBody(String),
    #[error("{0}")]
    Client(String),
}

impl UpstreamError {
    /// True when no byte of the request can have reached the backend.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::ConnectTimeout
        )
    }
}

/// Timeouts of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeTimeouts {
    pub connect: Duration,
    /// Pooled connections older than this are not reused.
    pub idle: Duration,
    /// Longest silence from the backend in the middle of a response body.
    pub body_stall: Duration,
}

/// Connection pools, one per backend address, kept for the life of the process (reloads keep
/// their connections).
#[derive(Debug, Default)]
pub struct Upstreams {
    pools: ArcSwap<HashMap<SocketAddr, Arc<Pool>>>,
    /// h2c, https and h2 backends.
    pooled: PooledClients,
}

/// An error and its causes, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

impl Upstreams {
    pub fn new() -> Arc<Upstreams> {
        let u = Arc::new(Upstreams::default());
        spawn_sweeper(Arc::downgrade(&u));
        u
    }

    /// The pool of `addr`: a lock-free lookup, created on first use.
    pub fn pool(&self, addr: SocketAddr) -> Arc<Pool> {
        if let Some(p) = self.pools.load().get(&addr) {
            return p.clone();
        }
        self.pools.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(addr).or_insert_with(|| Arc::new(Pool::new(addr)));
            Arc::new(map)
        });
        self.pools
            .load()
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| Arc::new(Pool::new(addr)))
    }

    /// Sends a request through hyper's pooled client (h2c, https, h2 backends) and returns the
    /// response head.
    pub async fn send_pooled(
        &self,
        backend: SocketAddr,
        upstream: &Upstream,
        head: &Parts,
        path_and_query: &str,
        body: &mut RequestBody,
        timeouts: ExchangeTimeouts,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let key = ClientKey {
            protocol: upstream.protocol,
            tls: upstream.tls.clone(),
            connect: timeouts.connect,
            idle: timeouts.idle,
        };
        let sender = self
            .pooled
            .get(&key)
            .map_err(|e| UpstreamError::Client(e.to_string()))?;
        let scheme = if upstream.protocol.is_tls() {
            "https"
        } else {
            "http"
        };
        let uri: http::Uri = format!("{scheme}://{backend}{path_and_query}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::Client(e.to_string()))?;
        // hyper takes the body before it connects: after a connect failure a body that was
        // streaming is gone, so only a request without one or with one read whole counts as
        // never sent (retryable).
        let resendable = body.resendable();
        // A body read whole is handed over in its first poll, before any answer can come, so
        // there is nothing to watch (and a retry's connection is not the first one's).
        let upload = match &*body {
            RequestBody::Stream(_, u) if !upstream.protocol.is_h2() => Some(u.clone()),
            _ => None,
        };
        let mut req = http::Request::new(body.for_attempt());
        if let Some(u) = upload {
            let capture = hyper_util::client::legacy::connect::capture_connection(&mut req);
            u.watch_answer(answer_watch::AnswerWatch::new(capture));
        }
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = if upstream.protocol.is_h2() {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        *req.headers_mut() = head.headers.clone();
        let stall = timeouts.body_stall;
        let client = match sender {
            Sender::Client(client) => client,
            Sender::H2(pools) => {
                authority_from_host(&mut req);
                return match pools.send(backend, req).await {
                    Ok((resp, slot)) => Ok(settled(resp).map(|b| {
                        UpstreamBody::Pooled(PooledBody::new(b, stall, Some(slot), false))
                    })),
                    Err(H2Error::Connect(e)) if resendable => Err(UpstreamError::Connect(e)),
                    Err(e) => Err(UpstreamError::Client(error_chain(&e))),
                };
            }
        };
        match client.request(req).await {
            Ok(resp) => {
                let until_close = pooled::read_until_close(&resp);
                Ok(settled(resp)
                    .map(|b| UpstreamBody::Pooled(PooledBody::new(b, stall, None, until_close))))
            }
            Err(e) if e.is_connect() && resendable => Err(UpstreamError::Connect(
                // The socket's own error when it is this process's shortage, so that the
                // backend is not blamed for it.
                streamgate_balance::shortage::shortage_in(&e)
                    .unwrap_or_else(|| io::Error::other(error_chain(&e))),
            )),
            Err(e) => Err(UpstreamError::Client(error_chain(&e))),
        }
    }

    /// Builds the pooled clients `config`'s services need (TLS roots, client certificates), so
    /// that a bad file fails the load instead of requests. `install` puts them in use.
    pub fn prepare(&self, config: &Config) -> Result<PreparedClients, TlsError> {
        let keys: Vec<(&str, ClientKey)> = config
            .services
            .iter()
            .filter(|s| s.upstream.protocol != UpstreamProtocol::Http1)
            .map(|s| {
                let t = s.timeouts;
                let key = ClientKey {
                    protocol: s.upstream.protocol,
                    tls: s.upstream.tls.clone(),
                    connect: t.connect,
                    idle: t.upstream_idle,
                };
                (s.name.as_str(), key)
            })
            .collect();
        self.pooled.prepare(&keys)
    }

    pub fn install(&self, prepared: PreparedClients) {
        self.pooled.install(prepared);
    }

    /// A new connection to `backend`. Out of descriptors, the idle HTTP/1 connections of
    /// every pool are closed and the connect tried once more: they hold what a request needs
    /// now (after a burst, up to 1024 a backend for `upstream_idle`).
    async fn connect(
        &self,
        backend: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, UpstreamError> {
        match connect(backend, timeout).await {
            Err(UpstreamError::Connect(e))
                if streamgate_balance::shortage::is_out_of_descriptors(&e)
                    && self.shed_idle_http1() > 0 =>
            {
                connect(backend, timeout).await
            }
            other => other,
        }
    }

    /// Closes every idle pooled backend connection (HTTP/1 and HTTPS; HTTP/2 ones are few, and
    /// shared); how many pools and clients gave some up. For a process out of descriptors: the
    /// idle connections' are the ones it can free without failing anyone.
    pub fn shed_idle(&self) -> usize {
        self.shed_idle_http1() + self.pooled.shed_idle()
    }

    /// Closes the idle HTTP/1 backend connections; how many. Cheap enough for every connect
    /// that finds the descriptors gone, unlike replacing the HTTPS clients.
    fn shed_idle_http1(&self) -> usize {
        self.pools.load().values().map(|p| p.clear()).sum()
    }

    /// Sends a request to `backend` and reads the response head. The body streams from the
    /// connection as the caller polls it. The request body is taken from `body` only once a
    /// connection is established: after a connect failure it is still there for another backend.
    /// `raw`: the answer's fields may be kept as the backend sent them (see
    /// [`UpstreamBody::take_raw_fields`]), for a caller that reads none of them. `last`: the
    /// forwarding fields, written after the map's (see [`codec::LastFields`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        backend: SocketAddr,
        head: &Parts,
        path_and_query: &str,
        body: &mut RequestBody,
        timeouts: ExchangeTimeouts,
        now: Instant,
        raw: bool,
        last: Option<&codec::LastFields<'_>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let pool = self.pool(backend);
        pool.set_idle_timeout(timeouts.idle);
        let framing = match &*body {
            RequestBody::Empty => RequestFraming::Empty,
            RequestBody::Whole(b, _, _) => RequestFraming::Length(b.len() as u64),
            RequestBody::Stream(b, _) => match b.size_hint().exact() {
                Some(0) if b.is_end_stream() => RequestFraming::Empty,
                Some(n) => RequestFraming::Length(n),
                None => RequestFraming::Chunked,
            },
        };
        // A pooled connection the backend closed while it sat idle fails at once; a request
        // without a body is then sent again on a new connection (the backend never saw it),
        // if sending it twice would be harmless ([`replayable`]).
        let mut reused = pool.checkout(timeouts.idle, now);
        let mut buffers = reused
            .as_mut()
            .map(|c| std::mem::take(&mut c.buffers))
            .unwrap_or_default();
        buffers.head.clear();
        codec::write_request_head(
            &mut buffers.head,
            &head.method,
            path_and_query,
            &head.headers,
            framing,
            last,
        );
        loop {
            let was_reused = reused.is_some();
            let conn = match reused.take() {
                Some(c) => c.stream,
                None => self.connect(backend, timeouts.connect).await?,
            };
            let replayable = replayable(head, body);
            let this_body = body.for_attempt();
            match exchange(
                conn,
                &buffers.head,
                this_body,
                framing,
                &mut buffers.read,
                raw.then_some(&mut buffers.spans),
            )
            .await
            {
                Ok((conn, rhead)) => {
                    let framing = codec::response_framing(&head.method, &rhead)?;
                    let reusable =
                        rhead.keep_alive && rhead.status != StatusCode::SWITCHING_PROTOCOLS;
                    let decoder = BodyDecoder::new(framing);
                    let ResponseHead {
                        status,
                        version,
                        mut headers,
                        raw,
                        ..
                    } = rhead;
                    codec::settle_length(&mut headers);
                    let facts = body::AnswerFacts {
                        decoder,
                        reusable,
                        raw,
                    };
                    let body = H1Body::new(conn, buffers, facts, pool, timeouts.body_stall, now);
                    let mut resp = Response::new(UpstreamBody::H1(Box::new(body)));
                    *resp.status_mut() = status;
                    *resp.version_mut() = version;
                    *resp.headers_mut() = headers;
                    return Ok(resp);
                }
                Err(Failure {
                    error,
                    response_started,
                }) => {
                    if was_reused && replayable && !response_started && is_stale_connection(&error)
                    {
                        continue;
                    }
                    return Err(error);
                }
            }
        }
    }
}

/// Methods that may be sent again without changing the outcome (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a request the backend may have seen can be sent again on a new connection: no body
/// or one read whole (see [`RequestBody::resendable`]), and a method (or an `Idempotency-Key`,
/// as Go's client also takes it) that makes a second run harmless. A bodiless POST may still
/// transfer money.
fn replayable(head: &Parts, body: &RequestBody) -> bool {
    body.resendable()
        && (is_idempotent(&head.method)
            || head.headers.contains_key("idempotency-key")
            || head.headers.contains_key("x-idempotency-key"))
}

/// Closes idle connections past their time every few seconds, while the pools exist.
fn spawn_sweeper(upstreams: Weak<Upstreams>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Some(u) = upstreams.upgrade() else { return };
            for pool in u.pools.load().values() {
                pool.sweep();
            }
            u.pooled.sweep();
        }
    });
}

/// A pooled client's answer with its length settled as the daemon's own HTTP/1.1 client settles
/// one: hyper keeps the fields as the backend sent them, and takes a length listed twice
/// (`5, 5`), which the HTTP/1.1 server's length check and clients downstream would refuse.
/// (Transfer-Encoding with Content-Length is refused in `http::origin` for every client.)
fn settled<B>(mut resp: Response<B>) -> Response<B> {
    codec::settle_length(resp.headers_mut());
    resp
}
/// HTTP/2 names the site in `:authority`, which a server reads before Host (RFC 9113 §8.3.1),
/// and a Host that differs from it is malformed to some servers: the request's Host becomes
/// its authority, as Envoy and HAProxy send it, and the backend's address only chooses the
/// connection (the pool dials it, not the URI).
fn authority_from_host(req: &mut http::Request<RequestBody>) {
    let Some(host) = req.headers_mut().remove(http::header::HOST) else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.authority = host.to_str().ok().and_then(|h| h.parse().ok());
    match http::Uri::from_parts(parts) {
        Ok(uri) => *req.uri_mut() = uri,
        // Not an authority (the Host checks make this unreachable): sent as it came.
        Err(_) => {
            req.headers_mut().insert(http::header::HOST, host);
        }
    }
}
