//! Our own server for plain HTTP/1.1 requests, ahead of hyper's on every client connection.
//!
//! A proxied 1 KiB request spent 6 600 of its 34 300 instructions and 400 of its 2 000 L1
//! instruction-cache misses in hyper's HTTP/1.1 server (its dispatcher, buffers and encoder,
//! and moving the 3.4 KB request future into its slot: 54 L1 write misses), callgrind, 10 000
//! requests. Here the connection reads a head ([`head`]), runs the handler's future where it
//! was made, and writes the answer ([`encode`]) with its body, usually in one `send`.
//!
//! What this server does not take (the first request that is not plain: HTTP/2, HTTP/1.0, a
//! body, an upgrade, `Expect`, anything malformed or over the limits) goes to hyper with the
//! bytes read so far, and hyper serves the connection from there on. Its refusals (400, 414,
//! 431) and everything it does for those requests are therefore unchanged.

mod encode;
pub mod forwarded_head;
pub mod fuzzing;
mod head;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use super::HttpProxy;
use super::body::ProxyBody;
use super::headers::ForwardedFor;
use crate::drain::Seat;
use crate::io::{ActiveRequest, ConnActivity};
use encode::{BodySize, Framing, encode_head};
use head::Head;

/// How our part of a connection ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// The connection is done (closed by either side, or failed).
    Closed,
    /// hyper takes the connection; these bytes were read and come first.
    HandOver(Bytes),
}

/// The start of HTTP/2's connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A head this short is parsed on every read, not only once it may be whole.
const EARLY_PARSE: usize = 1024;

/// Bodies up to this size go out in the head's buffer: one `send` for the answer (see
/// `FLATTEN_MAX` in coalesce.rs for why one buffer beats `writev`).
const WITH_HEAD: usize = 4096;

/// Serves plain HTTP/1.1 requests on `io` until the connection ends or a request is not ours.
pub(super) async fn serve<I>(
    proxy: &Arc<HttpProxy>,
    io: &mut I,
    peer: SocketAddr,
    forwarded_for: &ForwardedFor,
    activity: &Arc<ConnActivity>,
    seat: &mut Seat<'_>,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut answered = false;
    // The last answer's emptied field map, for the next request (see `head::read_head`).
    let mut fields = http::HeaderMap::new();
    loop {
        // Bytes of `buf` known not to end a head.
        let mut scanned = 0;
        let (req, asked_close) = loop {
            // Parsed when it may be whole, and on every read while it is short: a head that
            // is wrong from its first bytes (a TLS hello, `G@T`) gets hyper's 400 at once.
            let whole =
                !buf.is_empty() && (buf.len() <= EARLY_PARSE || head::may_be_whole(&buf, scanned));
            if whole || buf.len() >= proxy.max_header_bytes {
                let (max, max_bytes) = (proxy.max_headers, proxy.max_header_bytes);
                match head::read_head(&mut buf, max, max_bytes, &mut fields) {
                    Head::Ours { req, close } => break (req, close),
                    // After HTTP/1.1 answers the connection stays HTTP/1.1 (`TimedIo` and
                    // `CoalescedWrites` chose their HTTP/1.1 ways on its first bytes): hyper's
                    // HTTP/1.1 server closed it at an HTTP/2 preface, and so do we. hyper-util
                    // would start HTTP/2 there (its `http1_only` does not hold for connections
                    // with upgrades). A preface in pieces too: its first line alone
                    // (`PRI * HTTP/2`) is no HTTP/1.1 head either.
                    Head::NotOurs
                        if answered
                            && (buf.starts_with(H2_PREFACE) || H2_PREFACE.starts_with(&buf)) =>
                    {
                        return Ended::Closed;
                    }
                    Head::NotOurs => return Ended::HandOver(buf.freeze()),
                    Head::Partial => {}
                }
            }
            scanned = buf.len();
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8 * 1024);
            }
            let read = std::future::poll_fn(|cx| {
                // Told to drain between requests: an idle connection closes now, and so does
                // one with only part of a head (hyper's server did the same).
                if seat.poll_draining(cx) {
                    return Poll::Ready(None);
                }
                poll_read_buf(Pin::new(&mut *io), cx, &mut buf).map(Some)
            })
            .await;
            match read {
                Some(Ok(n)) if n > 0 => {}
                None => {
                    // Drained: a TLS client is told with close_notify.
                    let _ = io.shutdown().await;
                    return Ended::Closed;
                }
                // Closed, failed or timed out (`TimedIo`).
                Some(_) => return Ended::Closed,
            }
        };
        let head_request = req.method() == Method::HEAD;
        let active = ActiveRequest::new(activity);
        let mut handling =
            std::pin::pin!(
                proxy
                    .clone()
                    .handle(req, peer, forwarded_for.clone(), active, true)
            );
        let mut at_once = true;
        let mut draining = false;
        let answer = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = handling.as_mut().poll(cx) {
                draining = seat.poll_draining(cx);
                return Poll::Ready(Some(r));
            }
            at_once = false;
            // As hyper does (half-close off): a client that closes while its request is in
            // hand is gone, and the request is dropped.
            if client_left(io, &mut buf, cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        activity.note_answer(at_once);
        let Some(answer) = answer else {
            return Ended::Closed;
        };
        let (mut parts, mut body) = answer.into_parts();
        let raw = body.take_raw_fields();
        // An interim status cannot be the answer: hyper sends 500 for it and closes.
        let interim = parts.status.is_informational()
            && parts.status != http::StatusCode::SWITCHING_PROTOCOLS;
        if interim {
            parts.status = http::StatusCode::INTERNAL_SERVER_ERROR;
            parts.headers.clear();
        }
        let raw = raw.filter(|_| !interim);
        let size = if interim || body.is_end_stream() {
            BodySize::Empty
        } else {
            body.size_hint()
                .exact()
                .map_or(BodySize::Unknown, BodySize::Known)
        };
        out.clear();
        let Ok(encoded) = encode_head(
            &mut out,
            parts.status,
            raw.as_ref(),
            &parts.headers,
            size,
            head_request,
            asked_close || draining || interim,
        ) else {
            tracing::warn!(listener = %proxy.listener, status = %parts.status, "answer with conflicting lengths not sent; connection closed");
            return Ended::Closed;
        };
        if let Some(raw) = raw {
            body.put_back(raw);
        }
        // Kept for the next request unless it holds many repeated values (an HTTP/2
        // origin's answer may hold hundreds), whose memory `clear` would keep.
        if parts.headers.len() <= parts.headers.capacity() {
            fields = parts.headers;
            fields.clear();
        } else {
            fields = http::HeaderMap::new();
        }
        let complete = match send_body(io, &mut buf, &mut out, body, &encoded).await {
            Ok(complete) => complete,
            Err(_) => return Ended::Closed,
        };
        if io.flush().await.is_err() {
            return Ended::Closed;
        }
        if encoded.close || !complete {
            let _ = io.shutdown().await;
            return Ended::Closed;
        }
        answered = true;
    }
}

