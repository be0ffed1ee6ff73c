//! Recording an origin response into the cache while it streams to its client.
//!
//! Memory is bounded twice: one recording holds at most `max_object_size`, and all recordings
//! of a service together at most `max_fill_bytes` (the [`crate::fill::FillBudget`]). A recording that would
//! pass either is dropped (counted by reason) and its response goes on streaming to the client
//! uncached: a burst of large misses (say, a thousand `Range: bytes=0-0` requests for distinct
//! 8 MiB objects) costs the budget, not a thousand objects.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use tracing::debug;

use crate::entry::Variant;
use crate::fill::{FillGuard, Outcome};
use crate::policy::{Freshness, Timing};
use crate::store::ServiceCache;

/// Why a recording was given up: the `reason` label of `cache_fills_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// `max_fill_bytes` reached.
    Memory,
    /// The body grew past `max_object_size`.
    Size,
    /// The origin's body failed or ended early.
    Error,
    /// Its client left while [`MAX_ORPHANS`] fills of the service ran without theirs.
    Orphaned,
}

impl Dropped {
    pub const ALL: [Dropped; 4] = [
        Dropped::Memory,
        Dropped::Size,
        Dropped::Error,
        Dropped::Orphaned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Memory => "memory",
            Dropped::Size => "size",
            Dropped::Error => "error",
            Dropped::Orphaned => "orphaned",
        }
    }
}

/// Most fills of one service that go on after their client left. Such a fill is kept so that
/// the next client of the object finds it stored, but each holds a backend connection (and up
/// to ten stalls of the origin's time): without a bound, clients that asked for new objects of
/// a slow origin and left at once made the daemon hold one backend connection per request,
/// however many. nginx ends such a fetch with its client unless told otherwise
/// (`proxy_ignore_client_abort`); past this many, so does StreamGate.
pub const MAX_ORPHANS: usize = 256;

/// The head of a response about to be recorded.
#[derive(Debug)]
pub struct RecordHead {
    pub status: StatusCode,
    /// As stored: hop-by-hop fields, Age and the fields the response keeps from shared caches
    /// already removed.
    pub headers: HeaderMap,
    pub timing: Timing,
    pub freshness: Freshness,
    pub selectors: Vec<(HeaderName, Option<HeaderValue>)>,
}

/// Copies a streaming response into the cache; stores it once it is complete.
#[derive(Debug)]
pub struct Recorder {
    cache: Arc<ServiceCache>,
    key: String,
    head: Option<RecordHead>,
    buf: BytesMut,
    /// Bytes taken from the fill budget: the buffer's capacity.
    taken: u64,
    /// Released when the recorder ends, stored or not, so coalesced waiters act.
    fill: Option<FillGuard>,
    /// The origin said the length, and all of it was taken from the budget at the start: no
    /// more of the body can be refused.
    reserved: bool,
    /// Counted among the service's fills without a client (see [`Recorder::orphaned`]).
    orphan: bool,
}

impl Recorder {
    /// Starts a recording of a body of `length` bytes (when the origin said), its memory taken
    /// from the budget at once. `Err` (counted) when the body is too large or the budget is
    /// spent; the fill's waiters then fetch on their own.
    pub fn start(
        cache: Arc<ServiceCache>,
        key: String,
        head: RecordHead,
        length: Option<u64>,
        fill: Option<FillGuard>,
    ) -> Result<Recorder, Dropped> {
        let spec = &cache.spec;
        let mut r = Recorder {
            key,
            head: Some(head),
            buf: BytesMut::new(),
            taken: 0,
            fill,
            cache: cache.clone(),
            reserved: false,
            orphan: false,
        };
        match length {
            Some(n) if n > spec.max_object_size => Err(r.drop_for(Dropped::Size)),
            Some(n) => {
                if !cache.fill_budget.try_take(n, spec.max_fill_bytes) {
                    return Err(r.drop_for(Dropped::Memory));
                }
                r.taken = n;
                r.reserved = true;
                r.buf = BytesMut::with_capacity(n as usize);
                Ok(r)
            }
            None => Ok(r),
        }
    }

