//! Soak: a release StreamGate (one worker, pinned to core 0) under a steady share of its peak
//! rate for a long time, with WebSocket tunnels and HTTP/2 connections mixed in. Every window
//! (10 s) it prints the daemon's resident memory, its open file descriptors and the p99 latency
//! of each kind of traffic, so that growth shows as a trend down the table.
//!
//! Traffic (this process, pinned to core 1, is the clients and the origin):
//! - HTTP/1.1 keep-alive connections sending GETs on a fixed schedule (open loop: a late answer
//!   delays nothing, and latency counts from when the request was due, so a stall shows in the
//!   p99 instead of hiding as a lower rate). 90% ask one of 1 000 cacheable objects that expire
//!   every 2 s (hits, revalidations and refills), 10% an uncacheable URL (proxied).
//! - HTTP/2 (h2c) connections, each with several streams, on the same schedule.
//! - WebSocket-style upgraded tunnels to an echo origin, each sending a message per second.
//!
//! The peak is what the same clients reach with no pacing, measured first.
//!
//! Run: `cargo run --release -p streamgate-bench --bin streamgate-soak -- --minutes 10`
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use streamgate_bench::daemon::{start, streamgate_binary};
use streamgate_bench::procfs::{cpu_seconds, open_fds, status_kib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Parser)]
struct Args {
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Share of the peak rate to hold.
    #[arg(long, default_value_t = 0.8)]
    load: f64,
    #[arg(long, default_value_t = 32)]
    http1_connections: usize,
    #[arg(long, default_value_t = 4)]
    http2_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 8)]
    http2_streams: usize,
    #[arg(long, default_value_t = 200)]
    websockets: usize,
    /// Seconds per sample.
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// A streamgate binary to use instead of building target/release/streamgate.
    #[arg(long)]
    streamgate: Option<PathBuf>,
}

/// Latencies (microseconds) and errors of the current window.
#[derive(Default)]
struct Window {
    h1: Vec<u32>,
    h2: Vec<u32>,
    ws: Vec<u32>,
    errors: u64,
}

type Shared = Arc<std::sync::Mutex<Window>>;

fn record(w: &Shared, pick: fn(&mut Window) -> &mut Vec<u32>, since: Instant) {
    let us = u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX);
    pick(&mut w.lock().unwrap_or_else(|e| e.into_inner())).push(us);
}

fn failed(w: &Shared) {
    w.lock().unwrap_or_else(|e| e.into_inner()).errors += 1;
}

fn p99_ms(v: &mut [u32]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    f64::from(v[(v.len() * 99 / 100).min(v.len() - 1)]) / 1000.0
}

/// The origin: cacheable objects, uncacheable ones, and an echo behind an Upgrade.
async fn origin() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(vec![b'x'; 1024]);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        let path = req.uri().path();
                        let r = Response::builder();
                        let resp = if path == "/ws" {
                            let upgrade = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(up) = upgrade.await {
                                    let (mut rd, mut wr) = tokio::io::split(TokioIo::new(up));
                                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                                }
                            });
                            r.status(StatusCode::SWITCHING_PROTOCOLS)
                                .header("connection", "upgrade")
                                .header("upgrade", "websocket")
                                .body(Full::new(Bytes::new()))
                        } else if path.starts_with("/c/") {
                            r.header("cache-control", "max-age=2").body(Full::new(body))
                        } else {
                            r.header("cache-control", "no-store").body(Full::new(body))
                        };
                        Ok::<_, Infallible>(resp.unwrap_or_default())
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The n-th request's path: 9 in 10 cacheable (1 000 objects), 1 in 10 not.
fn path_of(n: u64) -> String {
    if n % 10 == 9 {
        format!("/p/{}", n % 1000)
    } else {
        format!("/c/{}", (n.wrapping_mul(2_654_435_761)) % 1000)
    }
}

/// Sends requests on `sender` at `rate` per second (0: as fast as answers come) until `end`,
/// recording each latency from when it was due. Returns how many were answered.
async fn drive<S>(
    mut send: S,
    rate: f64,
    end: Instant,
    w: Shared,
    pick: fn(&mut Window) -> &mut Vec<u32>,
    seq: Arc<AtomicU64>,
) -> u64
where
    S: AsyncFnMut(String) -> Result<()>,
{
    let gap = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    // Spread the connections' schedules over one gap.
    let mut due = Instant::now() + gap.map_or(Duration::ZERO, |g| g.mul_f64(fastrand::f64()));
    let mut done = 0;
    while due < end && Instant::now() < end {
        let started = match gap {
            Some(g) => {
                tokio::time::sleep_until(due.into()).await;
                due += g;
                due - g
            }
            None => Instant::now(),
        };
        match send(path_of(seq.fetch_add(1, Relaxed))).await {
            Ok(()) => {
                record(&w, pick, started);
                done += 1;
            }
            Err(_) => {
                failed(&w);
                return done;
            }
        }
    }
    done
}

