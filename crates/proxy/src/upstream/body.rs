//! A backend's response body, read straight from its connection in the request's own task; the
//! connection goes back to the pool when the body ends cleanly.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;
use tokio_util::io::poll_read_buf;

use super::codec::{BodyDecoder, Decoded};
use super::exchange::Reuse;
use super::pool::{Buffers, Pool, Pooled};
use super::{Conn, UpstreamError};

/// Read size for bodies: big enough that a 100 KiB response takes two reads.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug)]
pub struct H1Body {
    conn: Option<Conn>,
    buf: BytesMut,
    /// The request head's buffer, kept with the connection for its next request.
    head: Vec<u8>,
    /// `buf` grew for a large body: not worth keeping.
    grew: bool,
    decoder: BodyDecoder,
    pool: Arc<Pool>,
    /// The connection may serve another request once this body has been read to its end.
    reusable: bool,
    /// A backend that sends nothing for this long mid-body is given up on.
    stall_timeout: Duration,
    /// When the connection last carried bytes (the exchange's start until a body read), for
    /// the pool's idle clock.
    last_used: Instant,
    /// Start of the current silence, read from the clock only once we are waiting.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The answer's fields as the backend sent them, until the client's head is written.
    raw: Option<super::codec::RawFields>,
    /// The spans' vector, back from `raw` once the head is written, for the connection's next
    /// answer.
    spans: Vec<[u16; 4]>,
}

/// What the backend's answer head says of its body and connection.
#[derive(Debug)]
pub(super) struct AnswerFacts {
    pub decoder: BodyDecoder,
    /// The connection may carry another request once the body has been read.
    pub reusable: bool,
    /// The answer's fields as the backend sent them, when they go on that way.
    pub raw: Option<super::codec::RawFields>,
}

impl H1Body {
    pub(super) fn new(
        conn: Conn,
        buffers: Buffers,
        facts: AnswerFacts,
        pool: Arc<Pool>,
        stall_timeout: Duration,
        started: Instant,
    ) -> H1Body {
        let AnswerFacts {
            decoder,
            reusable,
            raw,
        } = facts;
        let mut body = H1Body {
            conn: Some(conn),
            buf: buffers.read,
            head: buffers.head,
            spans: buffers.spans,
            grew: false,
            decoder,
            pool,
            reusable,
            stall_timeout,
            last_used: started,
            waiting_since: None,
            timer: None,
            raw,
        };
        // A body that came whole with its head (Content-Length: 0) gives its connection back
        // now, unless its fields go on raw: the spans' vector is the connection's, and comes
        // back with `put_back` (or the body's drop) once the client's head is written.
        if body.decoder.is_done() && body.raw.is_none() {
            body.finish();
        }
        body
    }

    /// The body ends when the backend closes the connection.
    pub(crate) fn until_close(&self) -> bool {
        matches!(self.decoder, BodyDecoder::UntilClose)
    }

    /// The answer's fields as the backend sent them, when they were kept that way.
    pub(crate) fn take_raw_fields(&mut self) -> Option<super::codec::RawFields> {
        self.raw.take()
    }

    pub(crate) fn has_raw_fields(&self) -> bool {
        self.raw.is_some()
    }

    /// Gives back what [`H1Body::take_raw_fields`] took, once the head is encoded. A body
    /// that was whole with its head goes back to the pool now, with the vector.
    pub(crate) fn put_back(&mut self, raw: super::codec::RawFields) {
        self.spans = raw.into_spans();
        if self.decoder.is_done() {
            self.finish();
        }
    }

    /// A 101 Switching Protocols: the connection (and bytes already read past the head) now
    /// belong to the tunnel.
    pub(crate) fn into_tunnel(mut self) -> Option<(tokio::net::TcpStream, BytesMut)> {
        match self.conn.take()? {
            Conn::Whole(s) => Some((s, std::mem::take(&mut self.buf))),
            // A request body was still being sent: no clean tunnel.
            Conn::Split { .. } => None,
        }
    }

    /// The body ended: hand the connection back if nothing is left over on it and the request
    /// had all gone before the answer began, at once or once its writer is done; an upload still
    /// going is finished first, and its connection closed ([`Reuse::AfterUpload`]).
    /// A connection that cannot be reused stays with the body (a 101's tunnel takes it; else it
    /// closes when the body is dropped).
    fn finish(&mut self) {
        if !(self.reusable && self.buf.is_empty()) {
            return;
        }
        let Some(conn) = self.conn.take() else {
            return;
        };
        let buffers = Buffers {
            head: std::mem::take(&mut self.head),
            read: std::mem::take(&mut self.buf),
            spans: std::mem::take(&mut self.spans),
        }
        .kept(self.grew);
        match conn.into_reusable() {
            Reuse::Now(stream) => self.pool.put(Pooled { stream, buffers }, self.last_used),
            Reuse::AfterUpload(tail) => {
                // Dropped outside the runtime (at exit), the tail is dropped with the body.
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let pool = self.pool.clone();
                runtime.spawn(async move {
                    if let Some(stream) = tail.finish().await {
                        pool.put(Pooled { stream, buffers }, Instant::now());
                    }
                });
            }
            Reuse::No => {}
        }
    }

    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<UpstreamError> {
        let now = Instant::now();
        let deadline = *self.waiting_since.get_or_insert(now) + self.stall_timeout;
        if now >= deadline {
            return Poll::Ready(UpstreamError::Stalled {
                after: self.stall_timeout,
            });
        }
        let when = tokio::time::Instant::from_std(deadline);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(when)));
        if timer.deadline() != when {
            timer.as_mut().reset(when);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(UpstreamError::Stalled {
                after: self.stall_timeout,
            }),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A body whole with its head whose raw fields were not given back (the answer was replaced,
/// or its head not written): its connection still goes back to the pool. A body that ended
/// otherwise has no connection left here, or one that is not reusable.
impl Drop for H1Body {
    fn drop(&mut self) {
        if self.decoder.is_done() {
            self.finish();
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        loop {
            match this.decoder.decode(&mut this.buf) {
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(UpstreamError::Protocol(e))));
                }
                Ok(Decoded::Data(d)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    if d.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(Decoded::Trailers(t)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < 4096 {
                this.buf.reserve(READ_CHUNK);
                this.grew = true;
            }
            match poll_read_buf(Pin::new(conn), cx, &mut this.buf) {
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    if matches!(this.decoder, BodyDecoder::UntilClose) {
                        this.decoder = BodyDecoder::Done;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(UpstreamError::Closed { stage: "body" })));
                }
                Poll::Ready(Ok(_)) => {
                    this.last_used = Instant::now();
                    this.waiting_since = None;
                }
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(UpstreamError::Io {
                        stage: "reading the response body",
                        source: e,
                    })));
                }
                Poll::Pending => {
                    return match this.poll_stall(cx) {
                        Poll::Ready(e) => {
                            this.conn = None;
                            Poll::Ready(Some(Err(e)))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
