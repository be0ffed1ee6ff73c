//! Raw HTTP/2 for tests of what a misbehaving client does: frames written by hand, and
//! connections held open in ways a well-behaved client library would not.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP/2 frame: length, type, flags, stream, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// GET / for host a.example, HPACK without indexing (static table names).
pub fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 9];
    b.extend_from_slice(b"a.example");
    b
}

/// `n` requests GET `path` for host a.example on streams 1, 3, 5..., each a HEADERS frame
/// with END_STREAM and END_HEADERS (HPACK without indexing).
pub fn get_streams(path: &str, n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 9]);
        block.extend_from_slice(b"a.example");
        out.extend(frame(1, 0x5, 2 * i + 1, &block));
    }
    out
}

/// Whether the frames the server sent (`got`, from its first byte) hold a GOAWAY (type 7).
pub fn has_goaway(got: &[u8]) -> bool {
    let mut i = 0;
    while i + 9 <= got.len() {
        if got[i + 3] == 7 {
            return true;
        }
        let len =
            (usize::from(got[i]) << 16) | (usize::from(got[i + 1]) << 8) | usize::from(got[i + 2]);
        i += 9 + len;
    }
    false
}

/// Writes `frames` after the preface and an empty SETTINGS, then reads until the server closes
/// (at most 10 s): whether a GOAWAY came, and whether the connection was closed.
pub async fn raw_h2(addr: SocketAddr, frames: Vec<u8>) -> (bool, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frames);
    let writer = {
        let (mut rd, mut wr) = s.into_split();
        let w = tokio::spawn(async move {
            let _ = wr.write_all(&out).await;
            wr
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .is_ok();
        s = rd.reunite(w.await.unwrap()).unwrap();
        (has_goaway(&got), closed)
    };
    drop(s);
    writer
}

/// Sends the preface and an empty SETTINGS, then `each` every 250 ms, answering the server's
/// PINGs as a live client does: the time until the server closes the connection (None if it is
/// still open after 8 s).
pub async fn h2_trickle(addr: SocketAddr, first: Vec<u8>, each: Vec<u8>) -> Option<Duration> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(first);
    wr.write_all(&out).await.unwrap();
    let (acks, mut to_ack) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.tick().await;
        loop {
            let bytes = tokio::select! {
                _ = tick.tick() => each.clone(),
                Some(ack) = to_ack.recv() => ack,
            };
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            while got.len() >= 9 {
                let len =
                    (usize::from(got[0]) << 16) | (usize::from(got[1]) << 8) | usize::from(got[2]);
                if got.len() < 9 + len {
                    break;
                }
                if got[3] == 6 && got[4] & 1 == 0 {
                    let _ = acks.send(frame(6, 1, 0, &got[9..9 + len]));
                }
                got.drain(..9 + len);
            }
        }
    })
    .await;
    writer.abort();
    closed.ok().map(|_| started.elapsed())
}

/// An HTTP/2 (h2c) client on a new connection to the listener "web".
pub async fn h2_client(
    d: &crate::TestDaemon,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = TcpStream::connect(d.addr("web")).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 WebSocket's opening (RFC 8441's extended CONNECT) for `path` on chat.example.
pub fn websocket_connect(path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://chat.example{path}"))
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap()
}
