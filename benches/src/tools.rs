//! Running the load generators (wrk, h2load) and reading their reports.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// What one load run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub requests: u64,
    pub rps: f64,
    /// Median latency in seconds (h2load: mean, it reports no percentiles).
    pub p50: f64,
    /// 99th percentile latency in seconds (h2load: max).
    pub p99: f64,
    pub errors: u64,
}

/// Runs wrk with one thread on `cpu`; `close`: a new connection for every request.
pub fn wrk(
    cpu: usize,
    url: &str,
    connections: u32,
    duration: Duration,
    headers: &[&str],
) -> Result<Measured> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string(), "wrk", "-t1", "--latency"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text)
}

pub fn parse_wrk(text: &str) -> Result<Measured> {
    let mut m = Measured::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            m.rps = v.trim().parse().context("wrk Requests/sec")?;
        } else if let Some(v) = t.strip_prefix("50%") {
            m.p50 = parse_duration(v.trim())?;
        } else if let Some(v) = t.strip_prefix("99%") {
            m.p99 = parse_duration(v.trim())?;
        } else if t.contains("requests in") {
            m.requests = t
                .split_whitespace()
                .next()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
        } else if let Some(rest) = t.strip_prefix("Non-2xx or 3xx responses:") {
            m.errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            m.errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if m.rps == 0.0 {
        bail!("could not read wrk's report:\n{text}");
    }
    Ok(m)
}

/// Runs h2load (HTTP/2 over cleartext, prior knowledge) with one thread on `cpu`.
pub fn h2load(
    cpu: usize,
    url: &str,
    clients: u32,
    streams: u32,
    duration: Duration,
) -> Result<Measured> {
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string(), "h2load", "-t1"])
        .arg(format!("-c{clients}"))
        .arg(format!("-m{streams}"))
        .arg(format!("-D{}", duration.as_secs().max(1)))
        .arg(url)
        .output()
        .context("running h2load (apt-get install nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_h2load(&text)
}

pub fn parse_h2load(text: &str) -> Result<Measured> {
    let mut m = Measured::default();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("finished in") {
            // "finished in 5.00s, 41234.20 req/s, 45.12MB/s"
            if let Some(rps) = t.split(',').nth(1) {
                m.rps = rps
                    .trim()
                    .trim_end_matches("req/s")
                    .trim()
                    .parse()
                    .context("h2load req/s")?;
            }
        } else if t.starts_with("requests:") {
            // "requests: 206171 total, 206171 started, 206171 done, 206171 succeeded, 0 failed, 0 errored, 0 timeout"
            for part in t.trim_start_matches("requests:").split(',') {
                let mut w = part.split_whitespace();
                let (n, what) = (w.next().unwrap_or("0"), w.next().unwrap_or(""));
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "succeeded" => m.requests = n,
                    "failed" | "errored" | "timeout" => m.errors += n,
                    _ => {}
                }
            }
        } else if let Some(rest) = t.strip_prefix("time for request:") {
            // min max mean sd +/-sd
            let v: Vec<&str> = rest.split_whitespace().collect();
            if v.len() >= 3 {
                m.p99 = parse_duration(v[1])?;
                m.p50 = parse_duration(v[2])?;
            }
        }
    }
    if m.rps == 0.0 {
        bail!("could not read h2load's report:\n{text}");
    }
    Ok(m)
}

/// Runs an iperf3 client with `streams` parallel streams on `cpu` against `addr` (an iperf3
/// server, or a proxy in front of one). `rps` is megabytes per second received by the server,
/// `requests` the megabytes moved.
pub fn iperf3(
    cpu: usize,
    addr: std::net::SocketAddr,
    streams: u32,
    duration: Duration,
) -> Result<Measured> {
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string(), "iperf3", "-J", "-c"])
        .arg(addr.ip().to_string())
        .args(["-p", &addr.port().to_string()])
        .arg(format!("-P{streams}"))
        .arg(format!("-t{}", duration.as_secs().max(1)))
        .output()
        .context("running iperf3 (apt-get install iperf3)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "iperf3 failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_iperf3(&text)
}

pub fn parse_iperf3(text: &str) -> Result<Measured> {
    let v: serde_json::Value = serde_json::from_str(text).context("iperf3 JSON")?;
    let received = &v["end"]["sum_received"];
    let bytes = received["bytes"].as_f64().unwrap_or(0.0);
    let seconds = received["seconds"].as_f64().unwrap_or(0.0);
    if bytes <= 0.0 || seconds <= 0.0 {
        bail!("could not read iperf3's report:\n{text}");
    }
    Ok(Measured {
        requests: (bytes / 1e6) as u64,
        rps: bytes / 1e6 / seconds,
        p50: 0.0,
        p99: 0.0,
        errors: 0,
    })
}

/// "1.23ms", "850.00us", "2.1s" -> seconds.
fn parse_duration(s: &str) -> Result<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let n: f64 = s[..split]
        .parse()
        .with_context(|| format!("duration {s:?}"))?;
    Ok(match &s[split..] {
        "us" => n * 1e-6,
        "ms" => n * 1e-3,
        "s" => n,
        "m" => n * 60.0,
        other => bail!("unknown duration unit {other:?} in {s:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk() {
        let text = "Running 5s test @ http://127.0.0.1:1/1k\n  1 threads and 64 connections\n  Latency Distribution\n     50%  1.20ms\n     75%    1.50ms\n     90%    2.00ms\n     99%  850.00us\n  123456 requests in 5.00s, 150.00MB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:  24691.20\n";
        let m = parse_wrk(text).unwrap();
        assert_eq!(m.requests, 123456);
        assert!((m.rps - 24691.2).abs() < 1e-6);
        assert!((m.p50 - 0.0012).abs() < 1e-9);
        assert!((m.p99 - 0.00085).abs() < 1e-9);
        assert_eq!(m.errors, 3);
    }

    #[test]
    fn reads_iperf3() {
        let text = r#"{"start":{},"end":{"sum_sent":{"bytes":5000000000,"retransmits":2},
            "sum_received":{"seconds":5.0,"bytes":4000000000}}}"#;
        let m = parse_iperf3(text).unwrap();
        assert_eq!(m.requests, 4000);
        assert!((m.rps - 800.0).abs() < 1e-9);
    }

    #[test]
    fn reads_h2load() {
        let text = "finished in 5.00s, 41234.20 req/s, 45.12MB/s\nrequests: 206171 total, 206171 started, 206171 done, 206170 succeeded, 1 failed, 0 errored, 0 timeout\ntime for request:      120us      9.80ms      1.50ms       400us    70.00%\n";
        let m = parse_h2load(text).unwrap();
        assert_eq!(m.requests, 206170);
        assert_eq!(m.errors, 1);
        assert!((m.p50 - 0.0015).abs() < 1e-9);
        assert!((m.p99 - 0.0098).abs() < 1e-9);
    }
}
