//! The chaos run's report: a summary on stdout, and `--chaos-doc` (docs/RESILIENCE.md) with, for
//! each run (one per Redis mode), its verdict, one row per fault and a timeline SVG beside the
//! document (deliveries/s and p99 per second, faults shaded).

use std::fmt::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cluster::RedisMode;
use super::member::Shared;
use super::ChaosReport;

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Second {
    pub t: f64,
    pub deliveries: u64,
    pub p99_ms: f64,
}

pub fn seconds(shared: &Shared) -> Vec<Second> {
    let Ok(seconds) = shared.seconds.lock() else { return Vec::new() };
    seconds
        .iter()
        .enumerate()
        .map(|(i, h)| Second {
            t: i as f64,
            deliveries: h.len(),
            p99_ms: if h.is_empty() { 0.0 } else { h.value_at_quantile(0.99) as f64 / 1000.0 },
        })
        .collect()
}

/// p99 (ms) of the deliveries received in the whole seconds from `from` to `to`.
pub fn p99(shared: &Shared, from: f64, to: f64) -> f64 {
    let Ok(seconds) = shared.seconds.lock() else { return 0.0 };
    let (first, last) = (from.max(0.0).floor() as usize, to.max(0.0).ceil() as usize);
    let mut sum: Option<hdrhistogram::Histogram<u64>> = None;
    for h in seconds.iter().take(last).skip(first) {
        match &mut sum {
            None => sum = Some(h.clone()),
            Some(s) => {
                let _ = s.add(h);
            }
        }
    }
    sum.filter(|h| !h.is_empty()).map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0)
}

fn codes(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter().map(|(k, v)| format!("{v} × {k}")).collect::<Vec<_>>().join(", ")
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn fault_table(r: &ChaosReport) -> String {
    let mut s = String::from(
        "| fault | target | start → end | clients disconnected | 99% back and caught up after | p99 before / during / after | sends refused (by code) | not sent (sender offline) | closes seen | delivered by sync | wire duplicates | what happened |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in &r.faults {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} s → {:.1} s | {} of {} | {:.1} s | {} / {} / {} | {} | {} | {} | {} | {} | {}{} |",
            f.fault.name,
            f.fault.target,
            f.fault.start_s,
            f.fault.end_s,
            f.clients_disconnected,
            r.connections,
            f.recovered_99_s,
            ms(f.p99_before_ms),
            ms(f.p99_during_ms),
            ms(f.p99_after_ms),
            codes(&f.refused),
            f.not_sent_offline,
            codes(&f.closes),
            f.delivered_by_sync,
            f.wire_duplicates,
            f.fault.detail,
            f.fault.error.as_ref().map(|e| format!(" **step failed: {e}**")).unwrap_or_default(),
        );
    }
    s
}

fn verdict_table(r: &ChaosReport) -> String {
    let v = &r.verdict;
    let rows = [
        ("acknowledged messages", v.acknowledged.to_string(), "—"),
        ("acknowledged, not received by a member", v.acknowledged_lost.to_string(), "0"),
        ("committed (acknowledged or not), not received by a member", v.committed_not_received.to_string(), "0"),
        ("same seq, two different messages", v.id_conflicts.to_string(), "0"),
        ("out of order on a live stream", v.out_of_order.to_string(), "0"),
        ("duplicates on the wire (dropped by seq, as a client does)", v.wire_duplicates.to_string(), "reported"),
        ("gaps on a live stream (repaired by sync, as a client does)", v.live_gaps.to_string(), "reported"),
    ];
    let mut s = String::from("| check | count | must be |\n|---|---|---|\n");
    for (k, n, want) in rows {
        let _ = writeln!(s, "| {k} | {n} | {want} |");
    }
    s
}

pub fn print(r: &ChaosReport) {
    println!();
    println!("{}", verdict_table(r));
    println!("{}", fault_table(r));
    println!(
        "sent {} (not sent while offline {}, unanswered {}), delivered {} live + {} by sync, {} syncs, {} connects ({} failed)",
        r.sent,
        r.not_sent_offline,
        r.unanswered,
        r.delivered_live,
        r.delivered_by_sync,
        r.syncs,
        r.connects,
        r.connect_failures
    );
    println!("refused: {}; closes: {}", codes(&r.refused), codes(&r.closes));
    println!("verdict: {}", if r.verdict.passed { "PASSED" } else { "FAILED" });
}

