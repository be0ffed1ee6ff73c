//! The request body on its way to a backend, and how its upload goes. Owned by the upstream
//! client, which sends it; the HTTP layer builds it from the client's body.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::answer_watch::AnswerWatch;

/// Errors a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// No body; such a request can be sent again to another backend.
    Empty,
    /// The client's body, streamed as it arrives, and how its upload goes.
    Stream(Incoming, Arc<Upload>),
    /// The client's whole body, read before a backend was picked (a small one with its length
    /// declared, see [`RequestBody::read_whole`]) and its trailers: a slow client holds no
    /// backend connection while it sends it, and it can go again to another backend.
    Whole(Bytes, Option<Box<http::HeaderMap>>, Arc<Upload>),
}

/// Bodies up to this size, with their length declared, are read whole before a backend is
/// asked: nginx's `client_body_buffer_size` on 64-bit machines. One HTTP/2 connection's 256
/// streams hold at most 4 MiB so, and only what was sent.
pub const READ_WHOLE_UP_TO: u64 = 16 * 1024;

impl RequestBody {
    /// The client's body as it goes with one attempt: a whole body is shared (and stays for the
    /// next attempt), a streaming one is taken.
    pub fn for_attempt(&mut self) -> RequestBody {
        match self {
            RequestBody::Whole(b, t, u) => RequestBody::Whole(b.clone(), t.clone(), u.clone()),
            _ => std::mem::replace(self, RequestBody::Empty),
        }
    }

    /// Whether the body can be sent again after an attempt that may have sent it: none, or one
    /// read whole.
    pub fn resendable(&self) -> bool {
        !matches!(self, RequestBody::Stream(..))
    }

    /// The upload's account, for a body that has one.
    pub fn upload(&self) -> Option<&Arc<Upload>> {
        match self {
            RequestBody::Empty => None,
            RequestBody::Stream(_, u) | RequestBody::Whole(_, _, u) => Some(u),
        }
    }

    /// Reads a streaming body whose length is declared (Content-Length) and at most
    /// [`READ_WHOLE_UP_TO`] whole, giving the client `stall` between its frames; any other body
    /// is left as it is. Err: the body broke off or stopped (the caller answers the client; no
    /// backend was asked).
    pub async fn read_whole(&mut self, stall: std::time::Duration) -> Result<(), WholeReadError> {
        let RequestBody::Stream(body, upload) = self else {
            return Ok(());
        };
        // What is still owed: the declared length, as nothing was read yet.
        let Some(n) = body
            .size_hint()
            .exact()
            .filter(|n| (1..=READ_WHOLE_UP_TO).contains(n))
        else {
            return Ok(());
        };
        // Nothing reserved from the declared length before bytes come: 256 HTTP/2 streams that
        // declare 16 KiB and send nothing hold nothing. One frame with all of it is kept as is;
        // a second frame sizes the buffer for the whole (below).
        let mut first: Option<Bytes> = None;
        let mut more = bytes::BytesMut::new();
        let mut got: u64 = 0;
        let mut trailers = None;
        // Read to the stream's end, for trailers an HTTP/2 backend is owed. Once the length is
        // all in, its END_STREAM (or trailers) is waited for only `END_GRACE`: it may come in a
        // frame of its own later, or never (a reset).
        while !body.is_end_stream() {
            let wait = if got == n {
                END_GRACE.min(stall)
            } else {
                stall
            };
            let frame = match tokio::time::timeout(wait, http_body_util::BodyExt::frame(body)).await
            {
                Err(_) if got == n => break,
                Err(_) => return Err(WholeReadError::Stalled),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    upload.broke();
                    return Err(WholeReadError::Broke(e.to_string()));
                }
                Ok(Some(Ok(f))) => f,
            };
            let d = match frame.into_data() {
                Ok(d) => d,
                Err(f) => {
                    trailers = f.into_trailers().ok().map(Box::new);
                    continue;
                }
            };
            upload.sent(d.len());
            got += d.len() as u64;
            if got > n {
                upload.broke();
                return Err(WholeReadError::Broke("longer than its length".into()));
            }
            match first.take() {
                None if more.is_empty() => first = Some(d),
                earlier => {
                    // Sized once for the whole: grown by doubling, a 16 KiB body took up to
                    // 32 KiB (frames of 1, 16 382 and 1 bytes).
                    if more.is_empty() {
                        more.reserve(n as usize);
                    }
                    if let Some(e) = earlier {
                        more.extend_from_slice(&e);
                    }
                    more.extend_from_slice(&d);
                }
            }
        }
        // An HTTP/2 stream reset with NO_ERROR ends as a whole one does; its length tells.
        if got != n {
            upload.broke();
            return Err(WholeReadError::Broke("ended before its length".into()));
        }
        upload.finished();
        let data = first.unwrap_or_else(|| more.freeze());
        *self = RequestBody::Whole(data, trailers, upload.clone());
        Ok(())
    }
}

