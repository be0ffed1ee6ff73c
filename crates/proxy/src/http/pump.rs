//! A backend body read by a task of its own, for HTTP/2 clients.
//!
//! hyper polls an HTTP/2 response body only when the stream has window to send it: a client that
//! opens a stream and never grants it window would leave the body unpolled, and with it the
//! backend connection and its in-flight count, for ever. Here a task reads the backend's body
//! into a small channel; when the client takes nothing for `idle`, the task gives the backend
//! up (its connection closes, its lease ends) and the stream ends with an error the next time
//! hyper looks. The task also holds the request's mark on its connection
//! ([`ActiveRequest`]): once it has given up, a connection whose other streams are done is
//! idle and closed after `idle`, however long hyper waits on the stalled stream. What a stalled
//! stream still holds is at most one piece in hyper and the channel's two: 48 KiB.
//!
//! HTTP/1.1 clients need none of this: a socket that stops draining is caught by the
//! connection's own write timer.

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

use crate::io::ActiveRequest;
use crate::upstream::{BoxError, UpstreamBody};

/// Frames buffered between the task and the client: two pieces.
const DEPTH: usize = 2;

/// Backend reads (up to 64 KiB, more from hyper's client) go to the client in pieces of at
/// most this much. hyper asks for the next piece once the last one is sent, so the `idle` bound
/// on each hand-over means "at least one piece per `idle`": with 64 KiB pieces and idle = 10 s,
/// a client reading 6 KB/s would have been cut while still reading.
const PIECE: usize = 16 * 1024;

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
        tracing::debug!(idle = ?idle, "HTTP/2 client took nothing for idle; backend released");
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

/// The client stopped reading: the backend was released.
#[derive(Debug, thiserror::Error)]
#[error("the client took nothing of this response for its idle timeout; the backend was released")]
pub struct ClientStalled;

impl Pumped {
    /// Starts a task reading `body`, holding the backend's lease until the body is read or
    /// given up, and the request's mark on its connection until the client has taken it all
    /// or the task gives up.
    pub fn start(
        body: UpstreamBody,
        read: Vec<Result<Frame<Bytes>, BoxError>>,
        held: (Option<Lease>, Option<ActiveRequest>),
        idle: Duration,
    ) -> Pumped {
        let (tx, rx) = mpsc::channel(DEPTH);
        let (lease, active) = held;
        let shared = Arc::new(Shared {
            active: Mutex::new(active),
            ..Shared::default()
        });
        let hint = body.size_hint();
        tokio::spawn(pump(body, read, tx, lease, idle, shared.clone()));
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
    while !shared.finished.load(Ordering::Acquire) {
        if tokio::time::timeout(idle, shared.taken.notified())
            .await
            .is_err()
        {
            return shared.give_up(idle);
        }
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
