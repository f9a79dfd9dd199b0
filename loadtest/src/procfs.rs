//! CPU time and memory of server processes, read from /proc (Linux).

/// utime + stime of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture this runs on.
    100.0
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3, the state, is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The parent of a process.
pub fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// CPU of a process and of every child it has: its own utime + stime, what its exited and reaped
/// children used (cutime + cstime), and each living child's utime + stime. For PostgreSQL's
/// postmaster that is the whole server: every backend, the WAL writer, the checkpointer, autovacuum.
pub fn tree_cpu(pid: u32) -> Option<f64> {
    let own = stat_fields(pid)?;
    let ticks = |f: &[String], from: usize, n: usize| -> f64 {
        f.iter().skip(from).take(n).filter_map(|v| v.parse::<f64>().ok()).sum::<f64>()
    };
    // utime, stime, cutime, cstime are fields 14-17: indexes 11-14 here.
    let mut total = ticks(&own, 11, 4);
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(f) = stat_fields(child) {
            if f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
                total += ticks(&f, 11, 2);
            }
        }
    }
    Some(total / clock_ticks())
}

/// This process's own CPU (the load generator's).
pub fn own_cpu() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// The process's command name (`/proc/<pid>/comm`).
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_owned())
}

/// Busy and total jiffies of the whole machine (`/proc/stat`'s first line).
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

/// The CPUs a process may run on (`Cpus_allowed_list`, e.g. `0-1`; `taskset` changes it).
pub fn cpus_allowed(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|v| v.trim().to_owned())
}
