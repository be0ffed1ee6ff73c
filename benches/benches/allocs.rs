//! Heap allocations per request of the real data plane, and a guard that holds them to a
//! checked-in budget: `cargo bench -p streamgate-bench --bench allocs`.
//!
//! The daemon (`streamgate::Daemon::start`, the same wiring as `streamgate run`) runs alone on
//! a current-thread tokio runtime on its own thread: every task it spawns, connection tasks
//! and upstream connections included, runs there. The backend (a hyper server sending 1 KiB,
//! and a TCP echo) and the clients (hyper for HTTP/1.1 and h2c, a `TcpStream` for L4) run on
//! other threads. `allocation_counter` counts per thread, so the count taken on the daemon's
//! thread over `N` requests after a warm-up is the proxy's own.
//!
//! Each path runs `N` requests (connections for L4) one after the other, after `WARM_UP` that
//! fill pools, caches and buffers. The count is deterministic up to a request's worth at either
//! end of the window, so the figure per request is good to about 1/N. The process exits with
//! status 1 when a path allocates more than its budget in [`BUDGET`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use allocation_counter::AllocationInfo;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

/// Requests (or connections) counted per path.
const N: u64 = 2000;
/// Requests before counting starts: upstream connections open, the cache holds the object,
/// buffers have grown to their steady size.
const WARM_UP: u64 = 200;
/// Bytes of every response body.
const BODY: usize = 1024;

/// The most allocations per request (per connection for `tcp`) each path may make: the counts
/// of the bench profile when the budgets were last set (docs/benchmarks.md), plus half an
/// allocation for the window's edges and the timers that run on the daemon's thread. One more
/// allocation per request on any path fails the bench.
const BUDGET: &[(Case, f64)] = &[
    // The backend's HTTP/1.1 body is boxed (`upstream::UpstreamBody::H1`): one allocation for
    // 4% fewer instructions and a quarter fewer L1 write misses per request (h2c: 2% fewer).
    (Case::H1, 1.5),
    // The same box; the connection keeps its spans' vector (`upstream::raw_head`) through an
    // answer that came whole with its head.
    (Case::H1Empty, 1.5),
    // hyper spawns a task for each HTTP/2 stream, and StreamExecutor boxes it (one allocation
    // for fewer instructions and cache misses; see its comment). Debug builds of tokio box a
    // spawned future over 2 KiB themselves, so both profiles count the same.
    (Case::H2c, 9.5),
    (Case::CacheHit, 0.5),
    (Case::CacheHitH2c, 8.5),
    (Case::Tcp, 5.5),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// HTTP/1.1 keep-alive, 1 KiB from an HTTP/1.1 backend.
    H1,
    /// HTTP/1.1 keep-alive, an empty answer (Content-Length: 0) from an HTTP/1.1 backend.
    H1Empty,
    /// HTTP/2 prior knowledge, one stream at a time on one connection, 1 KiB.
    H2c,
    /// HTTP/1.1 keep-alive, 1 KiB answered from the cache.
    CacheHit,
    /// HTTP/2 prior knowledge, one stream at a time, 1 KiB answered from the cache.
    CacheHitH2c,
    /// One L4 connection: connect, 64 bytes echoed, close.
    Tcp,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::H1 => "proxied-h1-1k",
            Case::H1Empty => "proxied-h1-empty",
            Case::H2c => "proxied-h2c-1k",
            Case::CacheHit => "cache-hit-h1-1k",
            Case::CacheHitH2c => "cache-hit-h2c-1k",
            Case::Tcp => "tcp-connection",
        }
    }
}

/// Commands to the daemon's thread.
enum Cmd {
    /// Count allocations until the second sender fires; `ready` fires once counting.
    Measure {
        ready: oneshot::Sender<()>,
        stop: oneshot::Receiver<()>,
        result: oneshot::Sender<AllocationInfo>,
    },
    Quit,
}

struct Addrs {
    web: SocketAddr,
    cache: SocketAddr,
    l4: SocketAddr,
}

