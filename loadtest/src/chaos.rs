//! `--scenario chaos`: faults under load, with the load generator as the checker.
//!
//! Against a cluster `script/server --detach` started (`--chaos-cluster-dir`), users in rooms of
//! `--room-size` and of 2 chat through the bundled nginx while a schedule of faults runs, one named
//! step at a time with a start and an end: a node SIGKILLed then restarted, another drained
//! (SIGTERM) then restarted, Redis killed and restarted, PostgreSQL restarted, one node cut off
//! from Redis (through a proxy in this process, `proxy.rs`) then healed, and a user that stops
//! reading. Against a Redis Cluster (`CHORUS_REDIS_MODE=cluster`) the Redis fault is a primary
//! SIGKILLed, its replica promoted, and the killed server started again to rejoin as a replica
//! (`redis_cluster.rs`). Users reconnect and `sync` as PROTOCOL.md §10 says (`member.rs`). At the end every
//! acknowledged message is checked against every member of its room: received exactly once (after
//! seq de-duplication) and in order, live or by sync. The run fails on any acknowledged message
//! lost, any seq delivered out of order on the live stream, any seq carrying two different
//! messages, or any committed message some member never got. `report.rs` writes the figures per
//! fault (`--chaos-doc`, docs/RESILIENCE.md) and a timeline SVG beside it; `--chaos-render`
//! writes one document from the JSON reports of several runs (one per Redis mode).

mod cluster;
mod member;
mod proxy;
mod redis_cluster;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::setup;
use cluster::{Cluster, RedisMode};
use member::{Final, Live, Shared, Spec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL of the first node, restarted after `--chaos-fault-s`.
    NodeKill,
    /// SIGTERM of the second node (drain: sockets closed with 1012), restarted once it exits.
    NodeDrain,
    /// Redis SIGKILLed, restarted after `--chaos-fault-s` (empty: it keeps nothing).
    RedisRestart,
    /// PostgreSQL stopped (fast shutdown), started again after `--chaos-fault-s`.
    PostgresRestart,
    /// The last node's Redis traffic blackholed for `--chaos-fault-s` (connections stay open).
    Partition,
    /// One user of a large room stops reading for 2 × `--chaos-fault-s`.
    SlowConsumer,
    /// Redis Cluster: SIGKILL of the primary serving the most of the run's messages; once its
    /// replica is promoted and `--chaos-fault-s` have passed, it is started again (a replica now).
    PrimaryKill,
}

impl FaultKind {
    fn name(self) -> &'static str {
        match self {
            FaultKind::NodeKill => "node-kill",
            FaultKind::NodeDrain => "node-drain",
            FaultKind::RedisRestart => "redis-restart",
            FaultKind::PostgresRestart => "postgres-restart",
            FaultKind::Partition => "partition",
            FaultKind::SlowConsumer => "slow-consumer",
            FaultKind::PrimaryKill => "primary-kill",
        }
    }

    /// Whether the fault means anything against this Redis. A cluster does not go down as a
    /// whole when one server does (`redis-restart`), and its nodes learn the other members'
    /// addresses from the cluster, so one proxy cannot stand between a node and all of Redis
    /// (`partition`); a single Redis has no primary to fail over (`primary-kill`).
    fn fits(self, mode: RedisMode) -> bool {
        match self {
            FaultKind::RedisRestart | FaultKind::Partition => mode == RedisMode::Single,
            FaultKind::PrimaryKill => mode == RedisMode::Cluster,
            _ => true,
        }
    }
}

