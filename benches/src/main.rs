//! The load benchmark: StreamGate, nginx and HAProxy in front of the same loopback origin, each
//! proxy alone on one core with one worker, the load generator and origin on the other core.
//! Contenders alternate over several short rounds; the report gives medians and StreamGate's
//! median ratio to each of the others.
//!
//! Run: `cargo run --release -p streamgate-bench -- --rounds 5 --duration 5`

mod contenders;
mod share;
mod tools;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use contenders::Contender;
use tools::Measured;

#[derive(Debug, Parser)]
#[command(about = "StreamGate beside nginx and HAProxy on loopback, one core each")]
struct Args {
    /// Rounds per scenario; each round runs every contender once, in rotating order.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Scenarios to run (comma separated); see SCENARIO_NAMES.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pass-1k,pass-100k,latency-1k,h2c-1k,https-1k,tls-handshakes,tcp-throughput"
    )]
    scenarios: Vec<String>,
    /// A streamgate binary to use instead of building target/release/streamgate.
    #[arg(long)]
    streamgate: Option<PathBuf>,
    /// Core for the proxies.
    #[arg(long, default_value_t = 0)]
    proxy_cpu: usize,
    /// Cap each proxy to this percentage of its core (a cgroup CPU quota, 10 ms periods), so
    /// that the proxy sets the pace and requests per second compare capacity on equal CPU;
    /// uncapped, the load core saturates first in the 1 KiB scenarios. Needs root.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    proxy_share: Option<u32>,
    /// Core for the load generator and the origin.
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// Also run `streamgate-rules`: StreamGate with this many rules that no request matches
    /// (0: not run).
    #[arg(long, default_value_t = 0)]
    rules: usize,
    /// Leave `[services.compression]` out of StreamGate's config (to compare with binaries from
    /// before it existed; the gzip scenarios then measure an uncompressed StreamGate).
    #[arg(long)]
    no_compression: bool,
    /// Write every measurement as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
enum Load {
    Wrk {
        connections: u32,
    },
    /// wrk with `Connection: close`: every request on a new connection (a full TLS handshake
    /// over https).
    WrkClose {
        connections: u32,
    },
    /// wrk asking for gzip (`Accept-Encoding: gzip`).
    WrkGzip {
        connections: u32,
    },
    H2load {
        clients: u32,
        streams: u32,
    },
    /// iperf3 pushing bytes through an L4 listener with this many parallel streams.
    Iperf {
        streams: u32,
    },
}

/// Which listener of a contender a scenario drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Pass,
    H2c,
    Cache,
    H2cCache,
    Https,
    Tcp,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    path: &'static str,
    load: Load,
    target: Target,
    what: &'static str,
}

