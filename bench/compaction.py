"""The compaction scenario: what a replica costs once written, each tool with its own defaults.

Issue 29's workload: a database of ``compaction_mib`` MiB, written by
``compaction_txns`` small transactions over ``compaction_seconds``, replicated
by each tool with nothing but a path (or bucket) configured. The sidecar then
runs on for ``compaction_settle`` seconds, past two of lsr's default
compaction intervals (Go 0.3.13 has no compaction: the same wait costs it
nothing). Figures: objects left in the replica, requests (on nanio, from its
access log: what an object store bills) while writing and per restore, and
the restore time of each tool's replica, restores taken in turns.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

import measure
import workload
from scenarios import Settings, _check_restored, wait_ready
from tools import Backend, Tool, log_problems, restore as run_restore, sidecar, write_config

__all__ = ["build", "time_restore"]


def _requests(backend: Backend) -> dict[str, int]:
    return backend.server.requests() if backend.server is not None and backend.server.kind == "nanio" else {}


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def _objects(replica: dict[str, object]) -> dict[str, int]:
    """Snapshots and WAL segments in the replica, as lsr's client lists them."""
    from litestream_py.clients import new_client
    from litestream_py.config import ReplicaConfig

    rc = ReplicaConfig(**{k.replace("-", "_"): v for k, v in replica.items()})  # type: ignore[arg-type]
    client = new_client(rc)
    gens = client.generations()
    snapshots = sum(len(client.snapshots(g)) for g in gens)
    segments = sum(len(client.wal_segments(g)) for g in gens)
    return {"objects": snapshots + segments, "snapshots": snapshots, "segments": segments}


def build(tool: Tool, backend: Backend, work: Path, source_db: Path, s: Settings) -> dict[str, Any]:
    d = work / f"compaction-{backend.name}-{tool.name}"
    d.mkdir(parents=True)
    db = d / "app.db"
    shutil.copyfile(source_db, db)
    replica = backend.replica(d, "app")  # the tool's defaults: nothing else set
    if s.compaction_interval and tool.name == "lsr":
        replica["compaction-interval"] = s.compaction_interval
    config = write_config(d / "litestream.yml", [(db, replica, {})])
    log = d / "sidecar.log"
    watcher = backend.watcher(replica)
    with sidecar(tool, config, log) as proc:
        wait_ready(proc, watcher, log)
        before = _requests(backend)
        conn = workload.open_app(db)
        try:
            seq = workload.current_seq(db)
            rng = random.Random(29)
            t0 = time.monotonic()
            for i in range(s.compaction_txns):
                seq += 1
                workload.touch_blobs(conn, seq, rng)
                time.sleep(max(0.0, t0 + (i + 1) * s.compaction_seconds / s.compaction_txns - time.monotonic()))
        finally:
            conn.close()
        time.sleep(s.compaction_settle)
    written = _diff(_requests(backend), before)  # the final sync at shutdown included
    return {
        "dir": str(d), "config": str(config), "db": str(db), "last_seq": seq,
        "db_mib": os.path.getsize(db) / measure.MIB, **_objects(replica), "requests_writing": written,
        "restore_all": [], "restore_requests": [], "log_problems": log_problems(log),
        "compactions": log.read_text(errors="replace").count("compacted "),
    }


def time_restore(tool: Tool, backend: Backend, r: dict[str, Any], warm_up: bool = False) -> dict[str, Any]:
    """One more restore of ``r`` (a ``build`` result), timed unless ``warm_up`` (then checked)."""
    os.sync()
    d = Path(r["dir"])
    out = d / f"restored-{len(r['restore_all'])}.db"
    before = _requests(backend)
    seconds = run_restore(tool, Path(r["config"]), Path(r["db"]), out, d / "restore.log")
    if warm_up:
        r["check"] = _check_restored(out, r["last_seq"])
    else:
        r["restore_all"].append(seconds)
        r["restore_seconds"] = float(np.median(r["restore_all"]))
        r["restore_requests"] = _diff(_requests(backend), before)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{out}{suffix}").unlink(missing_ok=True)
    r["log_problems"] = r["log_problems"] + log_problems(d / "restore.log")
    return r
