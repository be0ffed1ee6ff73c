//! A backend body read by a task of its own: for HTTP/2 clients, and for cache fills.
//!
//! hyper polls an HTTP/2 response body only when the stream has window to send it: a client that
//! opens a stream and never grants it window would leave the body unpolled, and with it the
//! backend connection and its in-flight count, for ever. Here a task reads the backend's body
//! into a small channel; when the client takes nothing for `idle`, the task gives the backend
//! up (its connection closes, its lease ends) and the stream ends with an error the next time
//! hyper looks. The task also holds the request's mark on its connection
//! ([`ActiveRequest`]): once it has given up, a connection whose other streams are done is
//! idle and closed after `idle`, however long hyper waits on the stalled stream. What a stalled
//! stream still holds is at most one piece in hyper and the channel's two: 48 KiB (a fill's
//! backlog, below, for `idle` more).
//!
//! HTTP/1.1 clients need none of this for a plain answer: a socket that stops draining is caught
//! by the connection's own write timer.
//!
//! A cache fill (a body being recorded, for a client of either version) is also read here, and
//! at the origin's pace rather than its client's: every other client of a new object waits for
//! that fill, and a first client that read nothing held them all until `lock_timeout`, then sent
//! them to the origin at once. What the client has not taken yet waits in the task, its bytes
//! held from the service's fill budget (`max_fill_bytes`, shared with the recordings). Read-ahead
//! leaves `max_object_size` of the budget free for recordings (see `Recorder::hold_ahead`). With
//! that spent, a recording that holds the whole body (the origin said its length) reads on at
//! the origin's pace, keeping nothing more for the client; one without a length reads no
//! further ahead than its client, as for any other answer. Once a recording ends, whatever its
//! client has still to take is served from the recorded body (slices of the stored object,
//! counted by the cache), and the fill budget is all given back. An HTTP/2 client that takes nothing for `idle` is
//! given up on; an HTTP/1.1 client is left to its connection's write timer, which any progress
//! resets (a client reading a few hundred bytes a second is slow, not gone). A client given up on
//! or gone leaves the fill running, for at most ten stalls more. The backend is let go as soon as
//! its body has been read, however long the client takes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use streamgate_balance::Lease;
use tokio::sync::{Notify, mpsc};

use tokio::time::Instant;

use super::read_ahead::{Ahead, data_len};
use super::recording::{DRAIN_STALLS, Recording};
use crate::io::ActiveRequest;
use crate::upstream::{BoxError, UpstreamBody};

pub(super) type Piece = Result<Frame<Bytes>, BoxError>;

/// Frames buffered between the task and the client: two pieces.
const DEPTH: usize = 2;

/// Backend reads (up to 64 KiB, more from hyper's client) go to the client in pieces of at
/// most this much. hyper asks for the next piece once the last one is sent, so the `idle` bound
/// on each hand-over means "at least one piece per `idle`": with 64 KiB pieces and idle = 10 s,
/// a client reading 6 KB/s would have been cut while still reading.
pub(super) const PIECE: usize = 16 * 1024;

/// What the task and the client's end share.
#[derive(Debug, Default)]
struct Shared {
    gave_up: AtomicBool,
    /// hyper took the end of the body: the client has had everything.
    finished: AtomicBool,
    /// hyper took a piece (or the end).
    taken: Notify,
    /// The request's mark on its connection: ends with the body, or when the task gives up.
    active: Mutex<Option<ActiveRequest>>,
}

impl Shared {
    fn give_up(&self, idle: Duration) {
        self.gave_up.store(true, Ordering::Release);
        drop(self.active.lock().unwrap_or_else(|e| e.into_inner()).take());
        tracing::debug!(idle = ?idle, "client took nothing of its answer for idle; answer ended");
    }
}

/// The client's end of a pumped body.
#[derive(Debug)]
pub struct Pumped {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    shared: Arc<Shared>,
    hint: SizeHint,
    done: bool,
}

/// The client stopped reading: its answer was given up (and the backend released, unless a
/// cache fill still reads it).
#[derive(Debug, thiserror::Error)]
#[error("the client took nothing of this response for its idle timeout; its answer was given up")]
pub struct ClientStalled;