/// The timeline's file name for a run: `<doc>-timeline.svg` (single Redis), else with the mode.
fn svg_name(doc: &Path, mode: RedisMode) -> String {
    let stem = doc.file_stem().and_then(|s| s.to_str()).unwrap_or("chaos").to_lowercase();
    match mode {
        RedisMode::Single => format!("{stem}-timeline.svg"),
        other => format!("{stem}-timeline-{}.svg", other.name()),
    }
}

fn mode_title(mode: RedisMode) -> &'static str {
    match mode {
        RedisMode::Single => "One Redis (`CHORUS_REDIS_MODE=single`)",
        RedisMode::Cluster => "Redis Cluster (`CHORUS_REDIS_MODE=cluster`)",
    }
}

/// What the faults of a Redis mode do, and why a cluster run has the ones it has.
fn mode_faults(mode: RedisMode) -> &'static str {
    match mode {
        RedisMode::Single => {
            "Against one Redis: `redis-restart` (Redis SIGKILLed, started again empty when the fault's \
             time is up), `partition` (the last node's Redis traffic blackholed through a proxy, then \
             healed), `postgres-restart` (fast shutdown, started again), `slow-consumer` (a user of a \
             large room stops reading), `node-drain` (SIGTERM, restarted once it exits) and `node-kill` \
             (SIGKILL, restarted when the fault's time is up)."
        }
        RedisMode::Cluster => {
            "Against a Redis Cluster the Redis fault is `primary-kill`: the primary serving the largest \
             share of the run's messages (by the slots of the rooms' channels) is SIGKILLed; the cluster \
             promotes its replica once `cluster-node-timeout` has passed, every node resubscribes slot by \
             slot and catches up from PostgreSQL, and when the fault's time is up the killed \
             `redis-server` is started again on its directory and rejoins as a replica. The other faults \
             are those of the single-Redis run (a restarted node subscribes on every primary). \
             `redis-restart` and `partition` are single-Redis faults: a cluster does not go down as a \
             whole when one server does, and a node learns the other members' addresses from the \
             cluster, so one proxy cannot stand between a node and all of Redis. `slow-consumer` does \
             not involve Redis and runs against one Redis only."
        }
    }
}

fn section(s: &mut String, r: &ChaosReport, svg: &str, level: &str) {
    let faults: Vec<String> = r.faults.iter().map(|f| format!("`{}`", f.fault.name)).collect();
    let _ = writeln!(
        s,
        "**Verdict: {}.** Faults, in order: {}.\n\n{}\n",
        if r.verdict.passed { "passed" } else { "FAILED" },
        faults.join(", "),
        mode_faults(r.redis_mode)
    );
    s.push_str(&verdict_table(r));
    let _ = writeln!(s, "\n{level} Per fault\n");
    let _ = writeln!(
        s,
        "Each fault's window runs from its start to the next fault's start ({:.0} s of steady load follow \
         each one).\n",
        r.faults.first().map_or(r.settle_s, |f| f.window_end_s - f.fault.end_s)
    );
    s.push_str(&fault_table(r));
    let _ = writeln!(
        s,
        "\n![{}: deliveries per second and p99 latency over the run, faults shaded]({svg})\n",
        mode_title(r.redis_mode).split(" (").next().unwrap_or_default()
    );
    let _ = writeln!(s, "{level} The run\n");
    let _ = writeln!(
        s,
        "- {} nodes behind the bundled nginx (`script/server`), private PostgreSQL, {}, the \
         generator on the same machine ({}); commit `{}`.",
        r.nodes,
        if r.redis.is_empty() { "one Redis server" } else { &r.redis },
        r.machine,
        r.commit
    );
    let _ = writeln!(
        s,
        "- {} users: {} rooms of {} and {} rooms of 2; {} messages/s sent by users picked at random \
         (a room's traffic follows its size), for {:.0} s.",
        r.connections, r.big_rooms, r.big_room_size, r.small_rooms, r.rate, r.duration_s
    );
    let _ = writeln!(
        s,
        "- Sent {}, acknowledged {}, refused {} ({}), unanswered when the connection ended {}; not sent \
         because the sender was offline {}.",
        r.sent,
        r.verdict.acknowledged,
        r.refused.values().sum::<u64>(),
        codes(&r.refused),
        r.unanswered,
        r.not_sent_offline
    );
    let _ = writeln!(
        s,
        "- Delivered {} live and {} through `sync` ({} syncs); {} connections made, {} attempts failed; \
         close codes seen: {}.",
        r.delivered_live,
        r.delivered_by_sync,
        r.syncs,
        r.connects,
        r.connect_failures,
        codes(&r.closes)
    );
    let _ = writeln!(s, "- The generator ran as:\n\n  ```sh\n  {}\n  ```", r.command);
}

