"""Turn a results dict (see ``run.py``) into the markdown table and the plot.

Each figure is shown for lsr and for Go Litestream 0.3.13, with lsr/Go, the
issue's target and lsr's verdict (PASS/MISS and by how much). Re-render saved
results without re-running::

    python bench/report.py results.json --md docs/bench.md --png docs/bench.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import restore_floor

Result = dict[str, Any]

METHOD = """\
- **Workload.** An OpenWEC-like database (1,000 clients x 2 subscriptions):
  each transaction upserts one bookmark; every 50th rewrites the heartbeats of
  all 2,000 client/subscription pairs instead. The writer is a separate
  `python sqlite3` process (WAL, `synchronous=NORMAL`, `busy_timeout=5000`):
  a *steady* phase at a fixed rate, then a *burst* back to back.
- **Repeats.** Each tool's replication run, and its paired throughput run
  (below), is repeated, the tools taking turns and the order alternating.
  A figure is the median over a tool's runs (of two runs, their mean), except
  the worst-case ones (longest txn, lag max, peak RSS: the worst run) and
  fault counts (summed); each run's main figures are listed below.
- **Lag.** Every transaction also rewrites the one row of a `tick` table with
  its sequence number as a text marker, so the largest marker in a WAL
  segment's decompressed bytes is the last commit it carries. The writer
  stamps each commit with `time.monotonic()` when `COMMIT` returns; the
  harness stamps each segment when it first sees it (file: inotify on the
  rename into place; S3: ListObjectsV2 polling of moto with `start-after`).
  A commit's lag is the first arrival of a segment whose marker is >= its
  number. Error: the file watch adds the watcher's wake-up latency (well
  under 1 ms unless the cores are saturated); the S3 poll adds up to one poll
  period plus one request (the periods achieved are listed below). Lag never
  includes the commit's own duration.
- **Catch-up** is the lag of the burst's final commit. **Longest txn** is
  the burst's longest `BEGIN IMMEDIATE`..`COMMIT`, waits for locks included.
- **Throughput** (with / alone) has a run of its own, paired in time. Two
  identical databases are seeded: A, replicated by the sidecar, and B, the
  control, in another directory and not in its config. One writer process
  keeps a connection to each open and writes back to back in slices (12 of 4
  s by default) in the order ABBA ABBA ...; after each A slice the harness
  waits until the replica has that slice's last commit, and after every
  slice it pauses 0.3 s, so the sidecar's catch-up never falls into a B
  slice (B runs beside an idle sidecar). On S3 that wait lists the bucket
  every 0.25 s, not every 20 ms as for the lag: the faster poll cost moto a
  third of a core throughout, B slices included, on the cores the writer
  uses. Each adjacent pair of slices (AB, BA, ...) gives a ratio, A's
  commits per second over B's, and the figure is the median over every pair
  of a tool's runs. Why: the machine's speed drifts by 20-50% within
  minutes, and a writer-alone baseline taken minutes away from the sidecar's
  run (the method before) made this ratio flap between 0.87 and 1.09 for the
  same code; a pair's slices are seconds apart, and AB and BA pairs err in
  opposite directions under a steady drift. The median, not the ratio of all
  A commits to all B commits, because slowdowns lasting a few seconds also
  come and go (the pairs of one run ranged 0.55-1.34): each skews the pair
  it hits. The details give A's and B's rates, the range of the pair ratios,
  each run's median pair, and B's longest txn ("longest txn alone"). What it
  cannot see: an effect that only builds up over minutes of steady writing
  (a long WAL, a backlog), nor the sidecar work left for the wait after an A
  slice (up to one sync interval's writes: for Go, up to 1 s of each 4 s
  slice). The replication run's own burst txn/s with the sidecar stays
  listed in the details for that.
- **CPU** is the sidecar process tree's utime+stime from the writer's start to
  catch-up, divided by the MiB of WAL (decompressed segment bytes) that
  arrived in that time. Sampled every 0.25 s, it is also split at the burst's
  first commit: a share of a core through the steady phase (a cost per sync,
  so per second) and CPU seconds per MiB through the burst and catch-up.
  **Peak RSS** is the sum of VmHWM over the tree.
- **Restore**: a copy of one ~100 MiB database (half-random BLOB rows) is
  replicated with `sync-interval` and `monitor-interval` at 10 ms while small
  commits are made until 300+ WAL segments exist. Once every tool's replica
  is built, each tool restores its own replica once untimed (a warm-up: the
  first restore after the builds ran 0.2-0.4 s slower whichever tool ran
  it), its output checked (`quick_check`, last commit present); then each
  tool's `restore -config ... -o OUT DB` is timed in turns, the order
  alternating, after a `sync` of earlier writes (median of the repeats),
  by a blocking wait for the process to exit.
- **Idle**: that many small WAL databases, each with a file replica, in one
  `replicate -config` process (lsr: one `dir:` entry; Go 0.3.13 has no `dir:`,
  so one entry each); CPU over the window after every replica has a snapshot
  and a settling pause past both tools' first checkpoint (a minute after
  opening); RSS and open descriptors at the end. CPU is counted in clock
  ticks (10 ms): over a 20 s window one tick is 0.05% of a core. The harness
  raises its open-file limit (which the tools inherit) to 10 per database, as
  an operator's `LimitNOFILE` would; raising the hard limit takes
  CAP_SYS_RESOURCE, and without it the run keeps the machine's hard limit
  (the "open-file limit" column).
