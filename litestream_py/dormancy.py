"""Dormant databases: when an idle database lets go of SQLite, and how many may hold it at once.

A dormant database has closed its connections and its descriptors of the
database, -wal and -shm files (db.py, ``DB.sleep``): it keeps only its meta
directory's lock file and, in memory, its shadow position. It goes dormant
only with everything its WAL committed already in the shadow WAL and shipped,
and wakes (reopens, checking the WAL against the shadow byte for byte) as soon
as the WAL or database file changes. What it gives up is the read lock: while
dormant the application may checkpoint and restart its WAL, and then the wake
starts a new generation from a snapshot, as any gap in the read lock does.
"""

from __future__ import annotations

import threading

__all__ = ["AwakeLimit", "DORMANT_AFTER", "DORMANT_MIN_DBS", "MIN_DORMANT_QUIET", "DORMANT_RECHECK", "quiet_before_dormant"]

# A database whose WAL was not written for this long goes dormant (once shipped)...
DORMANT_AFTER = 30.0
# ... where the sidecar serves at least this many, unless the config says (dormant-after).
# A few databases cost few descriptors, and an application that closes its last
# connection while lsr is dormant checkpoints and removes its WAL: a new
# generation (a snapshot) at its next write, which a sidecar that stays awake avoids.
DORMANT_MIN_DBS = 100
# ... or for this long, while other databases wait for the descriptors it holds.
# Never less: a commit writes its frames, then the wal-index header; a database
# that went dormant between the two would miss that commit until the next write.
MIN_DORMANT_QUIET = 1.0
# How soon an awake, quiet database that could not go dormant yet looks again.
DORMANT_RECHECK = 1.0


def quiet_before_dormant(configured: float | None, dbs: int, others_waiting: bool) -> float:
    """Seconds a database's WAL must be unwritten before it goes dormant; 0: never.

    ``configured``: its dormant-after (None: not set); ``dbs``: how many the
    sidecar serves; ``others_waiting``: databases wait for its descriptors.
    """
    if configured is None:
        configured = DORMANT_AFTER if dbs >= DORMANT_MIN_DBS or others_waiting else 0.0
    if configured <= 0:
        return 0.0
    return MIN_DORMANT_QUIET if others_waiting else configured


class AwakeLimit:
    """How many databases may be awake (holding their descriptors) at once; counted by the DBs."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit  # None: no limit
        self._awake = 0
        self._lock = threading.Lock()

    @property
    def awake(self) -> int:
        return self._awake

    def opened(self) -> None:
        with self._lock:
            self._awake += 1

    def closed(self) -> None:
        with self._lock:
            self._awake -= 1

    def full(self) -> bool:
        return self.limit is not None and self._awake >= self.limit
