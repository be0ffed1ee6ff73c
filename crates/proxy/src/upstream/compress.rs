//! A backend's body compressed on its way out ([`Compressing`]): each frame goes through a
//! streaming encoder as it arrives, so a large or unbounded body is never held whole, and
//! whatever the encoder has produced is passed on. The cache stores the result, so an object is
//! compressed once per encoding, not once per hit.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use streamgate_config::{Compression, Encoding};

use super::{UpstreamBody, UpstreamError};
use crate::limits::client_key;

/// A streaming encoder of one coding.
pub struct Encoder {
    inner: Coder,
    /// Input written since the output was last flushed.
    unflushed: bool,
    _held: Held,
}

/// Bytes a daemon's live encoders hold, by [`Compression::encoder_memory`]'s estimates: in
/// all, and per client. One for all its listeners.
#[derive(Debug, Default)]
pub struct EncoderMemory(Mutex<Holdings>);

#[derive(Debug, Default)]
struct Holdings {
    total: u64,
    /// By [`client_key`]; a client holding nothing has no entry.
    clients: HashMap<IpAddr, u64>,
}

/// The share of `max_memory` one client's encoders may hold: a client that opens streams and
/// reads none of them (each pins its encoder until `idle`) takes an eighth, not all, and the
/// responses of other clients go on being compressed and cached.
const CLIENT_SHARE: u64 = 8;

/// Whether an encoder of `bytes` may start while the daemon's encoders hold `total` and the
/// client's `client`: both stay within their bounds. A client's bound is never below one
/// encoder, so a small `max_memory` still compresses for everyone.
fn admits(total: u64, client: u64, bytes: u64, max: u64) -> bool {
    let client_max = (max / CLIENT_SHARE).max(bytes);
    let within = |held: u64, bound: u64| held.checked_add(bytes).is_some_and(|n| n <= bound);
    within(total, max) && within(client, client_max)
}

impl EncoderMemory {
    /// Bytes held now, in all.
    pub fn held(&self) -> u64 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Holdings> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One encoder's share of its daemon's [`EncoderMemory`], given back when the encoder is
/// dropped.
struct Held {
    memory: Arc<EncoderMemory>,
    client: IpAddr,
    bytes: u64,
}

impl Held {
    /// `bytes` more of `memory` for `client`, if [`admits`] says so under `max`.
    fn take(memory: &Arc<EncoderMemory>, client: IpAddr, bytes: u64, max: u64) -> Option<Held> {
        let client = client_key(client);
        let mut h = memory.lock();
        let of_client = h.clients.get(&client).copied().unwrap_or(0);
        if !admits(h.total, of_client, bytes, max) {
            return None;
        }
        h.total += bytes;
        *h.clients.entry(client).or_insert(0) += bytes;
        Some(Held {
            memory: memory.clone(),
            client,
            bytes,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut h = self.memory.lock();
        h.total = h.total.saturating_sub(self.bytes);
        if let Some(n) = h.clients.get_mut(&self.client) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                h.clients.remove(&self.client);
            }
        }
    }
}

/// Why a response was not compressed.
#[derive(Debug)]
pub enum NotStarted {
    /// The encoders at work hold `max_memory` already.
    Busy,
    /// The encoder's library refused.
    Failed(std::io::Error),
}

enum Coder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::fmt::Debug for Coder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Coder::Gzip(_) => "gzip",
            Coder::Brotli(_) => "br",
            Coder::Zstd(_) => "zstd",
        })
    }
}

/// Brotli's window: 512 KiB (lgwin 19), nginx's brotli module's default. Each stream being
/// compressed holds an encoder, so the window is memory per stream (256 streams on one HTTP/2
/// connection). Measured at quality 4 (the default level), peak encoder memory and output:
/// - 245 KB of Markdown: lgwin 22 10.2 MB, lgwin 19 3.0 MB; the same 87 069 bytes out.
/// - 2.36 MB of Rust and Markdown: lgwin 22 19.4 MB and 25.93%, lgwin 19 6.5 MB and 26.67%.
///
/// A third of the memory, for 3% more bytes on bodies over 512 KiB and none below.
const BROTLI_LGWIN: u32 = 19;

