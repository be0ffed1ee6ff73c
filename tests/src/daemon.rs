//! Starting StreamGate for a test: in this process (the real listeners and data plane) or as the
//! real binary in a child process (signals, memory, logs).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;
use streamgate::Daemon;
use tempfile::TempDir;

use crate::client::{http1, send};

/// Adds `[admin] listen = "127.0.0.1:0"` unless the config has an admin table, so tests never
/// collide on the default admin port.
pub fn with_test_admin(text: &str) -> String {
    if text.contains("[admin]") {
        text.to_string()
    } else {
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{text}")
    }
}

/// Writes `text` as `streamgate.toml` in a new temporary directory.
pub fn write_config(text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("streamgate.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Path of a file under the repository's `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

/// A daemon running in this test process.
#[derive(Debug)]
pub struct TestDaemon {
    pub daemon: Daemon,
    pub dir: TempDir,
    pub config_path: PathBuf,
}

impl TestDaemon {
    /// Parses `text` (as a file in a temp dir) and starts the daemon on it.
    pub async fn start(text: &str) -> TestDaemon {
        let (dir, config_path) = write_config(&with_test_admin(text));
        let config = streamgate_config::load(&config_path)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        // As the binary does at start, so that every daemon in this process gets the same
        // connection budget whichever test raised the limit first.
        let _ = streamgate_proxy::descriptors::raise_soft_limit();
        let daemon = Daemon::start(config).await.expect("daemon starts");
        TestDaemon {
            daemon,
            dir,
            config_path,
        }
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.daemon
            .listener_addr(name)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{}", self.addr(listener), path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.daemon.admin_addr(), path)
    }

    /// One admin API call; see [`admin_call`].
    pub async fn admin(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        admin_call(method, &self.admin_url(path), &[], body).await
    }

    /// The admin API's `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_at(&self.admin_url("/metrics")).await
    }

    /// `streamgate_limited_total{limit,listener="web"}`: what `limit` refused on listener "web".
    pub async fn limited(&self, limit: &str) -> f64 {
        let m = self.metrics().await;
        let series = format!("streamgate_limited_total{{limit=\"{limit}\",listener=\"web\"}}");
        metric(&m, &series).unwrap_or_else(|| panic!("no {series} in\n{m}"))
    }

    /// Replaces the daemon's config file with `text` (and the test admin table); nothing is
    /// reloaded.
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(&self.config_path, with_test_admin(text)).unwrap();
    }
}

/// One admin API call: `body` sent as JSON (`""` for none) with `headers`; the status and the
/// answer as JSON (`Null` when it is not JSON).
pub async fn admin_call(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Value) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let a = send(&http1(), method, url, &all, Bytes::from(body.to_string()))
        .await
        .unwrap();
    (
        a.status,
        serde_json::from_slice(&a.body).unwrap_or(Value::Null),
    )
}

async fn metrics_at(url: &str) -> String {
    crate::client::get(&http1(), url, &[]).await.unwrap().text()
}

/// The daemon binary running as a child process, its log lines collected.
#[derive(Debug)]
pub struct DaemonProcess {
    pub child: Child,
    pub listeners: Vec<(String, SocketAddr)>,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub dir: TempDir,
    pub config_path: PathBuf,
}

impl DaemonProcess {
    /// Starts `bin run --config <text>` with JSON logs and waits until every listener in
    /// `expect_listeners` logged its bound address.
    pub fn start(bin: &str, text: &str, expect_listeners: &[&str]) -> DaemonProcess {
        DaemonProcess::spawn(Command::new(bin), text, expect_listeners)
    }

    /// [`DaemonProcess::start`] under a descriptor limit of `nofile` (soft and hard), set by
    /// util-linux's `prlimit`.
    pub fn start_with_nofile(
        bin: &str,
        nofile: u64,
        text: &str,
        expect_listeners: &[&str],
    ) -> DaemonProcess {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}")).arg(bin);
        DaemonProcess::spawn(cmd, text, expect_listeners)
    }

    fn spawn(mut cmd: Command, text: &str, expect_listeners: &[&str]) -> DaemonProcess {
        let (dir, config_path) = write_config(&with_test_admin(text));
        let mut child = cmd
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut listeners = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while listeners.len() < expect_listeners.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "daemon did not report its listeners; log:\n{}",
                    logs.lock().unwrap().join("\n")
                )
            });
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "listening"
            {
                let name = v["listener"].as_str().unwrap_or_default().to_string();
                let addr: SocketAddr = v["address"].as_str().unwrap_or_default().parse().unwrap();
                listeners.push((name, addr));
            }
        }
        DaemonProcess {
            child,
            listeners,
            logs,
            dir,
            config_path,
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap()
    }

    /// The admin API's URL for `path` (the daemon must have been started expecting "admin").
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr("admin"), path)
    }

    /// One admin API call; see [`admin_call`].
    pub async fn admin(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        admin_call(method, &self.admin_url(path), &[], body).await
    }

    /// The admin API's `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_at(&self.admin_url("/metrics")).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many file descriptors the daemon has open, from /proc.
    pub fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// Sends a signal by name ("TERM", "HUP", ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Peak resident memory so far, from /proc (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM") * 1024
    }

    pub fn rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS") * 1024
    }

    /// Log lines so far, parsed as JSON.
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The JSON lines of an access log written so far (none while the file does not exist; a line
/// being written is left out).
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The value of one series (`name{labels}`, written as the text shows it) in Prometheus text,
/// if it is exported.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