impl Pumped {
    /// Starts a task reading `body` (after the frames already `read` from it), holding the
    /// backend's lease until the body is read or given up, and the request's mark on its
    /// connection until the client has taken it all or the task gives up. With a `recording`,
    /// the body is read at the origin's pace (see the module's text), and the client is given
    /// up on after `idle` without taking a piece only if its flag says so (HTTP/2).
    pub fn start(
        body: UpstreamBody,
        read: Vec<Piece>,
        held: (Option<Lease>, Option<ActiveRequest>),
        idle: Duration,
        recording: Option<(Recording, bool)>,
    ) -> Pumped {
        let (tx, rx) = mpsc::channel(DEPTH);
        let (lease, active) = held;
        let shared = Arc::new(Shared {
            active: Mutex::new(active),
            ..Shared::default()
        });
        // What is left of the body and what was read of it already: an HTTP/1.1 server frames
        // the answer by this, and a hint short by the frames in `read` cut the answer short.
        let read_len: u64 = read
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let left = body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(left.lower() + read_len);
        if let Some(upper) = left.upper() {
            hint.set_upper(upper + read_len);
        }
        match recording {
            None => tokio::spawn(pump(body, read, tx, lease, idle, shared.clone())),
            Some((r, give_up)) => {
                let idle = give_up.then_some(idle);
                let ends = Ends { tx, lease, idle };
                tokio::spawn(pump_recording(body, read, ends, shared.clone(), r))
            }
        };
        Pumped {
            rx,
            shared,
            hint,
            done: false,
        }
    }
}

async fn pump(
    mut body: UpstreamBody,
    read: Vec<Result<Frame<Bytes>, BoxError>>,
    tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    lease: Option<Lease>,
    idle: Duration,
    shared: Arc<Shared>,
) {
    // Frames already read from the body go first.
    let mut read = read.into_iter();
    loop {
        let frame = match read.next() {
            Some(f) => Some(f),
            // The backend's own stall timer bounds this wait; a client gone ends it at once.
            None => tokio::select! {
                f = body.frame() => f.map(|f| f.map_err(BoxError::from)),
                () = tx.closed() => return,
            },
        };
        let Some(frame) = frame else { break };
        let pieces: Vec<Result<Frame<Bytes>, BoxError>> = match frame {
            Ok(f) => match f.into_data() {
                Ok(mut data) => {
                    let mut out = Vec::with_capacity(data.len().div_ceil(PIECE));
                    while data.len() > PIECE {
                        out.push(Ok(Frame::data(data.split_to(PIECE))));
                    }
                    out.push(Ok(Frame::data(data)));
                    out
                }
                Err(trailers) => vec![Ok(trailers)],
            },
            Err(e) => vec![Err(e)],
        };
        for piece in pieces {
            let failed = piece.is_err();
            match tokio::time::timeout(idle, tx.send(piece)).await {
                Ok(Ok(())) if !failed => {}
                Ok(_) => return,
                Err(_) => return shared.give_up(idle),
            }
        }
    }
    // The backend is done with, and the channel closed behind the last piece; those pieces may
    // still wait in the channel and in hyper for a window that never opens. The body goes too:
    // an HTTP/2 backend's stream slot is held by it (upstream::h2_pool).
    drop((lease, tx, body));
    until_taken(&shared, idle).await;
}

/// Waits for the client to take the pieces left in the channel, giving up on it after `idle`
/// without a piece taken.
async fn until_taken(shared: &Shared, idle: Duration) {
    until_taken_or(shared, Some(idle)).await;
}

/// [`until_taken`]; without `idle`, for as long as the client's end lives.
async fn until_taken_or(shared: &Shared, idle: Option<Duration>) {
    let Some(idle) = idle else {
        while !shared.finished.load(Ordering::Acquire) {
            shared.taken.notified().await;
        }
        return;
    };
    while !shared.finished.load(Ordering::Acquire) {
        if tokio::time::timeout(idle, shared.taken.notified())
            .await
            .is_err()
        {
            return shared.give_up(idle);
        }
    }
}

/// The client's side of a pump, and what is held for it.
struct Ends {
    tx: mpsc::Sender<Piece>,
    lease: Option<Lease>,
    /// Give the client up after this long without a piece taken.
    idle: Option<Duration>,
}

