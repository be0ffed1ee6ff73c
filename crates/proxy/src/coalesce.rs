//! Client connections write in batches: after the reads of every connection that is ready now.
//!
//! HTTP/2. The h2 crate writes every DATA frame of 256 bytes or more to the socket on its own: it
//! flushes before it encodes the next frame. A connection answering many small responses then
//! makes one `writev` per response, where nginx and HAProxy send the frames of all responses
//! ready at once in one call. Here, once the client has sent the HTTP/2 preface, writes are copied
//! into a buffer and a flush only arranges for the connection task to run again; the buffer goes
//! out when the task next reads (h2 reads first on every poll), when it grows past `FLUSH_AT`, or
//! on shutdown.
//!
//! HTTP/1.x. hyper already writes a response head and body with one call. But an answer ready in
//! the poll that read its request (a cache hit, a local error) was written at once, so with many
//! busy connections hits left one by one between the reads of the others and a client holding
//! many connections was woken for each (wrk's epoll_wait took 11.8% of its time against 7.4% with
//! HAProxy, and its queueing showed as our p99). Such an answer now waits, once, until the tasks
//! that are ready now have run (the task wakes itself: the back of the run queue, before the next
//! poll for events): the tick's reads come first and its hits follow in a burst, as in HAProxy's
//! event loop. Nothing is copied; the write returns `Pending` with the wake-up arranged. Proxied
//! answers are not held: they already waited for a backend, and holding them only added latency
//! (8 connections: p99 0.5 -> 0.8 ms). Only on the single-threaded scheduler: the multi-threaded
//! one re-runs a self-woken task at once, so there is no batch to join.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::io::{ConnActivity, PrefaceCheck};

/// Buffered frames beyond this are written at once, so a large body streams without delay.
const FLUSH_AT: usize = 64 * 1024;

/// HTTP/1.x writes of at most this many bytes in several slices are sent as one buffer: a
/// single `send` costs the kernel less than a `writev`, which goes through the file layer
/// (`perf`: 4.0% of a 1 KiB hit's CPU above the TCP send itself, against 1.2% for `send`),
/// by more than copying a few KiB costs.
const FLATTEN_MAX: usize = 4096;

/// Buffer capacity kept between batches.
const KEEP_CAPACITY: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing read yet.
    Unknown,
    /// HTTP/1.x (or anything that is not the HTTP/2 preface).
    Http1,
    Http2,
}

#[derive(Debug)]
pub struct CoalescedWrites<T> {
    inner: T,
    mode: Mode,
    preface: PrefaceCheck,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already written.
    sent: usize,
    /// A wake-up is arranged for the buffered bytes.
    wake_armed: bool,
    /// HTTP/1.x: bytes were read since the last write, whose answer has not waited yet.
    read_since_write: bool,
    /// Tells whether an answer was ready at once.
    activity: Arc<ConnActivity>,
    /// On the single-threaded scheduler, where a self-wake joins the current tick.
    batch_http1: bool,
}