/// How long a body read whole waits for its END_STREAM or trailers once its length is in.
/// Clients send them with the last bytes (curl, browsers, Go, gRPC); this is for one that holds
/// them back.
const END_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Why a body could not be read whole before its backend was asked.
#[derive(Debug, thiserror::Error)]
pub enum WholeReadError {
    #[error("request body broke off: {0}")]
    Broke(String),
    #[error("request body stopped arriving")]
    Stalled,
}

/// How a request body's upload goes: bytes passed on (for the access log), when the last ones
/// went and whether it is complete. The backend's response deadline (`upstream_response`)
/// counts from the end of the upload, not from its start: a large upload is not a slow backend.
#[derive(Debug, Default)]
pub struct Upload {
    /// Most bytes the service takes (`[services.limits] max_body`).
    limit: u64,
    bytes: AtomicU64,
    /// `now_nanos()` of the last progress.
    last: AtomicU64,
    done: std::sync::atomic::AtomicBool,
    /// The client's body is an HTTP/2 stream's, whose end is its END_STREAM flag.
    flagged_end: bool,
    /// The client's body broke off: reset, closed, malformed or short of its length.
    broke: std::sync::atomic::AtomicBool,
    /// The backend refused the request (a 4xx or 5xx answer) before the body was all in.
    refused: std::sync::atomic::AtomicBool,
    /// The answer's head came before the whole body had been sent.
    early: std::sync::atomic::AtomicBool,
    /// For a body hyper's client sends over HTTP/1.1: its connection, watched for an answer
    /// that begins before the body's end.
    watch: OnceLock<AnswerWatch>,
}

impl Upload {
    /// `flagged_end`: the body comes over HTTP/2 (see [`Upload::check_end`]).
    pub fn new(limit: u64, flagged_end: bool) -> Arc<Upload> {
        Arc::new(Upload {
            limit,
            last: AtomicU64::new(streamgate_balance::stats::now_nanos()),
            flagged_end,
            ..Upload::default()
        })
    }

    /// `body` has just ended: whole, or cut short. hyper ends an HTTP/2 body reset by its client
    /// with NO_ERROR (RFC 9113 §8.1 lets a server stop an upload that way) just as it ends a
    /// whole one; only the stream's state tells them apart: END_STREAM received or not. A body
    /// passed on as ended would reach its backend truncated and taken for whole, unless all of
    /// its announced length is in. A cut is recorded ([`Upload::client_broke`]): the client's
    /// doing, not the backend's. An HTTP/1.1 body needs no such check: hyper reports one that stops
    /// short as an error.
    pub fn check_end(&self, body: &Incoming) -> Result<(), BodyCutShort> {
        // The size hint counts what is still owed: 0 once a known length is all in.
        if !self.flagged_end || body.is_end_stream() || body.size_hint().exact() == Some(0) {
            return Ok(());
        }
        self.broke();
        Err(BodyCutShort(h2::Error::from(h2::Reason::CANCEL)))
    }

    /// The client's body broke off (an error reading it, or short of its length). Recorded
    /// before the backend can see the body end, so a backend's answer to a truncated body (a
    /// 500 from an application that hit EOF) is known for the client's doing when it comes,
    /// and does not count against the backend's health.
    pub fn broke(&self) {
        self.broke.store(true, Relaxed);
    }

    /// The backend's answer, once its head is read. Before the body has all gone, it is early
    /// ([`Upload::answered_early`]), and a refusal (4xx, 5xx) makes the rest of an HTTP/2
    /// client's body of no use ([`Upload::stop_after_answer`]); after, neither.
    pub fn answered(&self, status: u16) {
        if self.is_done() {
            return;
        }
        self.early.store(true, Relaxed);
        if status >= 400 {
            self.refused.store(true, Relaxed);
        }
    }

    /// Whether the answer began before the whole body had been sent (the writer marks the
    /// body done just before its last write: an answer to a body read whole comes after it).
    /// Such a connection is not used again: a backend that answers without reading the body (a
    /// static-file handler; the "CL.0" backends of request-smuggling research) takes the body's
    /// bytes for its next request, and a body crafted as the start of a request would prefix
    /// another client's.
    /// nginx keeps no connection whose body was not all sent before the answer either
    /// (`request_body_sent` in its keepalive module). A body sent whole before the answer
    /// cannot be told from one the backend read, by any proxy.
    pub fn answered_early(&self) -> bool {
        self.early.load(Relaxed)
    }

