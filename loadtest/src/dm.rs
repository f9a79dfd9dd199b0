//! The `dm` and `small` scenarios: thousands of users in rooms of 2 (direct messages) or 5 (small
//! groups), every user sending, PostgreSQL's `synchronous_commit` left as the server has it (on).
//! Like `fanout`, the offered rate goes up step by step; a step is within the bound when the p99 of
//! both the acknowledgement (send → ack) and the delivery (send → every member's receipt) stays under
//! it, with no drop, no send error and every send acknowledged. Each step also measures the CPU of
//! the nodes, Redis, PostgreSQL (the postmaster and every child) and the generator itself, and
//! PostgreSQL's transactions per stored message (`pg_stat_database`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use diesel::sql_types::{Array, BigInt, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::Serialize;

use crate::stats::{quantiles, Quantiles, Stats};
use crate::{procfs, Args, Fleet};

/// The rates `dm` and `small` step through unless `--rates` says otherwise (messages/s, all rooms).
/// Up to 12,000: on this project's 2 cores Chorus and the socketioxide peer both passed 6,000, the
/// old top step, so the ladder said nothing about either's ceiling.
pub const DEFAULT_RATES: &[f64] = &[
    250.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 4000.0, 5000.0, 6000.0, 7000.0, 8000.0, 9000.0, 10000.0,
    12000.0,
];

/// PostgreSQL (15+) backends report their counters to `pg_stat_database` at most once a second, and
/// a backend that goes idle less than a second after its last report holds the rest for up to 10 s
/// (PGSTAT_IDLE_INTERVAL): before reading them, let the last step's all arrive.
const PG_STATS_SETTLE: Duration = Duration::from_millis(11_000);

/// How long the servers' idle transaction rate is measured before the first step.
const IDLE_BASELINE: Duration = Duration::from_secs(5);

/// A step is "bounded by the generator" when the generator used at least this share of the CPUs it
/// may run on: then the offered rate, not the server, set the limit.
const GENERATOR_SATURATED: f64 = 0.9;

#[derive(Debug, Clone, Serialize)]
pub struct DmStep {
    /// Offered messages/s.
    pub rate: f64,
    pub sent_per_s: f64,
    /// Acknowledged (after commit) messages/s.
    pub acked_per_s: f64,
    /// Messages stored, from the rooms' `last_seq`, per second.
    pub persisted_per_s: f64,
    pub delivered_per_s: f64,
    /// Sends of the step still unacknowledged when it ended (0.5 s after the last).
    pub unacked: u64,
    pub ack_latency: Quantiles,
    pub latency: Quantiles,
    pub drops: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub errors: u64,
    pub nodes_cpu_s: f64,
    pub redis_cpu_s: f64,
    pub postgres_cpu_s: Option<f64>,
    pub generator_cpu_s: f64,
    /// CPU-seconds per million persisted messages.
    pub nodes_cpu_s_per_million: Option<f64>,
    pub redis_cpu_s_per_million: Option<f64>,
    pub postgres_cpu_s_per_million: Option<f64>,
    pub generator_cpu_s_per_million: Option<f64>,
    /// CPU-seconds per million deliveries, nodes + Redis (the figure other scenarios report).
    pub cpu_s_per_million_deliveries: Option<f64>,
    /// `xact_commit + xact_rollback` of the database over the step (the generator's own readings taken out).
    pub pg_transactions: Option<i64>,
    pub pg_transactions_per_message: Option<f64>,
    /// The same less what the servers commit when idle (`Ladder::idle_pg_transactions_per_s` over the
    /// step's reading window): what the messages themselves cost.
    pub pg_transactions_per_message_net: Option<f64>,
    /// The generator's CPU as a share of the cores it may run on.
    pub generator_cpu_share: f64,
    pub generator_saturated: bool,
    /// The whole machine's busy share over the step (every process, this benchmark's or not).
    pub machine_busy: Option<f64>,
    pub within_bound: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ladder {
    /// What the bound applies to.
    pub bound: String,
    pub p99_bound_ms: f64,
    pub postgres_pid: Option<u32>,
    /// `synchronous_commit` and `fsync` as a new session of the database sees them (the nodes' too).
    pub synchronous_commit: Option<String>,
    pub fsync: Option<String>,
    pub generator_cores: usize,
    /// The CPUs each side may run on (`taskset` in compare's BENCH_PIN mode): the generator, the
    /// postmaster, Redis, the nodes.
    pub cpus_allowed: Vec<(String, String)>,
    /// Transactions/s the servers commit with no load (upkeep: presence, sessions, autovacuum),
    /// measured for a few seconds before the first step.
    pub idle_pg_transactions_per_s: f64,
    pub steps: Vec<DmStep>,
    /// The best step within the bound (the highest rate before the first one over it).
    pub best: Option<DmStep>,
}

/// The database's counters and the fixture's rooms' stored messages, read in one statement.
#[derive(diesel::QueryableByName)]
struct Meter {
    #[diesel(sql_type = BigInt)]
    xacts: i64,
    #[diesel(sql_type = BigInt)]
    stored: i64,
}

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    value: String,
}

