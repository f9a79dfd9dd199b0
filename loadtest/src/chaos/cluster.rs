//! The `script/server --detach` cluster the scenario breaks: its nodes (from the cluster's pids
//! file; each restarted with the binary, working directory and environment it ran with, read from
//! /proc), its private Redis and PostgreSQL (through `script/lib.sh`, which started them), or in
//! `CHORUS_REDIS_MODE=cluster` its Redis Cluster (`redis_cluster.rs`). Only processes of this
//! cluster are ever signalled: the machine's own services are never touched.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Node {
    pub name: String,
    pub port: u16,
    pub pid: u32,
    bin: PathBuf,
    cwd: PathBuf,
    env: Vec<(OsString, OsString)>,
}

impl Node {
    pub fn env(&self, key: &str) -> Option<String> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.to_string_lossy().into_owned())
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }
}

/// How the nodes use Redis (their `CHORUS_REDIS_MODE`): the faults differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RedisMode {
    Single,
    Cluster,
}

impl RedisMode {
    pub fn name(self) -> &'static str {
        match self {
            RedisMode::Single => "single",
            RedisMode::Cluster => "cluster",
        }
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub redis_mode: RedisMode,
    /// The Redis the nodes were given: the one server, or the Redis Cluster's seed nodes.
    pub redis_ports: Vec<u16>,
    pub redis_port: u16,
    pub pg_port: u16,
    lib_sh: PathBuf,
    children: Vec<tokio::process::Child>,
}

/// The port of a `scheme://host:port/...` URL.
fn url_port(url: &str) -> Option<u16> {
    let rest = url.split("://").nth(1)?;
    let host_port = rest.split('/').next()?;
    let host_port = host_port.rsplit('@').next()?;
    host_port.rsplit(':').next()?.parse().ok()
}

/// True while `pid` exists and is not a zombie.
pub fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|at| stat.get(at + 2..at + 3)).is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

pub fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let status = std::process::Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -s {sig} {pid} failed"))
    }
}

pub async fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while running(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The body of `GET path` on 127.0.0.1:port (HTTP/1.0: the body runs to the end), if it answers
/// within two seconds.
pub async fn http_body(port: u16, path: &str) -> Option<String> {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten()
}

/// The status of `GET path` on 127.0.0.1:port, if it answers within a second.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), attempt).await.ok().flatten()
}

