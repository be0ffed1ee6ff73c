//! Fleet purge propagation: a real `nats-server -js` and three release StreamGates (PoPs a, b,
//! c) on loopback.
//!
//! 1. `--purges` (1000) purges, one after another, through PoP a's admin API with
//!    `"scope": "fleet"`: the admin round trip (applied at a, stored by JetStream) exactly, and
//!    the publish-to-apply lag at b and c from their `replication_lag_seconds` histograms.
//! 2. `--rate` (10 000) purges per second for `--seconds` (3), published straight to the stream
//!    by this program: the lag at every PoP under that load, and how long until the last one
//!    was applied.
//!
//! Lags are quantiles interpolated in the histogram's buckets (100 µs .. 10 s); messages carry
//! their publication time in milliseconds. Run:
//! `cargo run --release -p streamgate-bench --bin streamgate-fleetbench`
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use streamgate_bench::daemon::{self, Daemon, admin_get, free_addr, streamgate_binary};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(about = "Fleet purge propagation across three PoPs through NATS JetStream")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    purges: usize,
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    #[arg(long)]
    streamgate: Option<std::path::PathBuf>,
}

struct Nats {
    child: Child,
    _store: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats(addr: SocketAddr) -> Result<Nats> {
    let store = tempfile::tempdir()?;
    let child = Command::new("nats-server")
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-sd",
        ])
        .arg(store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server (apt-get install nats-server)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Nats {
        child,
        _store: store,
    })
}

fn pop_config(web: SocketAddr, admin: SocketAddr, nats: SocketAddr, pop: &str) -> String {
    format!(
        "[admin]\nlisten = \"{admin}\"\n[[listeners]]\nname = \"web\"\nlisten = \"{web}\"\n\
         [[regions]]\nname = \"r\"\nbackends = [ {{ address = \"127.0.0.1:9\" }} ]\n\
         [[services]]\nname = \"cdn\"\nlisteners = [\"web\"]\nregions = [\"r\"]\n\
         [services.cache]\nmax_size = \"64MiB\"\n\
         [fleet]\nservers = [\"nats://{nats}\"]\npop = \"{pop}\"\nregion = \"r-{pop}\"\n"
    )
}

/// (upper bound, cumulative count) of `replication_lag_seconds` at a PoP, and the count.
async fn lag_histogram(admin: SocketAddr, region: &str) -> Result<Vec<(f64, f64)>> {
    let text = admin_get(admin, "/metrics").await?;
    let prefix = "streamgate_replication_lag_seconds_bucket{";
    let mut out = Vec::new();
    for l in text.lines().filter(|l| l.starts_with(prefix)) {
        if !l.contains(&format!("region=\"{region}\"")) {
            continue;
        }
        let le = l.split("le=\"").nth(1).and_then(|r| r.split('"').next());
        let value = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(le), Some(v)) = (le, value) {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            out.push((le, v));
        }
    }
    Ok(out)
}

/// The `q` quantile of the observations between two readings, interpolated in its bucket.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, c)| {
            let b = before.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            (le, c - b)
        })
        .collect();
    let total = delta.last()?.1;
    if total == 0.0 {
        return None;
    }
    let want = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in &delta {
        if c >= want {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let span = (c - prev.1).max(1.0);
            return Some(prev.0 + (le - prev.0) * ((want - prev.1) / span));
        }
        prev = (le, c);
    }
    None
}

async fn applied(admin: SocketAddr) -> Result<f64> {
    let text = admin_get(admin, "/metrics").await?;
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"streamgate_fleet_messages_total{kind="purge",result="applied"} "#)?
                .parse()
                .ok()
        })
        .unwrap_or(0.0))
}