#[derive(diesel::QueryableByName)]
struct BackendPid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

async fn meter(conn: &mut AsyncPgConnection, rooms: &[uuid::Uuid]) -> Result<(i64, i64), String> {
    use diesel_async::RunQueryDsl;
    let m: Meter = diesel::sql_query(
        "SELECT (SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()) AS xacts,
                (SELECT coalesce(sum(last_seq), 0)::bigint FROM rooms WHERE id = ANY($1)) AS stored",
    )
    .bind::<Array<SqlUuid>, _>(rooms)
    .get_result(conn)
    .await
    .map_err(|e| format!("read pg_stat_database: {e}"))?;
    Ok((m.xacts, m.stored))
}

async fn setting(conn: &mut AsyncPgConnection, name: &str) -> Option<String> {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(format!("SELECT current_setting('{name}') AS value"))
        .get_result::<Setting>(conn)
        .await
        .ok()
        .map(|s| s.value)
}

/// The postmaster: `--postgres-pid`, else the parent of the generator's own backend when PostgreSQL
/// runs on this machine.
async fn postmaster(args: &Args, conn: &mut AsyncPgConnection) -> Option<u32> {
    use diesel_async::RunQueryDsl;
    if args.postgres_pid.is_some() {
        return args.postgres_pid;
    }
    let backend: BackendPid = diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result(conn).await.ok()?;
    let parent = procfs::parent(u32::try_from(backend.pid).ok()?)?;
    (procfs::comm(parent).as_deref() == Some("postgres")).then_some(parent)
}

/// Everything a step measures, read at its start and its end.
struct Reading {
    at: Instant,
    sent: u64,
    acked: u64,
    delivered: u64,
    drops: u64,
    duplicates: u64,
    reordered: u64,
    errors: u64,
    latency: hdrhistogram::Histogram<u64>,
    ack_latency: hdrhistogram::Histogram<u64>,
    nodes: f64,
    redis: f64,
    postgres: Option<f64>,
    generator: f64,
    machine: Option<(u64, u64)>,
}

fn read(args: &Args, stats: &Stats, postgres: Option<u32>) -> Result<Reading, String> {
    let c = &stats.counters;
    let (nodes, redis) = crate::server_cpu(args);
    Ok(Reading {
        at: Instant::now(),
        sent: c.sent.load(Ordering::Relaxed),
        acked: c.acked.load(Ordering::Relaxed),
        delivered: c.delivered.load(Ordering::Relaxed),
        drops: c.drops.load(Ordering::Relaxed),
        duplicates: c.duplicates.load(Ordering::Relaxed),
        reordered: c.reordered.load(Ordering::Relaxed),
        errors: c.send_errors.load(Ordering::Relaxed) + c.protocol_errors.load(Ordering::Relaxed),
        latency: stats.latency.lock().map(|h| h.clone()).map_err(|_| "lock")?,
        ack_latency: stats.ack_latency.lock().map(|h| h.clone()).map_err(|_| "lock")?,
        nodes,
        redis,
        postgres: postgres.and_then(procfs::tree_cpu),
        generator: procfs::own_cpu(),
        machine: procfs::machine_jiffies(),
    })
}

fn per_million(cpu: f64, messages: i64) -> Option<f64> {
    (messages > 0).then(|| cpu / messages as f64 * 1e6)
}

