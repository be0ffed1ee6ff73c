//! The real StreamGate binary started for a benchmark: free loopback ports for its listener
//! and admin API, a config written to a temporary directory, optionally pinned to one core.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::net::TcpStream;

/// A running daemon; killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    /// The address of the listener named `web`.
    pub web: SocketAddr,
    pub admin: SocketAddr,
    _dir: TempDir,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts `binary` on the config `config(web, admin)` returns (it must listen on `web` with a
/// listener named "web" and put the admin API on `admin`), pinned to `cpu` if given, and waits
/// until `web` accepts connections.
pub fn start(
    binary: &Path,
    config: impl FnOnce(SocketAddr, SocketAddr) -> String,
    cpu: Option<usize>,
    log_level: &str,
) -> Result<Daemon> {
    let (web, admin) = (free_addr()?, free_addr()?);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("streamgate.toml");
    std::fs::write(&path, config(web, admin))?;
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    let child = cmd
        .args(["--log-level", log_level, "run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut daemon = Daemon {
        child,
        web,
        admin,
        _dir: dir,
    };
    for _ in 0..500 {
        if std::net::TcpStream::connect(web).is_ok() {
            return Ok(daemon);
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            bail!("streamgate exited with {status} before listening (check its config)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("streamgate did not start listening on {web} within 5 s")
}

/// `GET` on the admin API, body as text.
pub async fn admin_get(admin: SocketAddr, path: &str) -> Result<String> {
    let stream = TcpStream::connect(admin).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "admin")
        .body(Empty::<Bytes>::new())?;
    let body = tx.send_request(req).await?.into_body().collect().await?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).trim().to_string())
}

/// The binary to measure: `given`, or this workspace's release build (built now, with
/// progress on the terminal).
pub fn streamgate_binary(given: Option<std::path::PathBuf>) -> Result<std::path::PathBuf> {
    if let Some(b) = given {
        return Ok(b);
    }
    eprintln!("building streamgate (release)...");
    let ok = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "streamgate"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()?
        .success();
    if !ok {
        bail!("cargo build --release -p streamgate failed");
    }
    Ok(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/streamgate").into())
}