impl<T> CoalescedWrites<T> {
    pub fn new(inner: T, activity: Arc<ConnActivity>) -> CoalescedWrites<T> {
        let batch_http1 = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        CoalescedWrites {
            activity,
            batch_http1,
            inner,
            mode: Mode::Unknown,
            preface: PrefaceCheck::default(),
            buf: Vec::new(),
            sent: 0,
            wake_armed: false,
            read_since_write: false,
        }
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Runs the connection task again once the tasks that are ready now have run, so frames
    /// they produce join the same write.
    fn arm_wake(&mut self, cx: &mut Context<'_>) {
        if !self.wake_armed {
            self.wake_armed = true;
            wake_after_tick(cx);
        }
    }

    /// HTTP/1.x: true when this write starts an answer that was ready at once and must wait for
    /// the tick.
    fn defer_http1_write(&mut self, cx: &mut Context<'_>) -> bool {
        if self.mode != Mode::Http1 || !self.read_since_write {
            return false;
        }
        self.read_since_write = false;
        if !(self.batch_http1 && self.activity.take_answered_at_once()) {
            return false;
        }
        cx.waker().wake_by_ref();
        true
    }
}

/// Wakes the task once the tasks ready now have run. `yield_now` defers its wake-up to the end of
/// the scheduler's tick on both runtimes, where a plain self-wake would re-run the task at once on
/// the multi-threaded one. Correctness does not depend on the timing, only the size of a batch.
fn wake_after_tick(cx: &mut Context<'_>) {
    let mut tick = std::pin::pin!(tokio::task::yield_now());
    if tick.as_mut().poll(cx).is_ready() {
        cx.waker().wake_by_ref();
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes out the buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.buf.capacity() > KEEP_CAPACITY {
            // Idle HTTP/2 connections can be many; a past burst should not pin 64 KiB each.
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.sent = 0;
        self.wake_armed = false;
        // TLS streams hold the last record until flushed.
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// HTTP/1.x: writes the slices (a response head and a small body) as one buffer. Nothing is
    /// kept: what the socket did not take is offered again by the caller.
    fn poll_write_flat(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        debug_assert_eq!(self.pending(), 0, "HTTP/1.x keeps nothing buffered");
        self.buf.clear();
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, &self.buf);
        self.buf.clear();
        written
    }

    /// Makes room for `len` more bytes: drains first when the buffer would pass `FLUSH_AT`.
    /// `Ready(false)`: write these bytes directly, they are a big body chunk.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.pending() > 0 && self.pending() + len > FLUSH_AT {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(self.pending() > 0 || len < FLUSH_AT))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending() > 0 {
            // A blocked socket must not stop reading: its readiness wakes the task again.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let got = &buf.filled()[before..];
        if !got.is_empty() {
            this.read_since_write = true;
            if this.mode == Mode::Unknown {
                this.mode = match this.preface.read(got) {
                    Some(true) => Mode::Http2,
                    Some(false) => Mode::Http1,
                    None => Mode::Unknown,
                };
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.defer_http1_write(cx) {
            return Poll::Pending;
        }
        if this.mode != Mode::Http2 || !ready!(this.poll_room(cx, data.len()))? {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if this.defer_http1_write(cx) {
            return Poll::Pending;
        }
        if this.mode != Mode::Http2 {
            return match bufs {
                [one] => Pin::new(&mut this.inner).poll_write(cx, one),
                _ if len <= FLATTEN_MAX => this.poll_write_flat(cx, bufs),
                _ => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            };
        }
        if !ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        self.mode == Mode::Http2 || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending() > 0 {
            this.arm_wake(cx);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Polls a write once, outside any await, so a `Pending` is seen rather than waited out.
    fn poll_write_once<T: AsyncWrite + Unpin>(io: &mut T, data: &[u8]) -> Poll<io::Result<usize>> {
        let waker = std::task::Waker::noop();
        Pin::new(io).poll_write(&mut Context::from_waker(waker), data)
    }

    #[tokio::test]
    async fn an_http1_answer_ready_at_once_waits_one_tick_then_goes_unbuffered() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let activity = ConnActivity::new();
        let mut io = CoalescedWrites::new(server, activity.clone());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut b = [0u8; 64];
        assert!(io.read(&mut b).await.unwrap() > 0);
        let answer = b"HTTP/1.1 200 OK\r\n\r\n";
        activity.note_answer(true);
        assert!(
            poll_write_once(&mut io, answer).is_pending(),
            "an answer ready at once waits for the tick"
        );
        assert!(
            matches!(poll_write_once(&mut io, answer), Poll::Ready(Ok(n)) if n == answer.len()),
            "and goes out when polled again"
        );
        assert_eq!(io.pending(), 0, "nothing is copied or held back");
        assert!(
            matches!(poll_write_once(&mut io, b"body"), Poll::Ready(Ok(4))),
            "later writes of the same answer (a streamed body) do not wait"
        );
        let mut got = vec![0u8; answer.len() + 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..answer.len()], answer);
        assert_eq!(&got[answer.len()..], b"body");

        // An answer that waited for a backend goes out at once.
        client.write_all(b"GET /2 HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(io.read(&mut b).await.unwrap() > 0);
        activity.note_answer(false);
        assert!(matches!(
            poll_write_once(&mut io, answer),
            Poll::Ready(Ok(_))
        ));
        let mut got = vec![0u8; answer.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, answer);

        // Awaited, a held answer arrives whole.
        client.write_all(b"GET /3 HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(io.read(&mut b).await.unwrap() > 0);
        activity.note_answer(true);
        io.write_all(answer).await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, answer);
    }

    #[tokio::test]
    async fn http2_frames_wait_for_the_next_read_then_go_in_one_write() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut io = CoalescedWrites::new(server, ConnActivity::new());
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 64];
        assert!(io.read(&mut b).await.unwrap() > 0);
        io.write_all(&[1u8; 300]).await.unwrap();
        io.flush().await.unwrap();
        io.write_all(&[2u8; 300]).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.pending(), 600, "held until the connection reads again");
        // The next read sends both, even though nothing arrives to be read.
        let read = tokio::time::timeout(std::time::Duration::from_millis(50), io.read(&mut b));
        assert!(read.await.is_err(), "no bytes from the client");
        assert_eq!(io.pending(), 0);
        let mut got = vec![0u8; 600];
        client.read_exact(&mut got).await.unwrap();
        assert!(got[..300].iter().all(|&x| x == 1) && got[300..].iter().all(|&x| x == 2));
    }

    #[tokio::test]
    async fn a_big_http2_write_is_not_held_and_shutdown_drains() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut io = CoalescedWrites::new(server, ConnActivity::new());
        client.write_all(b"PRI * HTTP/2.0\r\n\r\n").await.unwrap();
        let mut b = [0u8; 64];
        assert!(io.read(&mut b).await.unwrap() > 0);
        io.write_all(&[7u8; 100]).await.unwrap();
        io.write_all(&vec![8u8; FLUSH_AT]).await.unwrap();
        assert!(
            io.pending() <= FLUSH_AT,
            "the buffer never grows past its bound"
        );
        io.write_all(&[9u8; 10]).await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 100 + FLUSH_AT + 10);
        assert_eq!(got[0], 7);
        assert_eq!(got[100], 8);
        assert_eq!(*got.last().unwrap(), 9);
    }

