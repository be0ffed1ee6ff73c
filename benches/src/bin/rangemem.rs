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
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use streamgate_bench::daemon::{admin_get, start, streamgate_binary};
use streamgate_bench::procfs::status_kib;
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

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let binary = streamgate_binary(args.streamgate.clone())?;
    let object = Bytes::from(vec![b'v'; args.object_mib << 20]);
    let origin = origin(object).await?;
    let (max_size, extra) = (&args.max_size, &args.cache_extra);
    let config = |web, admin| {
        format!(
            "[runtime]\nworkers = 1\n[admin]\nlisten = \"{admin}\"\n\
             [timeouts]\nupstream_response = \"60s\"\n\
             [[listeners]]\nname = \"web\"\nlisten = \"{web}\"\n\
             [[regions]]\nname = \"o\"\nbackends = [ {{ address = \"{origin}\" }} ]\n\
             [[services]]\nname = \"media\"\nlisteners = [\"web\"]\nregions = [\"o\"]\n\
             [services.cache]\nmax_size = \"{max_size}\"\nmax_object_size = \"64MiB\"\n{extra}\n"
        )
    };
    let daemon = start(&binary, config, None, "error")?;
    let (pid, web, admin) = (daemon.pid(), daemon.web, daemon.admin);
    let before = status_kib(pid, "VmRSS");
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
    let peak = status_kib(pid, "VmHWM");
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
    drop(daemon);
    Ok(())
}