/// Raises the offered rate step by step until a step goes over the bound; see the module header.
pub async fn ladder(args: &Args, fleet: &Fleet, stats: &Stats, rates: &[f64]) -> Result<Ladder, String> {
    let mut conn = AsyncPgConnection::establish(&args.database_url).await.map_err(|e| format!("connect: {e}"))?;
    let postgres_pid = postmaster(args, &mut conn).await;
    let synchronous_commit = setting(&mut conn, "synchronous_commit").await;
    let fsync = setting(&mut conn, "fsync").await;
    if synchronous_commit.as_deref() == Some("off") {
        eprintln!("warning: synchronous_commit is off in this database: the dm figures assume it on");
    }
    if postgres_pid.is_none() {
        eprintln!("PostgreSQL's processes are not on this machine (or not found): no PostgreSQL CPU");
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut cpus_allowed = vec![("generator".to_owned(), procfs::cpus_allowed(std::process::id()))];
    cpus_allowed.push(("postgres".to_owned(), postgres_pid.and_then(procfs::cpus_allowed)));
    cpus_allowed.push(("redis".to_owned(), args.redis_pid.first().copied().and_then(procfs::cpus_allowed)));
    for (i, pid) in args.server_pids.iter().enumerate() {
        cpus_allowed.push((format!("node {}", i + 1), procfs::cpus_allowed(*pid)));
    }
    let cpus_allowed: Vec<(String, String)> =
        cpus_allowed.into_iter().filter_map(|(who, cpus)| cpus.map(|c| (who, c))).collect();
    eprintln!(
        "dm ladder: CPUs allowed: {}",
        cpus_allowed.iter().map(|(who, cpus)| format!("{who} {cpus}")).collect::<Vec<_>>().join(", ")
    );
    eprintln!(
        "dm ladder: postmaster {postgres_pid:?}, synchronous_commit {synchronous_commit:?}, fsync {fsync:?}, generator on {cores} core(s)"
    );
    // What the servers commit with no load, to tell the messages' transactions from upkeep.
    tokio::time::sleep(PG_STATS_SETTLE).await;
    let (idle0, _) = meter(&mut conn, &fleet.rooms).await?;
    let idle_started = Instant::now();
    tokio::time::sleep(IDLE_BASELINE).await;
    let (idle1, stored) = meter(&mut conn, &fleet.rooms).await?;
    let idle_per_s = ((idle1 - idle0 - 1).max(0)) as f64 / idle_started.elapsed().as_secs_f64();
    eprintln!("dm ladder: idle PostgreSQL transactions/s {idle_per_s:.1}");
    let mut steps = Vec::new();
    // Each step's counters run from the previous reading (taken after a settle) to its own.
    let (mut xacts0, mut stored0, mut metered) = (idle1, stored, Instant::now());
    for &rate in rates {
        let before = read(args, stats, postgres_pid)?;
        crate::drive(fleet, rate, args.step_secs as f64).await;
        // The step's last acknowledgements and deliveries land shortly after.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = read(args, stats, postgres_pid)?;
        tokio::time::sleep(PG_STATS_SETTLE).await;
        let (xacts1, stored1) = meter(&mut conn, &fleet.rooms).await?;
        let idle = idle_per_s * metered.elapsed().as_secs_f64();
        let mut step = measure(args, rate, &before, &after, xacts1 - xacts0, stored1 - stored0, cores);
        step.pg_transactions_per_message_net = step
            .pg_transactions
            .filter(|_| stored1 > stored0)
            .map(|t| (t as f64 - idle).max(0.0) / (stored1 - stored0) as f64);
        (xacts0, stored0, metered) = (xacts1, stored1, Instant::now());
        eprintln!(
            "step {rate} msg/s: acked/s {:.0}, persisted/s {:.0}, ack p99 {:.2} ms, delivery p99 {:.2} ms, \
             CPU-s/M msgs nodes {} redis {} postgres {} generator {}, pg xacts/msg {} (less idle {}), generator {:.0}%{} -> {}",
            step.acked_per_s,
            step.persisted_per_s,
            step.ack_latency.p99_ms,
            step.latency.p99_ms,
            show(step.nodes_cpu_s_per_million),
            show(step.redis_cpu_s_per_million),
            show(step.postgres_cpu_s_per_million),
            show(step.generator_cpu_s_per_million),
            step.pg_transactions_per_message.map_or("n/a".into(), |t| format!("{t:.3}")),
            step.pg_transactions_per_message_net.map_or("n/a".into(), |t| format!("{t:.3}")),
            step.generator_cpu_share * 100.0,
            if step.generator_saturated { " (generator saturated)" } else { "" },
            if step.within_bound { "within bound" } else { "over bound" }
        );
        let within = step.within_bound;
        steps.push(step);
        if !within {
            break;
        }
    }
    let best = steps.iter().take_while(|s| s.within_bound).last().cloned();
    Ok(Ladder {
        bound: "p99 of both the acknowledgement (send → ack after commit) and the delivery (send → receipt by \
                every member), no drop or send error, every send acknowledged"
            .into(),
        p99_bound_ms: args.p99_bound_ms,
        postgres_pid,
        synchronous_commit,
        fsync,
        generator_cores: cores,
        cpus_allowed,
        idle_pg_transactions_per_s: idle_per_s,
        steps,
        best,
    })
}

fn show(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.1}"))
}