impl Scenario {
    /// What the throughput column counts.
    fn unit(&self) -> &'static str {
        match self.load {
            Load::Iperf { .. } => "MB/s",
            Load::WrkClose { .. } => "conn/s",
            _ => "req/s",
        }
    }
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "pass-1k",
        path: "/1k",
        load: Load::Wrk { connections: 64 },
        target: Target::Pass,
        what: "HTTP/1.1 keep-alive, 64 connections, 1 KiB",
    },
    Scenario {
        name: "pass-100k",
        path: "/100k",
        load: Load::Wrk { connections: 64 },
        target: Target::Pass,
        what: "HTTP/1.1 keep-alive, 64 connections, 100 KiB",
    },
    Scenario {
        name: "latency-1k",
        path: "/1k",
        load: Load::Wrk { connections: 8 },
        target: Target::Pass,
        what: "HTTP/1.1 keep-alive, 8 connections, 1 KiB",
    },
    Scenario {
        name: "h2c-1k",
        path: "/1k",
        load: Load::H2load {
            clients: 16,
            streams: 8,
        },
        target: Target::H2c,
        what: "h2c, 16 connections x 8 streams, 1 KiB",
    },
    Scenario {
        name: "h2c-hit-1k",
        path: "/1k",
        load: Load::H2load {
            clients: 16,
            streams: 8,
        },
        target: Target::H2cCache,
        what: "cache hits over h2c, 16 connections x 8 streams, 1 KiB",
    },
    Scenario {
        name: "hit-1k",
        path: "/1k",
        load: Load::Wrk { connections: 64 },
        target: Target::Cache,
        what: "cache hits, HTTP/1.1 keep-alive, 64 connections, 1 KiB",
    },
    // With 64 connections wrk saturates its core on 1 KiB hits and its own queueing shows up
    // in every proxy's p99; 8 connections leave it headroom, so the latencies are the proxies'.
    Scenario {
        name: "hit-latency-1k",
        path: "/1k",
        load: Load::Wrk { connections: 8 },
        target: Target::Cache,
        what: "cache hits, HTTP/1.1 keep-alive, 8 connections, 1 KiB",
    },
    Scenario {
        name: "hit-100k",
        path: "/100k",
        load: Load::Wrk { connections: 64 },
        target: Target::Cache,
        what: "cache hits, HTTP/1.1 keep-alive, 64 connections, 100 KiB",
    },
    Scenario {
        name: "https-1k",
        path: "/1k",
        load: Load::Wrk { connections: 64 },
        target: Target::Https,
        what: "HTTPS keep-alive (TLS 1.3, ECDSA P-256), 64 connections, 1 KiB",
    },
    Scenario {
        name: "tls-handshakes",
        path: "/1k",
        load: Load::WrkClose { connections: 32 },
        target: Target::Https,
        what: "a new TLS connection per request, 32 concurrent, 1 KiB",
    },
    // Compression: a 20 KiB HTML page gzip-compressed for the client, by StreamGate and by
    // nginx's gzip module (level 6 both). Proxied, every response is compressed; from the cache,
    // StreamGate stores the compressed copy, nginx compresses the cached page on every hit.
    Scenario {
        name: "gzip-pass-20k",
        path: "/page20k.html",
        load: Load::WrkGzip { connections: 64 },
        target: Target::Pass,
        what: "gzip level 6 of each proxied 20 KiB HTML page, 64 connections",
    },
    Scenario {
        name: "gzip-hit-20k",
        path: "/page20k.html",
        load: Load::WrkGzip { connections: 64 },
        target: Target::Cache,
        what: "gzip level 6 of a cached 20 KiB HTML page, 64 connections",
    },
    Scenario {
        name: "tcp-throughput",
        path: "",
        load: Load::Iperf { streams: 4 },
        target: Target::Tcp,
        what: "L4 bytes through the proxy, iperf3 with 4 streams",
    },
];

const SCENARIO_NAMES: &str = "pass-1k, pass-100k, latency-1k, h2c-1k, h2c-hit-1k, hit-1k, hit-latency-1k, hit-100k, https-1k, tls-handshakes, tcp-throughput, gzip-pass-20k, gzip-hit-20k";

#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    scenario: String,
    contender: String,
    round: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_req: f64,
    /// Busy share of the load generator's core: near 100% means the generator, not the proxy,
    /// set the pace.
    load_core_busy: f64,
    /// Load-core CPU per request (wrk/h2load + origin), in microseconds.
    load_cpu_us_per_req: f64,
    errors: u64,
}

