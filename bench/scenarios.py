"""The benchmark's scenarios; each returns a dict of plain numbers for the report.

- ``replication``: one sidecar replicates an OpenWEC-like database while the
  writer runs a steady phase (``rate`` txn/s) then a burst (back to back).
  Gives commit->replica lag, catch-up after the final commit, sidecar CPU per
  MiB of WAL, peak RSS, and the writer's throughput and longest transaction.
- ``throughput``: the writer's throughput with the sidecar over without it,
  from short slices on a replicated and a control database, interleaved.
- ``restore``: a ~100 MiB database with 300+ WAL segments on the replica,
  restored by the tool that wrote it (``build_restore``, then ``time_restore``
  for each tool in turn).
- ``idle``: many idle databases in one ``replicate -config`` process.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import measure
import workload
from tools import Backend, Tool, log_problems, restore as run_restore, sidecar, stop, write_config
from watch import Watcher, segment_marker

WRITER = Path(__file__).with_name("workload.py")
READY_TIMEOUT = 300.0
# The idle runs' wait for every snapshot, per database past that (10,000 on a loaded 2-core machine: ~280 s).
IDLE_READY_SECONDS_PER_DB = 0.06
# Descriptors lsr holds per idle database (litestream_py.process.DESCRIPTORS_PER_DB), with room for Go's.
IDLE_DESCRIPTORS_PER_DB = 10
# What Go 0.3.13 holds per database (measured: 7,007 for 1,000), and beside them.
GO_DESCRIPTORS_PER_DB = 7
GO_SPARE_DESCRIPTORS = 256
LAG_QUANTILES = np.linspace(0, 1, 101)


@dataclass(frozen=True)
class Settings:
    steady: float = 25.0  # seconds at ``rate``
    rate: float = 100.0  # transactions per second in the steady phase
    burst: float = 15.0  # seconds back to back
    catchup_timeout: float = 60.0
    restore_mib: float = 100.0
    restore_segments: int = 320
    restore_repeats: int = 5
    # Restores of lsr's replica without a -parallelism flag and with -parallelism 1,
    # in adjacent pairs, the order alternating (issue 28: the default never slower):
    # on a file replica both run the same code, and 5 turns of each, minutes
    # apart on a shared machine, gave either order by chance (1.21 in one run).
    parallelism_pairs: int = 15
    replication_repeats: int = 2
    # 12 slices of 4 s: three whole ABBA groups (~20 s each, waits included), so a
    # drift over tens of seconds cancels within each, and ~1 min in all per run,
    # as long as the writer-alone runs this replaced. A slice is still 4 of Go's
    # 1 s sync intervals: the work left for the wait after it is a small part.
    throughput_slices: int = 12
    throughput_slice: float = 4.0  # seconds back to back
    throughput_settle: float = 0.3  # seconds idle after each slice, past the sidecar's last upload
    # The S3 listing poll during those slices: it only has to see each A slice's
    # last commit arrive, and polling moto every s3_poll took a third of a core,
    # in B slices too, from the cores the writer and the sidecar share.
    throughput_s3_poll: float = 0.25
    idle_dbs: int = 1000
    # A second idle run at this scale (0: none), issue 28 point 6: lsr takes them
    # as one ``dir:``; past the open-file limit the sidecar refuses to start.
    idle_many_dbs: int = 10000
    idle_seconds: float = 20.0
    # Past both tools' first checkpoint, a minute after they open each database:
    # thousands of them checkpointing at once is start-up, not idling.
    idle_settle: float = 60.0
    s3_poll: float = 0.02  # faster polling loads moto, on the same cores as the tools
    # Issue 29's workload (bench/compaction.py): 300 transactions over 10 s on a
    # 48 MiB database, then past two of lsr's default compaction intervals.
    compaction_mib: float = 48.0
    compaction_txns: int = 300
    compaction_seconds: float = 10.0
    compaction_settle: float = 25.0
    # lsr's compaction-interval in that scenario; "" leaves lsr's default. Only the
    # smoke run (--quick) sets it, to finish in seconds: its figures are not measurements.
    compaction_interval: str = ""
    # The stall scenario (bench/stall.py): a writer saturating SQLite with big
    # transactions (default wal_autocheckpoint), alone and beside each tool.
    stall_seconds: float = 8.0
    stall_rows: int = 10000
    stall_repeats: int = 2


class Decoder:
    """Each arrived segment's (marker, WAL bytes), read and decoded once, on a
    thread of its own as they arrive: lsr's compaction merges and deletes
    segments once they are older than its interval (10 s by default)."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.cache: dict[str, tuple[int, int]] = {}
        threading.Thread(target=self._follow, name="decoder", daemon=True).start()

    def _follow(self) -> None:
        seen = 0
        while not self.watcher.stopped():
            arrivals = self.watcher.arrivals(seen)
            for a in arrivals:
                with suppress(OSError):  # gone already: read again (and reported) by segments()
                    self.get(a.key)
            seen += len(arrivals)
            time.sleep(0.05)

    def get(self, key: str) -> tuple[int, int]:
        if key not in self.cache:
            self.cache[key] = segment_marker(self.watcher.read(key), self.watcher.identities)
        return self.cache[key]

    def segments(self) -> list[measure.Segment]:
        return [measure.Segment(a.t, *self.get(a.key)) for a in self.watcher.arrivals()]

    def wait_for(self, seq: int, not_before: float, timeout: float) -> bool:
        """Until a segment arrived after ``not_before`` carries commit ``seq``."""
        deadline, seen = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            arrivals = self.watcher.arrivals()
            for a in arrivals[seen:]:
                if a.t >= not_before and self.get(a.key)[0] >= seq:
                    return True
            seen = len(arrivals)
            time.sleep(0.005)
        return False