/// [`pump`] for a fill: reads at the origin's pace while the recording runs, keeping what the
/// client has not taken (see the module's text).
async fn pump_recording(
    body: UpstreamBody,
    read: Vec<Piece>,
    ends: Ends,
    shared: Arc<Shared>,
    recording: Recording,
) {
    let Ends {
        tx,
        mut lease,
        idle,
    } = ends;
    // Let go with the lease once read to its end: an HTTP/2 backend's stream slot is held by it.
    let mut body = Some(body);
    let stall = recording.drain_stall;
    let mut recording = Some(recording);
    let mut read = read.into_iter();
    let mut ahead = Ahead::default();
    // The client's end, while it is there and not given up on.
    let mut tx = Some(tx);
    let mut origin_done = false;
    // Once the client is gone, the fill has until then.
    let mut drain_by: Option<Instant> = None;
    // Bytes of the body handed to the client's channel.
    let mut sent = 0usize;
    // Past the read-ahead budget with a recording that holds the whole body: read on at the
    // origin's pace without keeping pieces for the client, who is fed copies of the recording
    // as it takes them, and slices of the recorded body once it ends. Waiting for the client
    // instead let a few clients reading a few bytes a second hold every recording's memory
    // (`max_fill_bytes`) for as long as they liked, and no other object of the service could
    // be stored meanwhile.
    let mut deferred = false;
    loop {
        if tx.is_none() {
            ahead.clear();
            if recording.is_none() {
                break;
            }
            if drain_by.is_none() {
                // One fill more without its client, if the service has room for it.
                recording = recording.and_then(|r| {
                    let drain_stall = r.drain_stall;
                    r.recorder.orphaned().map(|recorder| Recording {
                        recorder,
                        drain_stall,
                    })
                });
                if recording.is_none() {
                    break;
                }
                // Its request is over: the connection may go idle while the fill runs on.
                drop(
                    shared
                        .active
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take(),
                );
                drain_by = Some(Instant::now() + stall.saturating_mul(DRAIN_STALLS));
            }
        }
        if origin_done {
            if ahead.pieces.is_empty() {
                break;
            }
            (body, lease) = (None, None);
        }
        let may_read = !origin_done
            && (ahead.pieces.is_empty()
                || (recording.is_some() && (!ahead.over_budget || deferred)));
        // The client is owed recorded bytes it has not had (a deferred fill).
        let from_recording = deferred
            && ahead.pieces.is_empty()
            && recording
                .as_ref()
                .is_some_and(|r| r.recorder.recorded() > sent);
        let owed = !ahead.pieces.is_empty() || from_recording;
        let took_too_long = idle.and_then(|i| Some(ahead.since? + i));
        let step = tokio::select! {
            biased;
            permit = room(&tx), if !ahead.pieces.is_empty() => match (permit, ahead.pieces.pop_front()) {
                (Ok(p), Some((piece, _hold))) => {
                    sent += data_len(&piece);
                    p.send(piece);
                    Step::Sent
                }
                _ => Step::ClientGone,
            },
            permit = room(&tx), if from_recording => match (permit, &recording) {
                (Ok(p), Some(r)) => {
                    let piece = r.recorder.copy_piece(sent, PIECE);
                    sent += piece.len();
                    p.send(Ok(Frame::data(piece)));
                    Step::Sent
                }
                _ => Step::ClientGone,
            },
            () = gone(&tx), if !owed => Step::ClientGone,
            () = sleep_until_or_never(took_too_long), if tx.is_some() && owed => {
                Step::ClientStalled
            }
            () = sleep_until_or_never(drain_by) => Step::DrainOver,
            // The backend's own stall timer bounds this wait.
            f = next_frame(&mut read, &mut body), if may_read => Step::Read(f),
        };
        let frame = match step {
            Step::Sent => {
                ahead.since = Some(Instant::now());
                if ahead.pieces.is_empty() && !deferred {
                    ahead.over_budget = false;
                }
                continue;
            }
            Step::ClientGone => {
                tx = None;
                continue;
            }
            Step::ClientStalled => {
                shared.give_up(idle.unwrap_or_default());
                tx = None;
                continue;
            }
            Step::DrainOver => {
                if let Some(r) = recording.take() {
                    r.recorder.fail();
                }
                break;
            }
            Step::Read(f) => f,
        };
        // Frames read before the task began come first; the body's end is the end only after them.
        let at_end = read.as_slice().is_empty() && body.as_ref().is_none_or(Body::is_end_stream);
        let client = tx.is_some();
        match frame {
            None => {
                origin_done = true;
                if let Some(body) = recording.take().and_then(|r| r.recorder.finish())
                    && client
                {
                    ahead.serve_rest_from(&body, sent);
                }
            }
            Some(Err(e)) => {
                origin_done = true;
                if let Some(r) = recording.take() {
                    if deferred && client {
                        // What was recorded reaches the client before the error.
                        ahead.serve_rest_from(&r.recorder.fail_keeping_body(), sent);
                    } else {
                        r.recorder.fail();
                    }
                }
                if client {
                    ahead.push(Err(e), None);
                }
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    if deferred
                        && client
                        && ahead.pieces.is_empty()
                        && recording
                            .as_ref()
                            .is_some_and(|r| r.recorder.recorded() == sent)
                    {
                        // A client caught up with the recording is owed bytes again from now:
                        // its `idle` counts from here, not from its last piece.
                        ahead.since = Some(Instant::now());
                    }
                    if let Some(r) = &mut recording
                        && r.recorder.push(&data).is_err()
                    {
                        recording = None;
                        if deferred {
                            // Not reached with the whole body reserved; were it, what the
                            // client has not had is gone: its answer ends in an error.
                            origin_done = true;
                            if client {
                                ahead.push(Err("the recording of this answer failed".into()), None);
                            }
                            continue;
                        }
                    }
                    if client && !deferred {
                        while data.len() > PIECE {
                            let piece = Ok(Frame::data(data.split_to(PIECE)));
                            ahead.push(piece, recording.as_ref());
                        }
                        ahead.push(Ok(Frame::data(data)), recording.as_ref());
                        deferred = ahead.over_budget
                            && recording.as_ref().is_some_and(|r| r.recorder.reserved());
                    }
                    if at_end {
                        origin_done = true;
                        if let Some(body) = recording.take().and_then(|r| r.recorder.finish())
                            && client
                        {
                            ahead.serve_rest_from(&body, sent);
                        }
                    }
                }
                Err(trailers) => {
                    // A response with trailers is not stored (as in `ProxyBody`); the client
                    // gets them, after what it was to be served from the recording.
                    if let Some(r) = recording.take()
                        && deferred
                        && client
                    {
                        ahead.serve_rest_from(&r.recorder.into_body(), sent);
                    }
                    origin_done = true;
                    if client {
                        ahead.push(Ok(trailers), None);
                    }
                }
            },
        }
    }
    let client = tx.is_some();
    drop((lease, tx, body));
    if client {
        until_taken_or(&shared, idle).await;
    }
}

