"""The replicate service: background threads that keep every DB's replicas current.

Each DB gets a monitor thread that copies the WAL into the shadow WAL; each
replica gets a shipper thread that writes new segments as soon as the shadow
WAL changes (at most once per ``sync-interval``), and runs retention and
scheduled snapshots. ``stop()`` ends the threads, then runs one final sync of
every DB and replica so that nothing committed before shutdown stays behind.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .db import DB
from .errors import LitestreamError
from .replica import Replica

__all__ = ["Replicator"]

log = logging.getLogger(__name__)


class _ErrorLog:
    """Log a failing operation once, not on every retry, and log its recovery."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.last = ""
        self.since = 0.0

    def failed(self, exc: BaseException) -> None:
        message = str(exc) or type(exc).__name__
        if message != self.last:
            log.warning("%s: %s (retrying)", self.what, message)
            self.last = message
            self.since = time.monotonic()

    def ok(self) -> None:
        if self.last:
            log.info("%s: recovered after %.1fs", self.what, time.monotonic() - self.since)
            self.last = ""


class Replicator:
    """Runs and stops the replication of a set of databases."""

    def __init__(self, dbs: list[DB]) -> None:
        self.dbs = dbs
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Open every DB that exists (raising on one that cannot be replicated) and start."""
        for db in self.dbs:
            db.check_path()
            db.open()
        for db in self.dbs:
            self._spawn(f"lsr-db:{db.path}", lambda db=db: self._monitor(db))
            for replica in db.replicas:
                self._spawn(f"lsr-replica:{db.path}:{replica.name}", lambda r=replica: self._ship(r))

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, final_sync: bool = True) -> None:
        """Stop the threads, then sync every DB and replica one last time."""
        self._stop.set()
        for db in self.dbs:
            db._notify()  # wake shippers
        for t in self._threads:
            t.join()
        self._threads.clear()
        for db in self.dbs:
            try:
                if final_sync:
                    db.sync()
                    for replica in db.replicas:
                        try:
                            replica.sync()
                        except LitestreamError as exc:
                            log.error("%s: final sync of replica %s failed: %s", db.path, replica.name, exc)
            except LitestreamError as exc:
                log.error("%s: final sync failed: %s", db.path, exc)
            finally:
                db.close()

    def _monitor(self, db: DB) -> None:
        errors = _ErrorLog(f"{db.path}: sync")
        while not self._stop.is_set():
            try:
                db.sync()
                errors.ok()
            except LitestreamError as exc:
                errors.failed(exc)
            except Exception as exc:  # keep the sidecar alive; report the bug
                log.exception("%s: unexpected sync failure", db.path)
                errors.failed(exc)
            self._stop.wait(db.monitor_interval.total_seconds())

    def _ship(self, replica: Replica) -> None:
        db = replica.db
        assert db is not None
        errors = _ErrorLog(f"{db.path}: replica {replica.name}")
        version = -1
        last_sync = 0.0
        last_retention = time.monotonic()
        last_snapshot = time.monotonic()
        while not self._stop.is_set():
            # Wait for a change, then respect sync-interval between syncs.
            interval = replica.sync_interval.total_seconds()
            version = db.wait_for_change(version, timeout=max(interval, 0.05))
            if self._stop.is_set():
                break
            wait = last_sync + interval - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            try:
                last_sync = time.monotonic()
                replica.sync()
                now = time.monotonic()
                if replica.snapshot_interval and now - last_snapshot >= replica.snapshot_interval.total_seconds():
                    replica.snapshot()
                    last_snapshot = now
                if replica.retention.total_seconds() > 0:
                    check = min(replica.retention_check_interval, replica.retention).total_seconds()
                    if now - last_retention >= check:
                        replica.enforce_retention()
                        last_retention = now
                errors.ok()
            except LitestreamError as exc:
                errors.failed(exc)
            except Exception as exc:
                log.exception("%s: unexpected failure in replica %s", db.path, replica.name)
                errors.failed(exc)
