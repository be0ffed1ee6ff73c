//! A process's resources as Linux reports them under /proc.

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`, ...), 0 if unreadable.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) the process has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    cpu_seconds_of(&stat)
}

/// utime + stime of a /proc/PID/stat line, in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds_of(stat: &str) -> f64 {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Open file descriptors of the process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(status_kib(me, "VmRSS") > 0);
        assert!(open_fds(me) >= 3);
        assert_eq!(status_kib(me, "NoSuchField"), 0);
    }

    #[test]
    fn stat_with_spaces_in_the_name() {
        let line = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 130 0 0 20 0";
        assert!((cpu_seconds_of(line) - 3.8).abs() < 1e-9);
    }
}
