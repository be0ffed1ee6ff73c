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
            let whole = !buf.is_empty() && head::may_be_whole(&buf, scanned);
            if whole || buf.len() >= proxy.max_header_bytes {
                let (max, max_bytes) = (proxy.max_headers, proxy.max_header_bytes);
                match head::read_head(&mut buf, max, max_bytes, &mut fields) {
                    Head::Ours { req, close } => break (req, close),
                    // After HTTP/1.1 answers the connection stays HTTP/1.1 (`TimedIo` and
                    // `CoalescedWrites` chose their HTTP/1.1 ways on its first bytes): hyper's
                    // HTTP/1.1 server closed it at an HTTP/2 preface, and so do we. hyper-util
                    // would start HTTP/2 there (its `http1_only` does not hold for connections
                    // with upgrades).
                    Head::NotOurs if answered && buf.starts_with(H2_PREFACE) => {
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
                // Told to drain between requests: an idle connection closes now.
                if buf.is_empty() && seat.poll_draining(cx) {
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
        let mut handling = std::pin::pin!(proxy.clone().handle(
            req,
            peer,
            forwarded_for.clone(),
            active
        ));
        let mut at_once = true;
        let mut draining = false;
        let answer = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = handling.as_mut().poll(cx) {
                draining = seat.poll_draining(cx);
                return Poll::Ready(Some(r));
            }
            at_once = false;
            // As hyper does (half-close off): a client that closes while its request is in
            // hand is gone, and the request is dropped. Bytes of a next request are kept.
            if buf.is_empty() {
                if buf.capacity() == 0 {
                    buf.reserve(8 * 1024);
                }
                match poll_read_buf(Pin::new(&mut *io), cx, &mut buf) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) | Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        activity.note_answer(at_once);
        let Some(answer) = answer else {
            return Ended::Closed;
        };
        let (mut parts, body) = answer.into_parts();
        // An interim status cannot be the answer: hyper sends 500 for it and closes.
        let interim = parts.status.is_informational()
            && parts.status != http::StatusCode::SWITCHING_PROTOCOLS;
        if interim {
            parts.status = http::StatusCode::INTERNAL_SERVER_ERROR;
            parts.headers.clear();
        }
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
            &parts.headers,
            size,
            head_request,
            asked_close || draining || interim,
        ) else {
            tracing::warn!(listener = %proxy.listener, status = %parts.status, "answer with conflicting lengths not sent; connection closed");
            return Ended::Closed;
        };
        fields = parts.headers;
        fields.clear();
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

/// Writes the head in `out` and the body after it. `Ok(false)`: the body ended early or failed
/// (the client cannot tell where this answer ends; the connection must close).
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
    loop {
        // What is ready joins the bytes waiting in `out`; before waiting for more, they go.
        let ready = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)));
        let frame = match ready.await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                    io.flush().await?;
                }
                // A client that leaves while the origin is quiet (a long poll, an event
                // stream) ends the answer now, not at the origin's next bytes.
                let next = std::future::poll_fn(|cx| {
                    if let Poll::Ready(f) = Pin::new(&mut body).poll_frame(cx) {
                        return Poll::Ready(Some(f));
                    }
                    if read.is_empty()
                        && let Poll::Ready(Ok(0) | Err(_)) =
                            poll_read_buf(Pin::new(&mut *io), cx, &mut *read)
                    {
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
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                io.write_all(out).await?;
                out.clear();
                // A length announced and not reached: the client would wait for the rest.
                return Ok(!matches!(encoded.framing, Framing::Length(_)) || left == 0);
            }
            Some(Err(_)) => {
                // The origin's body broke off: what was sent stands, the connection ends.
                io.write_all(out).await?;
                out.clear();
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(mut data) => {
                    if data.len() as u64 > left {
                        // More than the length it announced: cut, and close after.
                        data.truncate(left as usize);
                        put_data(io, out, data, chunked).await?;
                        io.write_all(out).await?;
                        out.clear();
                        return Ok(false);
                    }
                    if !chunked && encoded.framing != Framing::UntilClose {
                        left -= data.len() as u64;
                    }
                    put_data(io, out, data, chunked).await?;
                }
                Err(frame) => {
                    if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                        // Only the fields the head announced (as hyper does).
                        out.extend_from_slice(b"0\r\n");
                        for (name, value) in &trailers {
                            if encoded.trailers.contains(name) {
                                out.extend_from_slice(name.as_str().as_bytes());
                                out.extend_from_slice(b": ");
                                out.extend_from_slice(value.as_bytes());
                                out.extend_from_slice(b"\r\n");
                            }
                        }
                        out.extend_from_slice(b"\r\n");
                        io.write_all(out).await?;
                        out.clear();
                        return Ok(true);
                    }
                }
            },
        }
    }
}

/// Adds a piece of body after what waits in `out`: copied when small, else written after it.
async fn put_data<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    data: Bytes,
    chunked: bool,
) -> std::io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    if chunked {
        use std::io::Write as _;
        let _ = write!(out, "{:x}\r\n", data.len());
    }
    if out.len() + data.len() <= WITH_HEAD {
        out.extend_from_slice(&data);
    } else {
        io.write_all(out).await?;
        out.clear();
        io.write_all(&data).await?;
    }
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}