#[allow(clippy::print_stdout)]
fn main() -> Result<()> {
    let args = Args::parse();
    let binary = contenders::streamgate_binary(args.streamgate.clone())?;
    let work = tempfile::tempdir().context("creating a work directory")?;
    let duration = Duration::from_secs(args.duration);

    eprintln!(
        "starting origin (nginx, core {}) and proxies (core {})...",
        args.load_cpu, args.proxy_cpu
    );
    let origin = contenders::start_origin(work.path(), args.load_cpu)?;
    let (tcp_origin, _iperf) = contenders::start_tcp_origin(work.path(), args.load_cpu)?;
    let (cert, key, cert_and_key) = contenders::write_certificate(work.path())?;
    let origins = contenders::Origins {
        http: origin.addr,
        tcp: tcp_origin,
        cert,
        key,
        cert_and_key,
    };
    let core = contenders::ProxyCore {
        cpu: args.proxy_cpu,
        share: args.proxy_share,
    };
    let mut proxies: Vec<Contender> = vec![
        contenders::start_streamgate(
            work.path(),
            core,
            &origins,
            &binary,
            0,
            !args.no_compression,
        )?,
        contenders::start_nginx(work.path(), core, &origins)?,
        contenders::start_haproxy(work.path(), core, &origins)?,
        contenders::start_varnish(work.path(), core, origin.addr)?,
        Contender::direct(tcp_origin),
    ];
    if args.rules > 0 {
        proxies.insert(
            1,
            contenders::start_streamgate(
                work.path(),
                core,
                &origins,
                &binary,
                args.rules,
                !args.no_compression,
            )?,
        );
    }
    let _kill_iperf = KillOnDrop(_iperf);

    let mut rows = Vec::new();
    for name in &args.scenarios {
        let Some(sc) = SCENARIOS.iter().find(|s| s.name == name) else {
            anyhow::bail!("unknown scenario {name}; expected one of {SCENARIO_NAMES}");
        };
        // Compression is compared with nginx's gzip module only.
        let proxies: Vec<&Contender> = proxies
            .iter()
            .filter(|p| address(sc, p).is_some())
            .filter(|p| {
                !matches!(sc.load, Load::WrkGzip { .. })
                    || p.name.starts_with("streamgate")
                    || p.name == "nginx"
            })
            .collect();
        // A short warm-up per contender fills pools and caches.
        for p in &proxies {
            measure(sc, p, args.load_cpu, Duration::from_secs(1))?;
        }
        for round in 0..args.rounds {
            for k in 0..proxies.len() {
                let p = proxies[(round + k) % proxies.len()];
                let cpu_before = p.cpu_seconds();
                let core_before = core_ticks(args.load_cpu);
                let m = measure(sc, p, args.load_cpu, duration)?;
                let cpu = p.cpu_seconds() - cpu_before;
                let core_after = core_ticks(args.load_cpu);
                let (busy, total) = (
                    core_after.0 - core_before.0,
                    (core_after.0 + core_after.1) - (core_before.0 + core_before.1),
                );
                let row = Row {
                    scenario: sc.name.into(),
                    contender: p.name.into(),
                    round,
                    rps: m.rps,
                    p50_ms: m.p50 * 1e3,
                    p99_ms: m.p99 * 1e3,
                    cpu_us_per_req: if m.requests > 0 {
                        cpu * 1e6 / m.requests as f64
                    } else {
                        0.0
                    },
                    load_core_busy: if total > 0.0 { busy / total } else { 0.0 },
                    load_cpu_us_per_req: if m.requests > 0 {
                        busy / 100.0 * 1e6 / m.requests as f64
                    } else {
                        0.0
                    },
                    errors: m.errors,
                };
                eprintln!(
                    "  {:<14} round {} {:<10} {:>10.0} {:<6}  p50 {:>7.3} ms  p99 {:>7.3} ms  {:>6.1} us cpu/req  load core {:>3.0}% busy, {:>5.1} us/req  errors {}",
                    row.scenario,
                    round + 1,
                    row.contender,
                    row.rps,
                    sc.unit(),
                    row.p50_ms,
                    row.p99_ms,
                    row.cpu_us_per_req,
                    row.load_core_busy * 100.0,
                    row.load_cpu_us_per_req,
                    row.errors
                );
                rows.push(row);
            }
        }
    }

    println!("{}", report(&rows, &args, &proxies));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The listener of `p` that `sc` drives, if it has one.
fn address(sc: &Scenario, p: &Contender) -> Option<std::net::SocketAddr> {
    match sc.target {
        Target::Pass => p.http,
        Target::H2c => p.h2c,
        Target::Cache => p.cache,
        Target::H2cCache => p.h2c_cache,
        Target::Https => p.https,
        Target::Tcp => p.tcp,
    }
}

/// Stops a helper process (the iperf3 server) when the benchmark ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        contenders::stop(&mut self.0);
    }
}

