//! Both directions of a tunnel copied with buffers reused from one tunnel to the next.
//!
//! tokio's `copy_bidirectional_with_sizes` allocates two buffers for every tunnel: 2 of the 11
//! allocations (and 128 KiB of the 134 KiB allocated) of an L4 connection in
//! benches/benches/allocs.rs. The copy here is tokio's (the same order of reads, writes, flushes
//! and shutdowns, the same cooperative budget) with buffers taken from a small per-thread free
//! list and given back when the tunnel ends.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffers kept per thread once their tunnels ended: enough for the tunnels that open and close
/// on a thread at about the same time; at 64 KiB each, 512 KiB idle per thread at most.
const KEEP: usize = 8;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer of one size, back on its thread's free list when dropped.
pub(crate) struct Buffer(Box<[u8]>);

impl Buffer {
    pub(crate) fn take(size: usize) -> Buffer {
        let reused = FREE
            .try_with(|f| {
                let mut f = f.borrow_mut();
                let i = f.iter().rposition(|b| b.len() == size)?;
                Some(f.swap_remove(i))
            })
            .ok()
            .flatten();
        Buffer(reused.unwrap_or_else(|| vec![0; size].into_boxed_slice()))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let b = std::mem::take(&mut self.0);
        // During thread teardown the list may be gone: the buffer is freed instead.
        let _ = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(b);
            }
        });
    }
}

/// One direction: tokio's `CopyBuffer`.
struct CopyBuffer {
    read_done: bool,
    need_flush: bool,
    pos: usize,
    cap: usize,
    amt: u64,
    buf: Buffer,
}

impl CopyBuffer {
    fn new(size: usize) -> CopyBuffer {
        CopyBuffer {
            read_done: false,
            need_flush: false,
            pos: 0,
            cap: 0,
            amt: 0,
            buf: Buffer::take(size),
        }
    }

    fn poll_fill_buf<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
    {
        let mut buf = ReadBuf::new(&mut self.buf.0);
        buf.set_filled(self.cap);
        let res = loop {
            match reader.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                res => break res,
            }
        };
        if let Poll::Ready(Ok(())) = res {
            let filled = buf.filled().len();
            self.read_done = self.cap == filled;
            self.cap = filled;
        }
        res
    }

    fn poll_write_buf<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match writer
                .as_mut()
                .poll_write(cx, &self.buf.0[self.pos..self.cap])
            {
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Pending => {
                    // Read more while the writer is busy, if there is room.
                    if !self.read_done && self.cap < self.buf.0.len() {
                        ready!(self.poll_fill_buf(cx, reader.as_mut()))?;
                    }
                    return Poll::Pending;
                }
                res => return res,
            }
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            if self.cap < self.buf.0.len() && !self.read_done {
                match self.poll_fill_buf(cx, reader.as_mut()) {
                    Poll::Ready(Ok(())) => coop.made_progress(),
                    Poll::Ready(Err(e)) => {
                        coop.made_progress();
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => {
                        // Nothing to read and nothing left to write: flush what was written.
                        if self.pos == self.cap {
                            if self.need_flush {
                                ready!(writer.as_mut().poll_flush(cx))?;
                                coop.made_progress();
                                self.need_flush = false;
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(self.poll_write_buf(cx, reader.as_mut(), writer.as_mut()))?;
                coop.made_progress();
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "write zero byte into writer",
                    )));
                }
                self.pos += n;
                self.amt += n as u64;
                self.need_flush = true;
            }
            self.pos = 0;
            self.cap = 0;
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                coop.made_progress();
                return Poll::Ready(Ok(self.amt));
            }
        }
    }
}

enum Transfer {
    Running(CopyBuffer),
    ShuttingDown(u64),
    Done(u64),
}

fn transfer<A, B>(
    cx: &mut Context<'_>,
    state: &mut Transfer,
    r: &mut A,
    w: &mut B,
) -> Poll<io::Result<u64>>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut r = Pin::new(r);
    let mut w = Pin::new(w);
    loop {
        match state {
            Transfer::Running(buf) => {
                let count = ready!(buf.poll_copy(cx, r.as_mut(), w.as_mut()))?;
                // The buffer goes back to the free list now, not when the other side ends.
                *state = Transfer::ShuttingDown(count);
            }
            Transfer::ShuttingDown(count) => {
                ready!(w.as_mut().poll_shutdown(cx))?;
                *state = Transfer::Done(*count);
            }
            Transfer::Done(count) => return Poll::Ready(Ok(*count)),
        }
    }
}

/// Copies `a` -> `b` and `b` -> `a` until both reached end of file, shutting each writer down
/// after its reader ended (half-closes are kept). Returns the bytes copied each way.
pub(crate) async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    a_to_b_size: usize,
    b_to_a_size: usize,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Transfer::Running(CopyBuffer::new(a_to_b_size));
    let mut b_to_a = Transfer::Running(CopyBuffer::new(b_to_a_size));
    poll_fn(|cx| {
        let a_to_b = transfer(cx, &mut a_to_b, a, b)?;
        let b_to_a = transfer(cx, &mut b_to_a, b, a)?;
        let a_to_b = ready!(a_to_b);
        let b_to_a = ready!(b_to_a);
        Poll::Ready(Ok((a_to_b, b_to_a)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_keeps_half_closes() {
        let (mut client, mut a) = tokio::io::duplex(64);
        let (mut b, mut backend) = tokio::io::duplex(64);
        let relay = tokio::spawn(async move { copy_bidirectional(&mut a, &mut b, 16, 16).await });
        let up = vec![7u8; 1000];
        // More than the pipes and buffers hold: written while the far end reads.
        let writer = tokio::spawn({
            let up = up.clone();
            async move {
                client.write_all(&up).await.unwrap();
                client.shutdown().await.unwrap();
                client
            }
        });
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, up);
        let mut client = writer.await.unwrap();
        // The other way still works after the client's half-close.
        backend.write_all(b"answer").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer");
        assert_eq!(relay.await.unwrap().unwrap(), (1000, 6));
    }

    #[test]
    fn buffers_are_reused_on_their_thread() {
        let first = Buffer::take(1024);
        let ptr = first.0.as_ptr();
        drop(first);
        let again = Buffer::take(1024);
        assert_eq!(again.0.as_ptr(), ptr);
        // Another size is not handed out for it.
        assert_eq!(Buffer::take(512).0.len(), 512);
    }
}