    /// A real socket that counts how it is written to.
    struct Counted {
        inner: tokio::net::TcpStream,
        single: usize,
        vectored: usize,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.single += 1;
            Pin::new(&mut this.inner).poll_write(cx, data)
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.vectored += 1;
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_small_http1_head_and_body_go_out_as_one_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let counted = Counted {
            inner: server,
            single: 0,
            vectored: 0,
        };
        let mut io = CoalescedWrites::new(counted, ConnActivity::new());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut b = [0u8; 64];
        assert!(io.read(&mut b).await.unwrap() > 0);
        assert!(
            io.is_write_vectored(),
            "the caller may still hand over slices"
        );

        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\n";
        let body = [b'x'; 1024];
        let bufs = [io::IoSlice::new(head), io::IoSlice::new(&body)];
        let n = io.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, head.len() + body.len(), "a small answer is taken whole");
        assert_eq!(
            (io.inner.single, io.inner.vectored),
            (1, 0),
            "one plain send"
        );
        assert_eq!(io.pending(), 0, "nothing is kept");
        let mut got = vec![0u8; n];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..head.len()], head);
        assert!(got[head.len()..].iter().all(|&c| c == b'x'));

        // A large body is not copied: the slices go to the socket as they are.
        let big = vec![b'y'; 64 * 1024];
        let bufs = [io::IoSlice::new(head), io::IoSlice::new(&big)];
        let n = io.write_vectored(&bufs).await.unwrap();
        assert!(n > 0);
        assert_eq!(io.inner.vectored, 1);
    }
}
