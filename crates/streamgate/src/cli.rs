//! The `streamgate` command line: run the daemon, check a config, or run the demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::snapshot_cli::SnapshotCommand;
use crate::{Daemon, demo};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use streamgate_telemetry::logging::{self, LogFormat};
use tracing::{error, info, warn};

/// StreamGate: an L4/L7 global load-balancing reverse proxy.
#[derive(Debug, Parser)]
#[command(name = "streamgate", version, about)]
struct Cli {
    /// Log level or filter (e.g. "info", "streamgate_proxy=debug"); overrides RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    log_format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon with a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// If the file does not validate, start from the newest last known good copy (kept
        /// under [snapshots] dir each time a config loads), loudly.
        #[arg(long)]
        fallback_last_good: bool,
        /// Where the last known good copies are (default: <snapshots.dir>/config).
        #[arg(long)]
        last_good_dir: Option<PathBuf>,
    },
    /// Validate a config file: exit 0 if it is valid, 1 with every error otherwise.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Also say what the file changes against the newest last known good copy.
        #[arg(long)]
        against_last_good: bool,
        #[arg(long)]
        last_good_dir: Option<PathBuf>,
    },
    /// Run the daemon on config/demo.toml with three local demo origins, one per region.
    Demo {
        /// Another demo config to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Work with recovery points (cache snapshots, see [snapshots] in the config).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

/// Runs the command line with the process arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format {
        Format::Human => LogFormat::Human,
        Format::Json => LogFormat::Json,
    };
    if let Err(e) = logging::init(cli.log_level.as_deref(), format) {
        eprintln!("streamgate: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Check {
            config,
            against_last_good,
            last_good_dir,
        } => return check(&config, against_last_good.then_some(last_good_dir)),
        Command::Snapshot { command } => return crate::snapshot_cli::run(command),
        Command::Run {
            config,
            fallback_last_good,
            last_good_dir,
        } => crate::last_good::load(&config, fallback_last_good, last_good_dir)
            .and_then(|c| run_daemon(c, None)),
        Command::Demo { config } => {
            let path = config.unwrap_or_else(demo::default_config_path);
            load(&path).and_then(|c| run_daemon(c, Some(&path)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("streamgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `against`: also diff against the last known good copy (in this directory, if given).
fn check(path: &Path, against: Option<Option<PathBuf>>) -> ExitCode {
    let checked = match streamgate_config::load(path) {
        Ok(c) => crate::daemon::check_files(&c)
            .map(|()| c)
            .map_err(|e| format!("{}: {e:#}", path.display())),
        Err(e) => Err(e.to_string()),
    };
    match checked {
        Ok(c) => {
            println!(
                "{}: OK ({} listeners, {} regions, {} services)",
                path.display(),
                c.listeners.len(),
                c.regions.len(),
                c.services.len()
            );
            if let Some(dir) = against
                && let Err(e) = crate::last_good::check_against(path, &c, dir)
            {
                eprintln!("{e:#}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<streamgate_config::Config> {
    Ok(streamgate_config::load(path)?)
}

fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let workers =
        workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut builder = if workers == 1 {
        // One worker: a single-threaded scheduler does the same work without cross-thread wakeups.
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .thread_name("streamgate-worker")
        .build()
        .context("cannot start the runtime")
}

fn run_daemon(config: streamgate_config::Config, demo_config: Option<&Path>) -> Result<()> {
    // Before anything opens: the descriptor limit sets how many clients fit
    // (`streamgate_proxy::descriptors`).
    if let Err(e) = streamgate_proxy::descriptors::raise_soft_limit() {
        warn!(error = %e, "cannot raise the soft descriptor limit to the hard one");
    }
    let rt = runtime(config.runtime.workers.map(|w| w.get()))?;
    rt.block_on(async move {
        // Before anything listens: a signal that arrives while we start must not take the
        // default action (SIGHUP, SIGUSR1 and SIGTERM all end the process).
        let mut signals = Signals::install().context("cannot install signal handlers")?;
        if let Some(path) = demo_config {
            start_demo_origins(&config, path).await?;
        }
        let grace = config.runtime.shutdown_timeout;
        let daemon = Daemon::start(config).await?;
        if let Some(path) = demo_config {
            print_demo_help(&daemon, path);
        }
        let _watcher = streamgate_control::reload::watch_config(
            daemon.control.clone(),
            Duration::from_millis(300),
        );
        signals.serve(&daemon).await;
        info!(deadline = ?grace, "shutting down: no new connections; finishing in-flight requests");
        let drained = tokio::select! {
            d = daemon.shutdown(grace) => d,
            _ = signals.stop() => {
                warn!("second stop signal: exiting now");
                false
            }
        };
        if drained {
            info!("all connections closed; bye");
        } else {
            warn!("shutdown deadline passed with requests still in flight; they were cut off");
        }
        Ok(())
    })
}

/// The signals the daemon answers, registered once at start.
struct Signals {
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Handles SIGHUP (reload) and SIGUSR1 (reopen the access log) until SIGTERM or SIGINT.
    async fn serve(&mut self, daemon: &Daemon) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    info!("SIGHUP: reloading the configuration");
                    daemon.control.reload(true).await;
                }
                _ = self.usr1.recv() => {
                    if let Some(log) = daemon.access_log.load().as_ref() {
                        info!("SIGUSR1: reopening the access log");
                        log.reopen();
                    }
                }
            }
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn start_demo_origins(config: &streamgate_config::Config, path: &Path) -> Result<()> {
    for region in &config.regions {
        for b in &region.backends {
            demo::start_origin(region.name.clone(), b.address)
                .await
                .with_context(|| format!("demo config {}", path.display()))?;
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_demo_help(daemon: &Daemon, path: &Path) {
    let Some((_, web)) = daemon.listeners().first() else {
        return;
    };
    println!("\nStreamGate demo is running ({}). Try:\n", path.display());
    println!("  curl -s http://{web}/                          # a client from 127.0.0.1");
    println!("  curl -s --http2-prior-knowledge http://{web}/  # the same over HTTP/2");
    println!(
        "  curl -s --interface 127.0.1.5 http://{web}/    # a client in Frankfurt (synthetic geo DB)"
    );
    println!("  curl -s --interface 127.0.3.5 http://{web}/    # a client in Tokyo");
    println!(
        "  curl -s -H 'X-Forwarded-For: 198.51.100.7' http://{web}/   # trusted proxy header: Virginia"
    );
    println!("  curl -s -H 'Host: nobody.example' http://{web}/  # no service claims it: 404");
    println!("\nStop with Ctrl-C.\n");
}
