//! `--proxy-share`: each proxy in a cgroup of its own that caps it to a share of its core.
//!
//! Without a cap, the load core (wrk or h2load and the origin) saturates first in the 1 KiB
//! scenarios, so requests per second measure what each proxy costs that core: its wake-ups
//! and the fields the origin parses, not the proxy's own capacity (docs/benchmarks.md,
//! "Profile-guided builds"). Capped, the proxy sets the pace, and requests per second compare
//! what each proxy serves with the same CPU.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The quota is enforced per period: a short one spreads a proxy's time evenly, where the
/// default 100 ms would run it flat out for half the period and stop it for the other half.
const PERIOD_US: u64 = 10_000;

/// A cgroup with a CPU quota; removed on drop (after the proxy in it has been stopped).
#[derive(Debug)]
pub struct CpuShare {
    dir: PathBuf,
}

impl CpuShare {
    /// A cgroup named for `name` and this process, capped to `percent` of one core. cgroup v2
    /// (`cpu.max`) where it is mounted at /sys/fs/cgroup, else v1's cpu controller.
    pub fn create(name: &str, percent: u32) -> Result<CpuShare> {
        let quota = PERIOD_US * u64::from(percent) / 100;
        let leaf = format!("streamgate-loadbench-{}-{name}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let v1 = Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
        let dir = if v2.exists() {
            let dir = Path::new("/sys/fs/cgroup").join(&leaf);
            // Already enabled on most systems; this fails harmlessly where it is.
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu");
            make(&dir)?;
            write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            dir
        } else if v1.exists() {
            let dir = Path::new("/sys/fs/cgroup/cpu").join(&leaf);
            make(&dir)?;
            write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            dir
        } else {
            bail!(
                "--proxy-share needs a cgroup CPU controller (cgroup v2 at /sys/fs/cgroup, or v1 \
                 at /sys/fs/cgroup/cpu); neither is mounted here"
            );
        };
        Ok(CpuShare { dir })
    }

    /// `program` pinned to `cpu` inside this cgroup: a shell moves itself in, then execs
    /// taskset, which execs the program, so the proxy keeps the pid the caller sees and every
    /// process and thread it starts inherits the cgroup.
    pub fn command(&self, cpu: usize, program: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0" && exec taskset -c "$@""#)
            .arg(self.dir.join("cgroup.procs"))
            .arg(cpu.to_string())
            .arg(program);
        c
    }
}

impl Drop for CpuShare {
    fn drop(&mut self) {
        // Fails while a process is still inside: the proxy has been stopped by then, but a
        // worker it started (nginx's, Varnish's child) may take a moment longer to exit.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("could not remove the cgroup {}", self.dir.display());
    }
}

fn make(dir: &Path) -> Result<()> {
    std::fs::create_dir(dir).with_context(|| {
        format!(
            "creating the cgroup {} for --proxy-share (needs root)",
            dir.display()
        )
    })
}

fn write(file: &Path, value: &str) -> Result<()> {
    std::fs::write(file, value).with_context(|| format!("writing {value} to {}", file.display()))
}
