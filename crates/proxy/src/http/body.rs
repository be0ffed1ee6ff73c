//! Body types: what the proxy sends upstream and what it answers clients with. Plain enums; the
//! one box of a proxied answer is its HTTP/1.1 backend body (see `UpstreamBody::H1`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use streamgate_balance::Lease;

use std::sync::Arc;
use std::time::Instant;

use streamgate_telemetry::access_log::{AccessLog, AccessRecord};
use streamgate_telemetry::prometheus::IntCounter;

use super::recording::{Recording, finish_recording};
use crate::io::ActiveRequest;
use crate::upstream::UpstreamBody;

pub use crate::upstream::{BodyTooLarge, BoxError, RequestBody, Upload};

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
    /// The request body's upload (it may outlast the response head).
    pub bytes_in: Option<Arc<Upload>>,
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
                p.record.bytes_in = n.bytes();
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
    record: Option<Box<Recording>>,
    /// The part of an upstream body the client gets (a range, or nothing for a 304); the rest
    /// is read for the recording only.
    window: Option<Window>,
}

/// Bytes of the upstream body to skip, then to send.
#[derive(Debug, Clone, Copy)]
struct Window {
    skip: u64,
    take: u64,
}

/// HTTP/2 answers up to this size that arrived whole are answered from memory (see
/// `upstream_h2`): spawning a pump per answer cost h2c-1k about a fifth of its rate.
const READ_AT_ONCE: u64 = 64 * 1024;

/// Reads what `body` has ready without waiting: the whole body if it is all here, else `None`
/// with the frames read so far in `read` (which must go out first).
fn read_if_here(
    body: &mut UpstreamBody,
    read: &mut Vec<Result<Frame<Bytes>, BoxError>>,
) -> Option<Bytes> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // The first chunk is held on its own: a body that came in one piece (the usual small
    // answer) needs no list, which was one allocation per HTTP/2 request.
    let mut first: Option<Bytes> = None;
    let mut data: Vec<Bytes> = Vec::new();
    let whole = loop {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(None) => break true,
            Poll::Ready(Some(Ok(f))) => match f.into_data() {
                Ok(d) => {
                    match first.take() {
                        None if data.is_empty() => first = Some(d),
                        held => data.extend(held.into_iter().chain([d])),
                    }
                    if body.is_end_stream() {
                        break true;
                    }
                }
                Err(trailers) => {
                    read.push(Ok(trailers));
                    break false;
                }
            },
            Poll::Ready(Some(Err(e))) => {
                read.push(Err(BoxError::from(e)));
                break false;
            }
            // Nothing is lost: the next poll, with hyper's waker, registers it.
            Poll::Pending => break false,
        }
    };
    if whole {
        return Some(match first {
            Some(d) => d,
            None if data.is_empty() => Bytes::new(),
            None => data.concat().into(),
        });
    }
    let after = std::mem::take(read);
    read.extend(first.into_iter().chain(data).map(|d| Ok(Frame::data(d))));
    read.extend(after);
    None
}

#[derive(Debug)]
enum Inner {
    Upstream(UpstreamBody),
    /// Read by a task of its own (HTTP/2 clients and cache fills, see `pump`).
    Pumped(super::pump::Pumped),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn upstream(body: UpstreamBody, done: Completion, served: IntCounter) -> ProxyBody {
        Self::from_inner(Inner::Upstream(body), done, served)
    }

    /// A backend's body for an HTTP/2 client. hyper polls an HTTP/2 body only when its stream
    /// has window, so a body hyper holds keeps the backend's lease (and its connection) and the
    /// request's mark on its connection for as long as the client grants none. A short body
    /// that has already arrived whole (most small answers come with their head) is answered
    /// from memory and lets both go at once; any other is read by a task that releases them
    /// when the client takes nothing for `idle` (see `pump`).
    pub fn upstream_h2(
        mut body: UpstreamBody,
        mut done: Completion,
        served: IntCounter,
        idle: std::time::Duration,
    ) -> ProxyBody {
        if body.is_end_stream() {
            return Self::upstream(body, done, served);
        }
        let mut read = Vec::new();
        if body.size_hint().upper().is_some_and(|n| n <= READ_AT_ONCE)
            && let Some(data) = read_if_here(&mut body, &mut read)
        {
            drop((done.lease.take(), done.active.take()));
            let data = (!data.is_empty()).then_some(data);
            return Self::from_inner(Inner::Full(data), done, served);
        }
        let held = (done.lease.take(), done.active.take());
        let pumped = super::pump::Pumped::start(body, read, held, idle, None);
        Self::from_inner(Inner::Pumped(pumped), done, served)
    }