/// Whether the client has closed (or its socket failed) while we wait on the handler or the
/// origin. Only looked for while `read` is empty, as hyper does: bytes of a next request are
/// kept there and not read past.
fn client_left<I: AsyncRead + Unpin>(
    io: &mut I,
    read: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> bool {
    if !read.is_empty() {
        return false;
    }
    if read.capacity() == 0 {
        read.reserve(8 * 1024);
    }
    matches!(
        poll_read_buf(Pin::new(io), cx, read),
        Poll::Ready(Ok(0) | Err(_))
    )
}

/// Writes the head in `out` and the body after it. `Ok(false)`: the body ended early or failed
/// (the client cannot tell where this answer ends; the connection must close). What the body
/// has ready goes out in one write with the head: a 100 KiB answer from nginx arrives in about
/// four pieces, and writing each on its own made 5.1 sends per answer against hyper's 3.2
/// (strace, 2 000 answers).
async fn send_body<I>(
    io: &mut I,
    read: &mut BytesMut,
    out: &mut Vec<u8>,
    mut body: ProxyBody,
    encoded: &encode::Encoded,
) -> std::io::Result<bool>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut left = match encoded.framing {
        Framing::Length(0) => {
            // HEAD, 204, 304 or empty: the body is not read.
            drop(body);
            io.write_all(out).await?;
            return Ok(true);
        }
        Framing::Length(n) => n,
        Framing::Chunked | Framing::UntilClose => u64::MAX,
    };
    let chunked = encoded.framing == Framing::Chunked;
    let mut waiting = Gather::new(out);
    loop {
        // What is ready joins what waits; before waiting for more, it goes.
        let ready = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)));
        let frame = match ready.await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                waiting.write(io).await?;
                io.flush().await?;
                // A client that leaves while the origin is quiet (a long poll, an event
                // stream) ends the answer now, not at the origin's next bytes.
                let next = std::future::poll_fn(|cx| {
                    if let Poll::Ready(f) = Pin::new(&mut body).poll_frame(cx) {
                        return Poll::Ready(Some(f));
                    }
                    if client_left(io, read, cx) {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                });
                match next.await {
                    Some(f) => f,
                    None => return Err(std::io::ErrorKind::ConnectionAborted.into()),
                }
            }
        };
        match frame {
            None => {
                if chunked {
                    waiting.copy(b"0\r\n\r\n");
                }
                waiting.write(io).await?;
                // A length announced and not reached: the client would wait for the rest.
                return Ok(!matches!(encoded.framing, Framing::Length(_)) || left == 0);
            }
            Some(Err(_)) => {
                // The origin's body broke off: what was sent stands, the connection ends.
                waiting.write(io).await?;
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(mut data) => {
                    if data.len() as u64 > left {
                        // More than the length it announced: cut, and close after.
                        data.truncate(left as usize);
                        waiting.data(data, chunked);
                        waiting.write(io).await?;
                        return Ok(false);
                    }
                    if !chunked && encoded.framing != Framing::UntilClose {
                        left -= data.len() as u64;
                    }
                    waiting.data(data, chunked);
                    if left == 0 {
                        // The announced length is the answer, as in hyper: the next request
                        // does not wait for an origin's late end of stream. One more look
                        // lets a body that ends now finish its work (the cache's recording);
                        // dropped unfinished, it finishes that without the client.
                        let _ = std::future::poll_fn(|cx| {
                            Poll::Ready(Pin::new(&mut body).poll_frame(cx))
                        })
                        .await;
                        waiting.write(io).await?;
                        return Ok(true);
                    }
                    if waiting.is_full() {
                        waiting.write(io).await?;
                    }
                }
                Err(frame) => {
                    if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                        // Only the fields the head announced (as hyper does).
                        waiting.copy(b"0\r\n");
                        for (name, value) in &trailers {
                            if encoded.trailers.contains(name) {
                                encode::put(waiting.out, name.as_str(), value.as_bytes());
                            }
                        }
                        waiting.copy(b"\r\n");
                        waiting.write(io).await?;
                        return Ok(true);
                    }
                }
            },
        }
    }
}