impl Encoder {
    /// An encoder of `e` at the service's level for it, for `client`, if the daemon's encoders
    /// at work (`memory`) leave room for it under the service's `max_memory` ([`admits`]).
    pub(crate) fn new(
        e: Encoding,
        c: &Compression,
        memory: &Arc<EncoderMemory>,
        client: IpAddr,
    ) -> Result<Encoder, NotStarted> {
        let held = Held::take(memory, client, c.encoder_memory(e), c.max_memory)
            .ok_or(NotStarted::Busy)?;
        let inner = match e {
            Encoding::Gzip => Coder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(c.gzip_level),
            )),
            Encoding::Brotli => Coder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                c.brotli_level,
                BROTLI_LGWIN,
            ))),
            Encoding::Zstd => Coder::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), c.zstd_level)
                    .map_err(NotStarted::Failed)?,
            ),
        };
        Ok(Encoder {
            inner,
            unflushed: false,
            _held: held,
        })
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.unflushed |= !data.is_empty();
        match &mut self.inner {
            Coder::Gzip(w) => w.write_all(data),
            Coder::Brotli(w) => w.write_all(data),
            Coder::Zstd(w) => w.write_all(data),
        }
    }

    /// Pushes out everything written so far (a sync flush: the stream goes on), so that a
    /// client sees what the backend has sent without waiting for a block to fill.
    fn flush(&mut self) -> std::io::Result<()> {
        self.unflushed = false;
        match &mut self.inner {
            Coder::Gzip(w) => w.flush(),
            Coder::Brotli(w) => w.flush(),
            Coder::Zstd(w) => w.flush(),
        }
    }

    /// What the encoder has written so far (the encoders only ever append to their Vec).
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(match &mut self.inner {
            Coder::Gzip(w) => w.get_mut(),
            Coder::Brotli(w) => w.get_mut(),
            Coder::Zstd(w) => w.get_mut(),
        })
    }

    /// The rest of the output, trailer included.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self.inner {
            Coder::Gzip(w) => w.finish(),
            Coder::Brotli(w) => Ok(w.into_inner()),
            Coder::Zstd(w) => w.finish(),
        }
    }
}

/// A body compressed with one encoding as it streams.
#[derive(Debug)]
pub struct Compressing {
    inner: UpstreamBody,
    /// `None` once finished.
    encoder: Option<Encoder>,
}

impl Compressing {
    /// The body being compressed.
    pub(crate) fn inner(&self) -> &UpstreamBody {
        &self.inner
    }

    pub(crate) fn new(inner: UpstreamBody, encoder: Encoder) -> Compressing {
        Compressing {
            inner,
            encoder: Some(encoder),
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.encoder.is_none()
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let failed = |e: std::io::Error| UpstreamError::Client(format!("compression failed: {e}"));
        loop {
            let Some(encoder) = self.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut self.inner).poll_frame(cx) {
                // Nothing more for now: what the encoder holds goes out, as a backend that
                // streams (events, a page's head sent early) means it to. This is every pause
                // of the backend's (each socket read that leaves nothing more to read), and
                // each flush costs a few bytes of output: a backend that trickles small pieces
                // gets a larger compressed body, cached copy included.
                Poll::Pending if encoder.unflushed => {
                    if let Err(e) = encoder.flush() {
                        self.encoder = None;
                        return Poll::Ready(Some(Err(failed(e))));
                    }
                    let out = encoder.take();
                    if out.is_empty() {
                        return Poll::Pending;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    self.encoder = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers describe the identity body; they are not sent on.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Err(e) = encoder.write(&data) {
                        self.encoder = None;
                        return Poll::Ready(Some(Err(failed(e))));
                    }
                    let out = encoder.take();
                    // The encoder keeps small writes to itself until a block fills.
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(None) => {
                    let Some(encoder) = self.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    return match encoder.finish() {
                        Ok(rest) if rest.is_empty() => Poll::Ready(None),
                        Ok(rest) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest))))),
                        Err(e) => Poll::Ready(Some(Err(failed(e)))),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoder_starts_while_the_daemon_and_its_client_have_room() {
        const MIB: u64 = 1 << 20;
        // (daemon's total, the client's, the encoder's size, max_memory, starts?)
        let table = [
            (0, 0, 6 * MIB, 256 * MIB, true),
            (250 * MIB, 0, 6 * MIB, 256 * MIB, true),
            (251 * MIB, 0, 6 * MIB, 256 * MIB, false),
            // A client's share is an eighth: 32 MiB here.
            (30 * MIB, 24 * MIB, 6 * MIB, 256 * MIB, true),
            (30 * MIB, 30 * MIB, 6 * MIB, 256 * MIB, false),
            // ...but never less than one encoder.
            (0, 0, 6 * MIB, 6 * MIB, true),
            (0, 6 * MIB, 6 * MIB, 12 * MIB, false),
            (6 * MIB, 0, 6 * MIB, 12 * MIB, true),
            (u64::MAX, 0, 1, u64::MAX, false),
        ];
        for (total, client, bytes, max, want) in table {
            assert_eq!(
                admits(total, client, bytes, max),
                want,
                "{total} {client} {bytes} {max}"
            );
        }
    }

    #[test]
    fn what_an_encoder_held_is_given_back_to_its_client_and_the_daemon() {
        let m = Arc::new(EncoderMemory::default());
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let one = Held::take(&m, a, 100, 800).unwrap();
        assert!(Held::take(&m, a, 100, 800).is_none(), "a's eighth is taken");
        let two = Held::take(&m, b, 100, 800).unwrap();
        assert_eq!(m.held(), 200);
        drop(one);
        assert_eq!(m.held(), 100);
        assert!(Held::take(&m, a, 100, 800).is_some(), "a's share is back");
        drop(two);
        assert_eq!(m.held(), 0);
        assert!(
            m.lock().clients.is_empty(),
            "no entry kept for clients holding nothing"
        );
    }
}
