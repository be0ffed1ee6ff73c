//! Failover time: a release StreamGate in front of two regions (us-east: 2 origins, eu-west: 1),
//! health checks every 200 ms with fall = 3, a closed-loop client sending GETs. Each trial kills
//! every us-east origin and measures how long until the region is marked unhealthy (detection),
//! how long until every answer comes from eu-west (switch), and how many requests failed; then
//! brings us-east back and measures the failback (hold-down 1 s).
//!
//! Run: `cargo run --release -p streamgate-bench --bin streamgate-failover-bench -- --trials 20`
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use streamgate_bench::daemon::streamgate_binary;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// A streamgate binary to use instead of building target/release/streamgate.
    #[arg(long)]
    streamgate: Option<PathBuf>,
}

/// An origin that can be killed (listener and connections closed) and restarted.
struct Origin {
    name: &'static str,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Origin {
    async fn start(name: &'static str, addr: SocketAddr) -> Result<Origin> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                while conns.try_join_next().is_some() {}
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-origin", name)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap_or_default(),
                        )
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Ok(Origin {
            name,
            addr,
            task: Some(task),
        })
    }

    fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn restart(&mut self) -> Result<()> {
        let again = Origin::start(self.name, self.addr).await?;
        *self = again;
        Ok(())
    }
}

#[derive(Default)]
struct LoadLog {
    answers: Mutex<Vec<(Instant, bool)>>,
    failures: AtomicU64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let binary = streamgate_binary(args.streamgate.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args, binary))
}

async fn run(args: Args, binary: PathBuf) -> Result<()> {
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let mut us = vec![
        Origin::start("us-east", any).await?,
        Origin::start("us-east", any).await?,
    ];
    let _eu = Origin::start("eu-west", any).await?;
    let work = tempfile::tempdir()?;
    let web = std::net::TcpListener::bind(any)?.local_addr()?;
    let admin = std::net::TcpListener::bind(any)?.local_addr()?;
    let config = format!(
        "[admin]\nlisten = \"{admin}\"\n[[listeners]]\nname = \"web\"\nlisten = \"{web}\"\n\
         [[regions]]\nname = \"us-east\"\nbackends = [ {{ address = \"{}\" }}, {{ address = \"{}\" }} ]\n\
         [[regions]]\nname = \"eu-west\"\nbackends = [ {{ address = \"{}\" }} ]\n\
         [[services]]\nname = \"api\"\nlisteners = [\"web\"]\nregions = [\"us-east\", \"eu-west\"]\nregion_policy = \"failover\"\n\
         [services.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 3\n\
         [services.failover]\nhold_down = \"1s\"\n",
        us[0].addr, us[1].addr, _eu.addr
    );
    let path = work.path().join("streamgate.toml");
    std::fs::write(&path, config)?;
    let mut daemon = Command::new(&binary)
        .args(["--log-level", "warn", "run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting streamgate")?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get(format!("http://{admin}/ready").parse()?)
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("streamgate did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let log = Arc::new(LoadLog::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (log, stop, client) = (log.clone(), stop.clone(), client.clone());
        let url: http::Uri = format!("http://{web}/").parse()?;
        load.push(tokio::spawn(async move {
            while !stop.load(SeqCst) {
                match client.get(url.clone()).await {
                    Ok(r) if r.status().is_success() => {
                        let eu = r.headers().get("x-origin").is_some_and(|v| v == "eu-west");
                        let _ = r.into_body().collect().await;
                        log.answers
                            .lock()
                            .map(|mut a| a.push((Instant::now(), eu)))
                            .ok();
                    }
                    _ => {
                        log.failures.fetch_add(1, SeqCst);
                    }
                }
            }
        }));
    }

    let region_healthy = |client: Client<_, Empty<Bytes>>| async move {
        let r = client
            .get(format!("http://{admin}/regions").parse().ok()?)
            .await
            .ok()?;
        let body = r.into_body().collect().await.ok()?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let us = v["regions"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == "us-east")?
            .clone();
        us["services"][0]["healthy"].as_bool()
    };

    let (mut detect, mut switch, mut failback) = (Vec::new(), Vec::new(), Vec::new());
    let mut failed_total = 0;
    for trial in 0..args.trials {
        // Steady state on us-east.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let failed_before = log.failures.load(SeqCst);
        let t0 = Instant::now();
        for o in &mut us {
            o.kill();
        }
        loop {
            if region_healthy(client.clone()).await == Some(false) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("trial {trial}: region never marked unhealthy");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t_detect = t0.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t_switch = {
            let a = log
                .answers
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            let after: Vec<_> = a.iter().filter(|(t, _)| *t >= t0).collect();
            let last_us = after.iter().rposition(|(_, eu)| !eu);
            let at = match last_us {
                None => after.first().map(|(t, _)| *t),
                Some(i) => after.get(i + 1).map(|(t, _)| *t),
            };
            at.map_or(Duration::MAX, |t| t.duration_since(t0))
        };
        let failed = log.failures.load(SeqCst) - failed_before;
        failed_total += failed;
        // Back again; failback waits for rise (2 x 200 ms) and the 1 s hold-down.
        for o in &mut us {
            o.restart().await?;
        }
        let t1 = Instant::now();
        loop {
            let recent_us = log
                .answers
                .lock()
                .map(|a| {
                    a.iter()
                        .rev()
                        .take(8)
                        .filter(|(t, eu)| *t >= t1 && !eu)
                        .count()
                })
                .unwrap_or(0);
            if recent_us >= 8 {
                break;
            }
            if t1.elapsed() > Duration::from_secs(10) {
                bail!("trial {trial}: no failback");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t_back = t1.elapsed();
        eprintln!(
            "trial {:>2}: detection {:>6.0} ms, switch {:>6.1} ms, failed {failed}, failback {:>6.0} ms",
            trial + 1,
            t_detect.as_secs_f64() * 1e3,
            t_switch.as_secs_f64() * 1e3,
            t_back.as_secs_f64() * 1e3
        );
        detect.push(t_detect.as_secs_f64() * 1e3);
        switch.push(t_switch.as_secs_f64() * 1e3);
        failback.push(t_back.as_secs_f64() * 1e3);
    }
    stop.store(true, SeqCst);
    for l in load {
        let _ = l.await;
    }
    let _ = daemon.kill();
    let stat = |v: &Vec<f64>| {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        format!("{:.1} / {:.1} / {:.1}", min, median(v.clone()), max)
    };
    println!(
        "\n## Failover: {} trials, probes every 200 ms, fall 3, rise 2, hold-down 1 s\n",
        args.trials
    );
    println!("| measure | min / median / max (ms) |");
    println!("|---|---|");
    println!(
        "| detection (kill -> region unhealthy) | {} |",
        stat(&detect)
    );
    println!(
        "| traffic switch (kill -> every answer from eu-west) | {} |",
        stat(&switch)
    );
    println!(
        "| failback (restart -> traffic back on us-east) | {} |",
        stat(&failback)
    );
    println!("| failed client requests, all trials | {failed_total} |");
    Ok(())
}