/// Bytes of an answer waiting to go out, in order: pieces copied into `out` (the head, chunk
/// lines, small pieces of body) and larger pieces of body, kept as they are.
struct Gather<'o> {
    out: &'o mut Vec<u8>,
    /// Bytes of `out` already in `parts`.
    sealed: usize,
    parts: smallvec::SmallVec<[Part; 16]>,
}

enum Part {
    Copied(std::ops::Range<usize>),
    Shared(Bytes),
}

impl<'o> Gather<'o> {
    fn new(out: &'o mut Vec<u8>) -> Gather<'o> {
        Gather {
            out,
            sealed: 0,
            parts: smallvec::SmallVec::new(),
        }
    }

    fn copy(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// A piece of body: copied when the buffer stays small, else kept as it is.
    fn data(&mut self, data: Bytes, chunked: bool) {
        if chunked {
            use std::io::Write as _;
            let _ = write!(self.out, "{:x}\r\n", data.len());
        }
        if self.out.len() + data.len() <= WITH_HEAD {
            self.out.extend_from_slice(&data);
        } else {
            self.seal();
            self.parts.push(Part::Shared(data));
        }
        if chunked {
            self.copy(b"\r\n");
        }
    }

    fn seal(&mut self) {
        if self.out.len() > self.sealed {
            self.parts.push(Part::Copied(self.sealed..self.out.len()));
            self.sealed = self.out.len();
        }
    }

    /// Room for a few more pieces, as one `writev` takes them.
    fn is_full(&self) -> bool {
        self.parts.len() >= 12
    }

    /// Writes everything waiting, in as few calls as the socket takes it.
    async fn write<I: AsyncWrite + Unpin>(&mut self, io: &mut I) -> std::io::Result<()> {
        if self.parts.is_empty() {
            // All copied (the usual small answer): one buffer, no list of slices.
            io.write_all(self.out).await?;
            self.out.clear();
            return Ok(());
        }
        self.seal();
        {
            let out = &*self.out;
            let mut slices: smallvec::SmallVec<[std::io::IoSlice<'_>; 16]> = self
                .parts
                .iter()
                .map(|p| match p {
                    Part::Copied(r) => std::io::IoSlice::new(&out[r.clone()]),
                    Part::Shared(d) => std::io::IoSlice::new(d),
                })
                .collect();
            let mut left = &mut slices[..];
            while !left.is_empty() {
                let n = io.write_vectored(left).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                std::io::IoSlice::advance_slices(&mut left, n);
            }
        }
        self.out.clear();
        self.sealed = 0;
        self.parts.clear();
        Ok(())
    }
}
