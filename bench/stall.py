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

from pathlib import Path
from typing import Any

import numpy as np

import measure
import workload
from scenarios import Settings, replicated_run, run_writer
from tools import Backend, Tool, log_problems


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
    _fresh(d)
    r = replicated_run(tool, backend, d, [(s.stall_seconds, 0.0)], s, rows=s.stall_rows)
    wal_mib = sum(seg.wal_bytes for seg in r.segments if seg.t >= r.t0) / measure.MIB
    return {
        **_writer_figures(r.data, s.stall_seconds),
        "catch_up": float(r.lags[-1]) if r.caught_up else float("inf"),
        "lag": measure.percentiles(r.lags),
        "wal_mib": wal_mib,
        "wal_mib_per_s": wal_mib / s.stall_seconds,
        "cpu_seconds": r.cpu,
        "cpu_per_mib": r.cpu / wal_mib if wal_mib else float("nan"),
        "peak_rss_mib": r.peak_rss,
        "segments": len(r.segments),
        "lost_commits": int(np.isnan(r.lags).sum()),
        "log_problems": log_problems(r.log),
    }