    /// Whether the rest of the body is stopped once the answer has gone, rather than still
    /// passed on. An HTTP/2 client's upload that the backend refused: its stream is reset with
    /// NO_ERROR (RFC 9113 §8.1, as nginx does) and the client stops sending a body nobody will
    /// use, while its connection goes on. An accepted upload (a 2xx or 3xx before its end, as an
    /// ingest endpoint may send) still goes to the backend, which may be reading it; and an
    /// HTTP/1.1 client's always does, since its keep-alive connection needs the rest read.
    pub fn stop_after_answer(&self) -> bool {
        self.flagged_end && self.refused.load(Relaxed)
    }

    /// Whether the client's body broke off ([`Upload::broke`], [`Upload::check_end`]).
    pub fn client_broke(&self) -> bool {
        self.broke.load(Relaxed)
    }

    /// The body passed the service's `max_body`: the upload stops (413).
    pub fn over_limit(&self) -> bool {
        self.bytes.load(Relaxed) > self.limit
    }

    /// Watches the connection hyper's client sends this body on (see [`AnswerWatch`]).
    pub(super) fn watch_answer(&self, watch: AnswerWatch) {
        let _ = self.watch.set(watch);
    }

    /// The body's last bytes are about to go (see [`AnswerWatch::body_ending`]).
    fn ending(&self) {
        if let Some(w) = self.watch.get() {
            w.body_ending();
        }
        self.finished();
    }

    pub fn sent(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Relaxed);
        self.last
            .store(streamgate_balance::stats::now_nanos(), Relaxed);
    }

    pub fn finished(&self) {
        self.done.store(true, Relaxed);
        self.last
            .store(streamgate_balance::stats::now_nanos(), Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Relaxed)
    }

    /// When the upload last moved (or ended), in `now_nanos()` time.
    pub fn last_progress(&self) -> u64 {
        self.last.load(Relaxed)
    }
}

/// A request body passed the service's `max_body` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than max_body")]
pub struct BodyTooLarge;

/// An HTTP/2 request body was reset by its client before its end. Its source is the reset that
/// hyper's client then sends to an HTTP/2 backend's stream (it looks for one in the error's
/// sources; without it, INTERNAL_ERROR).
#[derive(Debug, thiserror::Error)]
#[error("request body reset by the client before its end")]
pub struct BodyCutShort(#[source] h2::Error);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            // Its upload finished when it was read, and nothing watches it (see `send_pooled`).
            RequestBody::Whole(b, trailers, _) => {
                if !b.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(std::mem::take(b)))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            RequestBody::Stream(b, up) => {
                if let Some(w) = up.watch.get() {
                    w.body_polled();
                }
                let polled = Pin::new(&mut *b).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Err(_))) => up.broke(),
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            up.sent(d.len());
                            if up.over_limit() {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                            }
                        }
                        // The last frame hyper's client polls: it stops at trailers, and at
                        // a length's last byte (an HTTP/2 body's END_STREAM may come later,
                        // or never be polled).
                        if f.is_trailers() || b.is_end_stream() || b.size_hint().exact() == Some(0)
                        {
                            up.ending();
                        }
                    }
                    Poll::Ready(None) => {
                        if let Err(cut) = up.check_end(b) {
                            return Poll::Ready(Some(Err(Box::new(cut))));
                        }
                        up.ending();
                    }
                    _ => {}
                }
                polled.map_err(BoxError::from)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Whole(b, t, _) => b.is_empty() && t.is_none(),
            RequestBody::Stream(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Whole(b, _, _) => SizeHint::with_exact(b.len() as u64),
            RequestBody::Stream(b, _) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_http2_upload_is_stopped_after_its_answer() {
        // (HTTP/2 client, answer status, stopped)
        let table = [
            (true, 401, true),
            (true, 413, true),
            (true, 500, true),
            (true, 200, false),
            (true, 202, false),
            (true, 302, false),
            (false, 401, false),
            (false, 200, false),
        ];
        for (h2, status, stopped) in table {
            let upload = Upload::new(u64::MAX, h2);
            upload.answered(status);
            assert_eq!(upload.stop_after_answer(), stopped, "{h2} {status}");
        }
        // Not answered yet: nothing is stopped.
        assert!(!Upload::new(u64::MAX, true).stop_after_answer());
        // Refused once the whole body had gone: nothing is left to stop, and the connection,
        // whose writer may still be returning, can serve again.
        let whole = Upload::new(u64::MAX, true);
        whole.finished();
        whole.answered(401);
        assert!(!whole.stop_after_answer());
    }
}
