"""How far behind each replica is, whether that is healthy, and the report that says so.

One place computes a replica's lag: the age of the oldest commit it does not
hold yet, from the capture times kept for every commit (commits.CommitLog).
``/healthz``, ``lsr status``, the ``lsr_*`` metrics, the heartbeat and the
sync barrier all read it from here. Everything is read from memory (stats,
positions, cached commit times): a report never touches SQLite or storage.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Iterable

from .pos import Pos

if TYPE_CHECKING:
    from .db import DB
    from .replica import Replica

__all__ = [
    "MAX_LAG_FACTOR",
    "MIN_MAX_LAG",
    "holds",
    "lag",
    "max_lag",
    "healthy",
    "rfc3339",
    "db_report",
    "report",
]

# Unless a replica sets max-lag, it is unhealthy once a commit waits more than
# this many of its sync intervals, and never sooner than MIN_MAX_LAG (a file
# replica ships at once; a busy machine may still take seconds).
MAX_LAG_FACTOR = 10
MIN_MAX_LAG = timedelta(seconds=10)
# Shadow indexes searched for the first commit a replica lacks; past that the
# lag falls back to when the replica was last seen caught up.
MAX_INDEXES_SEARCHED = 16


def holds(replica_pos: Pos, target: Pos, current_generation: str) -> bool:
    """Whether a replica at ``replica_pos`` holds every commit up to ``target``.

    A replica that has moved on to the DB's current generation, newer than the
    target's, holds everything: that generation starts with a snapshot.
    """
    if target.is_zero():
        return True
    if replica_pos.is_zero():
        return False
    if replica_pos.generation == target.generation:
        return (replica_pos.index, replica_pos.offset) >= (target.index, target.offset)
    return replica_pos.generation == current_generation


def _oldest_pending_ns(db: DB[Replica], rpos: Pos, dpos: Pos) -> int | None:
    """Capture time of the first commit past ``rpos``, if it is in memory."""
    if rpos.generation != dpos.generation or rpos.is_zero():
        return None
    for index in range(rpos.index, min(dpos.index, rpos.index + MAX_INDEXES_SEARCHED) + 1):
        found = db.shadow.commit_log.cached_first_after(dpos.generation, index, rpos.offset if index == rpos.index else 0)
        if found is not None:
            return found
    return None


def lag(replica: Replica, now: float | None = None) -> float:
    """Seconds since the oldest commit the replica does not hold was made; 0 when caught up."""
    db = replica.db
    assert db is not None
    now = time.time() if now is None else now
    dpos, rpos = db.pos(), replica.pos()
    if holds(rpos, dpos, dpos.generation):
        return 0.0
    oldest = _oldest_pending_ns(db, rpos, dpos)
    since = oldest / 1e9 if oldest is not None else replica.stats.pending_since
    return max(now - since, 0.0) if since is not None else 0.0


def max_lag(replica: Replica) -> float:
    """The lag past which the replica counts as unhealthy, in seconds."""
    if replica.max_lag is not None:
        return replica.max_lag.total_seconds()
    return max(MAX_LAG_FACTOR * replica.ship.sync_interval.total_seconds(), MIN_MAX_LAG.total_seconds())


def healthy(replicas: Iterable[Replica], now: float | None = None) -> bool:
    """Whether every replica holds every commit older than its max-lag."""
    now = time.time() if now is None else now
    return all(lag(r, now) <= max_lag(r) for r in replicas)


def rfc3339(t: float | datetime | None) -> str | None:
    """A time in RFC 3339, UTC, to the microsecond (None stays None)."""
    if t is None:
        return None
    if not isinstance(t, datetime):
        t = datetime.fromtimestamp(t, timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _replica_report(replica: Replica, now: float, schedule: dict[str, float | None]) -> dict[str, Any]:
    stats = replica.stats
    seconds = lag(replica, now)
    limit = max_lag(replica)
    last_commit = stats.last_commit_ns / 1e9 if stats.last_commit_ns is not None else None
    error = None
    if stats.last_error:
        error = {"kind": stats.last_error_kind, "message": stats.last_error, "at": rfc3339(stats.last_error_at),
                 "consecutive_failures": stats.consecutive_failures}
    lost_to = replica.lease.lost if replica.lease is not None else ""
    return {
        "name": replica.name,
        "type": replica.client.type,
        "position": str(replica.pos()),
        "lag_seconds": round(seconds, 6),
        "max_lag_seconds": limit,
        # A fenced replica is written by another sidecar now, never again by this one.
        "healthy": seconds <= limit and not lost_to,
        "lease": None if replica.lease is None else {"held": replica.lease.held, "lost_to": lost_to or None},
        "last_replicated_commit": rfc3339(last_commit),
        "last_shipment": rfc3339(stats.last_shipment),
        "last_success": rfc3339(stats.last_success),
        "last_error": error,
        "next_snapshot": rfc3339(schedule.get("snapshot")),
        "next_retention": rfc3339(schedule.get("retention")),
        "compaction": _compaction_report(replica),
    }


def _compaction_report(replica: Replica) -> dict[str, Any] | None:
    """What compaction did since the sidecar started (None: off, or an encrypted replica without its identity)."""
    stats = replica.compaction_stats()
    if stats is None:
        return None
    return {"passes": stats.passes, "segments_merged": stats.merged, "segments_written": stats.written,
            "leftovers_deleted": stats.leftovers, "wal_bytes_rewritten": stats.bytes,
            "last_pass": rfc3339(stats.last_pass)}


def db_report(db: DB[Replica], now: float | None = None, schedules: dict[str, dict[str, float | None]] | None = None,
              unserved: str | None = None) -> dict[str, Any]:
    """A database's state and its replicas' (``schedules``: replica name -> job -> wall time;
    ``unserved``: why the database cannot be replicated at all, if it cannot)."""
    now = time.time() if now is None else now
    pos = db.pos()
    replicas = [_replica_report(r, now, (schedules or {}).get(r.name, {})) for r in db.replicas]
    return {
        "path": db.path,
        "generation": pos.generation,
        "position": str(pos),
        "last_checkpoint": rfc3339(db.stats.last_checkpoint),
        "served": unserved is None,
        "error": unserved,
        "healthy": unserved is None and all(r["healthy"] for r in replicas),
        "replicas": replicas,
    }


def report(dbs: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole sidecar's report from its databases' (the body of /healthz and ``lsr status -json``)."""
    return {"healthy": all(d["healthy"] for d in dbs), "time": rfc3339(time.time()), "dbs": dbs}
