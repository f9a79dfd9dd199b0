#!/usr/bin/env python3
"""Turns the JSON reports of loadtest/compare into docs/BENCHMARKS.md.

usage: report.py RESULTS_DIR OUT.md NODES "SCENARIOS"

RESULTS_DIR holds one run's `<label>-<scenario>.json` files, or one `round-<n>/` directory of them per
run: then every headline figure is the median over the runs with the lowest and highest run beside
it, and every ratio is taken within each run (the systems of one run shared its conditions) before
its median is. A scenario's runs are the round directories that hold its reports (compare may have
re-run some scenarios only).
"""
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone

results, out, nodes, scenarios = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
SYSTEMS = [("chorus", "Chorus"), ("chorus-sio", "Chorus over Socket.IO"), ("socketio", "Socket.IO + redis-adapter"),
           ("socketioxide", "socketioxide + socketioxide-redis")]
NATIVE, SIO, PEER, RUST_PEER = (label for label, _ in SYSTEMS)
DM_SCENARIOS = ("dm", "small")
# A figure is "bounded by the generator" where the generator used at least this share of its cores.
GENERATOR_SATURATED = 0.9


def round_number(name):
    try:
        return int(name.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


ROUND_DIRS = sorted(
    (d for d in (os.listdir(results) if os.path.isdir(results) else [])
     if d.startswith("round-") and round_number(d) is not None and os.path.isdir(os.path.join(results, d))),
    key=round_number)
RUNS = [os.path.join(results, d) for d in ROUND_DIRS] or [results]


def load_from(run, label, scenario):
    path = os.path.join(run, f"{label}-{scenario}.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def runs_of(scenario):
    """The runs that hold reports of this scenario."""
    return [run for run in RUNS
            if any(os.path.exists(os.path.join(run, f"{label}-{scenario}.json")) for label, _ in SYSTEMS)]


def load(label, scenario):
    """The scenario's last run's report (the details and the plots are that run's)."""
    runs = runs_of(scenario)
    return load_from(runs[-1], label, scenario) if runs else None


def per_run(scenario):
    """Per run of the scenario: {label: report or None}."""
    return [{label: load_from(run, label, scenario) for label, _ in SYSTEMS} for run in runs_of(scenario)]


def measured(scenario):
    """How many runs, and when (the reports' times, UTC)."""
    runs = runs_of(scenario)
    times = [os.path.getmtime(os.path.join(run, f"{label}-{scenario}.json"))
             for run in runs for label, _ in SYSTEMS if os.path.exists(os.path.join(run, f"{label}-{scenario}.json"))]
    if not times:
        return "no runs"
    at = lambda t: datetime.fromtimestamp(t, timezone.utc)  # noqa: E731
    first, last = at(min(times)), at(max(times))
    span = f"{first:%Y-%m-%d %H:%M}–{last:%H:%M} UTC" if first.date() == last.date() else \
        f"{first:%Y-%m-%d %H:%M} – {last:%Y-%m-%d %H:%M} UTC"
    return f"{len(runs)} run{'s' if len(runs) != 1 else ''}, {span}"


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - a missing tool just leaves the line empty
        return ""


def fmt(v, unit="", digits=1):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{unit}"
    return f"{v:,}{unit}"


def ratio(a, b, higher_is_better=True):
    if a is None or b is None or a == 0 or b == 0:
        return "n/a"
    r = a / b if higher_is_better else b / a
    return f"{r:.1f}×"


def cpu_per_m(r):
    return r.get("cpu_s_per_million_deliveries") if r else None


def spread(values, unit="", digits=1):
    """The median of the runs' values, and the lowest and highest beside it (unless all are the same).
    `digits=None`: two decimals below 100, none from there on."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    median = statistics.median(values)
    if digits is None:
        digits = 2 if abs(median) < 100 else 0
    low, high = fmt(float(min(values)), "", digits), fmt(float(max(values)), "", digits)
    if low == high:
        return fmt(float(median), unit, digits)
    return f"{fmt(float(median), '', digits)} ({low}–{high}){unit}"


def run_ratios(pairs, higher_is_better=True):
    """Per-run ratios a/b (b/a when lower is better) of the (a, b) pairs where both are known."""
    out = []
    for a, b in pairs:
        if a is None or b is None or a == 0 or b == 0:
            continue
        out.append(a / b if higher_is_better else b / a)
    return out


def ratio_spread(ratios):
    if not ratios:
        return "n/a"
    median = statistics.median(ratios)
    low, high = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
    if low == high:
        return f"{median:.2f}×"
    return f"{median:.2f}× ({low}–{high})"


def best_step(r):
    steps = [st for st in (r or {}).get("steps", []) if st.get("within_bound")]
    return steps[-1] if steps else None


def step_at(r, rate):
    if r is None or rate is None:
        return None
    return next((st for st in r.get("steps", []) if st["rate"] == rate), None)


def g(r, *path):
    for key in path:
        if r is None:
            return None
        r = r.get(key)
    return r


def never_delivered(r):
    return None if r is None else (r.get("drops") or 0) + (r.get("tail_drops") or 0)


def totals(runs, label):
    """drops / duplicates / out of order, summed over the runs that have a report."""
    reports = [run[label] for run in runs if run[label] is not None]
    if not reports:
        return "n/a"
    return " / ".join(fmt(sum(v(r) or 0 for r in reports)) for v in
                      (never_delivered, lambda r: r.get("duplicates"), lambda r: r.get("reordered")))


def dm_best(r):
    """The best step within the bound; without one, the lowest step (its figures, marked in the table)."""
    steps = g(r, "dm", "steps") or []
    return g(r, "dm", "best") or (steps[0] if steps else None)


def dm_none_within(r):
    """The lowest offered rate, when even that step was over the bound."""
    steps = g(r, "dm", "steps") or []
    return steps[0]["rate"] if steps and g(r, "dm", "best") is None else None


def limiting(r, scenario):
    """What set a report's figure: the first step over the bound (or the last step, when every step
    passed) of a rate ladder, else the report itself."""
    if r is None:
        return None
    steps = g(r, "dm", "steps") if scenario in DM_SCENARIOS else r.get("steps") if scenario == "fanout" else None
    if not steps:
        return r
    return next((st for st in steps if not st.get("within_bound")), steps[-1])


def generator_bound(r, scenario):
    share = g(limiting(r, scenario), "generator_cpu_share")
    return share is not None and share >= GENERATOR_SATURATED


def rows(scenario, runs):
    """The headline rows of a scenario: (figure, value of a system's report in a run, unit, digits,
    higher_is_better or None for no ratio)."""
    if scenario in DM_SCENARIOS:
        return [
            ("acknowledged, persisted msg/s with ack and delivery p99 ≤ 50 ms",
             lambda r, run: g(r, "dm", "best", "acked_per_s"), "", 0, True),
            ("ack p99 at that rate", lambda r, run: g(dm_best(r), "ack_latency", "p99_ms"), " ms", None, None),
            ("delivery p99 at that rate", lambda r, run: g(dm_best(r), "latency", "p99_ms"), " ms", None, None),
            ("nodes CPU-s per million messages", lambda r, run: g(dm_best(r), "nodes_cpu_s_per_million"), "", 1, False),
            ("Redis CPU-s per million messages", lambda r, run: g(dm_best(r), "redis_cpu_s_per_million"), "", 1, False),
            ("PostgreSQL CPU-s per million messages",
             lambda r, run: g(dm_best(r), "postgres_cpu_s_per_million"), "", 1, False),
            ("PostgreSQL transactions per message",
             lambda r, run: g(dm_best(r), "pg_transactions_per_message"), "", 3, False),
            ("… less the servers' idle transactions",
             lambda r, run: g(dm_best(r), "pg_transactions_per_message_net"), "", 3, False),
            ("generator CPU-s per million messages (not server work)",
             lambda r, run: g(dm_best(r), "generator_cpu_s_per_million"), "", 1, None),
        ]
    if scenario == "fanout":
        peer_best = lambda run: g(run[PEER], "best_rate_within_bound")  # noqa: E731
        return [
            ("best rate with p99 ≤ 50 ms (msg/s)", lambda r, run: g(r, "best_rate_within_bound"), "", 0, True),
            ("deliveries/s at that rate", lambda r, run: g(best_step(r), "delivered_per_s"), "", 0, True),
            (f"p99 at the peer's best rate (median {spread([peer_best(run) for run in runs], '', 0)} msg/s)",
             lambda r, run: g(step_at(r, peer_best(run)), "latency", "p99_ms"), " ms", None, False),
            ("server CPU-s per million deliveries at that rate",
             lambda r, run: g(step_at(r, peer_best(run)), "cpu_s_per_million_deliveries"), "", 1, False),
        ]
    if scenario == "connections":
        return [
            ("connections", lambda r, run: g(r, "connections"), "", 0, None),
            ("RSS per connection (KiB)", lambda r, run: g(r, "rss_kib_per_connection"), "", 1, False),
            ("connect p99", lambda r, run: g(r, "connect_time", "p99_ms"), " ms", None, False),
        ]
    return [
        ("delivered/s", lambda r, run: g(r, "delivered_per_s"), "", 0, True),
        ("latency p50", lambda r, run: g(r, "latency", "p50_ms"), " ms", None, False),
        ("latency p99", lambda r, run: g(r, "latency", "p99_ms"), " ms", None, False),
        ("server CPU-s per million deliveries", lambda r, run: cpu_per_m(r), "", 1, False),
    ]


def figure(runs, label, value):
    return [value(run[label], run) for run in runs]


def protocol_cost():
    """A sentence on what Socket.IO framing costs Chorus, from the steady (or burst) and connections runs."""
    parts = []
    for scenario in ("steady", "burst", "churn"):
        if scenario not in scenarios:
            continue
        runs = per_run(scenario)
        cpu = run_ratios([(cpu_per_m(run[SIO]), cpu_per_m(run[NATIVE])) for run in runs])
        p99 = run_ratios([(g(run[SIO], "latency", "p99_ms"), g(run[NATIVE], "latency", "p99_ms")) for run in runs])
        peer = run_ratios([(cpu_per_m(run[SIO]), cpu_per_m(run[PEER])) for run in runs], higher_is_better=False)
        if cpu:
            parts.append(
                f"in {scenario}, {ratio_spread(cpu)} the native endpoint's server CPU per delivery "
                f"({spread([cpu_per_m(run[SIO]) for run in runs])} vs "
                f"{spread([cpu_per_m(run[NATIVE]) for run in runs])} CPU-s per million) and {ratio_spread(p99)} its p99"
                + (f", still {ratio_spread(peer)} less CPU per delivery than the peer" if peer else ""))
            break
    if "connections" in scenarios:
        runs = per_run("connections")
        rss = run_ratios([(g(run[SIO], "rss_kib_per_connection"), g(run[NATIVE], "rss_kib_per_connection"))
                          for run in runs])
        if rss:
            parts.append(f"an idle socket costs {ratio_spread(rss)} the native one's RSS "
                         f"({spread([g(run[SIO], 'rss_kib_per_connection') for run in runs])} vs "
                         f"{spread([g(run[NATIVE], 'rss_kib_per_connection') for run in runs])} KiB)")
    if not parts:
        return None
    return ("**What Socket.IO costs Chorus** (the same nodes, sessions and events, only the framing and the "
            "Engine.IO session differ; ratios are per run, then their median and range): "
            + "; ".join(parts) + ".")


via_lb = os.environ.get("BENCH_VIA_LB", "0") == "1"
lines = []
w = lines.append
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
w("# Benchmarks: Chorus (native and over Socket.IO) vs Socket.IO on Node.js and socketioxide, each with its Redis adapter")
w("")
w(f"Generated by `loadtest/compare` on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} "
  "(" + "; ".join(f"{scenario}: {measured(scenario)}" for scenario in scenarios) + "). "
  "Every headline figure is the median of a scenario's runs with the lowest and highest run in brackets "
  "(none: every run gave the same figure), "
  "and every ratio is taken within a run, then its median (and range) across the runs. "
  + "Four systems ran on this machine in each run, one after the other, against the same PostgreSQL "
  f"and Redis, with {nodes} nodes each, driven by the same load generator "
  "(`target/release/chorus-loadtest`), which ran on the same 2 cores: Chorus with its own protocol "
  "(`/api/v1/ws`), the same Chorus nodes over their Socket.IO endpoint "
  "(`/socket.io/?EIO=4&transport=websocket`: the same events and data in Socket.IO packets, the token in "
  "CONNECT's auth, `sync` with an ack after a reconnect), and two Socket.IO peers (Node.js, and Rust on "
  "socketioxide), driven by the same generator protocol. Chorus's cluster is "
  "started afresh for each of its two protocols (same database; the order of the two alternates from run "
  "to run), so both begin with new node processes. "
  + ("The generator connected through nginx (`least_conn`, `BENCH_VIA_LB=1`). " if via_lb else
     "The generator spread its connections over the nodes' own ports, round-robin (no proxy in the path: "
     "`BENCH_VIA_LB=1` puts nginx back); every room has members on every node, so each message crosses Redis. ")
  + f"Each Chorus node ran {os.environ.get('CHORUS_WORKERS', '1')} HTTP worker thread(s) "
  "(`BENCH_CHORUS_WORKERS`), each peer process its one event loop. "
  + "Every figure below comes from the JSON reports in `.local/bench-results/`.")
if os.environ.get("BENCH_PIN") == "1":
    w("")
    w(f"**Pinned** (`BENCH_PIN=1`): the servers (nodes, Redis, PostgreSQL) ran on CPU(s) "
      f"{os.environ.get('BENCH_PIN_SERVERS')} and the generator on CPU(s) {os.environ.get('BENCH_PIN_GENERATOR')} "
      "(`taskset`), so a server's saturation point is measured on its own core(s), not the generator's.")
w("")
w("## Machine")
w("")
w(f"- {os.cpu_count()} cores ({cpu}), {mem}, Linux {platform.release()}")
versions = [sh("psql --version"), sh("redis-server --version | cut -d' ' -f1-3"), "Node.js " + sh("node --version"),
            "socketioxide " + (sh("grep -A1 '^name = \"socketioxide\"$' loadtest/peers/socketioxide/Cargo.lock "
                                  "| sed -n 's/^version = \"\\(.*\\)\"/\\1/p'") or "n/a"),
            sh("rustc --version")]
w("- " + "; ".join(versions))
w("- The peer (`loadtest/peers/socketio/`) does the same work per message as Chorus: it authenticates the "
  "connection (JWT), checks membership, stores the message with the same one-statement seq allocation in "
  "the same PostgreSQL schema, broadcasts it to the room through `@socket.io/redis-adapter`, and acknowledges it.")
w("- The Rust peer (`loadtest/peers/socketioxide/`) does the same per message, on socketioxide with "
  "socketioxide-redis and tokio-postgres (the same SQL text, prepared once per connection, 16 connections), "
  "one runtime thread per process (`PEER_WORKERS`), as a Node process has one event loop.")
w("")
w("## How to reproduce")
w("")
w("```sh")
w("script/bootstrap            # PostgreSQL, Redis, nginx (once)")
w("loadtest/compare            # builds release binaries, runs every scenario on the four systems, "
  "3 times (BENCH_ROUNDS), writes this file")
w("SCENARIOS=\"steady connections\" BENCH_ROUNDS=1 loadtest/compare   # a subset, one run")
w("```")
w("")
w("Each scenario is one load-generator command, for example "
  "`target/release/chorus-loadtest --scenario fanout --protocol chorus "
  + ("--urls ws://127.0.0.1:18080/api/v1/ws " if via_lb else
     "--urls ws://127.0.0.1:18081/api/v1/ws,ws://127.0.0.1:18082/api/v1/ws ") +
  "--server-pids <node pids> --redis-pid <redis pid>` (Chorus over Socket.IO: `--protocol chorus-socketio "
  "--urls 'ws://127.0.0.1:18081/socket.io/?EIO=4&transport=websocket,…'`). Server CPU means the node "
  "processes plus Redis, read from `/proc` at the start and end of the load phase. The JSON reports of "
  "each run are in `.local/bench-results/round-<n>/`.")
w("")

# Headline table.
w("## Headline")
w("")
w("| scenario | figure | " + " | ".join(name for _, name in SYSTEMS)
  + " | Chorus advantage over the Node peer | Chorus advantage over socketioxide | Chorus over Socket.IO ÷ Chorus |")
w("|---|---|" + "---|" * len(SYSTEMS) + "---|---|---|")
for scenario in scenarios:
    runs = per_run(scenario)
    if not any(r is not None for run in runs for r in run.values()):
        continue
    first = next((r for run in runs for r in run.values() if r is not None), {})
    title = {"fanout": f"fanout (rooms of {first.get('room_size')})",
             "connections": "connections (idle, one node)",
             "dm": f"dm (rooms of {first.get('room_size')}, {first.get('connections'):,} users)",
             "small": f"small (rooms of {first.get('room_size')}, {first.get('connections'):,} users)"}.get(scenario, scenario)
    bounded = {label: sum(generator_bound(run[label], scenario) for run in runs) for label, _ in SYSTEMS}
    for i, (name, value, unit, digits, higher) in enumerate(rows(scenario, runs)):
        cells = [spread(figure(runs, label, value), unit, digits) for label, _ in SYSTEMS]
        if i == 0 and scenario in DM_SCENARIOS:
            # No step within the bound: say so (the rows below are then the lowest step's figures).
            for k, (label, _) in enumerate(SYSTEMS):
                lowest = [dm_none_within(run[label]) for run in runs if dm_none_within(run[label]) is not None]
                if lowest:
                    cells[k] += (f"; {len(lowest)} of {len(runs)} runs had no step within the bound "
                                 f"(lowest step {min(lowest):,.0f} msg/s; the rows below are that step's)")
        if i == 0:
            # Where the generator's own CPU was saturated, the figure is the generator's limit.
            cells = [cell + (f" ⚠ bounded by the generator ({bounded[label]} of {len(runs)} runs)" if bounded[label] else "")
                     for cell, (label, _) in zip(cells, SYSTEMS)]
        pairs = lambda a, b: list(zip(figure(runs, a, value), figure(runs, b, value)))  # noqa: E731
        advantage = ratio_spread(run_ratios(pairs(NATIVE, PEER), higher)) if higher is not None else ""
        rust = ratio_spread(run_ratios(pairs(NATIVE, RUST_PEER), higher)) if higher is not None else ""
        cost = ratio_spread(run_ratios(pairs(SIO, NATIVE))) if higher is not None else ""
        w(f"| {title if i == 0 else ''}{' ' if i == 0 else ''}| {name} | {' | '.join(cells)} | {advantage} | {rust} | {cost} |")
    if scenario == "connections":
        w(f"| | connect failures, all runs | {' | '.join(fmt(sum(g(run[label], 'connect_failures') or 0 for run in runs)) for label, _ in SYSTEMS)} | | | |")
    elif scenario != "fanout":
        w(f"| | drops (never delivered) / duplicates / out of order, all runs | "
          f"{' | '.join(totals(runs, label) for label, _ in SYSTEMS)} | | | |")
w("")
cost = protocol_cost()
if cost:
    w(cost)
    w("")

# Details per scenario.
w("## Details")
w("")
w("Each scenario's last run in full, per system (the run the plots show).")
for scenario in scenarios:
    w("")
    w(f"### {scenario}")
    w("")
    w(f"{measured(scenario)}.")
    w("")
    for label, name in SYSTEMS:
        r = load(label, scenario)
        if r is None:
            w(f"- **{name}**: no report (not among `BENCH_SYSTEMS` for this scenario, or it did not finish: see the compare log).")
            continue
        lat = r["latency"]
        w(f"- **{name}**: {r['connections']:,} connections, rooms of {r['room_size']}, {r['duration_s']:.0f} s; "
          f"sent {r['sent']:,}, acked {r['acked']:,}, delivered {r['delivered']:,} ({r['delivered_per_s']:,.0f}/s); "
          f"latency p50 {lat['p50_ms']:.2f} / p90 {lat['p90_ms']:.2f} / p99 {lat['p99_ms']:.2f} / "
          f"p99.9 {lat['p999_ms']:.2f} / max {lat['max_ms']:.2f} ms; drops {r['drops']} + {r['tail_drops']} never arrived, "
          f"duplicates {r['duplicates']}, out of order {r.get('reordered', 0)}; send errors {r['send_errors']}, "
          f"connect failures {r['connect_failures']}, reconnects {r['reconnects']}, recovered by sync {r['recovered_by_sync']}; "
          f"server CPU {r['server_cpu_s']:.1f} s + Redis {r['redis_cpu_s']:.1f} s"
          + (f"; RSS per connection {r['rss_kib_per_connection']:.1f} KiB" if r.get("rss_kib_per_connection") else ""))
        ladder = r.get("dm")
        if ladder:
            w("")
            w(f"  PostgreSQL: synchronous_commit {ladder.get('synchronous_commit')}, fsync {ladder.get('fsync')}; "
              f"the generator ran on {ladder.get('generator_cores')} core(s)"
              + ("" if not ladder.get("cpus_allowed") else
                 " (CPUs allowed: " + ", ".join(f"{who} {cpus}" for who, cpus in ladder["cpus_allowed"]) + ")")
              + f". Bound: {ladder.get('bound')}, "
              f"≤ {ladder.get('p99_bound_ms'):g} ms. CPU-s per million persisted messages. Idle, the servers "
              f"committed {fmt(ladder.get('idle_pg_transactions_per_s'))} PostgreSQL transactions/s (taken out in "
              "the \"less idle\" column).")
            w("")
            w(f"  | {name} rate (msg/s) | acked/s | persisted/s | ack p99 | delivery p99 | nodes | Redis | PostgreSQL "
              "| generator | PG xacts / msg | less idle | generator CPU | machine busy | within 50 ms |")
            w("  |---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for st in ladder.get("steps", []):
                share = st.get("generator_cpu_share") or 0
                busy = st.get("machine_busy")
                w(f"  | {st['rate']:.0f} | {st['acked_per_s']:,.0f} | {st['persisted_per_s']:,.0f} | "
                  f"{st['ack_latency']['p99_ms']:.2f} ms | {st['latency']['p99_ms']:.2f} ms | "
                  f"{fmt(st.get('nodes_cpu_s_per_million'))} | {fmt(st.get('redis_cpu_s_per_million'))} | "
                  f"{fmt(st.get('postgres_cpu_s_per_million'))} | {fmt(st.get('generator_cpu_s_per_million'))} | "
                  f"{fmt(st.get('pg_transactions_per_message'), '', 3)} | "
                  f"{fmt(st.get('pg_transactions_per_message_net'), '', 3)} | {share * 100:.0f}%"
                  f"{' ⚠' if share >= GENERATOR_SATURATED else ''} | {'n/a' if busy is None else f'{busy * 100:.0f}%'} | "
                  f"{'yes' if st['within_bound'] else 'no'} |")
            w("")
        elif r.get("steps"):
            w("")
            w(f"  | {name} rate (msg/s) | delivered/s | p50 | p99 | drops | CPU-s / M deliveries | generator CPU "
              "| within 50 ms |")
            w("  |---|---|---|---|---|---|---|---|")
            for st in r["steps"]:
                share = st.get("generator_cpu_share")
                w(f"  | {st['rate']:.0f} | {st['delivered_per_s']:,.0f} | {st['latency']['p50_ms']:.2f} ms | "
                  f"{st['latency']['p99_ms']:.2f} ms | {st['drops']} | {fmt(st.get('cpu_s_per_million_deliveries'))} | "
                  f"{'n/a' if share is None else f'{share * 100:.0f}%'}{' ⚠' if (share or 0) >= GENERATOR_SATURATED else ''} | "
                  f"{'yes' if st['within_bound'] else 'no'} |")
            w("")
        base = f"{label}-{scenario}"
        if os.path.exists(os.path.join(os.path.dirname(out), "bench", f"{base}-latency-cdf.svg")):
            w(f"  ![{name} {scenario} latency CDF](bench/{base}-latency-cdf.svg) "
              f"![{name} {scenario} latency over time](bench/{base}-latency-over-time.svg)")

profile = os.path.join(os.path.dirname(out), "bench", "profile.md")
if os.path.exists(profile):
    w("")
    with open(profile) as f:
        w(f.read().rstrip())
w("")
w("## Reading these numbers")
w("")
w("- dm and small (rooms of 2 and of 5, every user sending) run on a PostgreSQL with its durability defaults "
  "(fsync and synchronous_commit on; the other scenarios use a throwaway one with both off). The rate ladder "
  "stops at the first step over the bound: the p99 of the acknowledgement (send → ack, after commit) or of the "
  "delivery (send → receipt by each member) over 50 ms, any drop or send error, or any send unacknowledged "
  "0.5 s after the step. CPU-s are per million persisted messages (counted from the rooms' `last_seq`), for "
  "the nodes, Redis and PostgreSQL (the postmaster and all its children) each; PostgreSQL transactions per "
  "message are `xact_commit + xact_rollback` of the database over the step (`pg_stat_database`).")
w("- \"Bounded by the generator\": the generator used at least 90% of the cores it may run on at the step that "
  "set the figure, so the figure is the generator's limit, not the server's. `BENCH_PIN=1` gives the servers "
  "and the generator separate cores.")
w("- The load generator shares the 2 cores with the servers, PostgreSQL and Redis, so absolute rates are "
  "lower than on dedicated hardware; the ratios between the systems are the meaningful figures.")
w("- The machine is shared: before each scenario compare waits (up to `BENCH_QUIET_WAIT` s) until it is at "
  "most `BENCH_QUIET_BUSY`% busy with this benchmark's servers idle, and logs how busy it was. Other work "
  "that starts during a scenario still shows, as a wide range: read the medians, and re-run a scenario "
  "(`SCENARIOS=… loadtest/compare`) whose range looks disturbed.")
w("- Chorus over Socket.IO runs the same session core as `/api/v1/ws` (same hub, same stored messages, same "
  "`ready`, `sync` and presence); what differs is the framing (each event is a Socket.IO packet in an "
  "Engine.IO message) and the Engine.IO session around it (its own task, heartbeat, packet channel and "
  "reader task per socket). Its clients are counted exactly like native ones: seq gaps, duplicates and "
  "reordering per room, and churn clients `sync` after reconnecting.")
w("- The peer has no resync: a client that reconnects (churn) cannot recover what it missed, so its drops "
  "count messages lost for good. Chorus's churn clients `sync` after reconnecting.")
w("- The peer delivers out of seq order when senders on different nodes race (the Redis adapter forwards in "
  "arrival order); the generator counts those as out of order, not as drops. Chorus delivers in seq order.")
w("- Chorus does more per connection than the peer: `ready` carries the user's rooms and cursors, and "
  "presence is announced to every member of rooms of up to 100 (the peer has no presence). In the "
  "connections scenario (rooms of 50) each connect therefore fans out about 49 presence frames. A set-up "
  "that waits past the pool timeout (`CHORUS_DB_POOL_TIMEOUT_MS`) is closed and the generator reconnects it "
  "(counted as a connect failure); every connection is open before RSS is read.")
w("- Near the p99 bound a step can pass in one run and fail in the next (a GC pause, the host's own "
  "work): compare the CPU-s per million deliveries, which move much less, before reading much into one "
  "step of the fanout ladder. A system that passes the ladder's top step (`BENCH_FANOUT_RATES`) is "
  "reported at that step: its own limit may be higher.")
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