- **S3** runs share the machine's cores with moto, which serves both the
  sidecar and the harness's listing polls. moto's request handling runs
  under one interpreter lock, so its CPU seconds during a restore ("S3
  server CPU") are a floor under the restore time of any client that makes
  the same requests. lsr reads a snapshot in parallel 8 MiB ranges, as AWS
  advises for large objects; moto reads the whole object from its spool for
  every ranged GET, so here those ranges cost it more CPU than Go's single
  GET (~0.06 s of ~0.7 s on a fresh server). A WAL segment GET costs moto
  2-6 ms of CPU (more the more it holds: restores get a fresh server, not
  the one the replication runs filled) and lsr 1.2 ms, so from S3 both tools
  wait on the server; what lsr adds is its start-up (interpreter, imports,
  config and three LISTs: ~0.13 s).
- **Compaction** (issue 29): a copy of a `compaction_mib` MiB database is
  written by `compaction_txns` small transactions (a few blob rows each) over
  `compaction_seconds`, each tool replicating it with nothing but the replica's
  path or bucket configured; the sidecar then runs on for `compaction_settle`
  seconds (past two of lsr's 10 s compaction intervals; Go 0.3.13 does not
  compact, so the wait changes nothing for it) and stops. Objects are the
  snapshots and segments then listed; requests are counted from nanio's
  access log (2xx only), while writing (after the first snapshot, the
  shutdown's final sync included) and during the last timed restore.
- **nanio** (restores only) is a second local S3 server that installs from
  PyPI: objects are files, ranges are read as ranges, every request's SigV4
  signature is checked. It is not the bottleneck there, so the `nanio` row
  compares the two clients; `s3` (moto) compares them behind a slow server.
- **Saturating writer** (issue 28, points 2, 3, 6; `bench/stall.py`): the
  writer commits transactions of `stall_rows` rows (120 random hex characters
  each, into a table of its own) back to back for `stall_seconds`, on a
  database with SQLite's default `wal_autocheckpoint`; first alone, then beside
  each tool, in turns, the order alternating. The writer times each
  transaction (`BEGIN IMMEDIATE`..`COMMIT`) and, apart, its wait for the write
  lock (`BEGIN IMMEDIATE`) and its `COMMIT` (the WAL write and SQLite's own
  automatic checkpoint): what a sidecar can lengthen. Catch-up, CPU per MiB
  and peak RSS are taken as in the replication scenario. How many MiB of WAL
  a second the writer makes depends on the machine's load: it is listed.
- **Where the milliseconds go** (issue 28, point 1; `bench/lagtrace.py`): lsr
  alone replicates the steady phase under `bench/trace_lsr.py`, which wraps
  lsr's functions by name in timed spans (no timing code in lsr itself), and
  each commit is followed from its `COMMIT` through the sync that copied it
  and the shipment that carried it to the harness's inotify stamp.
- **Why the spacings are what they are** (measured by this benchmark when
  they were chosen; a later run may move them). `MIN_SYNC_SPACING` (5 ms,
  issue 28): under commits every 10 ms, the median file lag was 2.9-3.1 ms
  (p90 5 ms, load 3.2 from other sessions), against 8.5-14 ms at 10 ms (of
  which ~5 ms waiting for the spacing) and 30 ms at 50 ms. The price is the
  steady phase's CPU: 20-26% of a core at 5 or 10 ms against ~6% at 50 ms (in
  one run, back to back): each commit is then a sync and a shipment of its
  own, ~1 ms of user CPU and ~0.8 ms of system CPU (three fsyncs: the shadow
  WAL, the segment, its directory). A busy writer's commits still go out in
  batches: a sync that took t starts again no sooner than 8t after it began
  (BUSY_SPACING_FACTOR, at most 100 ms), and the burst's CPU per MiB did not
  change (0.0044-0.0060 at 5 or 10 ms, 0.0052 at 50 ms, same runs).
  `MIN_SHIP_SPACING` is half of it: with the shipper spaced like the syncs,
  shipments left 34 ms after their sync at p90 (3 ms at the median) when the
  spacing was 50 ms; at half, 7 ms at p90.
"""


@dataclass(frozen=True)
class Figure:
    label: str
    unit: str
    get: Callable[[Result], float]  # from one tool's result of ``scenario``
    target: float | None = None  # an absolute target
    vs_go: float | None = None  # the target is this multiple of Go's figure
    at_least: bool = False  # the target is a minimum
    backends: tuple[str, ...] = ("file", "s3")  # where the target applies
    issue_go: str = ""  # Go's figure as the issue quotes it
    scenario: str = "replication"  # for a replication figure: the results it is read from


REPLICATION = [
    Figure("lag p50, steady", "s", lambda r: r["lag"]["p50"], 0.015, backends=("file",), issue_go="0.360"),
    Figure("lag p90, steady", "s", lambda r: r["lag"]["p90"]),
    Figure("lag max, steady", "s", lambda r: r["lag"]["max"], 0.25, backends=("file",), issue_go="0.971"),
    Figure("lag p50, burst", "s", lambda r: r["lag_burst"]["p50"]),
    Figure("lag max, burst", "s", lambda r: r["lag_burst"]["max"]),
    Figure("catch-up after final commit", "s", lambda r: r["catch_up"], 0.2, issue_go="1.12"),
    Figure("writer throughput, with / alone", "x", lambda r: statistics.median(_pairs(r)), 0.95, at_least=True,
           issue_go="0.80", scenario="throughput"),
    Figure("longest txn with sidecar", "s", lambda r: r["longest_txn"], 0.30, issue_go="1.84 (0.27 alone)"),
    Figure("sidecar CPU per MiB of WAL", "CPU s/MiB", lambda r: r["cpu_per_mib"], vs_go=1.0),
    # The two parts of that figure: per second of the steady phase, per MiB of the burst.
    Figure("sidecar CPU in the steady phase", "% of a core", lambda r: r.get("steady_cpu_percent", math.nan)),
    Figure("sidecar CPU per MiB in the burst", "CPU s/MiB", lambda r: r.get("burst_cpu_per_mib", math.nan),
           vs_go=0.5, backends=("file",)),
    Figure("sidecar peak RSS", "MiB", lambda r: r["peak_rss_mib"], 45, backends=("file",)),
]
# Issue 28: a writer saturating SQLite with big transactions (bench/stall.py).
STALL = [
    Figure("saturating writer: longest txn", "s", lambda r: r["longest_txn"], 0.30,
           issue_go="3.1-3.8 (lsr 0.48-0.98; alone 0.04)"),
    Figure("saturating writer: longest wait for the write lock", "s", lambda r: r["longest_begin_wait"]),
    Figure("saturating writer: longest COMMIT", "s", lambda r: r["longest_commit_wait"]),
    Figure("saturating writer: catch-up after the last commit", "s", lambda r: r["catch_up"], 0.2,
           issue_go="2.4-4.8 (lsr 0.7-2.6)"),
    Figure("saturating writer: sidecar CPU per MiB of WAL", "CPU s/MiB", lambda r: r["cpu_per_mib"], vs_go=0.5,
           issue_go="0.0111 (lsr 0.0065)"),
    Figure("saturating writer: sidecar peak RSS", "MiB", lambda r: r["peak_rss_mib"], 45, issue_go="59 (lsr 55)"),
    Figure("saturating writer: WAL shipped", "MiB/s", lambda r: r["wal_mib_per_s"]),
    Figure("saturating writer: txn/s", "txn/s", lambda r: r["txn_per_s"]),
]
# Issue 28 point 4: half of Go's time; the default parallelism never slower than 1.
RESTORE = [Figure("restore {restore_mib:g} MiB, {restore_segments}+ WAL segments", "s",
                  lambda r: r["restore_seconds"], vs_go=0.5, backends=("file", "s3", "nanio"))]
# Issue 29: each tool's replica of one workload under its own defaults (bench/compaction.py).
COMPACTION = [
    Figure("replica objects after {compaction_txns} txns", "objects", lambda r: r["objects"], vs_go=1.0,
           backends=("file", "nanio"), issue_go="11 segments (lsr: 124)"),
    Figure("restore of that replica", "s", lambda r: r["restore_seconds"], vs_go=0.5, backends=("file", "nanio"),
           issue_go="0.20 (lsr: 0.30)"),
    Figure("PUTs while writing (compaction included)", "requests", lambda r: r["requests_writing"]["PUT"]),
    Figure("GETs while writing (compaction's reads)", "requests", lambda r: r["requests_writing"]["GET"]),
    Figure("LISTs while writing", "requests", lambda r: r["requests_writing"]["LIST"]),
    Figure("GETs per restore", "requests", lambda r: r["restore_requests"]["GET"]),
    Figure("LISTs per restore", "requests", lambda r: r["restore_requests"]["LIST"]),
]
IDLE = [
    Figure("idle DBs: CPU", "% of a core", lambda r: r["cpu_percent"], 1.0),
    Figure("idle DBs: RSS", "MiB", lambda r: r["rss_mib"], 200),
    Figure("idle DBs: time until all have a snapshot", "s", lambda r: r["ready_seconds"]),
]
# Issue 28 point 6's second scale: 10,000 databases under 1 % of a core and 1 GiB.
IDLE_MANY = [replace(IDLE[1], target=1024) if fig is IDLE[1] else fig for fig in IDLE]
# The idle runs' results (bench/run.py), keyed as their settings: ``<key>_dbs`` databases each.
IDLE_RUNS = {"idle": IDLE, "idle_many": IDLE_MANY}


@dataclass(frozen=True)
class Row:
    label: str
    backend: str
    unit: str
    lsr: float | None
    go: float | None
    target: float | None
    at_least: bool
    target_text: str
    issue_go: str

    def verdict(self) -> str:
        if self.target is None or self.lsr is None or not _finite(self.target):
            return ""
        v, t = self.lsr, self.target
        if self.at_least:
            return f"PASS (+{_num(v - t)})" if v >= t else f"MISS (short by {_num(t - v)})"
        if v <= t:
            under = (1 - v / t) * 100 if t else 0.0
            return f"PASS ({under:.0f}% under)" if under >= 1 else "PASS (at target)"
        return f"MISS (+{_num(v - t)}, {v / t:.1f}x target)" if t and _finite(v) else "MISS"

    def score(self, value: float | None) -> float | None:
        """value/target, inverted for minimums, within [0.01, 100]: <= 1 meets the target."""
        if value is None or math.isnan(value) or self.target is None or not _finite(self.target) or not self.target:
            return None
        raw = (self.target / value if value else math.inf) if self.at_least else value / self.target
        return min(max(raw, 0.01), 100.0)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "timeout"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def _value(fig: Figure, result: Result | None) -> float | None:
    if not result or "error" in result:
        return None
    try:
        return float(fig.get(result))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # ValueError: no pairs to take a median of
        return None


def _row(fig: Figure, backend: str, lsr: float | None, go: float | None, label: str | None = None) -> Row:
    target, text = None, ""
    if backend in fig.backends and fig.target is not None:
        target, text = fig.target, f"{'>=' if fig.at_least else '<='} {_num(fig.target)}"
    elif backend in fig.backends and fig.vs_go is not None:
        target = fig.vs_go * go if go is not None else None
        text = f"<= {fig.vs_go:g}x Go" + (f" = {_num(target)}" if target is not None else "")
    issue_go = fig.issue_go if backend in fig.backends else ""
    return Row(label or fig.label, backend, fig.unit, lsr, go, target, fig.at_least, text, issue_go)


def _pairs(paired: Result) -> list[float]:
    """The ratio of every AB / BA pair of slices in a tool's paired runs."""
    return [x for run in paired.get("runs", [paired]) for x in run.get("pair_ratios", [])]


def _paired(results: Result, backend: str, tool: str) -> Result:
    """``tool``'s paired throughput result on ``backend``; empty in results saved before it existed."""
    return dict(results.get("throughput", {}).get(backend, {}).get(tool, {}))


def rows(results: Result) -> list[Row]:
    out = []
    for backend in results.get("replication", {}):
        for fig in REPLICATION:
            by_tool = results.get(fig.scenario, {}).get(backend, {})
            out.append(_row(fig, backend, _value(fig, by_tool.get("lsr")), _value(fig, by_tool.get("go"))))
    settings = results.get("settings", {})
    for backend, by_tool in results.get("restore", {}).items():
        for fig in RESTORE:
            label = fig.label.format(restore_mib=settings.get("restore_mib", 0),
                                     restore_segments=settings.get("restore_segments", 0))
            out.append(_row(fig, backend, _value(fig, by_tool.get("lsr")), _value(fig, by_tool.get("go")),
                            label=label))
    for backend, by_tool in results.get("compaction", {}).items():
        for fig in COMPACTION:
            label = fig.label.format(compaction_txns=settings.get("compaction_txns", 0))
            row = _row(fig, backend, _value(fig, by_tool.get("lsr")), _value(fig, by_tool.get("go")), label=label)
            if row.lsr is not None or row.go is not None:  # request counts: nanio only
                out.append(row)
    for backend, by_tool in results.get("stall", {}).items():
        for fig in STALL:
            out.append(_row(fig, backend, _value(fig, by_tool.get("lsr")), _value(fig, by_tool.get("go"))))
    for key in IDLE_RUNS:
        idle = results.get(key, {})
        n = settings.get(f"{key}_dbs", 0)
        for fig in IDLE_RUNS[key] if idle else ():
            out.append(_row(fig, "file", _value(fig, idle.get("lsr")), _value(fig, idle.get("go")),
                            label=fig.label.replace("idle DBs", f"{n:,} idle DBs")))
    return out


def _ratio(row: Row) -> str:
    if row.lsr is None or row.go is None or not row.go or not (_finite(row.lsr) and _finite(row.go)):
        return "-"
    return f"{row.lsr / row.go:.2f}"


def table(results: Result) -> str:
    head = ["figure", "replica", "unit", "lsr", "Go 0.3.13", "lsr/Go", "target", "lsr verdict", "Go in issue"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows(results):
        cells = [r.label, r.backend, r.unit, _num(r.lsr), _num(r.go), _ratio(r), r.target_text, r.verdict(),
                 r.issue_go]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The figures listed for each of a tool's repeated replication runs.
PER_RUN: tuple[Callable[[Result], Any], ...] = (
    lambda r: r["cpu_per_mib"], lambda r: r["throughput"], lambda r: r["lag"]["p50"], lambda r: r["catch_up"])


def _details(results: Result) -> str:
    out = ["| run | paired txn/s, A with sidecar / B alone | paired ratio per AB pair (min-max) "
           "| longest txn alone (s) | burst with sidecar txn/s | commits | segments | WAL MiB | generations "
           "| commits never seen | negative lags | S3 poll p50/max (ms) |",
           "|" + "---|" * 12]
    for backend, by_tool in results.get("replication", {}).items():
        for tool, r in by_tool.items():
            if "error" in r:
                out.append(f"| {backend} {tool} | error: {r['error']} |" + " |" * 10)
                continue
            poll = r.get("poll_period") or {}
            poll_text = f"{poll['p50'] * 1000:.1f} / {poll['max'] * 1000:.0f}" if poll else "-"
            paired = _paired(results, backend, tool)
            pairs = _pairs(paired)  # the spread that one pair alone would show
            spread = f"{_num(min(pairs))}-{_num(max(pairs))}" if pairs else "-"
            out.append(
                f"| {backend} {tool} | {_num(paired.get('throughput'))} / {_num(paired.get('throughput_alone'))} "
                f"| {spread} "
                f"| {_num(paired.get('longest_txn_alone'))} "
                f"| {_num(r['throughput'])} | {r['commits']:,} | {r['segments']:,} | {_num(r['wal_mib'])} "
                f"| {r['generations']} | {r['lost_commits']} | {r['negative_lags']} | {poll_text} |")
    repeated = [(backend, tool, r["runs"]) for backend, by_tool in results.get("replication", {}).items()
                for tool, r in by_tool.items() if "runs" in r]
    if repeated:
        out += ["", "| replication runs (in turns) | CPU s per MiB | burst with sidecar txn/s | lag p50, steady (s) "
                "| catch-up (s) | paired throughput, median pair |", "|" + "---|" * 6]
        for backend, tool, runs in repeated:
            cells = [", ".join(_num(get(run)) for run in runs) for get in PER_RUN]
            paired_runs = _paired(results, backend, tool).get("runs", [])
            cells.append(", ".join(_num(run["ratio"]) for run in paired_runs) or "-")
            out.append(f"| {backend} {tool} | " + " | ".join(cells) + " |")
    restore = results.get("restore", {})
    if restore:
        out += ["", "| restore | DB MiB | WAL segments | initial snapshot (s) | build (s) | warm-up (s) "
                "| restores (s) | S3 server CPU (s) | check |", "|" + "---|" * 9]
        for backend, by_tool in restore.items():
            for tool, r in by_tool.items():
                if "error" in r:
                    out.append(f"| {backend} {tool} | error: {r['error']} |" + " |" * 7)
                    continue
                times = ", ".join(_num(t) for t in r["restore_all"])
                server = ", ".join(_num(t) for t in r.get("server_cpu_all", [])) or "-"
                out.append(f"| {backend} {tool} | {_num(r['db_mib'])} | {r['segments']} | "
                           f"{_num(r['snapshot_seconds'])} | {_num(r['build_seconds'])} | "
                           f"{_num(r['warm_up_seconds'])} | {times} | {server} "
                           f"| {r['check']} |")
    compacted = [(b, t, r) for b, by_tool in results.get("compaction", {}).items() for t, r in by_tool.items()
                 if "error" not in r]
    if compacted:
        out += ["", "| compaction | DB MiB | snapshots | segments | merged segments written | requests while "
                "writing | requests per restore | restores (s) | check |", "|" + "---|" * 9]
        for backend, tool, r in compacted:
            def reqs(d: dict[str, int]) -> str:
                return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"
            out.append(f"| {backend} {tool} | {_num(r['db_mib'])} | {r['snapshots']} | {r['segments']} | "
                       f"{r.get('compactions', 0)} | {reqs(r['requests_writing'])} | "
                       f"{reqs(r.get('restore_requests', {}))} | "
                       f"{', '.join(_num(t) for t in r['restore_all'])} | {r.get('check', '-')} |")
    stalls = [(b, t, r) for b, by_tool in results.get("stall", {}).items() for t, r in by_tool.items()]
    if stalls:
        out += ["", "| saturating writer | txn/s | txn p50 (s) | txn p99 (s) | longest txn (s) | longest write-lock "
                "wait (s) | longest COMMIT (s) | write-lock waits, total (s) | catch-up (s) | WAL MiB/s "
                "| CPU s/MiB | peak RSS MiB | runs: longest txn (s) |", "|" + "---|" * 13]
        for backend, tool, r in stalls:
            if "error" in r:
                out.append(f"| {backend} {tool} | error: {r['error']} |" + " |" * 11)
                continue
            runs = ", ".join(_num(run["longest_txn"]) for run in r.get("runs", [r]))
            out.append(f"| {backend} {tool} | {_num(r['txn_per_s'])} | {_num(r['txn_p50'])} | {_num(r['txn_p99'])} "
                       f"| {_num(r['longest_txn'])} | {_num(r['longest_begin_wait'])} "
                       f"| {_num(r['longest_commit_wait'])} | {_num(r['begin_wait_total'])} "
                       f"| {_num(r.get('catch_up'))} | {_num(r.get('wal_mib_per_s'))} | {_num(r.get('cpu_per_mib'))} "
                       f"| {_num(r.get('peak_rss_mib'))} | {runs} |")
    idle = [(key, tool, r) for key in IDLE_RUNS for tool, r in results.get(key, {}).items()]
    if idle:
        out += ["", "| idle | DBs | all snapshotted after (s) | CPU % | RSS MiB | peak RSS MiB | descriptors "
                "| open-file limit |", "|" + "---|" * 8]
        for key, tool, r in idle:
            if "error" in r:
                n = results.get("settings", {}).get(f"{key}_dbs", 0)
                out.append(f"| {tool} | {n:,} | error: {r['error']} |" + " |" * 5)
                continue
            out.append(f"| {tool} | {r['dbs']:,} | {_num(r['ready_seconds'])} | {_num(r['cpu_percent'])} "
                       f"| {_num(r['rss_mib'])} | {_num(r['peak_rss_mib'])} | {r.get('descriptors', '-')} "
                       f"| {r.get('open_file_limit', '-')} |")
    return "\n".join(out)


def _anomalies(results: Result) -> list[str]:
    found = list(results.get("errors", []))
    for section in ("replication", "throughput", "restore", "compaction", "stall"):
        for backend, by_tool in results.get(section, {}).items():
            for tool, r in by_tool.items():
                where = f"{section} {backend} {tool}"
                for line in r.get("log_problems", [])[:5]:
                    found.append(f"{where}: log: `{line.strip()[:300]}`")
                if r.get("generations", 1) > 1:
                    found.append(f"{where}: {r['generations']} generations during one run (expected 1)")
                if r.get("lost_commits"):
                    found.append(f"{where}: {r['lost_commits']} commits never seen on the replica")
                if r.get("negative_lags"):
                    found.append(f"{where}: {r['negative_lags']} commits seen on the replica before COMMIT returned")
                if r.get("check", "ok") != "ok":
                    found.append(f"{where}: restored database: {r['check']}")
    for key in IDLE_RUNS:
        for tool, r in results.get(key, {}).items():
            for line in r.get("log_problems", [])[:5]:
                found.append(f"idle {r.get('dbs', '')} {tool}: log: `{line.strip()[:300]}`")
    return found


def markdown(results: Result, png_name: str | None) -> str:
    m = results.get("machine", {})
    s = results.get("settings", {})
    parts = [
        "# lsr vs Litestream 0.3.13, side by side",
        "",
        f"Generated by `{results.get('command', 'python bench/run.py')}` on {results.get('started', '?')} "
        f"in {results.get('elapsed', 0) / 60:.1f} min.",
        f"Machine: {m.get('cpus', '?')} CPUs ({m.get('cpu_model', '?')}), load average "
        f"{m.get('load_before', '?')} before and {m.get('load_after', '?')} after. "
        "Other work on the machine moves every figure; compare lsr and Go within one run.",
        f"Settings: steady {s.get('steady')} s at {s.get('rate')} txn/s, then a {s.get('burst')} s burst; "
        f"paired throughput in {s.get('throughput_slices', '-')} slices of {s.get('throughput_slice', '-')} s; "
        f"restore of {s.get('restore_mib')} MiB with >= {s.get('restore_segments')} segments, "
        f"{s.get('restore_repeats')} restores each; {s.get('idle_dbs')} idle DBs (and {s.get('idle_many_dbs', 0)}) over {s.get('idle_seconds')} s; "
        f"saturating writer: {s.get('stall_seconds', '-')} s of {s.get('stall_rows', '-')}-row transactions, "
        f"{s.get('stall_repeats', '-')} runs each.",
        f"Tools: {', '.join(f'{k} = `{v}`' for k, v in results.get('tools', {}).items())}.",
        *(["Every replica encrypted with age (`--age`), by both tools."] if results.get("age") else []),
        "",
        "## Figures",
        "",
        table(results),
        "",
    ]
    if results.get("restore_floor") or any("restore_p1_seconds" in r for r in _lsr_restores(results)):
        parts += ["## Restore", "", restore_tables(results), "", RESTORE_NOTE, ""]
    if results.get("lagtrace"):
        parts += ["## Where a commit's milliseconds go (file replica, steady phase)", "", lag_parts(results), "",
                  LAG_PARTS_NOTE, ""]
    if results.get("age_cost"):
        parts += ["## Encryption (age)", "", age_table(results), "", AGE_NOTE, ""]
    if png_name:
        parts += [f"![lag distributions and figures against their targets]({png_name})", ""]
    parts += ["## Details", "", _details(results), "", "## Anomalies", ""]
    parts += [f"- {a}" for a in _anomalies(results)] or ["None seen."]
    parts += ["", "## Method", "", METHOD]
    return "\n".join(parts)


RESTORE_NOTE = (
    "Restores of each tool's own replica, timed from exec to exit, the turns interleaved as in the Figures; "
    "each figure the median of its restores. \"default / -parallelism 1\" compares lsr without the flag and "
    "with `-parallelism 1` in adjacent pairs (`parallelism_pairs`, each pair's order the other's reverse): the "
    "median of the pairs' ratios, and MISS only if the default was the slower in so many pairs that two equally "
    "fast restores would give it less than once in 20 (a one-sided sign test). The floor is "
    "what any restore of that database must do on this machine: decode its snapshot (LZ4, lsr's framing: 4 MiB "
    "blocks and a content checksum) on one core and write its bytes (`os.write`, then `fsync`), nothing else "
    "(bench/restore_floor.py). \"in process\" is lsr's restore of its file replica called inside the "
    "benchmark's own process after a first restore, so without the start-up (the interpreter and lsr's imports, "
    "which the command pays and Go's binary does not: the start-up rows time each tool's `version` command, exec "
    "to exit) nor a fresh process's first-touch costs. The steps of `lsr restore` are timed in fresh processes "
    "by a launcher that wraps lsr's functions by name (`restore_floor.phases`: no timing code in lsr), after "
    "the compaction scenario's restores."
)


def _lsr_restores(results: Result) -> list[Result]:
    return [by_tool["lsr"] for by_tool in results.get("restore", {}).values() if "lsr" in by_tool]


def parallelism_verdict(lsr: Result) -> str:
    """lsr's default against ``-parallelism 1``, pair by pair (bench/run.py): the
    median of the pairs' ratios, and a sign test. MISS only where the default was
    the slower in so many pairs that two equally fast restores would give it
    less than once in 20 (one-sided): "never slower", told from the noise."""
    default, p1 = lsr.get("pair_default_all") or [], lsr.get("restore_p1_all") or []
    ratios = [a / b for a, b in zip(default, p1)]
    if not ratios:
        return "-"
    n, slower = len(ratios), sum(r > 1 for r in ratios)
    chance = sum(math.comb(n, k) for k in range(slower, n + 1)) / 2**n
    median = statistics.median(ratios)
    verdict = "MISS" if chance < 0.05 and median > 1 else "PASS"
    return f"{median:.2f} ({verdict}: slower in {slower} of {n} pairs)"


def restore_tables(results: Result) -> str:
    """Restore times against Go and against -parallelism 1, then where the time goes."""
    settings = results.get("settings", {})
    head = ["restore", "replica", "lsr (s)", "lsr -parallelism 1 (s)", "Go 0.3.13 (s)", "lsr/Go", "target",
            "verdict", "default / -parallelism 1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    scenarios = (("restore", f"{settings.get('restore_mib', 0):g} MiB, {settings.get('restore_segments', 0)}+ "
                  "segments"), ("compaction", f"issue 29's workload, {settings.get('compaction_txns', 0)} txns"))
    for section, label in scenarios:
        for backend, by_tool in results.get(section, {}).items():
            lsr, go = by_tool.get("lsr", {}), by_tool.get("go", {})
            mine, theirs, p1 = lsr.get("restore_seconds"), go.get("restore_seconds"), lsr.get("restore_p1_seconds")
            row = _row(Figure(label, "s", lambda r: r, vs_go=0.5, backends=(backend,)), backend, mine, theirs)
            default_vs_p1 = parallelism_verdict(lsr)
            lines.append("| " + " | ".join([label, backend, _num(mine), _num(p1), _num(theirs), _ratio(row),
                                             row.target_text, row.verdict(), default_vs_p1]) + " |")
    floor = results.get("restore_floor", {})
    cols = [(k, floor[k]) for k in ("restore", "compaction") if isinstance(floor.get(k), dict)
            and "error" not in floor[k]]
    if cols:
        lines += ["", "| where the time goes (file, s) | " + " | ".join(
            f"{c['db_mib']:.0f} MiB DB ({c['compressed_mib']:.0f} MiB compressed)" for _, c in cols) + " |",
            "|---|" + "---|" * len(cols)]
        for key, label in (("decode", "LZ4 decode"), ("decode_write", "LZ4 decode + write"),
                           ("decode_write_fsync", "LZ4 decode + write + fsync: the floor"),
                           ("in_process", "lsr restore, in process")):
            lines.append(f"| {label} | " + " | ".join(_num(c.get(key)) for _, c in cols) + " |")
        for key, label in (("lsr", "lsr restore, the command"), ("go", "Go restore, the command")):
            by = [results.get(name, {}).get("file", {}).get(key, {}).get("restore_seconds") for name, _ in cols]
            lines.append(f"| {label} | " + " | ".join(_num(v) for v in by) + " |")
    for name, c in cols:
        steps = c.get("phases")
        if steps:
            lines += ["", f"| where `lsr restore`'s time goes ({name} scenario, file replica) | s |", "|---|---|"]
            lines += [f"| {key}: {what} | {_num(steps.get(key))} |" for key, what in restore_floor.PHASES]
            lines.append(f"| all told | {_num(steps.get('total'))} |")
    startup = floor.get("startup", {})
    if startup and "error" not in startup:
        lines += ["", "| start-up, exec to exit (s) | " + " | ".join(startup) + " |",
                  "|---|" + "---|" * len(startup), "| | " + " | ".join(_num(v) for v in startup.values()) + " |"]
    return "\n".join(lines)


LAG_PARTS = [
    ("wake", "commit -> the sync's start: inotify, the watcher's pause, the monitor's spacing"),
    ("sync", "the sync (fingerprint, continuity check, copy, bookkeeping)"),
    ("copy", "of which the copy: WAL read, checksums, shadow write"),
    ("verify", "of which the checksums"),
    ("handoff", "sync's end -> the shipment's start (0 if it began during the sync)"),
    ("durable", "the shadow WAL's fsync"),
    ("read", "shadow read, salt check, bookkeeping"),
    ("compress", "LZ4 and the commit times"),
    ("put", "the replica's write"),
    ("write", "of which the write"),
    ("fsync", "of which the segment's fsync"),
    ("rename", "of which the rename into place"),
    ("dirsync", "of which the directory's fsync"),
    ("seen", "rename -> the harness's inotify stamp"),
]
LAG_PARTS_NOTE = (
    "lsr alone, run by `bench/trace_lsr.py` (lsr's functions wrapped in timed spans by name; no timing code in "
    "lsr), replicating the steady phase; each part is the median over the commits that reached the replica, so "
    "the parts need not add up to the median lag. The traced run's own lag is given beside the untraced one above."
)


def lag_parts(results: Result) -> str:
    lines = ["| part | what | ms (median) |", "|---|---|---|"]
    for backend, r in results.get("lagtrace", {}).items():
        if "error" in r:
            return f"error: {r['error']}"
        parts = r.get("parts_ms", {})
        for key, what in LAG_PARTS:
            lines.append(f"| {key} | {what} | {_num(parts.get(key))} |")
        lag = r.get("lag", {})
        lines.append(f"| **lag** | {backend}, traced run: p50 / p90 (ms) | {_num(1000 * lag.get('p50', math.nan))} / "
                     f"{_num(1000 * lag.get('p90', math.nan))} |")
    return "\n".join(lines)


# Issue 24's target: age adds at most 15 % to restore time.
AGE_RESTORE_TARGET = 1.15
AGE_NOTE = (
    "lsr alone, on one backend without and with `age:` (one recipient and its identity), the two in "
    "turns, the order alternating, each figure the median of its runs. CPU is the sidecar's over the "
    "replication scenario per MiB of WAL shipped; restore time is `lsr restore` of the restore replica."
)


def age_table(results: Result) -> str:
    """lsr without and with age: sidecar CPU per MiB and restore time, per backend."""
    settings = results.get("settings", {})
    head = ["figure", "replica", "unit", "plain", "age", "age/plain", "target", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    restore_label = (f"restore {settings.get('restore_mib', 0):g} MiB, "
                     f"{settings.get('restore_segments', 0)}+ WAL segments")
    for backend, cost in results.get("age_cost", {}).items():
        for label, unit, scenario, key, target in (
            ("sidecar CPU per MiB of WAL", "s/MiB", "replication", "cpu_per_mib", None),
            (restore_label, "s", "restore", "restore_seconds", AGE_RESTORE_TARGET),
        ):
            plain = cost.get(scenario, {}).get("plain", {}).get(key)
            sealed = cost.get(scenario, {}).get("age", {}).get(key)
            ratio = sealed / plain if plain and sealed is not None and _finite(plain) and _finite(sealed) else None
            verdict = "-"
            if target is not None and ratio is not None:
                verdict = "PASS" if ratio <= target else f"MISS ({ratio / target:.2f}x target)"
            lines.append("| " + " | ".join([
                label, backend, unit, _fmt(plain), _fmt(sealed), f"{ratio:.2f}" if ratio is not None else "-",
                f"<= {target:.2f}x plain" if target else "-", verdict,
            ]) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and _finite(value) else "-"


def plot(results: Result, path: Path) -> bool:
    """Lag CDFs and every targeted figure against its target; False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [1, 1.3]})
    colors = {"file": "tab:blue", "s3": "tab:orange", "nanio": "tab:green"}
    for backend, by_tool in results.get("replication", {}).items():
        for tool, r in by_tool.items():
            q = r.get("lag_quantiles")
            if not q:
                continue
            left.plot([max(x, 1e-4) for x in q], [i / (len(q) - 1) for i in range(len(q))],
                      color=colors.get(backend), linestyle="-" if tool == "lsr" else "--",
                      label=f"{tool} {backend}")
    for t in (0.015, 0.25):
        left.axvline(t, color="grey", linestyle=":", linewidth=1)
    left.set_xscale("log")
    left.set_xlabel("commit -> replica lag, steady phase (s)")
    left.set_ylabel("fraction of commits")
    left.set_title("Lag distribution (dotted: file targets p50 / max)")
    left.legend()
    targeted = [r for r in rows(results) if r.target is not None]
    labels = [f"{r.label} ({r.backend})" for r in targeted]
    ys = range(len(targeted))
    for offset, tool, color in ((-0.2, "lsr", "tab:green"), (0.2, "go", "tab:red")):
        vals = [r.score(r.lsr if tool == "lsr" else r.go) for r in targeted]
        right.barh([y + offset for y in ys], [v or 0 for v in vals], height=0.4,
                   color=color, label="lsr" if tool == "lsr" else "Go 0.3.13")
    right.axvline(1, color="black", linewidth=1)
    right.set_xscale("log")
    right.set_yticks(list(ys), labels, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("figure / target (left of 1 meets the target; minimums inverted)")
    right.set_title("Against the issue's targets")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(results: Result, md: Path, png: Path | None) -> None:
    drew = plot(results, png) if png else False
    name = None
    if drew and png is not None:
        name = png.name if png.parent == md.parent else str(png)
    md.write_text(markdown(results, name))


def main() -> None:
    parser = argparse.ArgumentParser(description="Render saved benchmark results.")
    parser.add_argument("results", type=Path)
    parser.add_argument("--md", type=Path, default=Path("docs/bench.md"))
    parser.add_argument("--png", type=Path, default=Path("docs/bench.png"))
    args = parser.parse_args()
    write(json.loads(args.results.read_text()), args.md, args.png)
    print(table(json.loads(args.results.read_text())))


if __name__ == "__main__":
    main()