impl Cluster {
    /// Reads the cluster `script/server --detach` started in `dir`.
    pub fn open(dir: &Path) -> Result<Cluster, String> {
        let pids = std::fs::read_to_string(dir.join("pids")).map_err(|e| {
            format!("{}: {e} (start the cluster with script/server --detach)", dir.join("pids").display())
        })?;
        let mut latest: HashMap<String, u32> = HashMap::new();
        let mut order = Vec::new();
        for line in pids.lines() {
            let mut words = line.split_whitespace();
            let (Some(name), Some(pid)) = (words.next(), words.next().and_then(|p| p.parse().ok())) else { continue };
            if !name.starts_with("node-") || !running(pid) {
                continue;
            }
            if !latest.contains_key(name) {
                order.push(name.to_owned());
            }
            latest.insert(name.to_owned(), pid);
        }
        let mut nodes = Vec::new();
        for name in order {
            let pid = latest[&name];
            let environ = std::fs::read(format!("/proc/{pid}/environ")).map_err(|e| format!("{name}: environ: {e}"))?;
            let env: Vec<(OsString, OsString)> = environ
                .split(|b| *b == 0)
                .filter_map(|kv| {
                    let at = kv.iter().position(|b| *b == b'=')?;
                    Some((OsString::from_vec(kv[..at].to_vec()), OsString::from_vec(kv[at + 1..].to_vec())))
                })
                .collect();
            let bin = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| format!("{name}: exe: {e}"))?;
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(|e| format!("{name}: cwd: {e}"))?;
            let mut node = Node { name: name.clone(), port: 0, pid, bin, cwd, env };
            node.port = node
                .env("CHORUS_BIND")
                .as_deref()
                .and_then(|b| b.rsplit(':').next()?.parse().ok())
                .ok_or(format!("{name}: no CHORUS_BIND in its environment"))?;
            nodes.push(node);
        }
        nodes.sort_by_key(|n| n.name.trim_start_matches("node-").parse::<u32>().unwrap_or(0));
        let first = nodes.first().ok_or("no running node in the pids file")?;
        let redis_mode = match first.env("CHORUS_REDIS_MODE").as_deref().unwrap_or("single") {
            "single" => RedisMode::Single,
            "cluster" => RedisMode::Cluster,
            other => return Err(format!("the nodes run CHORUS_REDIS_MODE={other}: chaos knows single and cluster")),
        };
        let redis_url = first.env("REDIS_URL").ok_or("the nodes have no REDIS_URL")?;
        // In cluster mode a comma-separated list of seed nodes.
        let redis_ports: Vec<u16> = redis_url.split(',').filter_map(url_port).collect();
        let redis_port = *redis_ports.first().ok_or("no port in REDIS_URL")?;
        let pg_port = first.env("DATABASE_URL").as_deref().and_then(url_port).ok_or("no port in DATABASE_URL")?;
        let lib_sh = first.cwd.join("script/lib.sh");
        if !lib_sh.exists() {
            return Err(format!("{} not found (the nodes' working directory is not the repository)", lib_sh.display()));
        }
        Ok(Cluster {
            dir: dir.to_owned(),
            nodes,
            redis_mode,
            redis_ports,
            redis_port,
            pg_port,
            lib_sh,
            children: Vec::new(),
        })
    }

    /// Sends `sig` to node `i` and waits (up to `within`) for it to exit.
    pub async fn stop_node(&mut self, i: usize, sig: &str, within: Duration) -> Result<(), String> {
        let pid = self.nodes[i].pid;
        signal(pid, sig)?;
        self.reap();
        if wait_gone(pid, within).await {
            return Ok(());
        }
        signal(pid, "KILL")?;
        wait_gone(pid, Duration::from_secs(5)).await;
        Err(format!("{} (pid {pid}) did not exit within {within:?} of SIG{sig}", self.nodes[i].name))
    }

    /// Starts node `i` again as it ran (appending to its log, recorded in the pids file so that
    /// `script/server --stop` stops it) and waits until `/readyz` answers 200 (or `/healthz`, when
    /// `ready` is false: readiness needs Redis).
    pub async fn start_node(&mut self, i: usize, ready: bool) -> Result<(), String> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", node.name)))
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(&node.bin)
            .env_clear()
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&node.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group, as script/server's setsid: a Ctrl-C of the generator is not its.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start {}: {e}", node.name))?;
        let pid = child.id().ok_or("no pid")?;
        self.children.push(child);
        let mut pids = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("pids"))
            .map_err(|e| format!("pids file: {e}"))?;
        writeln!(pids, "{} {pid} {}", node.name, node.bin.display()).map_err(|e| e.to_string())?;
        let (name, port) = (node.name.clone(), node.port);
        self.nodes[i].pid = pid;
        let path = if ready { "/readyz" } else { "/healthz" };
        let deadline = Instant::now() + Duration::from_secs(90);
        while http_status(port, path).await != Some(200) {
            if !running(pid) {
                return Err(format!("{name} exited on start (see {}/{name}.log)", self.dir.display()));
            }
            if Instant::now() > deadline {
                return Err(format!("{name} not answering 200 on {path} after 90 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn reap(&mut self) {
        self.children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }

    fn redis_dir(&self) -> PathBuf {
        self.dir.join("redis")
    }

    pub fn redis_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.redis_dir().join("redis.pid")).ok()?.trim().parse().ok()
    }

    pub async fn kill_redis(&mut self) -> Result<(), String> {
        let pid = self.redis_pid().ok_or("no redis.pid")?;
        if !std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("redis-server")) {
            return Err(format!("pid {pid} is not this cluster's redis-server"));
        }
        signal(pid, "KILL")?;
        wait_gone(pid, Duration::from_secs(5)).await;
        Ok(())
    }

    pub async fn start_redis(&self) -> Result<(), String> {
        let dir = self.redis_dir();
        self.lib(&format!("start_private_redis {} {}", quote(&dir), self.redis_port)).await
    }

    /// Cluster mode: starts the Redis Cluster node of `port` again on its directory, as
    /// script/server started it (its nodes.conf makes it rejoin as the node it was); returns its pid,
    /// recorded in the pids file as script/server records them.
    pub async fn start_cluster_redis(&mut self, port: u16) -> Result<u32, String> {
        let dir = self.dir.join("redis-cluster").join(port.to_string());
        if !dir.join("nodes.conf").exists() {
            return Err(format!("{}: no nodes.conf (not a script/server Redis Cluster node)", dir.display()));
        }
        self.lib(&format!("start_cluster_redis {} {port}", quote(&dir))).await?;
        let pid: u32 = std::fs::read_to_string(dir.join("redis.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| format!("{}: no redis.pid after the start", dir.display()))?;
        let mut pids = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("pids"))
            .map_err(|e| format!("pids file: {e}"))?;
        writeln!(pids, "redis-{port} {pid} redis-server").map_err(|e| e.to_string())?;
        Ok(pid)
    }

    pub async fn stop_postgres(&self) -> Result<(), String> {
        self.lib(&format!("stop_private_postgres {}", quote(&self.dir.join("postgres")))).await
    }

    pub async fn start_postgres(&self) -> Result<(), String> {
        self.lib(&format!("start_private_postgres {} {}", quote(&self.dir.join("postgres")), self.pg_port)).await
    }

    /// Runs a `script/lib.sh` function (the ones script/server started these services with).
    async fn lib(&self, call: &str) -> Result<(), String> {
        let script = format!("set -euo pipefail; source {}; {call}", quote(&self.lib_sh));
        let out = tokio::process::Command::new("bash")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("bash: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{call}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