fn measure(args: &Args, rate: f64, a: &Reading, b: &Reading, xacts: i64, stored: i64, cores: usize) -> DmStep {
    let elapsed = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    // Rates over the offered time: the 0.5 s after it only collects the step's stragglers.
    let secs = (args.step_secs as f64).max(1e-3);
    let window = |now: &hdrhistogram::Histogram<u64>, then: &hdrhistogram::Histogram<u64>| {
        let mut h = now.clone();
        let _ = h.subtract(then);
        quantiles(&h)
    };
    let latency = window(&b.latency, &a.latency);
    let ack_latency = window(&b.ack_latency, &a.ack_latency);
    let (sent, acked, delivered) = (b.sent - a.sent, b.acked - a.acked, b.delivered - a.delivered);
    let (drops, errors) = (b.drops - a.drops, b.errors - a.errors);
    let nodes = b.nodes - a.nodes;
    let redis = b.redis - a.redis;
    let postgres = b.postgres.zip(a.postgres).map(|(b, a)| b - a);
    let generator = b.generator - a.generator;
    // The generator's one reading between the two (the previous `meter`) is a transaction of its own.
    let pg_transactions = (xacts - 1).max(0);
    let share = generator / elapsed / cores as f64;
    let machine_busy = b.machine.zip(a.machine).and_then(|((b_busy, b_total), (a_busy, a_total))| {
        (b_total > a_total).then(|| (b_busy - a_busy) as f64 / (b_total - a_total) as f64)
    });
    let unacked = sent.saturating_sub(acked);
    let within = ack_latency.p99_ms <= args.p99_bound_ms
        && latency.p99_ms <= args.p99_bound_ms
        && drops == 0
        && errors == 0
        && acked > 0
        && unacked == 0;
    DmStep {
        rate,
        sent_per_s: sent as f64 / secs,
        acked_per_s: acked as f64 / secs,
        persisted_per_s: stored as f64 / secs,
        delivered_per_s: delivered as f64 / secs,
        unacked,
        ack_latency,
        latency,
        drops,
        duplicates: b.duplicates - a.duplicates,
        reordered: b.reordered - a.reordered,
        errors,
        nodes_cpu_s: nodes,
        redis_cpu_s: redis,
        postgres_cpu_s: postgres,
        generator_cpu_s: generator,
        nodes_cpu_s_per_million: (!args.server_pids.is_empty()).then(|| per_million(nodes, stored)).flatten(),
        redis_cpu_s_per_million: args.redis_pid.first().and_then(|_| per_million(redis, stored)),
        postgres_cpu_s_per_million: postgres.and_then(|p| per_million(p, stored)),
        generator_cpu_s_per_million: per_million(generator, stored),
        cpu_s_per_million_deliveries: (!args.server_pids.is_empty() && delivered > 0)
            .then(|| (nodes + redis) / delivered as f64 * 1e6),
        pg_transactions: Some(pg_transactions),
        pg_transactions_per_message: (stored > 0).then(|| pg_transactions as f64 / stored as f64),
        pg_transactions_per_message_net: None,
        generator_cpu_share: share,
        generator_saturated: share >= GENERATOR_SATURATED,
        machine_busy,
        within_bound: within,
    }
}

/// The ladder's best step, as rows of the generator's summary table.
pub fn print_summary(l: &Ladder) {
    let Some(b) = &l.best else {
        println!("| dm: best step | none within the bound |");
        return;
    };
    println!("| dm: acked / persisted msg/s at the best step | {:.0} / {:.0} |", b.acked_per_s, b.persisted_per_s);
    println!("| dm: ack p99 / delivery p99 there | {:.2} / {:.2} ms |", b.ack_latency.p99_ms, b.latency.p99_ms);
    println!(
        "| dm: CPU-s per million messages (nodes / Redis / PostgreSQL / generator) | {} / {} / {} / {} |",
        show(b.nodes_cpu_s_per_million),
        show(b.redis_cpu_s_per_million),
        show(b.postgres_cpu_s_per_million),
        show(b.generator_cpu_s_per_million)
    );
    println!(
        "| dm: PostgreSQL transactions per message (less idle upkeep) | {} ({}) |",
        b.pg_transactions_per_message.map_or("n/a".into(), |t| format!("{t:.3}")),
        b.pg_transactions_per_message_net.map_or("n/a".into(), |t| format!("{t:.3}"))
    );
    if l.steps.iter().any(|s| s.generator_saturated) {
        println!("| dm: bounded by the generator | yes: its CPU was saturated in some step |");
    }
}
