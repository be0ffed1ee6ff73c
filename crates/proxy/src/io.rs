//! Client connection timeouts enforced at the socket: a new connection's first request head must
//! arrive within `request_header` of the connection's start (after PROXY and TLS), a later head
//! within `request_header` of its first byte, an idle keep-alive connection closes after `idle`,
//! and a client that stops reading a response for `idle` is dropped.
//!
//! hyper's own header timer also runs while a keep-alive connection waits for its next request,
//! which would make the two settings one; doing it here keeps them distinct, as in nginx
//! (client_header_timeout, keepalive_timeout, send_timeout) and HAProxy (http-request,
//! http-keep-alive).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use crate::h2_heads::HeaderBlocks;
use streamgate_balance::stats::{nanos_at, now_nanos};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests in progress on one client connection, shared by the socket wrapper and the
/// request handler.
#[derive(Debug)]
pub struct ConnActivity {
    active: AtomicU32,
    /// `now_nanos()` when the last request finished (or the connection was accepted).
    idle_since: AtomicU64,
    /// The connection task, woken when its last request ends so the idle timer gets armed even
    /// if the socket stays quiet.
    waker: AtomicWaker,
    /// The last answer was ready in the poll that read its request (a cache hit, a local error);
    /// see `CoalescedWrites`.
    answered_at_once: AtomicBool,
    /// Woken when the last request (or tunnel) ends, for whoever waits on [`Self::until_idle`].
    idle: tokio::sync::Notify,
    /// Set when the connection's task is gone (shutdown deadline): its tunnels end.
    closing: AtomicBool,
    closed: tokio::sync::Notify,
    /// Tunnels (upgraded connections) open on it, and a wake when the last one ends: the
    /// client's connection slot is held while they run ([`Self::until_no_tunnels`]).
    tunnels: AtomicU32,
    tunnels_done: tokio::sync::Notify,
    /// The limits its HTTP/2 tunnels count against, once its client is known, and the count,
    /// made at its first tunnel.
    tunnel_limits: std::sync::OnceLock<crate::tunnel_slots::TunnelLimits>,
    tunnel_slots: std::sync::OnceLock<Arc<crate::tunnel_slots::TunnelSlots>>,
    /// Streams its client opened and reset early (see `stream_resets`).
    pub(crate) resets: crate::stream_resets::ResetCounts,
}

impl ConnActivity {
    pub fn new() -> Arc<ConnActivity> {
        Arc::new(ConnActivity {
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(now_nanos()),
            waker: AtomicWaker::new(),
            answered_at_once: AtomicBool::new(false),
            idle: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            closed: tokio::sync::Notify::new(),
            tunnels: AtomicU32::new(0),
            tunnels_done: tokio::sync::Notify::new(),
            tunnel_limits: std::sync::OnceLock::new(),
            tunnel_slots: std::sync::OnceLock::new(),
            resets: Default::default(),
        })
    }

    /// Wakes the connection's task (to look at its flags).
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    pub(crate) fn set_tunnel_limits(&self, limits: crate::tunnel_slots::TunnelLimits) {
        let _ = self.tunnel_limits.set(limits);
    }

    /// The count of the connection's HTTP/2 tunnels against its limits, made on first use;
    /// `None` before the connection's client is known.
    pub(crate) fn tunnel_slots(&self) -> Option<&Arc<crate::tunnel_slots::TunnelSlots>> {
        let limits = self.tunnel_limits.get()?;
        Some(self.tunnel_slots.get_or_init(|| {
            crate::tunnel_slots::TunnelSlots::new(limits.listener.clone(), limits.client.clone())
        }))
    }

    /// Marks a tunnel open on the connection until the guard is dropped.
    pub fn tunnel(self: &Arc<Self>) -> TunnelHold {
        self.tunnels.fetch_add(1, Relaxed);
        TunnelHold(self.clone())
    }

    /// Resolves once no tunnel is open on the connection. Unlike [`Self::until_idle`], work the
    /// daemon goes on with after its client left (an answer still being recorded into the
    /// cache) does not count: the client is gone, a tunnel's client is not.
    pub async fn until_no_tunnels(&self) {
        loop {
            let woken = self.tunnels_done.notified();
            if self.tunnels.load(Relaxed) == 0 {
                return;
            }
            woken.await;
        }
    }

