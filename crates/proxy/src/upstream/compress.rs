//! A backend's body compressed on its way out ([`Compressing`]): each frame goes through a
//! streaming encoder as it arrives, so a large or unbounded body is never held whole, and
//! whatever the encoder has produced is passed on. The cache stores the result, so an object is
//! compressed once per encoding, not once per hit.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use streamgate_config::{Compression, Encoding};

use super::{UpstreamBody, UpstreamError};

/// A streaming encoder of one coding.
pub struct Encoder {
    inner: Coder,
    /// Input written since the output was last flushed.
    unflushed: bool,
    _held: Held,
}

/// Bytes a daemon's live encoders hold, by [`Compression::encoder_memory`]'s estimates: one
/// for all its listeners.
#[derive(Debug, Default)]
pub struct EncoderMemory(AtomicU64);

impl EncoderMemory {
    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// One encoder's share of its daemon's [`EncoderMemory`], given back when the encoder is
/// dropped.
struct Held(Arc<EncoderMemory>, u64);

impl Held {
    /// `bytes` more of `m`, if its total stays within `max`.
    fn take(m: &Arc<EncoderMemory>, bytes: u64, max: u64) -> Option<Held> {
        m.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(bytes).filter(|&total| total <= max)
        })
        .ok()
        .map(|_| Held(m.clone(), bytes))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.0.fetch_sub(self.1, Ordering::AcqRel);
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
    /// An encoder of `e` at the service's level for it, if the daemon's encoders at work
    /// (`memory`) leave room for it under the service's `max_memory`.
    pub(crate) fn new(
        e: Encoding,
        c: &Compression,
        memory: &Arc<EncoderMemory>,
    ) -> Result<Encoder, NotStarted> {
        let held = Held::take(memory, c.encoder_memory(e), c.max_memory).ok_or(NotStarted::Busy)?;
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
                // streams (events, a page's head sent early) means it to. A body that arrives
                // faster than it is sent out rarely gets here; each flush costs a few bytes.
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