fn measure(sc: &Scenario, p: &Contender, cpu: usize, d: Duration) -> Result<Measured> {
    let Some(addr) = address(sc, p) else {
        anyhow::bail!("{} has no listener for {}", p.name, sc.name)
    };
    let scheme = if sc.target == Target::Https {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{addr}{}", sc.path);
    match sc.load {
        Load::Wrk { connections } => tools::wrk(cpu, &url, connections, d, &[]),
        Load::WrkClose { connections } => {
            tools::wrk(cpu, &url, connections, d, &["Connection: close"])
        }
        Load::WrkGzip { connections } => {
            tools::wrk(cpu, &url, connections, d, &["Accept-Encoding: gzip"])
        }
        Load::H2load { clients, streams } => tools::h2load(cpu, &url, clients, streams, d),
        Load::Iperf { streams } => tools::iperf3(cpu, addr, streams, d),
    }
}

/// (busy, idle) clock ticks of one core, from /proc/stat.
fn core_ticks(cpu: usize) -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let prefix = format!("cpu{cpu} ");
    let Some(line) = text.lines().find(|l| l.starts_with(&prefix)) else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return (0.0, 0.0);
    }
    // user nice system idle iowait irq softirq steal
    let idle = v[3] + v[4];
    let busy: f64 = v.iter().sum::<f64>() - idle;
    (busy, idle)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(rows: &[Row], args: &Args, proxies: &[Contender]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Load benchmark: {} rounds x {} s, proxies on core {}{}, wrk/h2load + origin on core {}\n",
        args.rounds,
        args.duration,
        args.proxy_cpu,
        args.proxy_share
            .map_or(String::new(), |p| format!(" (each capped to {p}% of it)")),
        args.load_cpu
    );
    let _ = writeln!(
        out,
        "| scenario | proxy | throughput (median) | p50 ms | p99 ms | proxy CPU us/req | load core busy | load core us/req | errors |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let names: Vec<&str> = proxies.iter().map(|p| p.name).collect();
    let mut ratio_lines = Vec::new();
    for sc in SCENARIOS
        .iter()
        .filter(|s| args.scenarios.iter().any(|n| n == s.name))
    {
        let of = |who: &str| {
            rows.iter()
                .filter(|r| r.scenario == sc.name && r.contender == who)
                .collect::<Vec<_>>()
        };
        for who in &names {
            let r = of(who);
            if r.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} {} | {:.3} | {:.3} | {:.1} | {:.0}% | {:.1} | {} |",
                sc.name,
                who,
                median(r.iter().map(|x| x.rps).collect()),
                sc.unit(),
                median(r.iter().map(|x| x.p50_ms).collect()),
                median(r.iter().map(|x| x.p99_ms).collect()),
                median(r.iter().map(|x| x.cpu_us_per_req).collect()),
                median(r.iter().map(|x| x.load_core_busy * 100.0).collect()),
                median(r.iter().map(|x| x.load_cpu_us_per_req).collect()),
                r.iter().map(|x| x.errors).sum::<u64>(),
            );
        }
        // Ratios are taken per round (contenders of a round ran back to back), then the median.
        let sg = of("streamgate");
        for other in names.iter().filter(|n| **n != "streamgate") {
            let o = of(other);
            if o.is_empty() {
                continue;
            }
            // "n/a" where the figure was not measured (latency of the L4 scenario, CPU of "direct").
            let per_round = |f: fn(&Row) -> f64| {
                let ratios: Vec<f64> = sg
                    .iter()
                    .zip(&o)
                    .filter(|(_, b)| f(b) > 0.0)
                    .map(|(a, b)| f(a) / f(b))
                    .collect();
                if ratios.is_empty() {
                    "n/a".to_string()
                } else {
                    format!("{:.2}x", median(ratios))
                }
            };
            ratio_lines.push(format!(
                "| {} ({}) | {} | {} | {} | {} |",
                sc.name,
                sc.what,
                other,
                per_round(|r| r.rps),
                per_round(|r| r.p99_ms),
                per_round(|r| r.cpu_us_per_req)
            ));
        }
    }
    let _ = writeln!(
        out,
        "\nStreamGate's median per-round ratio (throughput: higher is better; p99 and CPU per request: lower is better). \
         For tcp-throughput, \"requests\" are megabytes and latencies are not measured:\n"
    );
    let _ = writeln!(
        out,
        "| scenario | vs | throughput ratio | p99 ratio | CPU/req ratio |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|");
    for l in ratio_lines {
        let _ = writeln!(out, "{l}");
    }
    out
}
