//! Body types: what the proxy sends upstream and what it answers clients with. Plain enums, so a
//! request allocates no boxed body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use streamgate_balance::Lease;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use streamgate_telemetry::access_log::{AccessLog, AccessRecord};
use streamgate_telemetry::prometheus::IntCounter;

use super::cached::Recorder;
use crate::io::ActiveRequest;
use crate::upstream::UpstreamBody;

/// Errors a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// No body; such a request can be sent again to another backend.
    Empty,
    /// The client's body, streamed as it arrives, and a count of the bytes sent on (kept when
    /// the access log wants it).
    Stream(Incoming, Option<Arc<AtomicU64>>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Stream(b, _) => Pin::new(b).poll_frame(cx),
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

/// What stays alive until the client has the whole response: the backend's in-flight count, the
/// connection's "a request is active" mark and the access log line, written when it ends.
#[derive(Debug, Default)]
pub struct Completion {
    pub lease: Option<Lease>,
    pub active: Option<ActiveRequest>,
    pub log: Option<Box<PendingLog>>,
}

/// An access log line being filled in while the request runs.
#[derive(Debug)]
pub struct PendingLog {
    pub record: AccessRecord,
    /// Request body bytes forwarded so far (the upload may outlast the response head).
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub sink: Arc<AccessLog>,
    pub started: Instant,
}

impl Completion {
    /// Marks the request active until the body ends.
    pub fn serving(active: ActiveRequest) -> Completion {
        Completion {
            lease: None,
            active: Some(active),
            log: None,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(mut p) = self.log.take() {
            if let Some(n) = &p.bytes_in {
                p.record.bytes_in = n.load(Relaxed);
            }
            p.record.duration = p.started.elapsed();
            p.sink.log(p.record);
        }
    }
}

/// A response body to a client.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    done: Option<Completion>,
    /// `cache_served_bytes_total{source}` of where this body comes from.
    served: Option<IntCounter>,
    /// Copies the body into the cache as it streams to the client.
    record: Option<Box<Recorder>>,
}

#[derive(Debug)]
enum Inner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn upstream(body: UpstreamBody, done: Completion, served: IntCounter) -> ProxyBody {
        ProxyBody {
            inner: Inner::Upstream(body),
            done: Some(done),
            served: Some(served),
            record: None,
        }
    }

    /// A stored body served from the cache.
    pub fn stored(data: Bytes, done: Completion, served: IntCounter) -> ProxyBody {
        let inner = Inner::Full(if data.is_empty() { None } else { Some(data) });
        ProxyBody {
            inner,
            done: Some(done),
            served: Some(served),
            record: None,
        }
    }

    /// Stores the body in the cache once it has streamed completely.
    pub fn record_into(&mut self, recorder: Recorder) {
        self.record = Some(Box::new(recorder));
    }

    pub fn full(data: impl Into<Bytes>, done: Completion) -> ProxyBody {
        let data = data.into();
        let inner = Inner::Full(if data.is_empty() { None } else { Some(data) });
        ProxyBody {
            inner,
            done: Some(done),
            served: None,
            record: None,
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody {
            inner: Inner::Full(None),
            done: None,
            served: None,
            record: None,
        }
    }

    /// Writes `log` to the access log when the body ends (completely or not).
    pub fn log_when_done(&mut self, log: Box<PendingLog>) {
        self.done.get_or_insert_with(Completion::default).log = Some(log);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            if let Some(c) = &this.served {
                c.inc_by(n);
            }
            if let Some(log) = this.done.as_mut().and_then(|d| d.log.as_mut()) {
                log.record.bytes_out += n;
            }
            if let Some(r) = &mut this.record
                && !r.push(data)
            {
                this.record = None;
            }
        }
        let ended = match &polled {
            Poll::Ready(None) => true,
            // hyper stops polling once a body says it has ended, so the last data frame has to
            // complete the recording.
            Poll::Ready(Some(Ok(f))) if f.is_data() => this.is_end_stream(),
            _ => false,
        };
        if ended && let Some(r) = this.record.take() {
            r.finish();
        }
        match &polled {
            // Trailers or an error: the object is not stored.
            Poll::Ready(Some(Err(_))) => this.record = None,
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => this.record = None,
            _ => {}
        }
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // The response is complete (or broken): release the backend now, not when hyper
            // gets round to dropping the body.
            this.done = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
