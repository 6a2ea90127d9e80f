"""The stall scenario: how long the application waits for the sidecar under a saturating writer.

Issue 28, points 2, 3 and 6. The writer (its own process, ``workload.py --rows``)
commits big transactions back to back (``stall_rows`` rows each, the default
``wal_autocheckpoint``), as fast as SQLite takes them, for ``stall_seconds``:
once alone (no sidecar), then beside each tool in turns. From the writer: the
longest transaction (``BEGIN IMMEDIATE``..``COMMIT``), and its two waits a
sidecar can lengthen, for the write lock (``BEGIN IMMEDIATE``) and inside
``COMMIT`` (the WAL write and SQLite's automatic checkpoint). From the replica:
catch-up (the final commit's lag), the sidecar's CPU per MiB of WAL and its
peak RSS, as in the replication scenario.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

import measure
import workload
from scenarios import Decoder, Settings, run_writer, wait_ready
from tools import Backend, Tool, log_problems, sidecar, write_config


def _writer_figures(data: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    latency, begin, commit = data["latency"], data["begin_wait"], data["commit_wait"]
    return {
        "txns": int(len(latency)),
        "txn_per_s": float(len(latency) / seconds),
        "longest_txn": float(latency.max()),
        "txn_p50": float(np.median(latency)),
        "txn_p99": float(np.percentile(latency, 99)),
        "longest_begin_wait": float(begin.max()),
        "longest_commit_wait": float(commit.max()),
        "begin_wait_total": float(begin.sum()),
    }


def _fresh(d: Path) -> Path:
    d.mkdir(parents=True)
    db = d / "app.db"
    workload.seed(db)
    workload.Writer(db, rows=1).close()  # the events table, before anything measures
    return db


def alone(work: Path, s: Settings, run: int) -> dict[str, Any]:
    """The writer with no sidecar: the baseline of its transactions."""
    d = work / f"stall-alone-{run}"
    db = _fresh(d)
    data = run_writer(db, d / "writer.npz", [(s.stall_seconds, 0.0)], rows=s.stall_rows)
    return _writer_figures(data, s.stall_seconds)


def stall(tool: Tool, backend: Backend, work: Path, s: Settings, run: int) -> dict[str, Any]:
    d = work / f"stall-{backend.name}-{tool.name}-{run}"
    db = _fresh(d)
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
                t0, cpu0 = cpu_log.samples[0]
                data = run_writer(db, d / "writer.npz", [(s.stall_seconds, 0.0)], rows=s.stall_rows)
                first_seq, t_commit = int(data["first_seq"]), data["t_commit"]
                final = first_seq + len(t_commit) - 1
                caught_up = decoder.wait_for(final, t_commit[-1] - 1.0, s.catchup_timeout)
            cpu = cpu_log.samples[-1][1] - cpu0
            peak_rss = measure.peak_rss_mib(proc.pid)
        finally:
            watcher.stop()
    segments = decoder.segments()
    lags = measure.commit_lags(first_seq, t_commit, segments)
    wal_mib = sum(seg.wal_bytes for seg in segments if seg.t >= t0) / measure.MIB
    return {
        **_writer_figures(data, s.stall_seconds),
        "catch_up": float(lags[-1]) if caught_up else float("inf"),
        "lag": measure.percentiles(lags),
        "wal_mib": wal_mib,
        "wal_mib_per_s": wal_mib / s.stall_seconds,
        "cpu_seconds": cpu,
        "cpu_per_mib": cpu / wal_mib if wal_mib else float("nan"),
        "peak_rss_mib": peak_rss,
        "segments": len(segments),
        "lost_commits": int(np.isnan(lags).sum()),
        "log_problems": log_problems(log),
    }
