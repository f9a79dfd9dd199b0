//! chorus-loadtest: opens many WebSocket users against Chorus (natively or over its Socket.IO
//! endpoint) or the Socket.IO peer, sends at a target rate, and measures publish → receipt latency
//! for every recipient, throughput, drops, acknowledgements and connect times. With no flags it runs
//! a 60-second steady test against `script/server`'s cluster.

mod chaos;
mod client;
mod dm;
mod plot;
mod procfs;
mod redis_meter;
mod setup;
mod sio;
mod stats;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use diesel::sql_types::{Array, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use client::{Outgoing, Protocol, Spec};
use stats::{quantiles, Quantiles, Second, Stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
enum Scenario {
    /// Rooms of 50 at a steady rate (the default, 60 s).
    Steady,
    /// Rooms of 50; raise the rate step by step, find the highest whose p99 stays under the bound.
    Fanout,
    /// As many idle connections as asked; report RSS per connection on the server.
    Connections,
    /// One hot room of 1,000 members.
    Burst,
    /// Users disconnect and reconnect while chatting; nothing may be lost.
    Churn,
    /// Direct messages: rooms of 2, every user sending; raise the rate step by step and find the
    /// highest acknowledged, persisted messages/s whose ack and delivery p99 stay under the bound.
    Dm,
    /// As `dm` with rooms of 5 (small groups).
    Small,
    /// Faults under load (node kill and drain, Redis and PostgreSQL restarts, a partition, a slow
    /// consumer) on a `script/server` cluster, checking every acknowledged message (`chaos.rs`).
    Chaos,
}

#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "chorus-loadtest", about = "Load generator for Chorus (native or Socket.IO) and its Socket.IO peer")]
struct Args {
    #[arg(long, value_enum, default_value = "steady")]
    scenario: Scenario,
    /// Which server and protocol speak on the URLs: chorus (`/api/v1/ws`), chorus-socketio
    /// (`/socket.io/?EIO=4&transport=websocket`), socketio (the peer).
    #[arg(long, value_enum, default_value = "chorus")]
    protocol: Protocol,
    /// WebSocket URLs; connections are spread over them round-robin.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/api/v1/ws")]
    urls: Vec<String>,
    /// The cluster's PostgreSQL (users and rooms are seeded there directly).
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:54329/chorus")]
    database_url: String,
    /// The cluster's JWT secret (tokens are minted with it). Default: `.local/cluster/jwt_secret`.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Connections (one user each). Default per scenario.
    #[arg(long)]
    connections: Option<usize>,
    /// Members per room. Default per scenario.
    #[arg(long)]
    room_size: Option<usize>,
    /// Messages per second, all rooms together. Default per scenario.
    #[arg(long)]
    rate: Option<f64>,
    /// Fanout, dm, small: the rates to step through (default: fanout 50,100,200,400,800,1600,3200;
    /// dm and small 250,500,1000,1500,2000,2500,3000,4000,5000,6000).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Fanout, dm, small: seconds per step.
    #[arg(long, default_value_t = 10)]
    step_secs: u64,
    /// Fanout: the p99 bound in ms.
    #[arg(long, default_value_t = 50.0)]
    p99_bound_ms: f64,
    /// Message content size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Seconds of load (steady, burst, churn) or of holding idle connections (connections).
    #[arg(long)]
    duration: Option<u64>,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    /// Source addresses to spread connections over (127.0.0.x).
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Churn: seconds a connection lives before it reconnects (random between 1x and 2x).
    #[arg(long, default_value_t = 3.0)]
    churn_lifetime_s: f64,
    /// Server process ids whose CPU time and memory to measure (nodes).
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Redis process ids, comma-separated (one server, or every primary and replica of a Redis
    /// Cluster): their CPU counts towards the server side, and is reported per process.
    #[arg(long, value_delimiter = ',')]
    redis_pid: Vec<u32>,
    /// dm, small: PostgreSQL's postmaster pid (its CPU and its children's). Default: the parent of
    /// the generator's own backend, when PostgreSQL runs on this machine.
    #[arg(long)]
    postgres_pid: Option<u32>,
    /// Name for this run in the report.
    #[arg(long, default_value = "chorus")]
    label: String,
    /// Write the JSON report here.
    #[arg(long, default_value = "loadtest-results.json")]
    out: PathBuf,
    /// Write SVG plots (latency over time, latency CDF) into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[command(flatten)]
    chaos: chaos::ChaosArgs,
}

/// The rates `fanout` steps through unless `--rates` says otherwise (messages/s).
const FANOUT_RATES: &[f64] = &[50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0];

struct Defaults {
    connections: usize,
    room_size: usize,
    rate: f64,
    duration: u64,
}

fn defaults(s: Scenario) -> Defaults {
    match s {
        Scenario::Steady => Defaults { connections: 1000, room_size: 50, rate: 200.0, duration: 60 },
        Scenario::Fanout => Defaults { connections: 1000, room_size: 50, rate: 0.0, duration: 0 },
        Scenario::Connections => Defaults { connections: 15000, room_size: 50, rate: 0.0, duration: 30 },
        Scenario::Burst => Defaults { connections: 1000, room_size: 1000, rate: 20.0, duration: 20 },
        Scenario::Churn => Defaults { connections: 200, room_size: 20, rate: 50.0, duration: 30 },
        Scenario::Dm => Defaults { connections: 2000, room_size: 2, rate: 0.0, duration: 0 },
        Scenario::Small => Defaults { connections: 2000, room_size: 5, rate: 0.0, duration: 0 },
        Scenario::Chaos => Defaults { connections: 1000, room_size: 50, rate: 200.0, duration: 0 },
    }
}

#[derive(Debug, Clone, Serialize)]
struct Step {
    rate: f64,
    sent_per_s: f64,
    delivered_per_s: f64,
    latency: Quantiles,
    drops: u64,
    errors: u64,
    server_cpu_s: f64,
    cpu_s_per_million_deliveries: Option<f64>,
    /// The Redis part of `server_cpu_s`, in all and per million deliveries, and per process.
    redis_cpu_s: f64,
    redis_cpu_s_per_million_deliveries: Option<f64>,
    nodes_cpu_s_per_million_deliveries: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    redis: Vec<redis_meter::Usage>,
    /// The generator's CPU as a share of the cores it may run on (≥ 0.9: bounded by the generator).
    generator_cpu_share: f64,
    within_bound: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    label: String,
    scenario: Scenario,
    protocol: Protocol,
    connections: usize,
    room_size: usize,
    payload: usize,
    duration_s: f64,
    sent: u64,
    acked: u64,
    delivered: u64,
    recovered_by_sync: u64,
    delivered_per_s: f64,
    drops: u64,
    tail_drops: u64,
    duplicates: u64,
    reordered: u64,
    send_errors: u64,
    connect_failures: u64,
    disconnects: u64,
    reconnects: u64,
    latency: Quantiles,
    ack_latency: Quantiles,
    connect_time: Quantiles,
    server_cpu_s: f64,
    redis_cpu_s: f64,
    cpu_s_per_million_deliveries: Option<f64>,
    redis_cpu_s_per_million_deliveries: Option<f64>,
    /// Each Redis process's part of `redis_cpu_s`, with its port, role and publishes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    redis: Vec<redis_meter::Usage>,
    /// The generator's own CPU over the load phase, and as a share of the cores it may run on.
    generator_cpu_s: f64,
    generator_cpu_share: f64,
    server_rss_kib_before: Vec<u64>,
    server_rss_kib_after: Vec<u64>,
    rss_kib_per_connection: Option<f64>,
    steps: Vec<Step>,
    best_rate_within_bound: Option<f64>,
    /// dm, small: the rate ladder with CPU per component and PostgreSQL transactions per message.
    #[serde(skip_serializing_if = "Option::is_none")]
    dm: Option<dm::Ladder>,
    timeline: Vec<Second>,
}

/// The running users and the handles to drive them.
struct Fleet {
    stats: Arc<Stats>,
    senders: Vec<mpsc::Sender<Outgoing>>,
    /// Connection indexes per room.
    members: Vec<Vec<usize>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<(usize, Option<i64>)>,
    rooms: Vec<Uuid>,
    room_of: Vec<usize>,
}

/// The cores the generator may run on (its affinity: `taskset` in compare's BENCH_PIN mode).
fn generator_cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

fn server_cpu(args: &Args) -> (f64, f64) {
    (procfs::total_cpu(&args.server_pids), procfs::total_cpu(&args.redis_pid))
}

async fn launch(args: &Args, fixture: setup::Fixture, lifetime: Option<f64>) -> Fleet {
    let stats = Arc::new(Stats::new());
    let (stop, stop_rx) = watch::channel(false);
    let mut senders = Vec::with_capacity(fixture.users.len());
    let mut members = vec![Vec::new(); fixture.rooms.len()];
    let mut tasks = JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / args.ramp.max(1.0));
    let mut next = tokio::time::Instant::now();
    for (i, (_, token)) in fixture.users.iter().enumerate() {
        let room_index = fixture.room_of[i];
        members[room_index].push(i);
        let (tx, rx) = mpsc::channel(64);
        senders.push(tx);
        let spec = Spec {
            protocol: args.protocol,
            url: args.urls[i % args.urls.len()].clone(),
            token: token.clone(),
            room: fixture.rooms[room_index],
            source_ip: (!args.source_ips.is_empty()).then(|| args.source_ips[i % args.source_ips.len()]),
            payload: args.payload,
            lifetime: lifetime.map(|l| Duration::from_secs_f64(l * (1.0 + rand::random::<f64>()))),
        };
        let (stats, stop_rx) = (stats.clone(), stop_rx.clone());
        tasks.spawn(async move { (i, client::run(spec, stats, rx, stop_rx).await) });
        next += gap;
        tokio::time::sleep_until(next).await;
    }
    // Wait (bounded) until everyone is in.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (stats.counters.connected.load(Ordering::Relaxed) as usize) < senders.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Fleet { stats, senders, members, stop, tasks, rooms: fixture.rooms, room_of: fixture.room_of }
}

/// Sends `rate` messages per second for `secs`, spread over rooms and their members round-robin.
async fn drive(fleet: &Fleet, rate: f64, secs: f64) {
    if rate <= 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        return;
    }
    let started = Instant::now();
    let mut issued: u64 = 0;
    let mut room_cursor = 0usize;
    let mut member_cursor = vec![0usize; fleet.members.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while started.elapsed().as_secs_f64() < secs {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while issued < due {
            issued += 1;
            let room = room_cursor % fleet.members.len();
            room_cursor += 1;
            let members = &fleet.members[room];
            if members.is_empty() {
                continue;
            }
            let who = members[member_cursor[room] % members.len()];
            member_cursor[room] += 1;
            if fleet.senders[who].try_send(Outgoing::Send).is_err() {
                fleet.stats.counters.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Stops every user and counts messages some receiver never got (no later message revealed the gap).
async fn land(args: &Args, mut fleet: Fleet) -> (Arc<Stats>, u64) {
    // Let in-flight deliveries and resyncs finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = fleet.stop.send(true);
    let mut last_seen = vec![None; fleet.senders.len()];
    while let Some(joined) = fleet.tasks.join_next().await {
        if let Ok((i, seq)) = joined {
            last_seen[i] = seq;
        }
    }
    let heads = match room_heads(&args.database_url, &fleet.rooms).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("could not read room heads: {e}");
            return (fleet.stats, 0);
        }
    };
    let mut tail = 0u64;
    for (i, seen) in last_seen.iter().enumerate() {
        let room = fleet.rooms[fleet.room_of[i]];
        let head = heads.iter().find(|(id, _)| *id == room).map_or(0, |(_, h)| *h);
        tail += (head - seen.unwrap_or(head)).max(0) as u64;
    }
    (fleet.stats, tail)
}

#[derive(diesel::QueryableByName)]
struct Head {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    last_seq: i64,
}

async fn room_heads(database_url: &str, rooms: &[Uuid]) -> Result<Vec<(Uuid, i64)>, String> {
    use diesel_async::RunQueryDsl;
    let mut conn = AsyncPgConnection::establish(database_url).await.map_err(|e| e.to_string())?;
    let heads: Vec<Head> = diesel::sql_query("SELECT id, last_seq FROM rooms WHERE id = ANY($1)")
        .bind::<Array<SqlUuid>, _>(rooms)
        .load(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(heads.into_iter().map(|h| (h.id, h.last_seq)).collect())
}

fn secret(args: &Args) -> Result<String, String> {
    if let Some(s) = &args.jwt_secret {
        return Ok(s.clone());
    }
    std::fs::read_to_string(".local/cluster/jwt_secret")
        .map(|s| s.trim().to_owned())
        .map_err(|_| "no JWT secret: pass --jwt-secret (or run from the repo root after script/server)".to_owned())
}

fn q(h: &std::sync::Mutex<hdrhistogram::Histogram<u64>>) -> Quantiles {
    h.lock().map(|h| quantiles(&h)).unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if let Err(e) = run(&mut args).await {
        eprintln!("chorus-loadtest: {e}");
        std::process::exit(1);
    }
}

async fn run(args: &mut Args) -> Result<(), String> {
    if args.scenario == Scenario::Chaos {
        return chaos::run(args).await;
    }
    let d = defaults(args.scenario);
    let connections = args.connections.unwrap_or(d.connections);
    let room_size = args.room_size.unwrap_or(d.room_size).min(connections.max(1));
    let rate = args.rate.unwrap_or(d.rate);
    let duration = args.duration.unwrap_or(d.duration);
    let secret = secret(args)?;
    eprintln!(
        "{}: {:?} over {:?}: {connections} connections, rooms of {room_size}, {} B payload",
        args.label, args.scenario, args.protocol, args.payload
    );
    let fixture = setup::seed(&args.database_url, &secret, connections, room_size).await?;
    let rss_before: Vec<u64> = args.server_pids.iter().filter_map(|p| procfs::rss_kib(*p)).collect();
    let lifetime = (args.scenario == Scenario::Churn).then_some(args.churn_lifetime_s);
    let ramp_started = Instant::now();
    let fleet = launch(args, fixture, lifetime).await;
    eprintln!(
        "{} of {connections} connected in {:.1}s",
        fleet.stats.counters.connected.load(Ordering::Relaxed),
        ramp_started.elapsed().as_secs_f64()
    );
    let stats = fleet.stats.clone();
    let (progress_stop, progress_rx) = tokio::sync::oneshot::channel::<()>();
    let label = args.label.clone();
    let progress = tokio::spawn({
        let stats = stats.clone();
        async move {
            stats::progress(&stats, &label, async {
                let _ = progress_rx.await;
            })
            .await
        }
    });
    let delivered_before = stats.counters.delivered.load(Ordering::Relaxed);
    let redis_procs = redis_meter::Meter::new(&args.redis_pid);
    let redis_before = redis_procs.read();
    let (cpu0, redis0) = server_cpu(args);
    let generator0 = procfs::own_cpu();
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut rss_after = Vec::new();
    let mut ladder = None;
    match args.scenario {
        Scenario::Fanout => {
            let rates = if args.rates.is_empty() { FANOUT_RATES.to_vec() } else { args.rates.clone() };
            for &step_rate in &rates {
                let before = stats.latency.lock().map(|h| h.clone()).map_err(|_| "lock")?;
                let (delivered0, sent0, drops0) = (
                    stats.counters.delivered.load(Ordering::Relaxed),
                    stats.counters.sent.load(Ordering::Relaxed),
                    stats.counters.drops.load(Ordering::Relaxed),
                );
                let errors0 = stats.counters.send_errors.load(Ordering::Relaxed);
                let (c0, _) = server_cpu(args);
                let redis0 = redis_procs.read();
                let g0 = procfs::own_cpu();
                let t0 = Instant::now();
                drive(&fleet, step_rate, args.step_secs as f64).await;
                // Deliveries of the step's last messages land shortly after.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let elapsed = t0.elapsed().as_secs_f64();
                let (c1, _) = server_cpu(args);
                let redis1 = redis_procs.read();
                let generator_cpu_share = (procfs::own_cpu() - g0) / elapsed / generator_cores();
                let mut window = stats.latency.lock().map(|h| h.clone()).map_err(|_| "lock")?;
                let _ = window.subtract(&before);
                let delivered = stats.counters.delivered.load(Ordering::Relaxed) - delivered0;
                let drops = stats.counters.drops.load(Ordering::Relaxed) - drops0;
                let errors = stats.counters.send_errors.load(Ordering::Relaxed) - errors0;
                let latency = quantiles(&window);
                let redis = redis_procs.usage(&redis0, &redis1, delivered);
                let redis_cpu = redis_meter::total_cpu(&redis);
                let cpu = (c1 - c0) + redis_cpu;
                let per_million = |cpu: f64| (delivered > 0).then(|| cpu / delivered as f64 * 1e6);
                let within = latency.p99_ms <= args.p99_bound_ms && drops == 0 && errors == 0 && delivered > 0;
                eprintln!(
                    "step {step_rate} msg/s: delivered/s {:.0}, p99 {:.2} ms, drops {drops}, errors {errors} -> {}",
                    delivered as f64 / elapsed,
                    latency.p99_ms,
                    if within { "within bound" } else { "over bound" }
                );
                if !redis.is_empty() {
                    eprintln!("  redis: {}", redis_meter::describe(&redis));
                }
                steps.push(Step {
                    rate: step_rate,
                    sent_per_s: (stats.counters.sent.load(Ordering::Relaxed) - sent0) as f64 / elapsed,
                    delivered_per_s: delivered as f64 / elapsed,
                    latency,
                    drops,
                    errors,
                    server_cpu_s: cpu,
                    cpu_s_per_million_deliveries: (delivered > 0 && !args.server_pids.is_empty())
                        .then(|| cpu / delivered as f64 * 1e6),
                    redis_cpu_s: redis_cpu,
                    redis_cpu_s_per_million_deliveries: per_million(redis_cpu).filter(|_| !redis.is_empty()),
                    nodes_cpu_s_per_million_deliveries: per_million(c1 - c0).filter(|_| !args.server_pids.is_empty()),
                    redis,
                    generator_cpu_share,
                    within_bound: within,
                });
                if !within {
                    break;
                }
            }
        }
        Scenario::Dm | Scenario::Small => {
            let rates = if args.rates.is_empty() { dm::DEFAULT_RATES.to_vec() } else { args.rates.clone() };
            ladder = Some(dm::ladder(args, &fleet, &stats, &rates).await?);
        }
        Scenario::Connections => {
            drive(&fleet, 0.0, duration as f64).await;
            rss_after = args.server_pids.iter().filter_map(|p| procfs::rss_kib(*p)).collect();
        }
        _ => drive(&fleet, rate, duration as f64).await,
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu1, redis1) = server_cpu(args);
    let redis_after = redis_procs.read();
    let generator_cpu_s = procfs::own_cpu() - generator0;
    if rss_after.is_empty() {
        rss_after = args.server_pids.iter().filter_map(|p| procfs::rss_kib(*p)).collect();
    }
    let (stats, tail_drops) = land(args, fleet).await;
    let _ = progress_stop.send(());
    let _ = progress.await;
    let c = &stats.counters;
    let delivered = c.delivered.load(Ordering::Relaxed) - delivered_before;
    let server_cpu_s = cpu1 - cpu0;
    let redis_cpu_s = redis1 - redis0;
    let redis = redis_procs.usage(&redis_before, &redis_after, delivered);
    let connected_peak = connections as f64;
    let rss_per_conn = (!rss_before.is_empty() && rss_after.len() == rss_before.len()).then(|| {
        let grown: i64 = rss_after.iter().zip(&rss_before).map(|(a, b)| *a as i64 - *b as i64).sum();
        grown as f64 / connected_peak
    });
    let best = steps
        .iter()
        .filter(|s| s.within_bound)
        .map(|s| s.rate)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))))
        .or_else(|| ladder.as_ref().and_then(|l| l.best.as_ref()).map(|s| s.rate));
    let report = Report {
        label: args.label.clone(),
        scenario: args.scenario,
        protocol: args.protocol,
        connections,
        room_size,
        payload: args.payload,
        duration_s: elapsed,
        sent: c.sent.load(Ordering::Relaxed),
        acked: c.acked.load(Ordering::Relaxed),
        delivered,
        recovered_by_sync: c.recovered.load(Ordering::Relaxed),
        delivered_per_s: delivered as f64 / elapsed.max(1e-9),
        drops: c.drops.load(Ordering::Relaxed),
        tail_drops,
        duplicates: c.duplicates.load(Ordering::Relaxed),
        reordered: c.reordered.load(Ordering::Relaxed),
        send_errors: c.send_errors.load(Ordering::Relaxed),
        connect_failures: c.connect_failures.load(Ordering::Relaxed),
        disconnects: c.disconnects.load(Ordering::Relaxed),
        reconnects: c.reconnects.load(Ordering::Relaxed),
        latency: q(&stats.latency),
        ack_latency: q(&stats.ack_latency),
        connect_time: q(&stats.connect_time),
        server_cpu_s,
        redis_cpu_s,
        cpu_s_per_million_deliveries: (delivered > 0 && !args.server_pids.is_empty())
            .then(|| (server_cpu_s + redis_cpu_s) / delivered as f64 * 1e6),
        redis_cpu_s_per_million_deliveries: (delivered > 0 && !args.redis_pid.is_empty())
            .then(|| redis_cpu_s / delivered as f64 * 1e6),
        redis,
        generator_cpu_s,
        generator_cpu_share: generator_cpu_s / elapsed.max(1e-9) / generator_cores(),
        server_rss_kib_before: rss_before,
        server_rss_kib_after: rss_after,
        rss_kib_per_connection: rss_per_conn,
        steps,
        best_rate_within_bound: best,
        dm: ladder,
        timeline: stats.timeline.lock().map(|t| t.clone()).unwrap_or_default(),
    };
    print_summary(&report);
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, json).map_err(|e| format!("write {}: {e}", args.out.display()))?;
    eprintln!("report written to {}", args.out.display());
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let base = format!("{}-{:?}", args.label, args.scenario).to_lowercase();
        let over_time = plot::latency_over_time(
            &format!("{} {:?}: latency over time", args.label, args.scenario),
            &report.timeline,
        );
        std::fs::write(dir.join(format!("{base}-latency-over-time.svg")), over_time).map_err(|e| e.to_string())?;
        if let Ok(h) = stats.latency.lock() {
            let cdf = plot::latency_cdf(
                &format!("{} {:?}: latency by quantile", args.label, args.scenario),
                &[(&args.label, &h)],
            );
            std::fs::write(dir.join(format!("{base}-latency-cdf.svg")), cdf).map_err(|e| e.to_string())?;
        }
        eprintln!("plots written to {}", dir.display());
    }
    Ok(())
}