    /// A backend's body being recorded into the cache (a fill), for a client of either
    /// version. Unless it has already arrived, it is read by a task at the origin's pace (see
    /// `pump`): a client slower than the origin, or one that reads nothing, must not hold back
    /// the fill that every other client of a new object waits for.
    pub fn recorded(
        mut body: UpstreamBody,
        mut done: Completion,
        served: IntCounter,
        (client_version, idle): (http::Version, std::time::Duration),
        recording: Recording,
    ) -> ProxyBody {
        let mut read = Vec::new();
        // Recorded as it is polled when there is nothing to wait for: it has all arrived, or
        // its raw fields are for the HTTP/1.1 server to write (no cached answer has them).
        let inner = if body.is_end_stream() || body.has_raw_fields() {
            Inner::Upstream(body)
        } else if body.size_hint().upper().is_some_and(|n| n <= READ_AT_ONCE)
            && let Some(data) = read_if_here(&mut body, &mut read)
        {
            drop(done.lease.take());
            if client_version == http::Version::HTTP_2 {
                // As in `upstream_h2`: a stream without window must not keep its connection busy.
                drop(done.active.take());
            }
            Inner::Full((!data.is_empty()).then_some(data))
        } else {
            let held = (done.lease.take(), done.active.take());
            // An HTTP/1.1 client is held to its connection's write timer instead.
            let give_up = client_version == http::Version::HTTP_2;
            let recording = Some((recording, give_up));
            let pumped = super::pump::Pumped::start(body, read, held, idle, recording);
            return Self::from_inner(Inner::Pumped(pumped), done, served);
        };
        let mut answer = Self::from_inner(inner, done, served);
        answer.record = Some(Box::new(recording));
        answer
    }

    /// A backend's answer fields as it sent them, when they were kept so (the response's map
    /// then holds only what this proxy added). Taken once, by the server writing the head.
    pub(crate) fn take_raw_fields(&mut self) -> Option<crate::upstream::codec::RawFields> {
        match &mut self.inner {
            Inner::Upstream(b) => b.take_raw_fields(),
            Inner::Pumped(_) | Inner::Full(_) => None,
        }
    }

    /// Gives back what [`ProxyBody::take_raw_fields`] took, once the head is written.
    pub(crate) fn put_back(&mut self, raw: crate::upstream::codec::RawFields) {
        if let Inner::Upstream(b) = &mut self.inner {
            b.put_back(raw);
        }
    }

    fn from_inner(inner: Inner, done: Completion, served: IntCounter) -> ProxyBody {
        ProxyBody {
            inner,
            done: Some(done),
            served: Some(served),
            record: None,
            window: None,
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
            window: None,
        }
    }

    /// The client gets `take` bytes after the first `skip` of an upstream body.
    pub fn window(&mut self, skip: u64, take: u64) {
        self.window = Some(Window { skip, take });
    }

