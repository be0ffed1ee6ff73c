//! A backend body read by a task of its own, for HTTP/2 clients.
//!
//! hyper polls an HTTP/2 response body only when the stream has window to send it: a client that
//! opens a stream and never grants it window would leave the body unpolled, and with it the
//! backend connection and its in-flight count, for ever. Here a task reads the backend's body
//! into a small channel; when the client takes nothing for `idle`, the task gives the backend
//! up (its connection closes, its lease ends) and the stream ends with an error the next time
//! hyper looks. HTTP/1.1 clients need none of this: a socket that stops draining is caught by
//! the connection's own write timer.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use streamgate_balance::Lease;
use tokio::sync::mpsc;

use super::body::BoxError;
use crate::upstream::UpstreamBody;

/// Frames buffered between the task and the client: two reads of the backend.
const DEPTH: usize = 2;

/// Bodies shorter than this are read whole before hyper asks for them; a pump would only cost.
pub const PUMP_ABOVE: u64 = 64 * 1024;

/// The client's end of a pumped body.
#[derive(Debug)]
pub struct Pumped {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    gave_up: Arc<AtomicBool>,
    hint: SizeHint,
    done: bool,
}

/// The client stopped reading: the backend was released.
#[derive(Debug, thiserror::Error)]
#[error("the client took nothing of this response for its idle timeout; the backend was released")]
pub struct ClientStalled;

impl Pumped {
    /// Starts a task reading `body` (and holding `lease` until the body ends or is given up).
    pub fn start(body: UpstreamBody, lease: Option<Lease>, idle: Duration) -> Pumped {
        let (tx, rx) = mpsc::channel(DEPTH);
        let gave_up = Arc::new(AtomicBool::new(false));
        let hint = body.size_hint();
        tokio::spawn(pump(body, tx, lease, idle, gave_up.clone()));
        Pumped {
            rx,
            gave_up,
            hint,
            done: false,
        }
    }
}

async fn pump(
    mut body: UpstreamBody,
    tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    lease: Option<Lease>,
    idle: Duration,
    gave_up: Arc<AtomicBool>,
) {
    let _lease = lease;
    loop {
        // The backend's own stall timer bounds this wait; a client gone ends it at once.
        let frame = tokio::select! {
            f = body.frame() => f,
            () = tx.closed() => return,
        };
        let Some(frame) = frame else { return };
        let failed = frame.is_err();
        match tokio::time::timeout(idle, tx.send(frame.map_err(BoxError::from))).await {
            Ok(Ok(())) if !failed => {}
            Ok(_) => return,
            Err(_) => {
                gave_up.store(true, Ordering::Release);
                tracing::debug!(idle = ?idle, "HTTP/2 client took nothing for idle; backend released");
                return;
            }
        }
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
        match this.rx.poll_recv(cx) {
            Poll::Ready(None) => {
                this.done = true;
                if this.gave_up.load(Ordering::Acquire) {
                    // Not an end: the stream is reset rather than looking complete.
                    return Poll::Ready(Some(Err(Box::new(ClientStalled))));
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
