"""The replicate service: background threads that keep every DB's replicas current.

Each DB gets a monitor thread that copies the WAL into the shadow WAL when
inotify reports a write; each replica gets a shipper thread that writes new
segments as soon as the shadow WAL changes (at most once per ``sync-interval``,
and never more often than MIN_SYNC_SPACING), and runs retention and
scheduled snapshots. ``stop()`` ends the threads, then runs one final sync of
every DB and replica so that nothing committed before shutdown stays behind.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from .db import DB
from .errors import DatabaseBusyError, LitestreamError
from .replica import Replica
from .verify import verify_database
from .watch import WALWatcher

__all__ = ["Replicator"]

log = logging.getLogger(__name__)

# With inotify the poll only catches what events miss (e.g. network file systems).
FALLBACK_POLL_INTERVAL = 30.0
# A replica with nothing to do still wakes this often (timers, lost notifications).
IDLE_WAKE_INTERVAL = 60.0
# Shortest time between two syncs of one DB, and between two shipments of one
# replica: a busy writer's commits go out in batches, bounding the per-sync and
# per-segment overhead (files, fsyncs, requests) at a few ms of added lag.
MIN_SYNC_SPACING = 0.015
# After a failed sync, try again this soon even without new writes.
RETRY_INTERVAL = 1.0


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

    def __init__(self, dbs: list[DB], *, watch: bool = True) -> None:
        self.dbs = dbs
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake = {db.path: threading.Event() for db in dbs}
        self._watcher: WALWatcher | None = WALWatcher() if watch else None

    def start(self) -> None:
        """Open every DB that exists (raising on one that cannot be replicated) and start."""
        for db in self.dbs:
            db.check_path()
            try:
                db.open()
            except DatabaseBusyError:
                pass  # the monitor retries, and logs it once if it persists
        if self._watcher is not None and self._watcher.start():
            for db in self.dbs:
                self._watcher.watch(db.path, self._wake[db.path])
        for db in self.dbs:
            self._spawn(f"lsr-db:{db.path}", self._monitor, db)
            for replica in db.replicas:
                self._spawn(f"lsr-replica:{db.path}:{replica.name}", self._ship, replica)

    def _spawn(self, name: str, target: Callable[[Any], None], arg: Any) -> None:
        t = threading.Thread(target=target, args=(arg,), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, final_sync: bool = True) -> bool:
        """Stop the threads, then sync every DB and replica one last time.

        Returns False if anything committed may not have reached a replica.
        """
        ok = True
        self._stop.set()
        for wake in self._wake.values():
            wake.set()
        for db in self.dbs:
            db.wake_waiters()
        if self._watcher is not None:
            self._watcher.stop()
        for t in self._threads:
            t.join()
        self._threads.clear()
        for db in self.dbs:
            try:
                if final_sync:
                    db.sync(force=True)
                    for replica in db.replicas:
                        try:
                            replica.sync()
                        except LitestreamError as exc:
                            ok = False
                            log.error("%s: final sync of replica %s failed: %s", db.path, replica.name, exc)
            except LitestreamError as exc:
                ok = False
                log.error("%s: final sync failed: %s", db.path, exc)
            finally:
                db.close()
        return ok

    def _poll_interval(self, db: DB) -> float:
        """With inotify, polling is only a safety net; without it, it is the detector."""
        interval = db.monitor_interval.total_seconds()
        watched = self._watcher is not None and self._watcher.watching(db.path)
        return max(interval, FALLBACK_POLL_INTERVAL) if watched else interval

    def _monitor(self, db: DB) -> None:
        errors = _ErrorLog(f"{db.path}: sync")
        wake = self._wake[db.path]
        last_sync = 0.0
        while not self._stop.is_set():
            # A busy writer's commits are copied in batches, not one sync each.
            pause = last_sync + MIN_SYNC_SPACING - time.monotonic()
            if pause > 0 and self._stop.wait(pause):
                break
            wake.clear()
            last_sync = time.monotonic()
            try:
                db.sync()
                errors.ok()
            except LitestreamError as exc:
                errors.failed(exc)
            except Exception as exc:  # keep the sidecar alive; report the bug
                log.exception("%s: unexpected sync failure", db.path)
                errors.failed(exc)
            wait = self._poll_interval(db)
            if errors.last or not db.is_open():
                wait = db.monitor_interval.total_seconds()
            retry = db.seconds_until_checkpoint_retry()
            if retry is not None:
                wait = min(wait, retry)
            wake.wait(wait)

    def _ship(self, replica: Replica) -> None:
        db = replica.db
        assert db is not None
        errors = _ErrorLog(f"{db.path}: replica {replica.name}")
        version = -1
        last_sync = 0.0
        last_retention = time.monotonic()
        last_snapshot = time.monotonic()
        last_validation = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            timers = [IDLE_WAKE_INTERVAL]
            if replica.validation_interval:
                timers.append(last_validation + replica.validation_interval.total_seconds() - now)
            if replica.snapshot_interval:
                timers.append(last_snapshot + replica.snapshot_interval.total_seconds() - now)
            if replica.retention.total_seconds() > 0:
                check = min(replica.retention_check_interval, replica.retention).total_seconds()
                timers.append(last_retention + check - now)
            if errors.last:
                timers.append(RETRY_INTERVAL)
            version = db.wait_for_change(version, timeout=max(min(timers), 0.0))
            if self._stop.is_set():
                break
            # sync-interval bounds the request rate (object stores bill per PUT);
            # a new generation's snapshot goes out at once.
            wait = last_sync + max(replica.sync_interval.total_seconds(), MIN_SYNC_SPACING) - time.monotonic()
            if replica.pos().generation != db.pos().generation:
                wait = 0
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
                if replica.validation_interval and now - last_validation >= replica.validation_interval.total_seconds():
                    last_validation = now
                    self._validate(replica)
                errors.ok()
            except LitestreamError as exc:
                errors.failed(exc)
            except Exception as exc:
                log.exception("%s: unexpected failure in replica %s", db.path, replica.name)
                errors.failed(exc)

    @staticmethod
    def _validate(replica: Replica) -> None:
        db = replica.db
        assert db is not None
        result = verify_database(db.path, replica.client, db.meta_path, shm_fd=db.shm_fd, catch_up=replica.sync)
        if result.ok:
            log.info("%s: replica %s verified: %s", db.path, replica.name, result.describe())
        else:
            log.error("%s: replica %s verification failed: %s", db.path, replica.name, result.describe())
