"""What the running sidecar has done, kept in memory by the code paths that do it.

Metrics, ``/healthz``, ``lsr status`` and the sync barrier read these objects;
none of them touches SQLite or storage to answer (a scrape must stay cheap
however many databases there are, and must not fail with the storage it reports on).
Times are wall-clock seconds since the epoch (they are shown to people);
counters only grow.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

__all__ = ["OperationStats", "DBStats", "CheckpointStats", "ReplicaStats", "OPERATIONS"]

# Storage operations as Go Litestream 0.3.13 labels them.
OPERATIONS = ("GET", "PUT", "DELETE", "LIST")


class OperationStats:
    """Requests made to one replica's storage, and their bytes, by operation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # restores read from several threads at once
        self._counts: dict[str, tuple[int, int]] = {}

    def add(self, operation: str, nbytes: int = 0) -> None:
        with self._lock:
            count, total = self._counts.get(operation, (0, 0))
            self._counts[operation] = (count + 1, total + nbytes)

    def counts(self) -> dict[str, tuple[int, int]]:
        """operation -> (requests, bytes)."""
        with self._lock:
            return dict(self._counts)


@dataclass
class CheckpointStats:
    count: int = 0
    errors: int = 0
    seconds: float = 0.0


@dataclass
class DBStats:
    """A database's syncs and checkpoints (updated on its syncing thread)."""

    sync_count: int = 0
    sync_errors: int = 0
    sync_seconds: float = 0.0
    total_wal_bytes: int = 0  # copied into the shadow WAL
    db_size: int = 0
    wal_size: int = 0
    checkpoints: dict[str, CheckpointStats] = field(default_factory=dict)  # by mode
    last_checkpoint: float | None = None

    def checkpoint(self, mode: str, seconds: float, failed: bool) -> None:
        stats = self.checkpoints.setdefault(mode, CheckpointStats())
        stats.count += 1
        stats.seconds += seconds
        if failed:
            stats.errors += 1
        else:
            self.last_checkpoint = time.time()


@dataclass
class ReplicaStats:
    """A replica's shipments and failures (updated on its shipping thread)."""

    wal_bytes: int = 0
    validations: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    last_shipment: float | None = None  # when a segment or snapshot was last written
    last_commit_ns: int | None = None  # capture time of the newest commit shipped
    last_success: float | None = None  # when a shipping step last ended without error
    last_error: str = ""
    last_error_kind: str = ""  # the error's class name, e.g. AccessDeniedError
    last_error_at: float | None = None
    consecutive_failures: int = 0
    # When the shadow WAL last moved past a caught-up replica: the lag's
    # fallback where no commit times are at hand (an index before a restart).
    pending_since: float | None = None

    def shipped(self, nbytes: int, last_commit_ns: int | None) -> None:
        self.wal_bytes += nbytes
        self.last_shipment = time.time()
        if last_commit_ns is not None:
            self.last_commit_ns = last_commit_ns

    def succeeded(self, caught_up: bool) -> None:
        self.last_success = time.time()
        self.consecutive_failures = 0
        if caught_up:
            self.pending_since = None

    def failed(self, exc: BaseException) -> None:
        self.last_error = str(exc) or type(exc).__name__
        self.last_error_kind = type(exc).__name__
        self.last_error_at = time.time()
        self.consecutive_failures += 1

    def pending(self) -> None:
        """The shadow WAL changed: from now on the replica may be behind."""
        if self.pending_since is None:
            self.pending_since = time.time()