fn config(origin: SocketAddr, echo: SocketAddr) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"cache\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"l4\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\n\n\
         [[regions]]\nname = \"local\"\nbackends = [ {{ address = \"{origin}\" }} ]\n\n\
         [[regions]]\nname = \"echo\"\nbackends = [ {{ address = \"{echo}\" }} ]\n\n\
         [[services]]\nname = \"bench\"\nlisteners = [\"web\"]\nregions = [\"local\"]\n\n\
         [[services]]\nname = \"pump\"\nlisteners = [\"l4\"]\nregions = [\"echo\"]\n\n\
         [[services]]\nname = \"cached\"\nlisteners = [\"cache\"]\nregions = [\"local\"]\n\
         [services.cache]\nmax_size = \"64MiB\"\n"
    )
}

/// The daemon on a current-thread runtime on this thread; serves `cmds` until `Quit`.
fn daemon_thread(text: String, addrs: mpsc::Sender<Addrs>, mut cmds: UnboundedReceiver<Cmd>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = streamgate_config::parse(Path::new("allocs.toml"), &text).unwrap();
    let daemon = rt.block_on(streamgate::Daemon::start(config)).unwrap();
    let addr = |n| daemon.listener_addr(n).unwrap();
    addrs
        .send(Addrs {
            web: addr("web"),
            cache: addr("cache"),
            l4: addr("l4"),
        })
        .unwrap();
    // Between commands the runtime must keep serving (the warm-up runs then): the next command
    // is awaited inside `block_on`.
    while let Some(Cmd::Measure {
        ready,
        stop,
        result,
    }) = rt.block_on(cmds.recv())
    {
        let info = allocation_counter::measure(|| {
            rt.block_on(async {
                ready.send(()).unwrap();
                stop.await.unwrap();
            })
        });
        result.send(info).unwrap();
    }
    drop(daemon);
    drop(rt);
}

/// A 1 KiB answer for every request (cacheable for an hour), over HTTP/1.1 keep-alive, with the
/// fields nginx sends for a static file (hyper adds Date and Content-Length); `/empty` gets
/// the same fields and no body.
async fn origin(listener: TcpListener) {
    let body = Bytes::from(vec![b'x'; BODY]);
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = if req.uri().path() == "/empty" {
                    Bytes::new()
                } else {
                    body.clone()
                };
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("server", "origin")
                            .header("content-type", "application/octet-stream")
                            .header("last-modified", "Mon, 30 Nov 2026 14:02:13 GMT")
                            .header("etag", "\"6b0d81e5-400\"")
                            .header("expires", "Mon, 30 Nov 2026 17:06:08 GMT")
                            .header("cache-control", "public, max-age=3600")
                            .header("accept-ranges", "bytes")
                            .body(Full::new(body))
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Echoes every byte until the peer closes.
async fn echo(listener: TcpListener) {
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// `n` GETs of `path` one after the other on one HTTP/1.1 connection; each body read to the
/// end, `len` bytes.
async fn h1_requests(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    n: u64,
    path: &str,
    len: usize,
) {
    for _ in 0..n {
        let req = Request::get(path)
            .header("host", "bench.test")
            .body(Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), len);
    }
}

async fn h2_requests(sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>, n: u64) {
    for _ in 0..n {
        let req = Request::get("http://bench.test/1k")
            .body(Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), BODY);
    }
}

/// `n` L4 connections, one after the other: 64 bytes out, the same 64 back, then close.
async fn tcp_connections(addr: SocketAddr, n: u64) {
    let out = [7u8; 64];
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&out).await.unwrap();
        let mut back = [0u8; 64];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, out);
        s.shutdown().await.unwrap();
        // The proxy closes its side once the backend has: read to the end.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
    }
}

/// Counting on the daemon's thread, from [`begin`] until [`Counting::end`].
struct Counting {
    stop: oneshot::Sender<()>,
    result: oneshot::Receiver<AllocationInfo>,
}