    pub fn full(data: impl Into<Bytes>, done: Completion) -> ProxyBody {
        let data = data.into();
        let inner = Inner::Full(if data.is_empty() { None } else { Some(data) });
        ProxyBody {
            inner,
            done: Some(done),
            served: None,
            record: None,
            window: None,
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody {
            inner: Inner::Full(None),
            done: None,
            served: None,
            record: None,
            window: None,
        }
    }

    /// Writes `log` to the access log when the body ends (completely or not).
    pub fn log_when_done(&mut self, log: Box<PendingLog>) {
        self.done.get_or_insert_with(Completion::default).log = Some(log);
    }
}

impl ProxyBody {
    /// One frame of the inner body, recorded if a recording runs, narrowed to the window.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.window.is_some_and(|w| w.take == 0) {
                return Poll::Ready(None);
            }
            let polled = match &mut self.inner {
                Inner::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
                Inner::Pumped(b) => Pin::new(b).poll_frame(cx),
                Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            };
            if let Poll::Ready(Some(Ok(frame))) = &polled
                && let Some(data) = frame.data_ref()
                && let Some(r) = &mut self.record
                && r.recorder.push(data).is_err()
            {
                self.record = None;
            }
            let upstream_ended = match &polled {
                Poll::Ready(None) => true,
                // hyper stops polling once a body says it has ended, so the last data frame
                // has to complete the recording.
                Poll::Ready(Some(Ok(f))) if f.is_data() => match &self.inner {
                    Inner::Upstream(b) => b.is_end_stream(),
                    Inner::Pumped(b) => b.is_end_stream(),
                    Inner::Full(d) => d.is_none(),
                },
                _ => false,
            };
            if upstream_ended && let Some(r) = self.record.take() {
                r.recorder.finish();
            }
            match &polled {
                // Trailers or an error: the object is not stored.
                Poll::Ready(Some(Err(_))) => {
                    if let Some(r) = self.record.take() {
                        r.recorder.fail();
                    }
                }
                Poll::Ready(Some(Ok(f))) if f.is_trailers() => self.record = None,
                _ => {}
            }
            let Some(w) = &mut self.window else {
                return polled;
            };
            let Poll::Ready(Some(Ok(frame))) = polled else {
                return polled;
            };
            let Ok(mut data) = frame.into_data() else {
                // Trailers of a windowed body are not the client's.
                continue;
            };
            let skip = w.skip.min(data.len() as u64) as usize;
            w.skip -= skip as u64;
            let _ = data.split_to(skip);
            let take = w.take.min(data.len() as u64) as usize;
            w.take -= take as u64;
            data.truncate(take);
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
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
        let polled = this.poll_inner(cx);
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
        }
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // The response is complete (or broken): release the backend now, not when hyper
            // gets round to dropping the body (unless a recording still needs its connection).
            this.hand_off_recording();
            this.done = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if let Some(w) = &self.window {
            return w.take == 0;
        }
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Pumped(b) => b.is_end_stream(),
            Inner::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(w) = &self.window {
            return SizeHint::with_exact(w.take);
        }
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Pumped(b) => b.size_hint(),
            Inner::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl ProxyBody {
    /// The client has what it gets, but a recording still wants the rest of the origin's
    /// body: a task reads it, with the backend's lease, and stores the object, so that a range,
    /// a 304 or a client that went away still fill the cache for everyone waiting on it.
    fn hand_off_recording(&mut self) {
        let Some(recording) = self.record.take() else {
            return;
        };
        let Recording {
            recorder,
            drain_stall: stall,
        } = *recording;
        let lease = self.done.as_mut().and_then(|d| d.lease.take());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        match std::mem::replace(&mut self.inner, Inner::Full(None)) {
            // Read on without a client, if the service has room for one more such fill.
            Inner::Upstream(body) => {
                let Some(recorder) = recorder.orphaned() else {
                    return;
                };
                rt.spawn(async move {
                    let _lease = lease;
                    finish_recording(body, recorder, stall).await;
                });
            }
            Inner::Pumped(body) => {
                let Some(recorder) = recorder.orphaned() else {
                    return;
                };
                rt.spawn(finish_recording(body, recorder, stall));
            }
            // A window that took nothing of a body that was all here (a 304, a 412): it is
            // recorded now.
            Inner::Full(data) => {
                let mut recorder = recorder;
                if data.is_none_or(|d| recorder.push(&d).is_ok()) {
                    recorder.finish();
                }
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        self.hand_off_recording();
    }
}

#[cfg(test)]
mod size {
    /// An answer is moved about 25 times between the backend's head and the client's (each
    /// async level takes and returns it). glibc's AVX2 copy (x86-64 since Haswell) moves up to
    /// 256 bytes without a loop (SSE2-only machines: 128, AVX-512: 512). At 496 bytes the
    /// copies were 13% of a proxied HTTP/1.1 request's instructions and 42% of its L1 write
    /// misses; boxing the HTTP/1.1 body (one allocation) and moving the recording's stall into
    /// its box took them to 9% and 36% (callgrind, docs/benchmarks.md).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_answer_fits_the_short_copy() {
        let size = std::mem::size_of::<http::Response<super::ProxyBody>>();
        assert!(
            size <= 256,
            "Response<ProxyBody> is {size} bytes; keep it at 256 or less (box what is rare)"
        );
    }
}
