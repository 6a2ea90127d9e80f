"""Where a commit's milliseconds go on the way to a file replica (issue 28, point 1).

A steady phase of the replication workload (``rate`` commits a second) with lsr
run under ``trace_lsr.py``, which records timed spans of its work. For each
commit, its path through them:

- ``wake``: from COMMIT's return to the start of the first sync after it (the
  inotify event, the watcher's pause, the monitor's spacing, a worker's wake);
- ``sync``: that sync, the WAL read, checksum verification and shadow write
  (``copy``, of which ``verify``) and the fingerprint and bookkeeping around them;
- ``handoff``: from the sync's end to the start of the shipment that carries the
  commit (the shipper's spacing and wake); 0 when it began during the sync;
- the shipment: ``durable`` (the shadow WAL's fsync), ``compress``, ``put`` (of
  which ``fsync``, ``rename``, ``dirsync``; the rest is the write), and
  ``read`` (the rest of it: the shadow read, the salt check, bookkeeping);
- ``seen``: from the segment's rename into place to the harness's inotify stamp.

Each part is the median over the commits (so the parts need not add up to the
median lag exactly). A traced run's CPU is not an untraced one's: the wrappers
cost microseconds a span, so only the times are reported here.
"""

from __future__ import annotations

import bisect
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np

import measure
import workload
from scenarios import Settings, replicated_run
from tools import Backend, Tool

TRACER = Path(__file__).with_name("trace_lsr.py")
PARTS = ["wake", "sync", "copy", "verify", "handoff", "durable", "read", "compress", "put", "write", "fsync",
         "rename", "dirsync", "seen"]


def traced_tool(work: Path, trace: Path) -> Tool:
    """lsr under trace_lsr.py, as an executable the harness can start like any tool."""
    script = work / "lsr-traced"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {TRACER} {trace} \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return Tool("lsr", str(script))


def _load(trace: Path) -> dict[str, list[tuple[float, float]]]:
    spans: dict[str, list[tuple[float, float]]] = {}
    with open(trace) as f:
        for line in f:
            label, start, end = json.loads(line)
            spans.setdefault(label, []).append((start, end))
    return {k: sorted(v) for k, v in spans.items()}


def _inside(spans: dict[str, list[tuple[float, float]]], label: str, start: float, end: float) -> float:
    return sum(b - a for a, b in spans.get(label, []) if a >= start and b <= end)


def breakdown(spans: dict[str, list[tuple[float, float]]], t_commit: np.ndarray,
              arrivals: list[measure.Segment], first_seq: int) -> dict[str, float]:
    """Median milliseconds of each part (see the module docstring) over the commits that arrived."""
    syncs = spans.get("sync", [])
    ships = [s for s in spans.get("ship", []) if _inside(spans, "put", *s) > 0]
    sync_starts = [a for a, _ in syncs]
    ship_ends = [b for _, b in ships]
    ordered = sorted(arrivals, key=lambda s: s.t)
    reach = np.maximum.accumulate(np.array([s.marker for s in ordered])) if ordered else np.array([])
    parts: dict[str, list[float]] = {p: [] for p in PARTS}
    for i, t in enumerate(t_commit):
        k = int(np.searchsorted(reach, first_seq + i, side="left"))
        if k >= len(ordered):
            continue
        arrived = ordered[k].t
        j = bisect.bisect_left(sync_starts, t)
        m = bisect.bisect_left(ship_ends, arrived)  # the shipment that renamed the segment into place
        if j >= len(syncs) or m >= len(ships):
            continue
        sync, ship = syncs[j], ships[m]
        if not sync[0] <= arrived:
            continue
        parts["wake"].append(sync[0] - t)
        parts["sync"].append(sync[1] - sync[0])
        for label in ("copy", "verify"):
            parts[label].append(_inside(spans, label, *sync))
        parts["handoff"].append(max(ship[0] - sync[1], 0.0))
        inner = {label: _inside(spans, label, *ship) for label in ("durable", "compress", "put")}
        put = next((p for p in spans.get("put", []) if p[0] >= ship[0] and p[1] <= ship[1]), ship)
        put_parts = {label: _inside(spans, label, *put) for label in ("rename", "dirsync")}
        # The segment's own fsync: inside the put (durable's fsync is outside it).
        put_parts["fsync"] = _inside(spans, "fsync", *put) - put_parts["dirsync"]
        for label, v in {**inner, **put_parts}.items():
            parts[label].append(v)
        parts["write"].append(inner["put"] - sum(put_parts.values()))
        parts["read"].append((ship[1] - ship[0]) - sum(inner.values()))
        renamed = [b for a, b in spans.get("rename", []) if put[0] <= a and b <= put[1]]
        parts["seen"].append(arrived - renamed[-1] if renamed else float("nan"))
    return {p: 1000 * float(np.nanmedian(v)) if v else float("nan") for p, v in parts.items()}


def traced_lag(backend: Backend, work: Path, s: Settings) -> dict[str, Any]:
    """lsr (traced) replicating the steady phase alone: the lag and its parts."""
    d = work / f"lagtrace-{backend.name}"
    d.mkdir(parents=True)
    trace = d / "trace.jsonl"
    workload.seed(d / "app.db")
    run = replicated_run(traced_tool(d, trace), backend, d, [(s.steady, s.rate)], s)
    # The sidecar has exited (the run waits for it): its trace is complete.
    if not os.path.exists(trace):
        raise RuntimeError(f"the traced sidecar left no trace: {run.log.read_text(errors='replace')[-1000:]}")
    return {"lag": measure.percentiles(run.lags),
            "parts_ms": breakdown(_load(trace), run.t_commit, run.segments, run.first_seq)}