def wait_ready(proc: subprocess.Popen[bytes], watcher: Watcher, log: Path, timeout: float = READY_TIMEOUT) -> float:
    """Seconds until the replica has a snapshot; raises if the sidecar dies first."""
    t0 = time.monotonic()
    while not watcher.has_snapshot():
        if proc.poll() is not None:
            raise RuntimeError(f"sidecar exited {proc.returncode}: {log.read_text(errors='replace')[-1500:]}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"no snapshot on the replica after {timeout:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def run_writer(db: Path, out: Path, phases: list[tuple[float, float]], rows: int = 0) -> dict[str, np.ndarray]:
    """The writer as its own process, so that it shares no interpreter with the watcher
    (``rows``: big transactions of that many rows, see workload)."""
    args = [sys.executable, str(WRITER), str(db), str(out), *([f"--rows={rows}"] if rows else [])]
    for seconds, rate in phases:
        args += ["--phase", f"{seconds}:{rate}"]
    subprocess.run(args, check=True, timeout=sum(s for s, _ in phases) + 300)
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def _writer_figures(data: dict[str, np.ndarray], s: Settings) -> dict[str, Any]:
    burst = data["phase"] == 1
    return {
        "commits": int(len(data["t_commit"])),
        "throughput": float(burst.sum() / s.burst),
        "longest_txn": float(data["latency"][burst].max()),
        "longest_txn_steady": float(data["latency"][~burst].max()),
    }


def _phases(s: Settings) -> list[tuple[float, float]]:
    return [(s.steady, s.rate), (s.burst, 0.0)]


def _fresh_db(d: Path) -> Path:
    """A newly seeded database in an emptied directory ``d``."""
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    db = d / "app.db"
    workload.seed(db)
    return db


@dataclass(frozen=True)
class Slice:
    """One stretch of back-to-back writing to one database, as the writer reports it."""

    db: str  # "A" (replicated) or "B" (the control)
    commits: int
    last_seq: int
    longest_txn: float
    seconds: float


@contextmanager
def slice_writer(dbs: dict[str, Path]) -> Iterator[Callable[[str, float], Slice]]:
    """One writer process holding a connection to each of ``dbs`` (see
    ``workload.serve``); yields ``write(name, seconds) -> Slice``."""
    args = [sys.executable, str(WRITER), *(f"--serve={name}={db}" for name, db in dbs.items())]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin and proc.stdout

    def write(name: str, seconds: float) -> Slice:
        proc.stdin.write(f"{name} {seconds}\n")
        proc.stdin.flush()
        reply = proc.stdout.readline().split()
        if not reply:
            raise RuntimeError(f"the writer exited {proc.wait()}")
        return Slice(name, int(reply[0]), int(reply[1]), float(reply[2]), float(reply[3]))

    try:
        yield write
    finally:
        with suppress(OSError):  # the writer may be gone already
            proc.stdin.write("quit\n")
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop(proc)


def _txn_per_s(slices: list[Slice], db: str) -> float:
    """All of ``db``'s commits over all of its seconds."""
    mine = [x for x in slices if x.db == db]
    return sum(x.commits for x in mine) / sum(x.seconds for x in mine)


def _ratio(slices: list[Slice]) -> float:
    return _txn_per_s(slices, "A") / _txn_per_s(slices, "B")


def throughput(tool: Tool, backend: Backend, work: Path, s: Settings) -> dict[str, Any]:
    """The writer's throughput with the sidecar over without it, paired in time.

    Two identical databases, A replicated by the sidecar and B (elsewhere, not in
    its config) the control, get slices of back-to-back writing from one writer
    process in the order ABBA ABBA...: a drift of the machine's speed then falls
    on both alike. After an A slice the harness waits until the replica has its
    last commit, so that the sidecar's catch-up never overlaps a B slice; every
    slice is followed by the same short settle.
    """
    d = work / f"throughput-{backend.name}-{tool.name}"
    dbs = {"A": _fresh_db(d / "replicated"), "B": _fresh_db(d / "control")}
    replica = backend.replica(d, "app")
    config = write_config(d / "litestream.yml", [(dbs["A"], replica, {})])
    log = d / "sidecar.log"
    watcher = replace(backend, s3_poll=s.throughput_s3_poll).watcher(replica)
    decoder = Decoder(watcher)
    slices: list[Slice] = []
    with sidecar(tool, config, log) as proc:
        wait_ready(proc, watcher, log)
        watcher.start()
        try:
            with slice_writer(dbs) as write:
                for i in range(s.throughput_slices):
                    t0 = time.monotonic()
                    slices.append(write("ABBA"[i % 4], s.throughput_slice))
                    last = slices[-1]
                    if last.db == "A" and not decoder.wait_for(last.last_seq, t0, s.catchup_timeout):
                        raise RuntimeError(f"the replica never received commit {last.last_seq}")
                    time.sleep(s.throughput_settle)
        finally:
            watcher.stop()
    pairs = [_ratio(slices[i:i + 2]) for i in range(0, len(slices), 2)]  # AB, BA, AB, ...
    return {
        # The median pair: a slowdown of the machine lasting a few seconds
        # (pairs of one run ranged 0.55-1.34) skews the one or two pairs it hits.
        "ratio": float(np.median(pairs)),
        "ratio_of_sums": _ratio(slices),
        "throughput": _txn_per_s(slices, "A"),
        "throughput_alone": _txn_per_s(slices, "B"),
        "pair_ratios": pairs,
        "slices": [[x.db, x.commits, x.seconds] for x in slices],
        "longest_txn": max(x.longest_txn for x in slices if x.db == "A"),
        "longest_txn_alone": max(x.longest_txn for x in slices if x.db == "B"),
        "log_problems": log_problems(log),
    }


# Figures whose target is a bound on the worst case: over repeated runs, the
# worst run's value counts. Counts of faults add up.
WORST_OF = {"longest_txn", "longest_txn_steady", "longest_txn_alone", "peak_rss_mib", "generations", "max",
            "longest_begin_wait", "longest_commit_wait"}
SUM_OF = {"lost_commits", "negative_lags"}


def combine_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result for several runs of one scenario: the median of each figure
    (elementwise for a list of numbers), the worst for WORST_OF, the sum for
    SUM_OF; each run's own value is kept under "runs". Failed runs are left
    out; if all failed, the first failure stands."""
    good = [r for r in runs if "error" not in r]
    if not good or len(runs) == 1:
        return runs[0]
    out: dict[str, Any] = _combine(good)
    out["runs"] = good
    return out


def _combine(values: list[Any], key: str = "") -> Any:
    first = values[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(k in v for v in values)]
        return {k: _combine([v[k] for v in values], k) for k in keys}
    if isinstance(first, bool) or not isinstance(first, (int, float, list)):
        return first
    if isinstance(first, list):
        if all(isinstance(x, (int, float)) for v in values for x in v) and len({len(v) for v in values}) == 1:
            return [float(x) for x in np.median(np.array(values, dtype=float), axis=0)]
        return [x for v in values for x in v]  # e.g. log lines: all of them
    if key in SUM_OF:
        return sum(values)
    if key in WORST_OF:
        return max(values)
    median = float(np.median(values))
    return round(median) if all(isinstance(v, int) for v in values) else median


@dataclass
class Run:
    """One writer run beside a sidecar, as measured (see ``replicated_run``)."""

    data: dict[str, np.ndarray]  # the writer's arrays (workload.Writer.run)
    first_seq: int
    t_commit: np.ndarray
    caught_up: bool  # the final commit reached the replica within catchup_timeout
    cpu_log: measure.CpuSampler
    cpu: float  # the sidecar's CPU seconds from the writer's start to catch-up
    peak_rss: float
    segments: list[measure.Segment]
    lags: np.ndarray
    watcher: Watcher
    log: Path

    @property
    def t0(self) -> float:
        return self.cpu_log.samples[0][0]


def replicated_run(tool: Tool, backend: Backend, d: Path, phases: list[tuple[float, float]], s: Settings,
                   rows: int = 0) -> Run:
    """A sidecar replicating ``d``/app.db (seeded already) while the writer runs ``phases``
    (``rows``: big transactions), until the replica has the final commit."""
    db = d / "app.db"
    replica = backend.replica(d, "app")
    config = write_config(d / "litestream.yml", [(db, replica, {})])
    log = d / "sidecar.log"
    watcher = backend.watcher(replica)
    decoder = Decoder(watcher)
    with sidecar(tool, config, log) as proc:
        wait_ready(proc, watcher, log)
        watcher.start()
        try:
            with measure.CpuSampler(proc.pid) as cpu_log:
                cpu0 = cpu_log.samples[0][1]
                data = run_writer(db, d / "writer.npz", phases, rows)
                first_seq, t_commit = int(data["first_seq"]), data["t_commit"]
                final = first_seq + len(t_commit) - 1
                caught_up = decoder.wait_for(final, t_commit[-1] - 1.0, s.catchup_timeout)
            cpu = cpu_log.samples[-1][1] - cpu0  # the sampler's last sample, taken as it stopped
            peak_rss = measure.peak_rss_mib(proc.pid)
        finally:
            watcher.stop()
    segments = decoder.segments()
    lags = measure.commit_lags(first_seq, t_commit, segments)
    return Run(data, first_seq, t_commit, caught_up, cpu_log, cpu, peak_rss, segments, lags, watcher, log)


def replication(tool: Tool, backend: Backend, work: Path, s: Settings) -> dict[str, Any]:
    d = work / f"replication-{backend.name}-{tool.name}"
    d.mkdir(parents=True)
    workload.seed(d / "app.db")
    run = replicated_run(tool, backend, d, _phases(s), s)
    data, t_commit, segments, lags, cpu_log, cpu, watcher = (run.data, run.t_commit, run.segments, run.lags,
                                                             run.cpu_log, run.cpu, run.watcher)
    steady = data["phase"] == 0
    wal_mib = sum(seg.wal_bytes for seg in segments if seg.t >= run.t0) / measure.MIB
    # Where the CPU goes: the steady phase (a cost per second, mostly per sync)
    # and the burst (a cost per MiB).
    t_burst = float(t_commit[~steady][0])
    steady_cpu = cpu_log.at(t_burst) - cpu_log.at(float(t_commit[0]))
    burst_mib = sum(seg.wal_bytes for seg in segments if seg.t >= t_burst) / measure.MIB
    result: dict[str, Any] = {
        **_writer_figures(data, s),
        "lag": measure.percentiles(lags[steady]),
        "lag_burst": measure.percentiles(lags[~steady]),
        "lag_quantiles": [float(q) for q in np.nanquantile(lags[steady], LAG_QUANTILES)],
        "catch_up": float(lags[-1]) if run.caught_up else float("inf"),
        "cpu_seconds": cpu,
        "wal_mib": wal_mib,
        "cpu_per_mib": cpu / wal_mib if wal_mib else float("nan"),
        "steady_cpu_percent": 100 * steady_cpu / (t_burst - float(t_commit[0])),
        "burst_cpu_per_mib": (cpu - steady_cpu) / burst_mib if burst_mib else float("nan"),
        "peak_rss_mib": run.peak_rss,
        "segments": len(segments),
        "generations": len(watcher.generations()),
        "lost_commits": int(np.isnan(lags).sum()),
        "negative_lags": int((lags < 0).sum()),
        "log_problems": log_problems(run.log),
    }
    if hasattr(watcher, "poll_periods"):
        periods = np.array(watcher.poll_periods())
        result["poll_period"] = {"p50": float(np.median(periods)), "max": float(periods.max())} if len(periods) else {}
    return result


@dataclass
class RestoreReplica:
    """A replica built for the restore figures, and those figures so far."""

    tool: Tool
    backend: Backend
    dir: Path
    config: Path
    db: Path
    last_seq: int
    build_problems: list[str]  # from the sidecar's log
    result: dict[str, Any]


def build_restore(tool: Tool, backend: Backend, work: Path, large_db: Path, s: Settings) -> RestoreReplica:
    """A replica of ``large_db`` with >= restore_segments WAL segments, written by ``tool``."""
    d = work / f"restore-{backend.name}-{tool.name}"
    d.mkdir(parents=True)
    db = d / "big.db"
    shutil.copyfile(large_db, db)
    replica: dict[str, object] = {**backend.replica(d, "big"), "sync-interval": "10ms"}
    if tool.name == "lsr":
        # The figure restores 300+ segments: compaction would merge them while
        # they are written (and delete segments the S3 watcher is about to read).
        replica["compaction-interval"] = "0"
    config = write_config(d / "litestream.yml", [(db, replica, {"monitor-interval": "10ms"})])
    log = d / "sidecar.log"
    watcher = backend.watcher(replica)
    decoder = Decoder(watcher)
    t_build = time.monotonic()
    with sidecar(tool, config, log) as proc:
        snapshot_seconds = wait_ready(proc, watcher, log)
        watcher.start()
        conn = workload.open_app(db)
        try:
            seq = workload.current_seq(db)
            rng = random.Random(7)
            deadline = time.monotonic() + 600
            while len(watcher.arrivals()) < s.restore_segments and time.monotonic() < deadline:
                seq += 1
                workload.touch_blobs(conn, seq, rng)
                time.sleep(0.025)  # > sync-interval, so most commits land in a segment of their own
            if not decoder.wait_for(seq, 0.0, s.catchup_timeout):
                raise RuntimeError(f"the replica never received commit {seq}")
        finally:
            conn.close()
            watcher.stop()
    problems = log_problems(log)
    result = {
        "db_mib": os.path.getsize(db) / measure.MIB,
        "segments": len(watcher.arrivals()),
        "snapshot_seconds": snapshot_seconds,
        "build_seconds": time.monotonic() - t_build,
        "restore_all": [],
        "server_cpu_all": [],
        "log_problems": problems,
    }
    return RestoreReplica(tool, backend, d, config, db, seq, problems, result)


def time_restore(r: RestoreReplica, warm_up: bool = False, parallelism: int | None = None,
                 series: str | None = None) -> dict[str, Any]:
    """One more timed restore of ``r``; its figures so far. A ``warm_up`` restore
    is checked and not timed: the first restore after the builds ran 0.2-0.4 s
    slower than the rest (file, 100 MiB), whichever tool ran it. With
    ``parallelism`` the restore passes ``-parallelism N``. Times go to
    ``{series}_all`` and their median to ``{series}_seconds``: by default
    ``restore`` (with the server's CPU), or ``restore_p{N}`` with a parallelism."""
    # The builds leave ~100 MiB of dirty pages each: written back during a
    # restore, they would slow its own writes and fsync.
    os.sync()
    out = r.dir / f"restored-{len(r.result['restore_all'])}.db"
    server = r.backend.server
    # A Python server's handlers share one interpreter lock: its CPU seconds
    # during a restore are a floor under any client's restore time.
    server_before = measure.cpu_seconds(server.proc.pid) if server else 0.0
    flags = ("-parallelism", str(parallelism)) if parallelism is not None else ()
    seconds = run_restore(r.tool, r.config, r.db, out, r.dir / "restore.log", flags)
    if warm_up:
        r.result["warm_up_seconds"] = seconds
        r.result["check"] = _check_restored(out, r.last_seq)
    else:
        series = series or ("restore" if parallelism is None else f"restore_p{parallelism}")
        times = r.result.setdefault(f"{series}_all", [])
        times.append(seconds)
        r.result[f"{series}_seconds"] = float(np.median(times))
        if server and series == "restore":
            r.result["server_cpu_all"].append(measure.cpu_seconds(server.proc.pid) - server_before)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{out}{suffix}").unlink(missing_ok=True)
    r.result["log_problems"] = r.build_problems + log_problems(r.dir / "restore.log")
    return r.result


def _check_restored(path: Path, want_seq: int) -> str:
    """"ok", or what is wrong with a restored database."""
    conn = sqlite3.connect(str(path))
    try:
        quick = conn.execute("PRAGMA quick_check").fetchone()[0]
        seq = conn.execute("SELECT seq FROM tick").fetchone()[0]
    finally:
        conn.close()
    if quick != "ok":
        return f"quick_check: {quick}"
    return "ok" if seq == want_seq else f"restored through commit {seq}, want {want_seq}"


def idle(tool: Tool, work: Path, s: Settings, count: int) -> dict[str, Any]:
    """``count`` small databases with file replicas, in one process, doing nothing.

    lsr is given them as one ``dir:`` (Go 0.3.13 has no ``dir:``: one entry
    each); each is replicated under its file name.
    """
    open_files = measure.raise_open_file_limit(count * IDLE_DESCRIPTORS_PER_DB + 1024)
    go_needs = count * GO_DESCRIPTORS_PER_DB + GO_SPARE_DESCRIPTORS
    if tool.name == "go" and go_needs > open_files:
        # Started anyway it fails with EMFILE on the databases past the limit,
        # after growing to several GiB on a machine others share.
        raise RuntimeError(f"Go 0.3.13 cannot hold {count:,} databases open: about {go_needs:,} descriptors "
                           f"({GO_DESCRIPTORS_PER_DB} each), open-file limit {open_files:,}; not started")
    d = work / f"idle-{count}-{tool.name}"
    (d / "dbs").mkdir(parents=True)
    template = d / "template.db"
    workload.make_idle(template)
    for i in range(count):  # copies: one committed transaction each, as an idle service leaves it
        shutil.copyfile(template, d / "dbs" / f"db{i:05d}.db")
    template.unlink()
    replicas = d / "replicas"
    if tool.name == "lsr":
        config = d / "litestream.yml"
        config.write_text(f"dbs:\n  - dir: {d / 'dbs'}\n    pattern: '*.db'\n    replicas:\n"
                          f"      - type: file\n        path: {replicas}\n")
    else:
        config = write_config(d / "litestream.yml", [
            (db, {"type": "file", "path": str(replicas / db.name)}, {}) for db in sorted((d / "dbs").glob("*.db"))])
    log = d / "sidecar.log"
    t0 = time.monotonic()
    timeout = max(READY_TIMEOUT, count * IDLE_READY_SECONDS_PER_DB)
    with sidecar(tool, config, log) as proc:
        while True:
            ready = len(list(replicas.glob("*/generations/*/snapshots/*.snapshot.lz4")))
            if ready >= count:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"sidecar exited {proc.returncode}: {log.read_text(errors='replace')[-1500:]}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"only {ready} of {count} replicas had a snapshot after {timeout:.0f} s "
                                   f"(open-file limit {open_files})")
            time.sleep(0.5)
        ready_seconds = time.monotonic() - t0
        time.sleep(s.idle_settle)
        cpu0, w0 = measure.cpu_seconds(proc.pid), time.monotonic()
        time.sleep(s.idle_seconds)
        cpu_pct = 100 * (measure.cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - w0)
        rss, peak = measure.rss_mib(proc.pid), measure.peak_rss_mib(proc.pid)
        descriptors = measure.open_descriptors(proc.pid)
    return {"dbs": count, "ready_seconds": ready_seconds, "cpu_percent": cpu_pct, "rss_mib": rss,
            "peak_rss_mib": peak, "descriptors": descriptors, "open_file_limit": open_files,
            "log_problems": log_problems(log)}