    /// Resolves once no request or tunnel is active on the connection. An upgraded connection
    /// outlives hyper's connection future: its task waits here, so the connection keeps its
    /// slot under `max_connections` and graceful shutdown waits for it.
    pub async fn until_idle(&self) {
        loop {
            let woken = self.idle.notified();
            if self.active.load(Relaxed) == 0 {
                return;
            }
            woken.await;
        }
    }

    /// Resolves once the connection's task is gone (see [`CloseOnDrop`]).
    pub async fn closed(&self) {
        loop {
            let woken = self.closed.notified();
            if self.closing.load(Relaxed) {
                return;
            }
            woken.await;
        }
    }

    /// A guard whose drop (the connection task finishing or being aborted at the shutdown
    /// deadline) ends the connection's tunnels.
    pub fn close_on_drop(self: &Arc<Self>) -> CloseOnDrop {
        CloseOnDrop(self.clone())
    }

    /// Records whether the answer just produced was ready without waiting for anything.
    pub fn note_answer(&self, at_once: bool) {
        self.answered_at_once.store(at_once, Relaxed);
    }

    /// Whether the last answer was ready at once; reading it clears it.
    pub(crate) fn take_answered_at_once(&self) -> bool {
        self.answered_at_once.swap(false, Relaxed)
    }
}

/// See [`ConnActivity::close_on_drop`].
#[derive(Debug)]
pub struct CloseOnDrop(Arc<ConnActivity>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.closing.store(true, Relaxed);
        self.0.closed.notify_waiters();
    }
}

/// See [`ConnActivity::tunnel`].
#[derive(Debug)]
pub struct TunnelHold(Arc<ConnActivity>);

impl Drop for TunnelHold {
    fn drop(&mut self) {
        if self.0.tunnels.fetch_sub(1, Relaxed) == 1 {
            self.0.tunnels_done.notify_waiters();
        }
    }
}

/// Marks a request active on its connection until dropped (when its response body is done).
#[derive(Debug)]
pub struct ActiveRequest(Arc<ConnActivity>);

impl ActiveRequest {
    pub fn new(conn: &Arc<ConnActivity>) -> ActiveRequest {
        conn.active.fetch_add(1, Relaxed);
        ActiveRequest(conn.clone())
    }

    /// One more mark on the same connection (a tunnel that outlives its request's response).
    pub fn another(&self) -> ActiveRequest {
        ActiveRequest::new(&self.0)
    }

    pub fn conn(&self) -> &Arc<ConnActivity> {
        &self.0
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Relaxed) == 1 {
            self.0.idle_since.store(now_nanos(), Relaxed);
            self.0.waker.wake();
            self.0.idle.notify_waiters();
        }
    }
}

/// The client-side timeouts of a connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    pub request_header: Duration,
    pub idle: Duration,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Tells HTTP/2 from HTTP/1.x by the client's first bytes, over as many reads as it takes.
/// Deciding on a first read of one byte would take a "P" (of POST, PUT, PATCH) for the
/// preface, and the connection would lose its HTTP/1.1 head timer.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PrefaceCheck {
    matched: usize,
}

impl PrefaceCheck {
    /// Reads the next bytes: `Some(true)` once all of "PRI * HTTP/2.0" has arrived,
    /// `Some(false)` at the first byte that differs, `None` while it cannot tell yet.
    pub(crate) fn read(&mut self, got: &[u8]) -> Option<bool> {
        let want = &H2_PREFACE[self.matched..];
        let n = got.len().min(want.len());
        if got[..n] != want[..n] {
            return Some(false);
        }
        self.matched += n;
        (self.matched == H2_PREFACE.len()).then_some(true)
    }
}

/// A client socket with the timeouts above.
#[derive(Debug)]
pub struct TimedIo<T> {
    inner: T,
    activity: Arc<ConnActivity>,
    timeouts: ClientTimeouts,
    last_rx: u64,
    /// When the first byte arrived while no request was active: a request head is being read.
    head_started: u64,
    /// When the socket was handed to HTTP, and the activity's `idle_since` then: while that
    /// is unchanged no request has ended, and the first one is due within `request_header`
    /// of the start. Waiting `idle` for it (60 s by default, against 10 s) let a flood of
    /// silent connections hold the connection budget six times as long; nginx's
    /// client_header_timeout and HAProxy's `timeout http-request` also count from the start.
    started: u64,
    started_idle_since: u64,
    /// HTTP/2: heads are found frame by frame (`h2_heads`), and idle counts from the last
    /// request's end whatever the client sends (PINGs and SETTINGS do not keep it open).
    is_h2: Option<bool>,
    preface: PrefaceCheck,
    h2_heads: HeaderBlocks,
    /// When the HTTP/2 header block being received began (0: none is).
    h2_head_since: u64,
    write_blocked_since: u64,
    sleep: Option<Pin<Box<Sleep>>>,
    armed_for: u64,
}