/// The faults a run has when `--chaos-faults` does not say: every one that fits the Redis mode, the
/// node faults last (until then users are spread over every node). The slow consumer does not
/// involve Redis: it runs once, against a single Redis.
fn default_faults(mode: RedisMode) -> Vec<FaultKind> {
    match mode {
        RedisMode::Single => vec![
            FaultKind::RedisRestart,
            FaultKind::Partition,
            FaultKind::PostgresRestart,
            FaultKind::SlowConsumer,
            FaultKind::NodeDrain,
            FaultKind::NodeKill,
        ],
        RedisMode::Cluster => {
            vec![FaultKind::PrimaryKill, FaultKind::PostgresRestart, FaultKind::NodeDrain, FaultKind::NodeKill]
        }
    }
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ChaosArgs {
    /// Chaos: the directory of the `script/server --detach` cluster to break (its pids file, logs,
    /// Redis and PostgreSQL). Its nodes' environment gives the database, Redis and secret.
    #[arg(long)]
    pub chaos_cluster_dir: Option<PathBuf>,
    /// Chaos: the faults, in this order. Default: against a single Redis
    /// redis-restart,partition,postgres-restart,slow-consumer,node-drain,node-kill; against a
    /// Redis Cluster primary-kill,postgres-restart,node-drain,node-kill.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub chaos_faults: Vec<FaultKind>,
    /// Chaos: seconds a fault lasts (a node, Redis or PostgreSQL down; the partition).
    #[arg(long, default_value_t = 8.0)]
    pub chaos_fault_s: f64,
    /// Chaos: seconds of steady load before the first fault and after each one ends.
    #[arg(long, default_value_t = 15.0)]
    pub chaos_settle_s: f64,
    /// Chaos: the share of connections in rooms of --room-size (the others are in rooms of 2).
    #[arg(long, default_value_t = 0.5)]
    pub chaos_big_share: f64,
    /// Chaos: write the report here (Markdown), with its timeline as an SVG beside it.
    #[arg(long)]
    pub chaos_doc: Option<PathBuf>,
    /// Chaos: the command that reproduces this run, quoted in the report.
    #[arg(long, default_value = "loadtest/chaos")]
    pub chaos_reproduce: String,
    /// Chaos: a hand-written list of what the runs found and what was fixed, copied into the report.
    #[arg(long, default_value = "loadtest/chaos-findings.md")]
    pub chaos_findings: PathBuf,
    /// Chaos: run nothing; write `--chaos-doc` from these JSON reports of earlier runs (`--out`),
    /// one section each (loadtest/chaos: one run per Redis mode).
    #[arg(long, value_delimiter = ',')]
    pub chaos_render: Vec<PathBuf>,
}

/// One fault as it ran: seconds since the load started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRun {
    pub name: String,
    pub target: String,
    pub start_s: f64,
    pub end_s: f64,
    /// What was done, with timings (e.g. how long the restarted node took to turn ready).
    pub detail: String,
    /// The step itself failed (a process did not stop or start): the figures are still reported.
    pub error: Option<String>,
}

/// The checker's figures for one fault (its window: from its start to the next fault's start).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultFigures {
    pub fault: FaultRun,
    pub window_end_s: f64,
    pub clients_disconnected: u64,
    /// Seconds from the fault's start until ≥ 99% of users were connected, synced and had every
    /// message acknowledged more than a second earlier in their room, for the rest of the window.
    pub recovered_99_s: f64,
    pub p99_before_ms: f64,
    pub p99_during_ms: f64,
    pub p99_after_ms: f64,
    pub refused: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    pub connect_errors: BTreeMap<String, u64>,
    pub not_sent_offline: u64,
    /// Seqs received again in the window (dropped by the client's de-duplication).
    pub wire_duplicates: u64,
    pub delivered_by_sync: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub acknowledged: u64,
    /// Acknowledged messages × members that never received them.
    pub acknowledged_lost: u64,
    /// Committed messages (acknowledged or not) × members that never received them.
    pub committed_not_received: u64,
    /// Seqs received again on the wire (dropped by seq de-duplication, as a client does).
    pub wire_duplicates: u64,
    /// The same seq carrying two different message ids: a duplicate no de-duplication can hide.
    pub id_conflicts: u64,
    /// A seq below one already received, on the live stream of the same connection.
    pub out_of_order: u64,
    /// A seq above the next expected on the live stream (repaired by a sync, as a client does).
    pub live_gaps: u64,
    pub passed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChaosReport {
    pub command: String,
    pub reproduce: String,
    pub commit: String,
    /// The nodes' `CHORUS_REDIS_MODE`.
    #[serde(default = "single")]
    pub redis_mode: RedisMode,
    /// What Redis was (one server; the cluster's primaries, replicas and node timeout).
    #[serde(default)]
    pub redis: String,
    #[serde(default)]
    pub settle_s: f64,
    /// Cores and load average (1, 5, 15 min) at the start and at the end: the machine is shared.
    pub machine: String,
    pub nodes: usize,
    pub connections: usize,
    pub big_rooms: usize,
    pub big_room_size: usize,
    pub small_rooms: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub not_sent_offline: u64,
    pub unanswered: u64,
    pub delivered_live: u64,
    pub delivered_by_sync: u64,
    pub syncs: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub refused: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    pub verdict: Verdict,
    pub faults: Vec<FaultFigures>,
    pub timeline: Vec<report::Second>,
    pub health: Vec<(f64, f64)>,
}

fn single() -> RedisMode {
    RedisMode::Single
}

/// Snapshot of the counters a fault window is measured between.
struct Mark {
    at: f64,
    disconnects: Vec<u64>,
    refused: BTreeMap<String, u64>,
    closes: BTreeMap<String, u64>,
    connect_errors: BTreeMap<String, u64>,
    not_sent: u64,
    wire_duplicates: u64,
    delivered_by_sync: u64,
}