/// What a turn of [`pump_recording`] did.
enum Step {
    /// A piece went into the client's channel.
    Sent,
    ClientGone,
    /// The client took nothing for `idle`.
    ClientStalled,
    /// The client is gone and the fill ran out of time.
    DrainOver,
    Read(Option<Piece>),
}

/// Room in the client's channel; never, without a client.
async fn room(
    tx: &Option<mpsc::Sender<Piece>>,
) -> Result<mpsc::Permit<'_, Piece>, mpsc::error::SendError<()>> {
    match tx {
        Some(tx) => tx.reserve().await,
        None => std::future::pending().await,
    }
}

/// The client's end is dropped; never, without a client.
async fn gone(tx: &Option<mpsc::Sender<Piece>>) {
    match tx {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

/// The next frame: those already read first, then the body's (never, once it is let go).
async fn next_frame(
    read: &mut std::vec::IntoIter<Piece>,
    body: &mut Option<UpstreamBody>,
) -> Option<Piece> {
    match (read.next(), body) {
        (Some(f), _) => Some(f),
        (None, Some(body)) => body.frame().await.map(|f| f.map_err(BoxError::from)),
        (None, None) => std::future::pending().await,
    }
}

async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Drop for Pumped {
    fn drop(&mut self) {
        // The stream is gone (answered or reset): the task has nothing left to wait for.
        self.shared.finished.store(true, Ordering::Release);
        self.shared.taken.notify_one();
    }
}

impl Body for Pumped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let polled = this.rx.poll_recv(cx);
        match polled {
            Poll::Ready(None) => {
                this.done = true;
                this.shared.finished.store(true, Ordering::Release);
                this.shared.taken.notify_one();
                if this.shared.gave_up.load(Ordering::Acquire) {
                    // Not an end: the stream is reset rather than looking complete.
                    return Poll::Ready(Some(Err(Box::new(ClientStalled))));
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(_)) => {
                this.shared.taken.notify_one();
                polled
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