fn print_summary(r: &Report) {
    println!();
    println!("| {} ({:?}, {:?}) | value |", r.label, r.scenario, r.protocol);
    println!("|---|---|");
    let rows: Vec<(&str, String)> = vec![
        ("connections", r.connections.to_string()),
        ("room size", r.room_size.to_string()),
        ("duration", format!("{:.1} s", r.duration_s)),
        ("sent / acked", format!("{} / {}", r.sent, r.acked)),
        ("delivered", format!("{} ({:.0}/s)", r.delivered, r.delivered_per_s)),
        ("recovered by sync", r.recovered_by_sync.to_string()),
        ("drops (gaps / never arrived)", format!("{} / {}", r.drops, r.tail_drops)),
        ("duplicates / out of order", format!("{} / {}", r.duplicates, r.reordered)),
        ("errors (send / connect)", format!("{} / {}", r.send_errors, r.connect_failures)),
        (
            "latency p50/p90/p99/p99.9/max",
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} / {:.2} ms",
                r.latency.p50_ms, r.latency.p90_ms, r.latency.p99_ms, r.latency.p999_ms, r.latency.max_ms
            ),
        ),
        ("ack p50/p99", format!("{:.2} / {:.2} ms", r.ack_latency.p50_ms, r.ack_latency.p99_ms)),
        ("connect p50/p99", format!("{:.2} / {:.2} ms", r.connect_time.p50_ms, r.connect_time.p99_ms)),
        ("server CPU (nodes + redis)", format!("{:.2} + {:.2} s", r.server_cpu_s, r.redis_cpu_s)),
        ("generator CPU", format!("{:.2} s ({:.0}% of its cores)", r.generator_cpu_s, r.generator_cpu_share * 100.0)),
    ];
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    if !r.redis.is_empty() {
        println!("| redis per process | {} |", redis_meter::describe(&r.redis));
    }
    if let Some(cpu) = r.cpu_s_per_million_deliveries {
        println!("| CPU-s per million deliveries | {cpu:.1} |");
    }
    if let Some(rss) = r.rss_kib_per_connection {
        println!("| RSS per connection | {rss:.1} KiB |");
    }
    if let Some(best) = r.best_rate_within_bound {
        println!("| best rate with p99 within bound | {best} msg/s |");
    }
    if let Some(ladder) = &r.dm {
        dm::print_summary(ladder);
    }
}