impl<T> TimedIo<T> {
    pub fn new(inner: T, activity: Arc<ConnActivity>, timeouts: ClientTimeouts) -> TimedIo<T> {
        let now = now_nanos();
        TimedIo {
            started: now,
            started_idle_since: activity.idle_since.load(Relaxed),
            inner,
            activity,
            timeouts,
            last_rx: now,
            head_started: 0,
            is_h2: None,
            preface: PrefaceCheck::default(),
            h2_heads: HeaderBlocks::default(),
            h2_head_since: 0,
            write_blocked_since: 0,
            sleep: None,
            armed_for: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The earliest deadline that applies now, with what it enforces.
    fn deadline(&mut self) -> Option<(u64, &'static str)> {
        let mut best: Option<(u64, &'static str)> = None;
        let mut consider = |at: u64, what: &'static str| {
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, what));
            }
        };
        if self.write_blocked_since != 0 {
            consider(
                self.write_blocked_since + nanos(self.timeouts.idle),
                "client stopped reading",
            );
        }
        // Not while our own writes are blocked: h2 stops reading then (a PING or SETTINGS
        // answer cannot be queued), so a header block can sit half-read through no fault of
        // the client; the blocked write has its own deadline above.
        if self.h2_head_since != 0 && self.write_blocked_since == 0 {
            consider(
                self.h2_head_since + nanos(self.timeouts.request_header),
                "request header",
            );
        }
        if self.activity.active.load(Relaxed) == 0 {
            let idle_since = self.activity.idle_since.load(Relaxed);
            let quiet_since = if self.is_h2 == Some(true) {
                idle_since
            } else {
                self.last_rx.max(idle_since)
            };
            consider(quiet_since + nanos(self.timeouts.idle), "idle");
            if idle_since == self.started_idle_since {
                consider(
                    self.started + nanos(self.timeouts.request_header),
                    "request header",
                );
            }
            if self.head_started > idle_since && self.is_h2 != Some(true) {
                consider(
                    self.head_started + nanos(self.timeouts.request_header),
                    "request header",
                );
            }
        } else {
            self.head_started = 0;
        }
        best
    }

    /// Arms the timer for the current deadline; an error once it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some((at, what)) = self.deadline() else {
            return Poll::Pending;
        };
        // A timer armed no later than the deadline wakes this task in time (it was polled here,
        // so it holds the task's waker): no clock to read and nothing to re-arm until it fires.
        if self.armed_for != 0
            && at >= self.armed_for
            && self.sleep.as_ref().is_some_and(|s| !s.is_elapsed())
        {
            return Poll::Pending;
        }
        let now_at = std::time::Instant::now();
        let now = nanos_at(now_at);
        if now >= at {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} timeout"),
            ));
        }
        // The timer only moves earlier. Activity pushes the deadline later with every request;
        // the timer armed for the earlier one stays, and when it fires the deadline is checked
        // again and the timer re-armed, so the timer wheel is not touched per request.
        if self.armed_for == 0 || at < self.armed_for {
            self.armed_for = at;
            let when = Instant::from_std(now_at) + Duration::from_nanos(at - now);
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(when),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(when))),
            }
        }
        if let Some(s) = &mut self.sleep
            && s.as_mut().poll(cx).is_ready()
        {
            self.armed_for = 0;
            // Re-check: activity may have moved the deadline since the timer was armed.
            return self.poll_deadline(cx);
        }
        Poll::Pending
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    let now = now_nanos();
                    this.last_rx = now;
                    if this.is_h2.is_none() {
                        this.is_h2 = this.preface.read(got);
                    }
                    // Fed from the first byte (the tracker skips the preface); only read once
                    // the connection is known to be HTTP/2.
                    if this.is_h2 != Some(false) {
                        this.h2_heads.feed(got);
                    }
                    if this.is_h2 == Some(true) {
                        match (this.h2_heads.head_open(), this.h2_head_since) {
                            (true, 0) => this.h2_head_since = now,
                            (false, _) => this.h2_head_since = 0,
                            _ => {}
                        }
                    }
                    if this.activity.active.load(Relaxed) == 0
                        && this.head_started <= this.activity.idle_since.load(Relaxed)
                    {
                        this.head_started = now;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                this.activity.waker.register(cx.waker());
                match this.poll_deadline(cx) {
                    Poll::Ready(e) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    // A flush waits on the client as a write does: TLS takes a write into its buffer and
    // blocks in the flush, and our HTTP/1.1 server reads nothing meanwhile.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.after_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.after_write(cx, polled)
    }
}

