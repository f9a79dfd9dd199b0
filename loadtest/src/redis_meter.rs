//! The Redis processes of a run (`--redis-pid`: one server, or every primary and replica of a Redis
//! Cluster), each measured on its own: its CPU from `/proc`, and the PUBLISH/SPUBLISH calls and
//! commands it served from `INFO`, asked over a plain TCP connection to the port its command line
//! names. That shows how the bus's load spreads over a cluster's primaries, and what the replicas
//! cost (a primary forwards each SPUBLISH to its replicas over the cluster bus, where it is not a
//! command: a replica's `publishes` stay 0 while its CPU grows).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde::Serialize;

use crate::procfs;

/// One Redis process, as found when the run starts.
#[derive(Debug, Clone, Serialize)]
pub struct RedisProcess {
    pub pid: u32,
    /// From its command line (`redis-server 127.0.0.1:PORT [cluster]`, or `--port PORT`).
    pub port: Option<u16>,
    /// `master` or `slave`, from `INFO replication`.
    pub role: Option<String>,
    /// In a Redis Cluster, the hash slots it serves (its own line of `CLUSTER NODES`), e.g. `0-5460`.
    pub slots: Option<String>,
}

/// What one process has done so far, read at a step's start or end.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    cpu_s: Option<f64>,
    publishes: Option<u64>,
    commands: Option<u64>,
}

/// One process's work between two samples.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    #[serde(flatten)]
    pub process: RedisProcess,
    pub cpu_s: f64,
    pub cpu_s_per_million_deliveries: Option<f64>,
    /// Its share of every measured Redis process's CPU.
    pub cpu_share: Option<f64>,
    /// PUBLISH + SPUBLISH calls its clients made (`INFO commandstats`).
    pub publishes: Option<u64>,
    /// Every command it served (`total_commands_processed`).
    pub commands: Option<u64>,
}

pub struct Meter {
    processes: Vec<RedisProcess>,
}

impl Meter {
    pub fn new(pids: &[u32]) -> Meter {
        let processes = pids
            .iter()
            .map(|&pid| {
                let port = port_of(pid);
                let role = port.and_then(|p| info_field(p, "replication", "role"));
                let slots = port.and_then(own_slots);
                RedisProcess { pid, port, role, slots }
            })
            .collect();
        Meter { processes }
    }

    pub fn read(&self) -> Vec<Sample> {
        self.processes
            .iter()
            .map(|p| {
                let info = p.port.and_then(|port| bulk(port, "INFO stats commandstats"));
                let field = |name: &str| info.as_deref().and_then(|i| field(i, name));
                let calls = |command: &str| {
                    field(&format!("cmdstat_{command}")).and_then(|v| {
                        v.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|c| c.parse::<u64>().ok())
                    })
                };
                Sample {
                    cpu_s: procfs::cpu_seconds(p.pid),
                    // A command never called has no line: count it as 0 once INFO answered.
                    publishes: info.as_ref().map(|_| calls("publish").unwrap_or(0) + calls("spublish").unwrap_or(0)),
                    commands: field("total_commands_processed").and_then(|v| v.parse().ok()),
                }
            })
            .collect()
    }

    /// Each process's work from `before` to `after`, with CPU per million of the `deliveries`
    /// the run counted over the same span.
    pub fn usage(&self, before: &[Sample], after: &[Sample], deliveries: u64) -> Vec<Usage> {
        let cpu: Vec<f64> =
            before.iter().zip(after).map(|(b, a)| a.cpu_s.zip(b.cpu_s).map_or(0.0, |(a, b)| a - b)).collect();
        let total: f64 = cpu.iter().sum();
        self.processes
            .iter()
            .zip(before.iter().zip(after))
            .zip(cpu)
            .map(|((process, (b, a)), cpu_s)| Usage {
                process: process.clone(),
                cpu_s,
                cpu_s_per_million_deliveries: (deliveries > 0).then(|| cpu_s / deliveries as f64 * 1e6),
                cpu_share: (total > 0.0).then(|| cpu_s / total),
                publishes: a.publishes.zip(b.publishes).map(|(a, b)| a.saturating_sub(b)),
                commands: a.commands.zip(b.commands).map(|(a, b)| a.saturating_sub(b)),
            })
            .collect()
    }
}

/// The total CPU of a step's usages.
pub fn total_cpu(usage: &[Usage]) -> f64 {
    usage.iter().map(|u| u.cpu_s).sum()
}

/// One line per process: `port role CPU (share) publishes`.
pub fn describe(usage: &[Usage]) -> String {
    usage
        .iter()
        .map(|u| {
            format!(
                "{} {} {:.2} s ({:.0}%) {} pub",
                u.process.port.map_or_else(|| format!("pid {}", u.process.pid), |p| p.to_string()),
                u.process.role.as_deref().unwrap_or("?"),
                u.cpu_s,
                u.cpu_share.unwrap_or(0.0) * 100.0,
                u.publishes.map_or("?".into(), |p| p.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The port a redis-server listens on, from its command line: Redis rewrites its process title
/// to `redis-server ADDR:PORT`, or it was started with `--port PORT`.
fn port_of(pid: u32) -> Option<u16> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    if let Some(i) = words.iter().position(|w| *w == "--port") {
        return words.get(i + 1)?.parse().ok();
    }
    words.iter().skip(1).find_map(|w| w.rsplit_once(':').and_then(|(_, port)| port.parse().ok()))
}

/// A command's bulk-string reply (`INFO`, `CLUSTER NODES`), or None on an error or no answer.
fn bulk(port: u16, command: &str) -> Option<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    // An inline command: words separated by spaces, ended by CRLF.
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let len: usize = header.trim_end().strip_prefix('$')?.parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

/// `name:value` from an `INFO` reply.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

fn info_field(port: u16, section: &str, name: &str) -> Option<String> {
    bulk(port, &format!("INFO {section}")).as_deref().and_then(|i| field(i, name)).map(str::to_owned)
}

/// The slots of the node's own line of `CLUSTER NODES` (`myself` among its flags); None outside
/// a cluster, and for a replica (which serves none).
fn own_slots(port: u16) -> Option<String> {
    let nodes = bulk(port, "CLUSTER NODES")?;
    let line = nodes.lines().find(|l| l.split_whitespace().nth(2).is_some_and(|f| f.contains("myself")))?;
    let slots: Vec<&str> = line.split_whitespace().skip(8).filter(|s| !s.starts_with('[')).collect();
    (!slots.is_empty()).then(|| slots.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields() {
        let info = "# Stats\r\ntotal_commands_processed:42\r\n# Commandstats\r\n\
                    cmdstat_spublish:calls=7,usec=70,usec_per_call=10.00\r\n";
        assert_eq!(field(info, "total_commands_processed"), Some("42"));
        assert_eq!(field(info, "cmdstat_spublish"), Some("calls=7,usec=70,usec_per_call=10.00"));
        assert_eq!(field(info, "cmdstat_publish"), None);
    }
}
