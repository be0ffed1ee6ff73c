//! L4 relaying with splice(2): the kernel moves a TCP or TLS-passthrough connection's bytes
//! from one socket into a pipe and from the pipe into the other socket, so they never cross
//! into user space (tokio's copy reads each chunk into a buffer and writes it out again).
//! Measured in the load benchmark (tcp-throughput, two runs of 3 rounds): proxy CPU per MB
//! 686 and 725 us with tokio's copy, 433 and 390 us spliced (0.57x), at the same throughput.
//! Readiness comes from tokio's reactor as for any socket; a half-close is passed on as a
//! shutdown of the other side's write half, as [`crate::tunnel`] does.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rustix::fd::OwnedFd;
use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
use streamgate_balance::stats::now_nanos;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::descriptors::PipeRoom;
use crate::tunnel::{Ended, Moved, Open, TunnelMetrics, quiet_for};

/// Bytes one splice call may move. The pipe holds 64 KiB by default; asking for more than it
/// holds only returns less.
const CHUNK: usize = 1 << 20;

/// Pipe capacity asked for (the kernel's default is 64 KiB): more bytes per wakeup. Not tuned
/// further: in the load benchmark the iperf3 core, not this one, limits throughput (2026-11-30,
/// docs/benchmarks.md "L4 with splice").
const PIPE: usize = 256 * 1024;

/// The two pipes of a spliced connection, one a direction: four file descriptors on top of its
/// two sockets. Made before the relay starts, so that a daemon short of descriptors (or of the
/// kernel's pipe buffers) can copy the connection instead of failing it.
#[derive(Debug)]
pub struct Pipes {
    up: (OwnedFd, OwnedFd),
    down: (OwnedFd, OwnedFd),
    /// Held while the pipes are open: a spliced connection's share of the descriptor budget.
    _room: PipeRoom,
}

impl Pipes {
    pub fn open(room: PipeRoom) -> io::Result<Pipes> {
        Ok(Pipes {
            up: pipe()?,
            down: pipe()?,
            _room: room,
        })
    }
}