async fn http1_conn(
    to: SocketAddr,
    rate: f64,
    end: Instant,
    w: Shared,
    seq: Arc<AtomicU64>,
) -> u64 {
    let mut done = 0;
    while Instant::now() < end {
        let Ok(s) = TcpStream::connect(to).await else {
            failed(&w);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        let Ok((mut tx, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await
        else {
            failed(&w);
            continue;
        };
        tokio::spawn(conn);
        let send = async |path: String| -> Result<()> {
            let req = Request::get(path)
                .header("host", "soak")
                .body(Empty::<Bytes>::new())?;
            let resp = tx.send_request(req).await?;
            let ok = resp.status() == StatusCode::OK;
            let body = resp.into_body().collect().await?.to_bytes();
            if !ok || body.len() != 1024 {
                bail!("unexpected answer");
            }
            Ok(())
        };
        done += drive(send, rate, end, w.clone(), |w| &mut w.h1, seq.clone()).await;
    }
    done
}

async fn http2_conn(
    to: SocketAddr,
    streams: usize,
    rate: f64,
    end: Instant,
    w: Shared,
    seq: Arc<AtomicU64>,
) -> u64 {
    let Ok(s) = TcpStream::connect(to).await else {
        failed(&w);
        return 0;
    };
    let _ = s.set_nodelay(true);
    let Ok((tx, conn)) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await
    else {
        failed(&w);
        return 0;
    };
    tokio::spawn(conn);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let (mut tx, w, seq) = (tx.clone(), w.clone(), seq.clone());
        tasks.spawn_local(async move {
            let send = async |path: String| -> Result<()> {
                let req = Request::get(format!("http://soak{path}")).body(Empty::<Bytes>::new())?;
                let resp = tx.send_request(req).await?;
                let ok = resp.status() == StatusCode::OK;
                let body = resp.into_body().collect().await?.to_bytes();
                if !ok || body.len() != 1024 {
                    bail!("unexpected answer");
                }
                Ok(())
            };
            drive(send, rate, end, w, |w| &mut w.h2, seq).await
        });
    }
    tasks.join_all().await.into_iter().sum()
}

/// One upgraded tunnel sending 64 bytes a second and reading the echo, reconnecting if cut.
async fn websocket(to: SocketAddr, end: Instant, w: Shared) {
    let msg = [b'm'; 64];
    'connect: while Instant::now() < end {
        let Ok(mut s) = TcpStream::connect(to).await else {
            failed(&w);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        let hello = "GET /ws HTTP/1.1\r\nHost: soak\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        if s.write_all(hello.as_bytes()).await.is_err() {
            failed(&w);
            continue;
        }
        while !head.ends_with(b"\r\n\r\n") {
            if s.read_exact(&mut byte).await.is_err() || head.len() > 4096 {
                failed(&w);
                continue 'connect;
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            failed(&w);
            continue;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut echo = [0u8; 64];
        while Instant::now() < end {
            tick.tick().await;
            let sent = Instant::now();
            if s.write_all(&msg).await.is_err() || s.read_exact(&mut echo).await.is_err() {
                failed(&w);
                continue 'connect;
            }
            record(&w, |w| &mut w.ws, sent);
        }
    }
}

/// Runs the HTTP traffic for `secs` at `rate` in all (0: unpaced); requests answered.
async fn traffic(args: &Args, web: SocketAddr, rate: f64, secs: f64, w: &Shared) -> u64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let seq = Arc::new(AtomicU64::new(0));
    let h2_streams = args.http2_connections * args.http2_streams;
    let per = rate / (args.http1_connections + h2_streams).max(1) as f64;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.http1_connections {
        tasks.spawn_local(http1_conn(web, per, end, w.clone(), seq.clone()));
    }
    for _ in 0..args.http2_connections {
        tasks.spawn_local(http2_conn(
            web,
            args.http2_streams,
            per,
            end,
            w.clone(),
            seq.clone(),
        ));
    }
    tasks.join_all().await.into_iter().sum()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let binary = streamgate_binary(args.streamgate.clone())?;
    // Clients and origin on core 1, the daemon on core 0: pin before any thread starts.
    let me = std::process::id().to_string();
    let pinned = Command::new("taskset")
        .args(["-p", "-c", "1", &me])
        .output();
    if !pinned.is_ok_and(|o| o.status.success()) {
        bail!("taskset (util-linux) is needed to pin the daemon and the clients");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        // Client tasks borrow their connections across awaits: local tasks, one thread.
        .block_on(tokio::task::LocalSet::new().run_until(soak(args, binary)))
}

async fn soak(args: Args, binary: PathBuf) -> Result<()> {
    let origin = origin().await?;
    let config = |web, admin| {
        format!(
            "[runtime]\nworkers = 1\n[admin]\nlisten = \"{admin}\"\n\
             [[listeners]]\nname = \"web\"\nlisten = \"{web}\"\n\
             [[regions]]\nname = \"o\"\nbackends = [ {{ address = \"{origin}\" }} ]\n\
             [[services]]\nname = \"soak\"\nlisteners = [\"web\"]\nregions = [\"o\"]\n\
             [services.cache]\nmax_size = \"64MiB\"\n"
        )
    };
    // The daemon on core 0; this process was pinned to core 1.
    let daemon = start(&binary, config, Some(0), "error")?;
    let (pid, web) = (daemon.pid(), daemon.web);
    let w: Shared = Arc::default();

    eprintln!("measuring the peak (10 s, unpaced)...");
    let peak = traffic(&args, web, 0.0, 10.0, &w).await as f64 / 10.0;
    let rate = peak * args.load;
    *w.lock().unwrap_or_else(|e| e.into_inner()) = Window::default();
    println!(
        "binary {}\npeak {peak:.0} req/s; holding {rate:.0} req/s ({:.0}%) for {} min with {} HTTP/1.1 \
         connections, {} HTTP/2 connections x {} streams, {} upgraded tunnels",
        binary.display(),
        args.load * 100.0,
        args.minutes,
        args.http1_connections,
        args.http2_connections,
        args.http2_streams,
        args.websockets
    );
    let secs = args.minutes * 60.0;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut ws = tokio::task::JoinSet::new();
    for _ in 0..args.websockets {
        ws.spawn_local(websocket(web, end, w.clone()));
    }
    let load = tokio::task::spawn_local({
        let (w, a) = (w.clone(), args.clone());
        async move { traffic(&a, web, rate, secs, &w).await }
    });

    println!(
        "{:>6} {:>9} {:>5} {:>8} {:>5} {:>10} {:>10} {:>10} {:>7}",
        "t (s)", "req/s", "CPU%", "RSS MiB", "fds", "h1 p99 ms", "h2 p99 ms", "ws p99 ms", "errors"
    );
    let mut cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(args.window));
    tick.tick().await;
    while Instant::now() < end {
        tick.tick().await;
        let mut taken = std::mem::take(&mut *w.lock().unwrap_or_else(|e| e.into_inner()));
        let rps = (taken.h1.len() + taken.h2.len()) as f64 / args.window as f64;
        let cpu = cpu_seconds(pid);
        let busy = (cpu - cpu_before) * 100.0 / args.window as f64;
        cpu_before = cpu;
        let row = Row {
            rss_mib: status_kib(pid, "VmRSS") as f64 / 1024.0,
            fds: open_fds(pid) as f64,
            h1: p99_ms(&mut taken.h1),
            h2: p99_ms(&mut taken.h2),
            ws: p99_ms(&mut taken.ws),
            errors: taken.errors,
        };
        println!(
            "{:>6.0} {rps:>9.0} {busy:>5.0} {:>8.1} {:>5} {:>10.2} {:>10.2} {:>10.2} {:>7}",
            started.elapsed().as_secs_f64(),
            row.rss_mib,
            row.fds,
            row.h1,
            row.h2,
            row.ws,
            row.errors
        );
        rows.push(row);
    }
    let answered = load.await.unwrap_or(0);
    ws.join_all().await;
    drop(daemon);
    summary(&rows, answered, secs);
    Ok(())
}

/// One window's sample.
struct Row {
    rss_mib: f64,
    fds: f64,
    h1: f64,
    h2: f64,
    ws: f64,
    errors: u64,
}

/// First minute against last minute, and the worst window.
fn summary(rows: &[Row], answered: u64, secs: f64) {
    let n = rows.len().min(6);
    if n == 0 {
        return;
    }
    let (first, last) = (&rows[..n], &rows[rows.len() - n..]);
    let mean = |r: &[Row], f: fn(&Row) -> f64| r.iter().map(f).sum::<f64>() / r.len() as f64;
    let max = |f: fn(&Row) -> f64| rows.iter().map(f).fold(0.0, f64::max);
    type Field = (&'static str, fn(&Row) -> f64);
    let fields: [Field; 5] = [
        ("RSS MiB", |r| r.rss_mib),
        ("fds", |r| r.fds),
        ("h1 p99 ms", |r| r.h1),
        ("h2 p99 ms", |r| r.h2),
        ("ws p99 ms", |r| r.ws),
    ];
    println!(
        "\n{answered} requests answered in {secs:.0} s, {} errors",
        rows.iter().map(|r| r.errors).sum::<u64>()
    );
    println!(
        "{:>10} {:>13} {:>13} {:>13}",
        "", "first minute", "last minute", "worst window"
    );
    for (name, f) in fields {
        println!(
            "{name:>10} {:>13.2} {:>13.2} {:>13.2}",
            mean(first, f),
            mean(last, f),
            max(f)
        );
    }
}