impl<T> TimedIo<T> {
    fn after_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Pending => {
                if self.write_blocked_since == 0 {
                    self.write_blocked_since = now_nanos();
                }
                match self.poll_deadline(cx) {
                    Poll::Ready(e) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => {
                self.write_blocked_since = 0;
                other
            }
        }
    }
}

/// A stream whose first bytes were already read (a PROXY header's tail, a ClientHello): they are
/// read again before the rest.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: bytes::Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: bytes::Bytes, inner: T) -> Prefixed<T> {
        Prefixed { prefix, inner }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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

    #[test]
    fn http2_is_told_by_the_whole_preface_start_over_any_reads() {
        let cases: [(&[&[u8]], Option<bool>); 7] = [
            (&[b"P"], None),
            (&[b"P", b"OST / HTTP/1.1"], Some(false)),
            (&[b"P", b"RI * HTTP/2.0\r\n"], Some(true)),
            (&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], Some(true)),
            (&[b"PRI * HTTP/1.1"], Some(false)),
            (&[b"GET / HTTP/1.1\r\n"], Some(false)),
            (&[b"PRI", b" * H", b"TTP/2."], None),
        ];
        for (reads, want) in cases {
            let mut check = PrefaceCheck::default();
            let mut verdict = None;
            for r in reads {
                if verdict.is_none() {
                    verdict = check.read(r);
                }
            }
            assert_eq!(verdict, want, "{reads:?}");
        }
    }

    fn timeouts() -> ClientTimeouts {
        ClientTimeouts {
            request_header: Duration::from_millis(100),
            idle: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn an_idle_connection_times_out_after_idle() {
        let (client, server) = tokio::io::duplex(64);
        let activity = ConnActivity::new();
        let mut io = TimedIo::new(server, activity.clone(), timeouts());
        drop(ActiveRequest::new(&activity));
        // After the request ended: the idle deadline cannot be earlier than 300 ms from here,
        // however late this thread runs.
        let started = std::time::Instant::now();
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("idle"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(client);
    }

    #[tokio::test]
    async fn a_new_connection_gets_request_header_for_its_first_request() {
        let (client, server) = tokio::io::duplex(64);
        let started = std::time::Instant::now();
        let mut io = TimedIo::new(server, ConnActivity::new(), timeouts());
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert!(err.to_string().contains("request header"), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_millis(300),
            "{waited:?}: the first request is due by request_header, not idle"
        );
        drop(client);
    }

    #[tokio::test]
    async fn a_started_head_must_finish_within_request_header() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, ConnActivity::new(), timeouts());
        client.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 8);
        let err = io.read(&mut buf).await.unwrap_err();
        assert!(err.to_string().contains("request header"), "{err}");
    }

    /// A stream whose flush never completes: a TLS client that stopped reading, its last
    /// records accepted by TLS and stuck behind a full socket.
    struct NeverFlushed;

    impl AsyncRead for NeverFlushed {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for NeverFlushed {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_flush_the_client_never_takes_times_out_like_a_write() {
        let activity = ConnActivity::new();
        let mut io = TimedIo::new(NeverFlushed, activity.clone(), timeouts());
        // Even while a request is active (its answer is being written).
        let _active = ActiveRequest::new(&activity);
        io.write_all(b"answer").await.unwrap();
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(2), io.flush())
            .await
            .expect("the flush is timed like a write")
            .unwrap_err();
        assert!(err.to_string().contains("client stopped reading"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        let err = tokio::time::timeout(Duration::from_secs(2), io.shutdown())
            .await
            .expect("and the shutdown")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn no_client_timeout_while_a_request_is_active() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = ConnActivity::new();
        let mut io = TimedIo::new(server, activity.clone(), timeouts());
        let active = ActiveRequest::new(&activity);
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_millis(500), io.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "still waiting after more than idle: the request holds it open"
        );
        drop(active);
        client.write_all(b"x").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        let err = io.read(&mut buf).await.unwrap_err();
        assert!(err.to_string().contains("request header") || err.to_string().contains("idle"));
    }
}
