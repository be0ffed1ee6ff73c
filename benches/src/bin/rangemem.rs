//! Memory under a burst of range misses: N clients at once each ask a release StreamGate for
//! `Range: bytes=0-0` of a distinct large object (8 MiB by default) it has not cached. The origin
//! (in this process) sends each object whole, as a fill asks it to. Reports the daemon's resident
//! memory before and at its peak (VmHWM), the time until every client had its byte, and what the
//! cache recorded. Compare binaries with `--streamgate`.
//!
//! Run: `cargo run --release -p streamgate-bench --bin streamgate-rangemem -- --requests 1000`
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent range requests, one distinct object each.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Size of each object in MiB.
    #[arg(long, default_value_t = 8)]
    object_mib: usize,
    /// A streamgate binary to use instead of building target/release/streamgate.
    #[arg(long)]
    streamgate: Option<PathBuf>,
    /// The cache's max_size.
    #[arg(long, default_value = "256MiB")]
    max_size: String,
    /// Extra lines for the service's [services.cache] table.
    #[arg(long, default_value = "")]
    cache_extra: String,
}

fn kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn origin(object: Bytes) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let object = object.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let object = object.clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("cache-control", "max-age=600")
                                .header("content-length", object.len())
                                .body(Full::new(object))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn range_get(to: SocketAddr, path: String) -> Result<(StatusCode, usize)> {
    let stream = TcpStream::connect(to).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "media.example")
        .header("range", "bytes=0-0")
        .body(Empty::<Bytes>::new())?;
    let resp = tx.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body.len()))
}

fn start(
    binary: &PathBuf,
    dir: &std::path::Path,
    origin: SocketAddr,
    max_size: &str,
    extra: &str,
) -> Result<(Child, SocketAddr, SocketAddr)> {
    let port = |l: std::net::TcpListener| l.local_addr().map(|a| a.port());
    let web = port(std::net::TcpListener::bind("127.0.0.1:0")?)?;
    let admin = port(std::net::TcpListener::bind("127.0.0.1:0")?)?;
    let conf = format!(
        "[runtime]\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [timeouts]\nupstream_response = \"60s\"\n\
         [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:{web}\"\n\
         [[regions]]\nname = \"o\"\nbackends = [ {{ address = \"{origin}\" }} ]\n\
         [[services]]\nname = \"media\"\nlisteners = [\"web\"]\nregions = [\"o\"]\n\
         [services.cache]\nmax_size = \"{max_size}\"\nmax_object_size = \"64MiB\"\n{extra}\n"
    );
    let path = dir.join("streamgate.toml");
    std::fs::write(&path, conf)?;
    let child = Command::new(binary)
        .args(["--log-level", "error", "run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let web: SocketAddr = format!("127.0.0.1:{web}").parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse()?;
    for _ in 0..500 {
        if std::net::TcpStream::connect(web).is_ok() {
            return Ok((child, web, admin));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("streamgate did not start listening")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let binary = match args.streamgate.clone() {
        Some(b) => b,
        None => {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "-p", "streamgate"])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .status()?;
            if !status.success() {
                bail!("cargo build --release failed");
            }
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/release/streamgate"
            ))
        }
    };
    let object = Bytes::from(vec![b'v'; args.object_mib << 20]);
    let origin = origin(object).await?;
    let dir = tempfile::tempdir()?;
    let (mut child, web, admin) = start(
        &binary,
        dir.path(),
        origin,
        &args.max_size,
        &args.cache_extra,
    )?;
    let pid = child.id();
    let before = kib(pid, "VmRSS");
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..args.requests {
        tasks.spawn(range_get(web, format!("/obj/{i}")));
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((StatusCode::PARTIAL_CONTENT, 1))) => ok += 1,
            _ => failed += 1,
        }
    }
    let answered = started.elapsed();
    // Let recordings that outlived their clients finish, then read the peak.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = kib(pid, "VmHWM");
    let stats = admin_get(admin, "/cache").await.unwrap_or_default();
    println!(
        "binary {}\nrequests {} x Range: bytes=0-0 of distinct {} MiB objects\n\
         206 with one byte: {ok}, other: {failed}\nall answered in {:.2} s\n\
         RSS before {:.1} MiB, peak {:.1} MiB (max_size {})\ncache after: {stats}",
        binary.display(),
        args.requests,
        args.object_mib,
        answered.as_secs_f64(),
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        args.max_size,
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// `GET` on the admin API, body as text.
async fn admin_get(admin: SocketAddr, path: &str) -> Result<String> {
    let stream = TcpStream::connect(admin).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "admin")
        .body(Empty::<Bytes>::new())?;
    let body = tx.send_request(req).await?.into_body().collect().await?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).trim().to_string())
}
