//! HTTP/2 clients that reset their streams as soon as they open them ("rapid reset", CVE-2023-44487,
//! and its paced form): counted per connection, which is shut down once most of its streams end
//! that way.
//!
//! h2 counts only resets of streams not yet accepted (`max_pending_accept_reset_streams`), so a
//! client that waits a moment before each reset made every stream cost a backend request and a
//! backend connection thrown away, without end. Envoy's premature-reset check is the rule here;
//! nginx bounds it with `keepalive_requests`, HAProxy with its glitch counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use crate::io::ConnActivity;

/// A stream reset sooner than this after it opened, before its answer, is premature: a browser
/// cancels a navigation or a video seek later than that, and rarely.
pub const PREMATURE: Duration = Duration::from_secs(1);

/// Whether a connection whose client opened `streams` and reset `premature` of them early is
/// abusing the protocol: at least 500 streams, more than half reset (Envoy's defaults). Fewer
/// streams are not judged: a gRPC client with short deadlines, or a page cancelling each
/// search-as-you-type fetch, resets many of a few hundred streams early while its backend is
/// slow, and must not lose its connection for it.
pub fn too_many_resets(streams: u32, premature: u32) -> bool {
    streams >= 500 && u64::from(premature) * 2 > u64::from(streams)
}

/// Requests handed to a connection's handler, those the client dropped (an HTTP/2 RST_STREAM)
/// within [`PREMATURE`] of their start before their answer, and whether that made too many.
#[derive(Debug, Default)]
pub struct ResetCounts {
    streams: AtomicU32,
    premature: AtomicU32,
    flood: AtomicBool,
}

impl ResetCounts {
    /// The client has reset too many of its streams early ([`too_many_resets`]): its
    /// connection is to be shut down.
    pub fn flood(&self) -> bool {
        self.flood.load(Relaxed)
    }
}

/// A request in the handler's hands, until its answer's head is ready: dropped before that (the
/// client reset the stream) within [`PREMATURE`], it counts against the connection.
#[derive(Debug)]
pub struct StreamWatch {
    conn: Arc<ConnActivity>,
    opened: Instant,
    answered: bool,
}

impl StreamWatch {
    /// Marks a request of `conn` handed to the handler.
    pub fn open(conn: &Arc<ConnActivity>) -> StreamWatch {
        conn.resets.streams.fetch_add(1, Relaxed);
        StreamWatch {
            conn: conn.clone(),
            opened: Instant::now(),
            answered: false,
        }
    }

    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        if self.answered || self.opened.elapsed() >= PREMATURE {
            return;
        }
        let r = &self.conn.resets;
        let premature = r.premature.fetch_add(1, Relaxed) + 1;
        if too_many_resets(r.streams.load(Relaxed), premature) && !r.flood.swap(true, Relaxed) {
            // The connection's task looks at the flag when polled.
            self.conn.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_resets_most_of_its_streams_early_is_shut_down() {
        let cases = [
            (0, 0, false),
            (499, 499, false),
            (500, 250, false),
            (500, 251, true),
            (1000, 500, false),
            (1000, 501, true),
            (u32::MAX, u32::MAX, true),
        ];
        for (streams, premature, want) in cases {
            assert_eq!(
                too_many_resets(streams, premature),
                want,
                "{streams} {premature}"
            );
        }
    }
}