async fn post_purge(admin: SocketAddr, body: String) -> Result<u16> {
    let stream = TcpStream::connect(admin).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::post("/cache/purge")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

async fn wait_applied(admins: &[SocketAddr], target: f64, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let mut all = true;
        for a in admins {
            all &= applied(*a).await? >= target;
        }
        if all {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("not every PoP applied {target} purges within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(s: Option<f64>) -> String {
    s.map_or("-".into(), |v| format!("{:.2} ms", v * 1000.0))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let binary = streamgate_binary(args.streamgate.clone())?;
    let nats_addr = free_addr()?;
    let _nats = nats(nats_addr)?;
    let pops: Vec<(&str, Daemon)> = ["a", "b", "c"]
        .into_iter()
        .map(|p| {
            daemon::start(&binary, |w, a| pop_config(w, a, nats_addr, p), None, "warn")
                .map(|d| (p, d))
        })
        .collect::<Result<_>>()?;
    // Joined: every PoP's /fleet says connected.
    for (p, d) in &pops {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !admin_get(d.admin, "/fleet")
            .await?
            .contains("\"connected\": true")
        {
            if Instant::now() > deadline {
                bail!("PoP {p} did not join the fleet");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (a, others) = (pops[0].1.admin, [pops[1].1.admin, pops[2].1.admin]);

    eprintln!(
        "1. {} fleet purges through PoP a's admin API, one after another",
        args.purges
    );
    let before = [
        lag_histogram(others[0], "r-b").await?,
        lag_histogram(others[1], "r-c").await?,
    ];
    let mut rtt = Vec::with_capacity(args.purges);
    for i in 0..args.purges {
        let body = format!(r#"{{"url": "http://cdn.test/obj{i}", "scope": "fleet"}}"#);
        let t = Instant::now();
        let status = post_purge(a, body).await?;
        rtt.push(t.elapsed().as_secs_f64());
        if status != 200 {
            bail!("purge {i}: status {status}");
        }
    }
    wait_applied(&others, args.purges as f64, Duration::from_secs(60)).await?;
    rtt.sort_by(f64::total_cmp);
    let pick = |q: f64| rtt[((rtt.len() - 1) as f64 * q) as usize];
    println!(
        "admin round trip (applied at a, stored by JetStream): p50 {:.2} ms, p99 {:.2} ms",
        pick(0.5) * 1e3,
        pick(0.99) * 1e3
    );
    let after = [
        lag_histogram(others[0], "r-b").await?,
        lag_histogram(others[1], "r-c").await?,
    ];
    for (i, pop) in ["b", "c"].iter().enumerate() {
        println!(
            "publish to apply at {pop}: p50 {}, p99 {}",
            ms(quantile(&before[i], &after[i], 0.5)),
            ms(quantile(&before[i], &after[i], 0.99))
        );
    }

    let total = args.rate * args.seconds;
    eprintln!(
        "2. {total} purges at {} per second straight to the stream",
        args.rate
    );
    let all = [a, others[0], others[1]];
    let regions = ["r-a", "r-b", "r-c"];
    let mut before = Vec::new();
    for (ad, r) in all.iter().zip(regions) {
        before.push(lag_histogram(*ad, r).await?);
    }
    let base = [
        applied(all[0]).await?,
        applied(all[1]).await?,
        applied(all[2]).await?,
    ];
    let client = async_nats::connect(format!("nats://{nats_addr}")).await?;
    let js = async_nats::jetstream::new(client);
    let started = Instant::now();
    // Acknowledgements are awaited as they come: the client holds back publications while
    // too many are unread.
    let mut acks = tokio::task::JoinSet::new();
    for i in 0..total {
        // Paced: message i leaves at i / rate seconds.
        let due = Duration::from_secs_f64(i as f64 / args.rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let msg = serde_json::json!({
            "id": format!("bench-{i}"),
            "from_pop": "bench",
            "sent_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
            "target": { "url": format!("http://cdn.test/load{i}") },
        });
        let ack = js
            .publish("streamgate.purge", serde_json::to_vec(&msg)?.into())
            .await?;
        acks.spawn(ack.into_future());
    }
    let sent = started.elapsed();
    while let Some(ack) = acks.join_next().await {
        ack??;
    }
    println!(
        "published {total} in {:.2} s ({:.0}/s)",
        sent.as_secs_f64(),
        total as f64 / sent.as_secs_f64()
    );
    for (i, ad) in all.iter().enumerate() {
        let drained =
            wait_applied(&[*ad], base[i] + total as f64, Duration::from_secs(120)).await?;
        let after = lag_histogram(*ad, regions[i]).await?;
        println!(
            "PoP {}: publish to apply p50 {}, p99 {}; last applied {:.2} s after the last publish",
            ["a", "b", "c"][i],
            ms(quantile(&before[i], &after, 0.5)),
            ms(quantile(&before[i], &after, 0.99)),
            drained.as_secs_f64()
        );
    }
    Ok(())
}