/// Starts counting the daemon thread's allocations; returns once it counts.
async fn begin(cmds: &UnboundedSender<Cmd>) -> Counting {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop, stop_rx) = oneshot::channel();
    let (result_tx, result) = oneshot::channel();
    cmds.send(Cmd::Measure {
        ready: ready_tx,
        stop: stop_rx,
        result: result_tx,
    })
    .unwrap();
    ready_rx.await.unwrap();
    Counting { stop, result }
}

impl Counting {
    async fn end(self) -> AllocationInfo {
        self.stop.send(()).unwrap();
        self.result.await.unwrap()
    }
}

/// Warms `path` up, then counts the daemon's allocations over `N` requests (connections).
async fn run(cmds: &UnboundedSender<Cmd>, a: &Addrs, path: Case) -> AllocationInfo {
    match path {
        Case::H1 | Case::H1Empty | Case::CacheHit => {
            let to = if path == Case::CacheHit {
                a.cache
            } else {
                a.web
            };
            let (uri, len) = if path == Case::H1Empty {
                ("/empty", 0)
            } else {
                ("/1k", BODY)
            };
            let stream = TcpStream::connect(to).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(async move { conn.await.unwrap() });
            h1_requests(&mut sender, WARM_UP, uri, len).await;
            let counting = begin(cmds).await;
            h1_requests(&mut sender, N, uri, len).await;
            counting.end().await
        }
        Case::H2c | Case::CacheHitH2c => {
            let to = if path == Case::H2c { a.web } else { a.cache };
            let stream = TcpStream::connect(to).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            h2_requests(&mut sender, WARM_UP).await;
            let counting = begin(cmds).await;
            h2_requests(&mut sender, N).await;
            counting.end().await
        }
        Case::Tcp => {
            tcp_connections(a.l4, WARM_UP).await;
            let counting = begin(cmds).await;
            tcp_connections(a.l4, N).await;
            counting.end().await
        }
    }
}

/// Serves `f` on a new thread with its own current-thread runtime.
fn on_own_thread(listener: std::net::TcpListener, f: fn(TcpListener) -> BoxFuture) {
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            f(TcpListener::from_std(listener).unwrap()).await
        });
    });
}

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

fn main() {
    let origin_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = config(origin_l.local_addr().unwrap(), echo_l.local_addr().unwrap());
    on_own_thread(origin_l, |l| Box::pin(origin(l)));
    on_own_thread(echo_l, |l| Box::pin(echo(l)));

    let (addrs_tx, addrs_rx) = mpsc::channel();
    let (cmds, cmds_rx) = tokio::sync::mpsc::unbounded_channel();
    let daemon = thread::Builder::new()
        .name("daemon".into())
        .spawn(move || daemon_thread(text, addrs_tx, cmds_rx))
        .unwrap();
    let addrs = addrs_rx.recv().unwrap();

    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut over = Vec::new();
    println!("allocations per request on the daemon's thread ({N} requests after {WARM_UP}):");
    for &(path, budget) in BUDGET {
        if only.as_deref().is_some_and(|o| !path.name().contains(o)) {
            continue;
        }
        let info = clients.block_on(run(&cmds, &addrs, path));
        let per = info.count_total as f64 / N as f64;
        let bytes = info.bytes_total as f64 / N as f64;
        let verdict = if per > budget { "OVER BUDGET" } else { "ok" };
        println!(
            "  {:<16} {per:>8.2} allocations {bytes:>10.0} bytes   budget {budget:>6.1}  {verdict}",
            path.name()
        );
        if per > budget {
            over.push(format!("{}: {per:.2} > {budget}", path.name()));
        }
    }
    cmds.send(Cmd::Quit).unwrap();
    daemon.join().unwrap();
    if !over.is_empty() {
        eprintln!(
            "allocation budget exceeded: {}\n(lower allocations, or raise BUDGET in \
             benches/benches/allocs.rs with the reason in the commit)",
            over.join(", ")
        );
        std::process::exit(1);
    }
}