    /// Keeps a chunk. `Err` (counted) once the object outgrew `max_object_size` or the budget;
    /// the recording is then over.
    pub fn push(&mut self, data: &Bytes) -> Result<(), Dropped> {
        let spec = &self.cache.spec;
        let len = (self.buf.len() + data.len()) as u64;
        if len > spec.max_object_size {
            return Err(self.drop_for(Dropped::Size));
        }
        if len > self.taken {
            // Grown by doubling (at least 64 KiB), never past max_object_size; what the buffer
            // holds is what the budget counts.
            let want = len
                .max(self.taken.saturating_mul(2))
                .max(64 * 1024)
                .min(spec.max_object_size);
            if !self
                .cache
                .fill_budget
                .try_take(want - self.taken, spec.max_fill_bytes)
            {
                return Err(self.drop_for(Dropped::Memory));
            }
            self.buf.reserve(want as usize - self.buf.len());
            self.taken = want;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Holds `n` more bytes of the fill budget for data read ahead of a client slower than the
    /// origin while this recording runs (the proxy's pump reads a fill at the origin's pace);
    /// `None` once the budget is spent, and the reader then waits for its client as before.
    /// What a slow client has not taken yet is counted with the recordings it shares memory
    /// with, so `max_fill_bytes` bounds both; and it leaves `max_object_size` of the budget
    /// free, so that read-ahead is never what drops a recording: this one growing without a
    /// Content-Length, or another object's about to start. (A piece the budget refuses is still
    /// kept, one origin read at most, and reading stops until the client has caught up.)
    pub fn hold_ahead(&self, n: u64) -> Option<AheadBytes> {
        let (budget, spec) = (&self.cache.fill_budget, &self.cache.spec);
        budget
            .try_take(n, spec.max_fill_bytes.saturating_sub(spec.max_object_size))
            .then(|| AheadBytes {
                budget: budget.clone(),
                n,
            })
    }

    /// The whole body's memory was taken at the start (the origin said its length): a body of
    /// that length is never refused, so what the recording holds is the whole answer once it
    /// ends, and a client behind it can be served from it (see `pump` in the proxy).
    pub fn reserved(&self) -> bool {
        self.reserved
    }

    /// Its client left: the recording goes on if fewer than [`MAX_ORPHANS`] of the service's
    /// do already, else it is given up (counted as `orphaned`; its waiters fetch on their own)
    /// and `None` is returned.
    pub fn orphaned(mut self) -> Option<Recorder> {
        if self.orphan {
            return Some(self);
        }
        let orphans = &self.cache.fill_budget.orphans;
        let taken = orphans
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_ORPHANS).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            self.drop_for(Dropped::Orphaned);
            return None;
        }
        self.orphan = true;
        Some(self)
    }

    /// Bytes of the body recorded so far.
    pub fn recorded(&self) -> usize {
        self.buf.len()
    }

    /// A copy of up to `max` recorded bytes from `from`: for a client fed from the recording
    /// (see `pump` in the proxy).
    pub fn copy_piece(&self, from: usize, max: usize) -> Bytes {
        let from = from.min(self.buf.len());
        let to = from.saturating_add(max).min(self.buf.len());
        Bytes::copy_from_slice(&self.buf[from..to])
    }

    /// The origin's body failed: nothing is stored, and what was recorded is returned, for a
    /// client fed from the recording.
    pub fn fail_keeping_body(mut self) -> Bytes {
        let body = std::mem::take(&mut self.buf).freeze();
        self.drop_for(Dropped::Error);
        body
    }

    /// The body so far, not stored (an answer with trailers, which the cache does not keep);
    /// its waiters fetch on their own.
    pub fn into_body(mut self) -> Bytes {
        if let Some(g) = &self.fill {
            g.set(Outcome::Uncacheable);
        }
        self.head = None;
        std::mem::take(&mut self.buf).freeze()
    }

    /// The origin's body failed: nothing is stored.
    pub fn fail(mut self) {
        self.drop_for(Dropped::Error);
    }

    /// The body is complete: stores it with a Content-Length that is its length. Returns the
    /// body, stored or not (`None`: the recording had been given up).
    pub fn finish(mut self) -> Option<Bytes> {
        let mut head = self.head.take()?;
        let buf = std::mem::take(&mut self.buf);
        // A buffer grown chunk by chunk may be up to twice its length; the store counts its
        // length, so it keeps an exact copy.
        let body = if buf.capacity() - buf.len() > buf.len() / 8 + 64 {
            Bytes::copy_from_slice(&buf)
        } else {
            buf.freeze()
        };
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let variant = Variant::new(
            head.status,
            head.headers,
            body.clone(),
            head.timing,
            head.freshness,
            head.selectors,
        );
        let stored = self.cache.insert(&self.key, variant);
        if !stored {
            debug!(key = %self.key, "object larger than max_object_size; not stored");
        }
        if let Some(g) = &self.fill {
            g.set(if stored {
                Outcome::Stored
            } else {
                Outcome::Uncacheable
            });
        }
        Some(body)
    }

    /// Counts why the recording ends and tells the waiters; returns the reason.
    fn drop_for(&mut self, why: Dropped) -> Dropped {
        self.cache.metrics.fills_dropped[why as usize].inc();
        debug!(key = %self.key, reason = why.as_str(), "response not stored");
        if let Some(g) = &self.fill {
            g.set(match why {
                Dropped::Error => Outcome::Failed,
                Dropped::Memory | Dropped::Size | Dropped::Orphaned => Outcome::Uncacheable,
            });
        }
        self.head = None;
        self.buf = BytesMut::new();
        why
    }
}

/// Bytes of the fill budget held for data read ahead of its client; given back on drop.
#[derive(Debug)]
pub struct AheadBytes {
    budget: Arc<crate::fill::FillBudget>,
    n: u64,
}

impl Drop for AheadBytes {
    fn drop(&mut self) {
        self.budget.give_back(self.n);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.taken > 0 {
            self.cache.fill_budget.give_back(self.taken);
        }
        if self.orphan {
            self.cache
                .fill_budget
                .orphans
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}