/// Writes the document for one run or several (one section per Redis mode), each run's timeline
/// as an SVG beside it.
pub fn write_doc(reports: &[ChaosReport], doc: &Path, findings: Option<&str>) -> Result<(), String> {
    let first = reports.first().ok_or("no report to write")?;
    for r in reports {
        let svg_path = doc.with_file_name(svg_name(doc, r.redis_mode));
        std::fs::write(&svg_path, timeline_svg(r)).map_err(|e| format!("write {}: {e}", svg_path.display()))?;
    }
    let mut s = String::new();
    let _ = writeln!(s, "# Resilience: faults under load\n");
    let _ = writeln!(
        s,
        "<!-- Generated by `{}` (chorus-loadtest --scenario chaos, loadtest/src/chaos/); do not edit by hand. -->\n",
        first.reproduce
    );
    let _ = writeln!(
        s,
        "Chorus under a steady load while nodes, Redis and PostgreSQL fail one after another{}. The load \
         generator is the checker: every acknowledged message must reach every member of its room exactly \
         once and in seq order, live or through `sync`. Users reconnect the way \
         [PROTOCOL.md §10](PROTOCOL.md#10-reconnect-and-resync) says a client should (full-jitter backoff \
         from 0.5 s, 0–1 s after a 1012) and `sync` from the last seq they hold without a gap.\n",
        if reports.len() > 1 { ", once against each Redis mode" } else { "" }
    );
    if reports.len() > 1 {
        let passed = reports.iter().all(|r| r.verdict.passed);
        let _ = writeln!(s, "**Verdict: {}.**\n", if passed { "passed" } else { "FAILED" });
        s.push_str(
            "| Redis | faults | acknowledged | acknowledged, not received | committed, not received | out of order | verdict |\n|---|---|---|---|---|---|---|\n",
        );
        for r in reports {
            let faults: Vec<&str> = r.faults.iter().map(|f| f.fault.name.as_str()).collect();
            let v = &r.verdict;
            let _ = writeln!(
                s,
                "| [{}](#{}) | {} | {} | {} | {} | {} | {} |",
                r.redis_mode.name(),
                anchor(mode_title(r.redis_mode)),
                faults.join(", "),
                v.acknowledged,
                v.acknowledged_lost,
                v.committed_not_received,
                v.out_of_order,
                if v.passed { "passed" } else { "FAILED" }
            );
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "How to read the tables: *clients disconnected*: users whose connection ended in the fault's window \
         (from its start to the next fault's start). *99% back and caught up*: from the fault's start until \
         at least 99% of users were connected, not syncing, without a gap and holding every message \
         acknowledged in their room more than a second earlier, for the rest of the window (0: never below). \
         *p99*: send → receipt of every delivery received in the 10 s before, from start to end, and from \
         the end to the next fault, messages recovered by `sync` included.\n"
    );
    let level = if reports.len() > 1 { "###" } else { "##" };
    for r in reports {
        if reports.len() > 1 {
            let _ = writeln!(s, "## {}\n", mode_title(r.redis_mode));
        }
        section(&mut s, r, &svg_name(doc, r.redis_mode), level);
        s.push('\n');
    }
    if let Some(findings) = findings {
        let _ = writeln!(s, "## What the runs found and what was fixed\n");
        let _ = writeln!(s, "<!-- Copied from loadtest/chaos-findings.md. -->\n");
        s.push_str(findings.trim());
        s.push('\n');
    }
    let _ = writeln!(s, "\n## Reproduce\n");
    let _ = writeln!(
        s,
        "Builds release binaries, then for each Redis mode starts everything on free ports (`script/server`, \
         with `CHORUS_REDIS_MODE=cluster` a Redis Cluster of 3 primaries and 3 replicas) and runs the \
         generator; rewrites this file and its SVGs (`CHAOS_REDIS_MODES=single` or `cluster` runs one):\n"
    );
    let _ = writeln!(s, "```sh\n{}\n```", first.reproduce);
    std::fs::write(doc, s).map_err(|e| format!("write {}: {e}", doc.display()))
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes.
fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

const W: f64 = 900.0;
const PANEL: f64 = 170.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

fn timeline_svg(r: &ChaosReport) -> String {
    let x_max = r.timeline.last().map_or(1.0, |s| s.t + 1.0).max(1.0);
    let x = |t: f64| LEFT + t / x_max * (W - LEFT - RIGHT);
    let top1 = 40.0;
    let top2 = top1 + PANEL + 40.0;
    let h = top2 + PANEL + 50.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="18" text-anchor="middle" font-size="14">Chorus under faults ({}): deliveries/s and p99 latency per second</text>
"#,
        W / 2.0,
        match r.redis_mode {
            RedisMode::Single => "one Redis",
            RedisMode::Cluster => "Redis Cluster",
        }
    );
    // Fault bands across both panels.
    for (i, f) in r.faults.iter().enumerate() {
        let (x0, x1) = (x(f.fault.start_s), x(f.fault.end_s.max(f.fault.start_s + 0.5)));
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{top1}" width="{:.1}" height="{:.1}" fill="#f4a582" opacity="0.35"/>"##,
            x1 - x0,
            top2 + PANEL - top1
        );
        let label_y = top1 - 4.0 + if i % 2 == 0 { 0.0 } else { -10.0 } + 10.0;
        let _ = writeln!(s, r#"<text x="{x0:.1}" y="{label_y:.1}" font-size="10">{}</text>"#, f.fault.name);
    }
    let deliveries_max = r.timeline.iter().map(|s| s.deliveries).max().unwrap_or(1).max(1) as f64 * 1.1;
    let p99_max = r.timeline.iter().map(|s| s.p99_ms).fold(1.0, f64::max);
    // Latency on a log scale: a fault's seconds-long tail and the steady milliseconds both show.
    let log_top = p99_max.log10().ceil().max(1.0);
    let log_bottom = -1.0;
    for (top, label, ticks) in [
        (
            top1,
            "deliveries/s",
            (0..=4).map(|i| (i as f64 / 4.0, format!("{:.0}", deliveries_max * i as f64 / 4.0))).collect::<Vec<_>>(),
        ),
        (
            top2,
            "p99 (ms, log)",
            ((log_bottom as i32)..=(log_top as i32))
                .map(|e| ((e as f64 - log_bottom) / (log_top - log_bottom), format!("{}", 10f64.powi(e))))
                .collect(),
        ),
    ] {
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{}" stroke="black"/>"#,
            top + PANEL,
            W - RIGHT,
            top + PANEL,
            top + PANEL
        );
        let _ = writeln!(
            s,
            r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{label}</text>"#,
            top + PANEL / 2.0,
            top + PANEL / 2.0
        );
        for (f, text) in ticks {
            let y = top + PANEL - f * PANEL;
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{text}</text>"##,
                W - RIGHT,
                LEFT - 4.0,
                y + 4.0
            );
        }
    }
    let step = (x_max / 10.0 / 10.0).ceil() * 10.0;
    let mut t = 0.0;
    while t <= x_max {
        let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0}</text>"#, x(t), top2 + PANEL + 15.0);
        t += step.max(10.0);
    }
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">seconds</text>"#, W / 2.0, top2 + PANEL + 32.0);
    let deliveries: Vec<String> = r
        .timeline
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.t + 0.5), top1 + PANEL - p.deliveries as f64 / deliveries_max * PANEL))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.3" points="{}"/>"##,
        deliveries.join(" ")
    );
    let latency: Vec<String> = r
        .timeline
        .iter()
        .filter(|p| p.deliveries > 0)
        .map(|p| {
            let v = (p.p99_ms.max(0.1).log10() - log_bottom) / (log_top - log_bottom);
            format!("{:.1},{:.1}", x(p.t + 0.5), top2 + PANEL - v.clamp(0.0, 1.0) * PANEL)
        })
        .collect();
    let _ =
        writeln!(s, r##"<polyline fill="none" stroke="#d62728" stroke-width="1.3" points="{}"/>"##, latency.join(" "));
    s.push_str("</svg>\n");
    s
}
