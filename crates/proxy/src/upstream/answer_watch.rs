//! Whether a backend that hyper's client speaks HTTP/1.1 to (over TLS) began its answer before
//! the request body had all gone: such a connection must not serve another request.
//!
//! hyper puts a connection back in its pool once both the request and the answer are done,
//! however they overlapped. A backend that answers a POST on its head and never reads the body
//! (a static-file handler, the "CL.0" backends of request-smuggling research) then takes the
//! body's bytes for the next request on it, and a body crafted as the start of a request
//! prefixes another client's (`early_answers::an_https_connection_answered_before_its_upload_ended_is_not_reused`).
//! Our own HTTP/1.1 client keeps no such connection ([`super::Upload::answered_early`]); this
//! is the same rule for hyper's.
//!
//! The decision is taken inside hyper's connection task, where the body is polled: the
//! connection counts the reads that brought answer bytes ([`AnswerReads`]), the body notes the
//! count when it is first polled (before hyper flushes the request head, so before any answer
//! can come) and looks again just before its last bytes are handed over. More reads by then:
//! the answer came first, and the connection is poisoned for the pool, before hyper can see it
//! idle and pool it. Checking where the answer's head reaches the request's task instead would
//! leave a window in which another request could take the connection from the pool.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use hyper_util::client::legacy::connect::CaptureConnection;

/// Reads that returned answer bytes on one backend connection, counted by the connection.
#[derive(Debug, Default, Clone)]
pub(super) struct AnswerReads(Arc<AtomicU64>);

impl AnswerReads {
    pub fn count(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Watches the connection that carries one request body.
#[derive(Debug)]
pub(super) struct AnswerWatch {
    /// The connection hyper chose, known before the request reaches its task.
    capture: CaptureConnection,
    /// The connection's read count, and its value when the body was first polled; `None`
    /// inside when there is nothing to watch (an HTTP/2 connection, which pools streams, not
    /// bodies).
    start: OnceLock<Option<(AnswerReads, u64)>>,
}

impl AnswerWatch {
    pub fn new(capture: CaptureConnection) -> AnswerWatch {
        AnswerWatch {
            capture,
            start: OnceLock::new(),
        }
    }

    /// The body is being polled: the first time, the count so far is noted.
    pub fn body_polled(&self) {
        self.start.get_or_init(|| {
            let metadata = self.capture.connection_metadata();
            let connected = metadata.as_ref()?;
            if connected.is_negotiated_h2() {
                return None;
            }
            let mut extras = http::Extensions::new();
            connected.get_extras(&mut extras);
            let reads = extras.get::<AnswerReads>()?.clone();
            let at_start = reads.get();
            Some((reads, at_start))
        });
    }

    /// The body's last bytes are about to be handed over: an answer already begun poisons the
    /// connection for the pool.
    pub fn body_ending(&self) {
        if let Some(Some((reads, at_start))) = self.start.get()
            && reads.get() > *at_start
            && let Some(connected) = self.capture.connection_metadata().as_ref()
        {
            connected.poison();
        }
    }
}
