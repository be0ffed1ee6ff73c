//! The request body on its way to a backend, and how its upload goes. Owned by the upstream
//! client, which sends it; the HTTP layer builds it from the client's body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Errors a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// No body; such a request can be sent again to another backend.
    Empty,
    /// The client's body, streamed as it arrives, and how its upload goes.
    Stream(Incoming, Arc<Upload>),
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
}

impl Upload {
    /// `flagged_end`: the body comes over HTTP/2 (see [`Upload::cut_short`]).
    pub fn new(limit: u64, flagged_end: bool) -> Arc<Upload> {
        Arc::new(Upload {
            limit,
            last: AtomicU64::new(streamgate_balance::stats::now_nanos()),
            flagged_end,
            ..Upload::default()
        })
    }

    /// Whether `body`, which has just ended, was cut short rather than ended. hyper ends an
    /// HTTP/2 body reset by its client with NO_ERROR (RFC 9113 §8.1 lets a server stop an
    /// upload that way) just as it ends a whole one; only the stream's state tells them apart:
    /// END_STREAM received or not. A body without a length that is passed on as ended would
    /// reach its backend truncated and taken for whole. An HTTP/1.1 body needs no such check:
    /// hyper reports one that stops short as an error.
    pub fn cut_short(&self, body: &Incoming) -> bool {
        self.flagged_end && !body.is_end_stream()
    }

    /// The body passed the service's `max_body`: the upload stops (413).
    pub fn over_limit(&self) -> bool {
        self.bytes.load(Relaxed) > self.limit
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

/// An HTTP/2 request body was reset by its client before its end.
#[derive(Debug, thiserror::Error)]
#[error("request body reset by the client before its end")]
pub struct BodyCutShort;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Stream(b, up) => {
                let polled = Pin::new(&mut *b).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            up.sent(d.len());
                            if up.over_limit() {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                            }
                        }
                        if b.is_end_stream() {
                            up.finished();
                        }
                    }
                    Poll::Ready(None) if up.cut_short(b) => {
                        return Poll::Ready(Some(Err(Box::new(BodyCutShort))));
                    }
                    Poll::Ready(None) => up.finished(),
                    _ => {}
                }
                polled.map_err(BoxError::from)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Stream(b, _) => b.size_hint(),
        }
    }
}