/// Relays `client` <-> `backend` through `pipes` until both sides are done or `idle` passes
/// without a byte.
pub async fn relay_spliced(
    client: &TcpStream,
    backend: &TcpStream,
    pipes: Pipes,
    idle: Duration,
    metrics: &TunnelMetrics,
    moved: &Moved,
) -> Ended {
    metrics.total.inc();
    metrics.active.inc();
    let _open = Open(metrics.active.clone());
    // Borrowed by both directions and the idle check, all in this future.
    let activity = AtomicU64::new(now_nanos());
    let both = async {
        tokio::try_join!(
            one_way(client, backend, pipes.up, &moved.up, &activity),
            one_way(backend, client, pipes.down, &moved.down, &activity),
        )
    };
    tokio::select! {
        r = both => match r {
            Ok((up, down)) => Ended::Closed { up, down },
            Err(e) => Ended::Failed(e),
        },
        () = quiet_for(&activity, idle) => Ended::Idle,
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // Best effort: the default size works, only with more wakeups.
    let _ = rustix::pipe::fcntl_setpipe_size(&w, PIPE);
    Ok((r, w))
}

/// Moves `from`'s bytes to `to` until `from` ends, then shuts `to`'s write half; returns the
/// bytes moved.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    (pipe_r, pipe_w): (OwnedFd, OwnedFd),
    written: &AtomicU64,
    activity: &AtomicU64,
) -> io::Result<u64> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut total = 0u64;
    // Bytes may wait that no readiness edge will announce (read past urgent data, below).
    let mut more = false;
    loop {
        // Socket -> pipe: the pipe is empty here, so it takes what the socket has.
        let into_pipe = || splice(from, None, &pipe_w, None, CHUNK, flags).map_err(io::Error::from);
        let forced = std::mem::take(&mut more);
        let spliced = if forced {
            into_pipe()
        } else {
            from.readable().await?;
            from.try_io(Interest::READABLE, into_pipe)
        };
        let mut in_pipe = match spliced {
            Ok(0) => break,
            Ok(n) => {
                // Still past the last readiness edge: go on until a splice finds nothing.
                more = forced;
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // splice(2) stops at TCP urgent data (MSG_OOB: telnet's Synch, FTP's ABOR)
                // and says EAGAIN however much follows it; at the FIN it says 0, and the rest
                // was lost. recv(2) steps over the urgent byte, as nginx's and HAProxy's reads
                // and our copy path do. After a spurious wake-up it says WouldBlock too.
                match read_past_urgent(from, to, written).await? {
                    Some(0) => break,
                    Some(n) => {
                        total += n as u64;
                        activity.store(now_nanos(), Relaxed);
                        // Edge-triggered readiness: what came before this read announces
                        // nothing more, so the next splice goes without waiting for it.
                        more = true;
                    }
                    None => {}
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        activity.store(now_nanos(), Relaxed);
        // Pipe -> socket, all of it before reading more.
        while in_pipe > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe_r, None, to, None, in_pipe, flags).map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    in_pipe -= n;
                    total += n as u64;
                    written.fetch_add(n as u64, Relaxed);
                    activity.store(now_nanos(), Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    // The peer may be gone already; its reset ends the other direction anyway.
    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
    Ok(total)
}

/// Reads what `from` has with recv(2) and writes it all to `to`: the bytes moved, `Some(0)` at
/// the end of `from`, `None` if it had nothing.
async fn read_past_urgent(
    from: &TcpStream,
    to: &TcpStream,
    written: &AtomicU64,
) -> io::Result<Option<usize>> {
    let mut buf = [0u8; 4096];
    // Straight to the socket: tokio's try_read would answer from the readiness the failed
    // splice just cleared, without asking the kernel.
    let sock = socket2::SockRef::from(from);
    let n = match std::io::Read::read(&mut &*sock, &mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut rest = &buf[..n];
    while !rest.is_empty() {
        to.writable().await?;
        match to.try_write(rest) {
            Ok(m) => {
                rest = &rest[m..];
                written.fetch_add(m as u64, Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn metrics() -> TunnelMetrics {
        TunnelMetrics {
            active: streamgate_telemetry::prometheus::IntGauge::new("a", "a").unwrap(),
            total: streamgate_telemetry::prometheus::IntCounter::new("t", "t").unwrap(),
        }
    }

    fn room() -> PipeRoom {
        crate::descriptors::Budget::new(4, || 0).pipes().unwrap()
    }

    /// (the proxy's client side, the proxy's backend side, the client, the backend)
    async fn sockets() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l1.local_addr().unwrap()).await.unwrap();
        let (proxy_client, _) = l1.accept().await.unwrap();
        let proxy_backend = TcpStream::connect(l2.local_addr().unwrap()).await.unwrap();
        let (backend, _) = l2.accept().await.unwrap();
        (proxy_client, proxy_backend, client, backend)
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_half_closes_pass_on() {
        let (pc, pb, mut client, mut backend) = sockets().await;
        let m = metrics();
        let moved = Moved::default();
        let data: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let ends = async move {
            // The client sends everything and half-closes; the backend answers after EOF.
            let (mut cr, mut cw) = client.split();
            let (mut br, mut bw) = backend.split();
            let up = async {
                cw.write_all(&sent).await.unwrap();
                cw.shutdown().await.unwrap();
            };
            let echo = async {
                let mut got = Vec::new();
                br.read_to_end(&mut got).await.unwrap();
                bw.write_all(&got).await.unwrap();
                bw.shutdown().await.unwrap();
                got
            };
            let down = async {
                let mut back = Vec::new();
                cr.read_to_end(&mut back).await.unwrap();
                back
            };
            let ((), got, back) = tokio::join!(up, echo, down);
            (got, back)
        };
        let (ended, (got, back)) = tokio::join!(
            relay_spliced(
                &pc,
                &pb,
                Pipes::open(room()).unwrap(),
                Duration::from_secs(10),
                &m,
                &moved
            ),
            ends
        );
        assert!(got == data && back == data, "bytes arrive intact both ways");
        match ended {
            Ended::Closed { up, down } => assert_eq!((up, down), (3 << 20, 3 << 20)),
            other => panic!("{other:?}"),
        }
        assert_eq!(moved.up.load(Relaxed), 3 << 20);
        assert_eq!(m.active.get(), 0, "no tunnel counted open after it ends");
        assert_eq!(m.total.get(), 1);
    }

    /// Urgent data (MSG_OOB) stopped splice(2) at its mark: what followed never went, and the
    /// FIN ended the stream there, cut short. The urgent byte is dropped, as recv(2) drops it.
    #[tokio::test]
    async fn bytes_after_urgent_data_still_cross() {
        let (pc, pb, mut client, mut backend) = sockets().await;
        let m = metrics();
        let ends = async move {
            client.write_all(b"ab").await.unwrap();
            socket2::SockRef::from(&client)
                .send_out_of_band(b"!")
                .unwrap();
            // More behind the mark than one read past it and one pipe take, and then nothing
            // (no new readiness edge) until all of it has arrived.
            let mut got = vec![0u8; 2 + (1 << 20)];
            let (wrote, all) = tokio::join!(
                client.write_all(&[b'c'; 1 << 20]),
                tokio::time::timeout(Duration::from_secs(5), backend.read_exact(&mut got))
            );
            wrote.unwrap();
            assert!(all.is_ok(), "the bytes behind the urgent mark stalled");
            client.write_all(b"d").await.unwrap();
            client.shutdown().await.unwrap();
            backend.read_to_end(&mut got).await.unwrap();
            drop(client);
            got
        };
        let moved = Moved::default();
        let relay = relay_spliced(
            &pc,
            &pb,
            Pipes::open(room()).unwrap(),
            Duration::from_secs(2),
            &m,
            &moved,
        );
        let (_, got) = tokio::join!(relay, ends);
        let want = [&b"ab"[..], &vec![b'c'; 1 << 20], b"d"].concat();
        assert!(got == want, "{} bytes of {}", got.len(), want.len());
    }

    #[tokio::test]
    async fn a_quiet_connection_ends_at_its_idle_timeout() {
        let (pc, pb, _client, _backend) = sockets().await;
        let m = metrics();
        let started = std::time::Instant::now();
        let ended = relay_spliced(
            &pc,
            &pb,
            Pipes::open(room()).unwrap(),
            Duration::from_millis(200),
            &m,
            &Moved::default(),
        )
        .await;
        assert!(matches!(ended, Ended::Idle), "{ended:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