fn copy(map: &std::sync::Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    map.lock().map(|m| m.clone()).unwrap_or_default()
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

struct Run {
    shared: Arc<Shared>,
    lives: Vec<Arc<Live>>,
    not_sent: Arc<AtomicU64>,
}

impl Run {
    fn mark(&self) -> Mark {
        Mark {
            at: self.shared.started.elapsed().as_secs_f64(),
            disconnects: self.lives.iter().map(|l| l.disconnects.load(Ordering::Relaxed)).collect(),
            refused: copy(&self.shared.refused),
            closes: copy(&self.shared.closes),
            connect_errors: copy(&self.shared.connect_errors),
            not_sent: self.not_sent.load(Ordering::Relaxed),
            wire_duplicates: self.shared.wire_duplicates.load(Ordering::Relaxed),
            delivered_by_sync: self.shared.delivered_sync.load(Ordering::Relaxed),
        }
    }
}

pub async fn run(args: &crate::Args) -> Result<(), String> {
    let c = &args.chaos;
    if !c.chaos_render.is_empty() {
        return render(c);
    }
    let load_at_start = load_average();
    let dir =
        c.chaos_cluster_dir.clone().ok_or("chaos needs --chaos-cluster-dir (a script/server --detach cluster)")?;
    let mut cluster = Cluster::open(&dir)?;
    let mode = cluster.redis_mode;
    let faults = if c.chaos_faults.is_empty() { default_faults(mode) } else { c.chaos_faults.clone() };
    if let Some(misfit) = faults.iter().find(|f| !f.fits(mode)) {
        return Err(format!("the fault {} does not apply to CHORUS_REDIS_MODE={}", misfit.name(), mode.name()));
    }
    let redis = describe_redis(&cluster).await?;
    let first = &cluster.nodes[0];
    let database_url = first.env("DATABASE_URL").ok_or("the nodes have no DATABASE_URL")?;
    let secret = match &args.jwt_secret {
        Some(s) => s.clone(),
        None => first.env("JWT_SECRET").ok_or("the nodes have no JWT_SECRET")?,
    };
    let node_names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let kill_target = 0;
    let drain_target = 1.min(cluster.nodes.len() - 1);
    let partition_target = cluster.nodes.len() - 1;

    // The partitioned node reaches Redis through the proxy from the start (restarted once, before
    // any load).
    let proxy = if faults.contains(&FaultKind::Partition) {
        let proxy = proxy::Proxy::start(([127, 0, 0, 1], cluster.redis_port).into()).await?;
        let node = &mut cluster.nodes[partition_target];
        node.set_env("REDIS_URL", &format!("redis://127.0.0.1:{}/", proxy.port));
        eprintln!("chaos: {} now reaches Redis through a proxy on port {}", node.name, proxy.port);
        cluster.stop_node(partition_target, "TERM", Duration::from_secs(30)).await?;
        cluster.start_node(partition_target, true).await?;
        Some(proxy)
    } else {
        None
    };

    // Users: a share in large rooms, the rest in rooms of 2.
    let connections = args.connections.unwrap_or(1000).max(4);
    let big_size = args.room_size.unwrap_or(50).max(2);
    let big_users = ((connections as f64 * c.chaos_big_share) as usize / big_size) * big_size;
    let small_users = (connections - big_users) / 2 * 2;
    let mut users = Vec::new();
    let mut rooms = Vec::new();
    let mut room_of = Vec::new();
    for (count, size) in [(big_users, big_size), (small_users, 2)] {
        if count == 0 {
            continue;
        }
        let fixture = setup::seed(&database_url, &secret, count, size).await?;
        let offset = rooms.len();
        users.extend(fixture.users);
        room_of.extend(fixture.room_of.iter().map(|r| r + offset));
        rooms.extend(fixture.rooms);
    }
    let connections = users.len();
    let rate = args.rate.unwrap_or(200.0);
    eprintln!(
        "chaos: {connections} users ({} rooms of {big_size}, {} rooms of 2) on {} nodes, {redis}, {rate} msg/s, faults {:?}",
        big_users / big_size,
        small_users / 2,
        cluster.nodes.len(),
        faults.iter().map(|f| f.name()).collect::<Vec<_>>()
    );
    // Cluster mode: each room's share of the messages (its size), by the slot of its channel.
    let partitions: u128 =
        cluster.nodes[0].env("CHORUS_REDIS_PARTITIONS").and_then(|p| p.parse().ok()).unwrap_or(128).max(1);
    let mut slot_weights: HashMap<u16, f64> = HashMap::new();
    for (i, room) in rooms.iter().enumerate() {
        // As chorus::kv::Names: a room's channel is tagged {p:<room id mod partitions>}.
        let slot = redis_cluster::key_slot(&format!("p:{}", room.as_u128() % partitions));
        let size = room_of.iter().filter(|r| **r == i).count() as f64;
        *slot_weights.entry(slot).or_default() += size;
    }

    let shared = Arc::new(Shared::new(rooms.len()));
    let (stop, stop_rx) = watch::channel(false);
    let (pause, pause_rx) = watch::channel(None::<usize>);
    let mut lives = Vec::with_capacity(connections);
    let mut senders = Vec::with_capacity(connections);
    let mut tasks = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / args.ramp.max(1.0));
    for (i, (_, token)) in users.iter().enumerate() {
        let (tx, rx) = mpsc::channel(16);
        senders.push(tx);
        let live = Arc::new(Live::default());
        lives.push(live.clone());
        let spec = Spec {
            index: i,
            url: args.urls[i % args.urls.len()].clone(),
            token: token.clone(),
            room: rooms[room_of[i]],
            room_index: room_of[i],
            payload: args.payload,
        };
        let (shared, stop_rx, pause_rx) = (shared.clone(), stop_rx.clone(), pause_rx.clone());
        tasks.spawn(member::run(spec, shared, live, rx, stop_rx, pause_rx));
        tokio::time::sleep(gap).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while lives.iter().any(|l| !l.connected.load(Ordering::Relaxed)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let up = lives.iter().filter(|l| l.connected.load(Ordering::Relaxed)).count();
    eprintln!("chaos: {up} of {connections} connected");
    if up < connections {
        let _ = stop.send(true);
        return Err(format!("only {up} of {connections} users connected before the faults"));
    }

    let run = Run { shared: shared.clone(), lives: lives.clone(), not_sent: Arc::new(AtomicU64::new(0)) };
    let loaded_at = shared.started.elapsed().as_secs_f64();
    let (load_stop, load_stop_rx) = watch::channel(false);
    let driver = tokio::spawn(drive(senders, lives.clone(), run.not_sent.clone(), rate, load_stop_rx));
    let (sampler_stop, sampler_stop_rx) = watch::channel(false);
    let sampler = tokio::spawn(sample(shared.clone(), lives.clone(), room_of.clone(), sampler_stop_rx));
    let progress = tokio::spawn(progress(shared.clone(), lives.clone(), load_stop.subscribe()));

    let settle = Duration::from_secs_f64(c.chaos_settle_s);
    let hold = Duration::from_secs_f64(c.chaos_fault_s);
    tokio::time::sleep(settle).await;
    let mut marks = Vec::new();
    let mut runs = Vec::new();
    for &kind in &faults {
        marks.push(run.mark());
        let start_s = shared.started.elapsed().as_secs_f64();
        eprintln!("chaos: [{start_s:>6.1}s] {} begins", kind.name());
        let (target, outcome) = match kind {
            FaultKind::NodeKill => {
                (node_names[kill_target].clone(), node_down(&mut cluster, kill_target, "KILL", hold).await)
            }
            FaultKind::NodeDrain => (
                node_names[drain_target].clone(),
                node_down(&mut cluster, drain_target, "TERM", Duration::from_millis(500)).await,
            ),
            FaultKind::RedisRestart => ("redis".to_owned(), redis_down(&mut cluster, hold).await),
            FaultKind::PrimaryKill => primary_kill(&mut cluster, &slot_weights, hold).await,
            FaultKind::PostgresRestart => ("postgres".to_owned(), postgres_down(&cluster, hold).await),
            FaultKind::Partition => {
                let outcome = match &proxy {
                    Some(proxy) => {
                        proxy.blackhole(true);
                        tokio::time::sleep(hold).await;
                        proxy.blackhole(false);
                        Ok(format!(
                            "Redis traffic of {} blackholed for {:.0} s, then healed",
                            node_names[partition_target],
                            hold.as_secs_f64()
                        ))
                    }
                    None => Err("no proxy".to_owned()),
                };
                (format!("{} ↔ redis", node_names[partition_target]), outcome)
            }
            FaultKind::SlowConsumer => {
                let who = 0;
                pause.send_replace(Some(who));
                tokio::time::sleep(hold * 2).await;
                pause.send_replace(None);
                (
                    format!("user {who} (a room of {big_size})"),
                    Ok(format!("stopped reading for {:.0} s", 2.0 * hold.as_secs_f64())),
                )
            }
        };
        let end_s = shared.started.elapsed().as_secs_f64();
        let (detail, error) = match outcome {
            Ok(detail) => (detail, None),
            Err(e) => {
                eprintln!("chaos: {} failed: {e}", kind.name());
                (String::new(), Some(e))
            }
        };
        eprintln!("chaos: [{end_s:>6.1}s] {} ends: {detail}", kind.name());
        runs.push(FaultRun { name: kind.name().to_owned(), target, start_s, end_s, detail, error });
        tokio::time::sleep(settle).await;
    }
    marks.push(run.mark());
    let _ = load_stop.send(true);
    let _ = driver.await;
    let _ = progress.await;
    let load_s = shared.started.elapsed().as_secs_f64() - loaded_at;

    // Quiesce: every user back, synced, and at its room's head in PostgreSQL.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let heads: HashMap<uuid::Uuid, i64> = crate::room_heads(&database_url, &rooms).await?.into_iter().collect();
    let head_of: Vec<i64> = rooms.iter().map(|r| heads.get(r).copied().unwrap_or(0)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind = lives
            .iter()
            .enumerate()
            .filter(|(i, l)| {
                !l.connected.load(Ordering::Relaxed)
                    || l.syncing.load(Ordering::Relaxed)
                    || l.held.load(Ordering::Relaxed) > 0
                    || l.last_seen.load(Ordering::Relaxed) < head_of[room_of[*i]]
            })
            .count();
        if behind == 0 {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("chaos: {behind} users still behind their room's head after 60 s");
            for (i, l) in lives.iter().enumerate().take(3) {
                eprintln!(
                    "chaos: user {i}: connected {}, syncing {}, held {}, last seen {}, room head {}",
                    l.connected.load(Ordering::Relaxed),
                    l.syncing.load(Ordering::Relaxed),
                    l.held.load(Ordering::Relaxed),
                    l.last_seen.load(Ordering::Relaxed),
                    head_of[room_of[i]]
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = sampler_stop.send(true);
    let health = sampler.await.unwrap_or_default();
    let _ = stop.send(true);
    let mut finals: Vec<Final> = Vec::with_capacity(connections);
    while let Some(joined) = tasks.join_next().await {
        if let Ok(f) = joined {
            finals.push(f);
        }
    }

    // The checker.
    let acked = shared.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let mut acked_by_room: Vec<Vec<i64>> = vec![Vec::new(); rooms.len()];
    for (room, seq) in &acked {
        acked_by_room[*room].push(*seq);
    }
    let (mut lost, mut not_received) = (0u64, 0u64);
    for f in &finals {
        lost += acked_by_room[f.room_index].iter().filter(|s| **s > f.baseline && !f.has(**s)).count() as u64;
        let head = head_of[f.room_index];
        not_received += (f.baseline + 1..=head).filter(|s| !f.has(*s)).count() as u64;
    }
    if finals.len() < connections {
        not_received += 1;
        eprintln!("chaos: {} user tasks did not end cleanly", connections - finals.len());
    }
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut verdict = Verdict {
        acknowledged: acked.len() as u64,
        acknowledged_lost: lost,
        committed_not_received: not_received,
        wire_duplicates: get(&shared.wire_duplicates),
        id_conflicts: get(&shared.id_conflicts),
        out_of_order: get(&shared.reordered),
        live_gaps: get(&shared.live_gaps),
        passed: false,
    };
    verdict.passed = verdict.acknowledged > 0
        && verdict.acknowledged_lost == 0
        && verdict.committed_not_received == 0
        && verdict.id_conflicts == 0
        && verdict.out_of_order == 0
        && runs.iter().all(|f| f.error.is_none());

    let timeline = report::seconds(&shared);
    let figures: Vec<FaultFigures> = runs
        .iter()
        .zip(marks.windows(2))
        .map(|(fault, pair)| {
            let (before, after) = (&pair[0], &pair[1]);
            let disconnected = after.disconnects.iter().zip(&before.disconnects).filter(|(a, b)| a > b).count() as u64;
            let window_end_s = after.at;
            let last_bad = health
                .iter()
                .filter(|(t, frac)| *t >= fault.start_s && *t < window_end_s && *frac < 0.99)
                .map(|(t, _)| *t)
                .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
            FaultFigures {
                fault: fault.clone(),
                window_end_s,
                clients_disconnected: disconnected,
                recovered_99_s: last_bad.map_or(0.0, |t| t + 0.1 - fault.start_s),
                p99_before_ms: report::p99(&shared, fault.start_s - 10.0, fault.start_s),
                p99_during_ms: report::p99(&shared, fault.start_s, fault.end_s.max(fault.start_s + 1.0)),
                p99_after_ms: report::p99(&shared, fault.end_s, window_end_s),
                refused: diff(&after.refused, &before.refused),
                closes: diff(&after.closes, &before.closes),
                connect_errors: diff(&after.connect_errors, &before.connect_errors),
                not_sent_offline: after.not_sent - before.not_sent,
                wire_duplicates: after.wire_duplicates - before.wire_duplicates,
                delivered_by_sync: after.delivered_by_sync - before.delivered_by_sync,
            }
        })
        .collect();

    let command: Vec<String> = std::env::args().map(|a| if a.contains(' ') { format!("'{a}'") } else { a }).collect();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let report = ChaosReport {
        command: command.join(" "),
        reproduce: c.chaos_reproduce.clone(),
        commit,
        redis_mode: mode,
        redis,
        settle_s: c.chaos_settle_s,
        machine: format!(
            "{} cores; load average {} at the start, {} at the end",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_at_start,
            load_average()
        ),
        nodes: cluster.nodes.len(),
        connections,
        big_rooms: big_users / big_size,
        big_room_size: big_size,
        small_rooms: small_users / 2,
        rate,
        duration_s: load_s,
        sent: get(&shared.sent),
        not_sent_offline: get(&run.not_sent),
        unanswered: get(&shared.unanswered),
        delivered_live: get(&shared.delivered_live),
        delivered_by_sync: get(&shared.delivered_sync),
        syncs: get(&shared.syncs),
        connects: get(&shared.connects),
        connect_failures: get(&shared.connect_failures),
        refused: copy(&shared.refused),
        closes: copy(&shared.closes),
        verdict,
        faults: figures,
        timeline,
        health,
    };
    report::print(&report);
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, json).map_err(|e| format!("write {}: {e}", args.out.display()))?;
    if let Some(doc) = &c.chaos_doc {
        let findings = std::fs::read_to_string(&c.chaos_findings).ok();
        report::write_doc(std::slice::from_ref(&report), doc, findings.as_deref())?;
        eprintln!("chaos: report written to {}", doc.display());
    }
    if report.verdict.passed {
        Ok(())
    } else {
        Err(format!("chaos check FAILED: {:?}", report.verdict))
    }
}

/// `--chaos-render`: one document from the reports of earlier runs.
fn render(c: &ChaosArgs) -> Result<(), String> {
    let doc = c.chaos_doc.as_ref().ok_or("--chaos-render needs --chaos-doc")?;
    let mut reports = Vec::new();
    for path in &c.chaos_render {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let report: ChaosReport = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        reports.push(report);
    }
    let findings = std::fs::read_to_string(&c.chaos_findings).ok();
    report::write_doc(&reports, doc, findings.as_deref())?;
    eprintln!("chaos: report written to {}", doc.display());
    Ok(())
}

/// What the nodes' Redis is, for the report.
async fn describe_redis(cluster: &Cluster) -> Result<String, String> {
    if cluster.redis_mode == RedisMode::Single {
        return Ok("one Redis server".to_owned());
    }
    let nodes = redis_cluster::topology(&cluster.redis_ports).await?;
    let primaries = nodes.iter().filter(|n| n.primary && !n.slots.is_empty()).count();
    let timeout = match redis_cluster::command(cluster.redis_ports[0], &["CONFIG", "GET", "cluster-node-timeout"]).await
    {
        Ok(redis_cluster::Resp::Array(Some(pair))) => pair.get(1).and_then(redis_cluster::Resp::text),
        _ => None,
    };
    Ok(format!(
        "a Redis Cluster of {primaries} primaries and {} replicas (cluster-node-timeout {} ms)",
        nodes.len() - primaries,
        timeout.unwrap_or_else(|| "?".into())
    ))
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_default()
}

/// Stops node `i` with `sig`, waits `down`, starts it again; says how long each part took.
async fn node_down(cluster: &mut Cluster, i: usize, sig: &str, down: Duration) -> Result<String, String> {
    let t0 = Instant::now();
    let pid = cluster.nodes[i].pid;
    cluster.stop_node(i, sig, Duration::from_secs(40)).await?;
    let exited = t0.elapsed().as_secs_f64();
    tokio::time::sleep(down).await;
    let t1 = Instant::now();
    cluster.start_node(i, true).await?;
    Ok(format!(
        "SIG{sig} to pid {pid}: exited after {exited:.1} s; restarted after {:.1} s down, ready in {:.1} s",
        exited + down.as_secs_f64(),
        t1.elapsed().as_secs_f64()
    ))
}

async fn redis_down(cluster: &mut Cluster, down: Duration) -> Result<String, String> {
    cluster.kill_redis().await?;
    tokio::time::sleep(down).await;
    let t = Instant::now();
    cluster.start_redis().await?;
    // The fault ends when every node is ready again (subscribed).
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in &cluster.nodes {
        while cluster::http_status(node.port, "/readyz").await != Some(200) {
            if Instant::now() > deadline {
                return Err(format!("{} not ready 60 s after Redis came back", node.name));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(format!(
        "SIGKILL; down {:.0} s; every node ready {:.1} s after Redis started again",
        down.as_secs_f64(),
        t.elapsed().as_secs_f64()
    ))
}

/// Redis Cluster: SIGKILLs the primary serving the most of the run's messages (by the slots of
/// the rooms' channels) and measures the failover: until its replica is promoted (the cluster's
/// state ok again), until every node has resubscribed (its `redis_reconnects_total` moved on and
/// then stayed put) and is ready. Once `down` has
/// passed, and not before the promotion (a primary back in time takes its slots back and there is
/// no failover), it starts the killed server again as it ran and waits until it is a replica with
/// its link up. Returns the target and what happened.
async fn primary_kill(
    cluster: &mut Cluster,
    slot_weights: &HashMap<u16, f64>,
    down: Duration,
) -> (String, Result<String, String>) {
    let nodes = match redis_cluster::topology(&cluster.redis_ports).await {
        Ok(nodes) => nodes,
        Err(e) => return ("redis primary".to_owned(), Err(e)),
    };
    let share = |n: &redis_cluster::ClusterNode| -> f64 {
        slot_weights.iter().filter(|(slot, _)| n.serves(**slot)).map(|(_, w)| w).sum()
    };
    let target = nodes
        .iter()
        .filter(|n| n.primary && !n.failing && !n.slots.is_empty())
        .filter(|n| nodes.iter().any(|r| r.primary_id.as_deref() == Some(n.id.as_str()) && !r.failing))
        .max_by(|a, b| share(a).total_cmp(&share(b)));
    let Some(target) = target.cloned() else {
        return ("redis primary".to_owned(), Err("no primary with a live replica".to_owned()));
    };
    let total: f64 = slot_weights.values().sum();
    let percent = 100.0 * share(&target) / total.max(1.0);
    let label = format!("redis :{} (primary, {percent:.0}% of messages)", target.port);
    let others: Vec<u16> = nodes.iter().filter(|n| n.port != target.port && !n.failing).map(|n| n.port).collect();
    (
        label,
        primary_kill_steps(cluster, &target, others, down)
            .await
            .map(|d| format!("{d}; it served {} slots", target.slot_count())),
    )
}

async fn primary_kill_steps(
    cluster: &mut Cluster,
    target: &redis_cluster::ClusterNode,
    others: Vec<u16>,
    down: Duration,
) -> Result<String, String> {
    let killed = redis_cluster::pid_of(target.port).await?;
    let mut reconnects = Vec::new();
    for node in &cluster.nodes {
        reconnects.push(redis_reconnects(node.port).await.ok_or(format!("{}: no /metrics", node.name))?);
    }
    let slot = target.slots.first().map_or(0, |r| r.0);
    let t0 = Instant::now();
    cluster::signal(killed, "KILL")?;
    if !cluster::wait_gone(killed, Duration::from_secs(5)).await {
        return Err(format!("redis-server pid {killed} still running 5 s after SIGKILL"));
    }
    let deadline = t0 + Duration::from_secs(60);
    let new_primary = loop {
        if let Ok(now) = redis_cluster::topology(&others).await {
            let promoted = now.iter().find(|n| n.primary && !n.failing && n.port != target.port && n.serves(slot));
            if let Some(p) = promoted {
                let state = redis_cluster::info(p.port, &["CLUSTER", "INFO"]).await.unwrap_or_default();
                if state.iter().any(|(k, v)| k == "cluster_state" && v == "ok") {
                    break p.port;
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no replica promoted for :{} within 60 s", target.port));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let promoted_at = Instant::now();
    let promoted_s = (promoted_at - t0).as_secs_f64();
    // Resubscribed: a node reconnects when the primary's connection drops (often before the
    // failover: SSUBSCRIBE works on the replica too) and again once it sees the slot owners
    // change (it checks every 2 s), so the count alone says little. Settled: every node ready and
    // past its count before the kill, and no count moved for `QUIET` after the promotion; the
    // time is that of the last change seen.
    const QUIET: Duration = Duration::from_secs(3);
    let deadline = promoted_at + Duration::from_secs(60);
    let mut counts = reconnects.clone();
    let mut settled_at = promoted_at;
    loop {
        let mut settled = true;
        for (i, node) in cluster.nodes.iter().enumerate() {
            let count = redis_reconnects(node.port).await;
            if count.is_some_and(|c| c != counts[i]) {
                counts[i] = count.unwrap_or(counts[i]);
                settled_at = Instant::now();
            }
            if counts[i] <= reconnects[i] || cluster::http_status(node.port, "/readyz").await != Some(200) {
                settled = false;
                settled_at = Instant::now();
            }
        }
        if settled && settled_at.elapsed() >= QUIET {
            break;
        }
        if Instant::now() > deadline {
            return Err("the nodes not resubscribed and ready 60 s after the promotion".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_s = (settled_at - t0).as_secs_f64();
    let reconnected: u64 = counts.iter().zip(&reconnects).map(|(after, before)| after - before).sum();
    tokio::time::sleep(down.saturating_sub(t0.elapsed())).await;
    let down_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    cluster.start_cluster_redis(target.port).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let primary = loop {
        if let Some(primary) = redis_cluster::replica_of(target.port).await {
            break primary;
        }
        if Instant::now() > deadline {
            return Err(format!("the restarted :{} not a connected replica after 60 s", target.port));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(format!(
        "SIGKILL to pid {killed}; replica :{new_primary} promoted after {promoted_s:.1} s; every node resubscribed \
         and ready {ready_s:.1} s after the kill ({reconnected} reconnects in all); restarted after {down_s:.1} s down, a replica of :{primary} in {:.1} s",
        t1.elapsed().as_secs_f64()
    ))
}

/// A node's `chorus_redis_reconnects_total` (pub/sub connections made, every channel subscribed).
async fn redis_reconnects(port: u16) -> Option<u64> {
    let metrics = cluster::http_body(port, "/metrics").await?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("chorus_redis_reconnects_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

async fn postgres_down(cluster: &Cluster, down: Duration) -> Result<String, String> {
    let t0 = Instant::now();
    cluster.stop_postgres().await?;
    let stopped = t0.elapsed().as_secs_f64();
    tokio::time::sleep(down).await;
    let t = Instant::now();
    cluster.start_postgres().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in &cluster.nodes {
        while cluster::http_status(node.port, "/readyz").await != Some(200) {
            if Instant::now() > deadline {
                return Err(format!("{} not ready 60 s after PostgreSQL came back", node.name));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(format!(
        "fast shutdown in {stopped:.1} s; down {:.0} s; every node ready {:.1} s after it started again",
        down.as_secs_f64(),
        t.elapsed().as_secs_f64()
    ))
}

/// Sends `rate` messages per second from users picked at random (so a room's traffic is
/// proportional to its size); a user that is offline right now sends nothing (counted).
async fn drive(
    senders: Vec<mpsc::Sender<()>>,
    lives: Vec<Arc<Live>>,
    not_sent: Arc<AtomicU64>,
    rate: f64,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut issued: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while issued < due {
            issued += 1;
            let who = (rand::random::<u64>() % senders.len() as u64) as usize;
            if !lives[who].connected.load(Ordering::Relaxed) || senders[who].try_send(()).is_err() {
                not_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Every 100 ms: the share of users connected, synced, without a gap, and holding every message
/// acknowledged in their room more than a second ago.
async fn sample(
    shared: Arc<Shared>,
    lives: Vec<Arc<Live>>,
    room_of: Vec<usize>,
    mut stop: watch::Receiver<bool>,
) -> Vec<(f64, f64)> {
    let mut samples = Vec::new();
    let mut heads: std::collections::VecDeque<Vec<i64>> = std::collections::VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return samples,
        }
        heads.push_back(shared.acked_head.iter().map(|h| h.load(Ordering::Relaxed)).collect());
        if heads.len() > 11 {
            heads.pop_front();
        }
        let Some(old) = heads.front() else { continue };
        let healthy = lives
            .iter()
            .zip(&room_of)
            .filter(|(l, room)| {
                l.connected.load(Ordering::Relaxed)
                    && !l.syncing.load(Ordering::Relaxed)
                    && l.held.load(Ordering::Relaxed) == 0
                    && l.last_seen.load(Ordering::Relaxed) >= old[**room]
            })
            .count();
        samples.push((shared.started.elapsed().as_secs_f64(), healthy as f64 / lives.len().max(1) as f64));
    }
}

/// One line a second while the load runs.
async fn progress(shared: Arc<Shared>, lives: Vec<Arc<Live>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let connected = lives.iter().filter(|l| l.connected.load(Ordering::Relaxed)).count();
        eprintln!(
            "chaos: [{:>6.1}s] connected {connected}/{}  sent {}  acked {}  delivered {} live + {} by sync  gaps {}  out of order {}",
            shared.started.elapsed().as_secs_f64(),
            lives.len(),
            get(&shared.sent),
            get(&shared.acks),
            get(&shared.delivered_live),
            get(&shared.delivered_sync),
            get(&shared.live_gaps),
            get(&shared.reordered),
        );
    }
}
