"""The replicate service: keeps every DB's replicas current from a small pool of threads.

Each DB has a monitor task that copies the WAL into the shadow WAL when
inotify reports a write (at most every MIN_SYNC_SPACING, and less often while
its syncs are slow: see BUSY_SPACING_FACTOR); each replica has a shipper task
that writes new segments as soon as the shadow WAL changes (at most once per
``sync-interval``, never more often than MIN_SYNC_SPACING, and without one as
the syncs allow, but at least MIN_SHIP_SPACING apart; an object store left
at its default interval also ships full segments at once, and the rest when
the writer pauses: see ship_policy), and runs retention and
scheduled snapshots; a compaction task per replica merges old segments
(compaction.py) on a thread of its own, never in a shipment's way. A task is a step that runs when it is woken or its timer
is due, never on two threads at once (scheduler.py). ``stop()`` ends the pool, then runs one
final sync of every DB and replica so that nothing committed before shutdown
stays behind.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

from . import health
from .compaction import BusyGate
from .db import DB
from .dormancy import DORMANT_RECHECK, AwakeLimit, quiet_before_dormant
from .errors import ConfigError, DatabaseBusyError, DatabaseError, LitestreamError, StorageError
from .lease import Lease, LeaseKeeper
from .pos import Pos
from .replica import Replica
from .scheduler import MAX_BUSY_SPACING, RETRY_INTERVAL
from .scheduler import Periodic as _Periodic
from .scheduler import Pool as _Pool
from .scheduler import Task as _Task
from .ship_policy import MIN_SYNC_SPACING
from .verify import verify_database
from .watch import WALWatcher

__all__ = ["Replicator", "acquire_leases"]

log = logging.getLogger(__name__)

# With inotify the poll only catches what events miss (e.g. network file systems).
FALLBACK_POLL_INTERVAL = 30.0
# A replica with nothing to do still wakes this often (timers, lost notifications).
IDLE_WAKE_INTERVAL = 60.0
# Each of those safety nets, and the compaction pass of a replica that shipped
# nothing since its last pass, wakes idle tasks no more often than this per
# second in all, however many there are: each wake costs 0.05-0.2 ms of CPU,
# so ten thousand databases on their own intervals (30 s, 60 s, 10 s) would
# keep ~10% of a core busy doing nothing. Past 150 databases the intervals
# stretch: every ~3 min at 1,000, ~33 min at 10,000 (snapshot, retention and
# validation keep their own timers; inotify wakes a replica for new WAL).
MAX_SAFETY_NET_WAKES_PER_SECOND = 5.0
# A DB's sync that took t seconds starts again no sooner than BUSY_SPACING_FACTOR * t
# after it began (at most scheduler.MAX_BUSY_SPACING): under a saturated writer each
# sync, and so each segment, carries more commits, so fixed per-sync costs shrink
# per MiB of WAL. (Shippers follow the syncs; they need no factor of their own.)
BUSY_SPACING_FACTOR = 8.0
# A database that cannot be opened is retried (and logged) at most this far apart.
MAX_UNSERVED_RETRY = 60.0

class _ErrorLog:
    """Log a failing operation once, not on every retry, and log its recovery.

    A failure passed with ``repeat`` (a database that cannot be served at all)
    is logged again at each retry, the retries backing off from RETRY_INTERVAL
    to MAX_UNSERVED_RETRY: an operator tailing the log sees it is still down.
    """

    def __init__(self, what: str, fields: dict[str, str], retry: float = RETRY_INTERVAL,
                 storage_level: int = logging.WARNING) -> None:
        self.what = what
        # How a StorageError is logged: a job whose replica's shipper already
        # warns about an unreachable store need not warn a second time.
        self.storage_level = storage_level
        self.fields = fields  # structured log fields (db, replica)
        self.last = ""
        self.since = 0.0
        self.first_retry = retry
        self.retry = retry
        self.logged_at = 0.0

    def failed(self, exc: BaseException, repeat: bool = False) -> None:
        message = str(exc) or type(exc).__name__
        now = time.monotonic()
        if message != self.last:
            self.last, self.since, self.retry = message, now, self.first_retry
        elif not repeat or now - self.logged_at < self.retry * 0.9:
            return  # a wake between retries (inotify) need not repeat it
        else:
            self.retry = min(self.retry * 2, MAX_UNSERVED_RETRY)
        self.logged_at = now
        level = self.storage_level if isinstance(exc, StorageError) else logging.WARNING
        log.log(level, "%s: %s (retrying in %gs)", self.what, message, self.retry, extra=self.fields)

    def ok(self) -> None:
        if self.last:
            log.info("%s: recovered after %.1fs", self.what, time.monotonic() - self.since, extra=self.fields)
            self.last = ""
            self.retry = self.first_retry


@dataclass
class _ShipState:
    errors: _ErrorLog
    snapshot: _Periodic
    retention: _Periodic
    validation: _Periodic
    intact: _Periodic  # the replica still holds its snapshot (object stores; files check every sync)
    include_partial: _Periodic  # shipping everything, the partial segment included
    task: _Task | None = None
    # Barriers that asked for everything to ship at once, and how many of them a
    # step has served: a request made while a step runs is served by the next.
    flush_requests: int = 0
    flushed: int = 0


class Replicator:
    """Runs and stops the replication of a set of databases."""

    def __init__(self, dbs: list[DB[Replica]], *, watch: bool = True, awake_limit: int | None = None) -> None:
        self.dbs = dbs
        # Past this many awake DBs, one more opens only once another went dormant (dormancy.py).
        self._awake = AwakeLimit(awake_limit)
        for db in dbs:
            db.awake_limit = self._awake
        self._waiting_lock = threading.Lock()
        self._waiting: dict[int, _Task] = {}  # monitors waiting for room to open their DB, by id(); in order
        # A pool each: shipments waiting on a slow or dead endpoint (up to the
        # client's timeouts and retries) may take every shipper thread, never a
        # monitor's, so every WAL is still copied and checkpointed meanwhile.
        self._monitors = _Pool("lsr-sync")
        self._shippers = _Pool("lsr-ship")
        self._monitor_tasks: list[_Task] = []
        self._monitor_of: dict[int, _Task] = {}  # by id(db)
        self._unserved: dict[str, str] = {}  # the DBs that cannot be opened at all, now: path -> why
        self._ship_states: dict[int, _ShipState] = {}  # by id(replica)
        # Notified after every shipping step: the sync barrier waits on it.
        self._shipped = threading.Condition()
        self._watcher: WALWatcher | None = WALWatcher(self._events_may_wait) if watch else None

    def start(self) -> None:
        """Open every DB that exists and start.

        A DB that cannot be replicated (not in WAL mode, not a database, served
        by another lsr process...) does not hold up the others: it is logged
        and retried (see _ErrorLog). Raises only when no DB can be served.
        """
        failures: list[tuple[DB[Replica], LitestreamError]] = []
        tried = 0
        for db in self.dbs:
            if self._awake.full():
                break  # the rest open as others go dormant
            tried += 1
            try:
                db.open()
            except DatabaseBusyError:
                pass  # the monitor retries, and logs it once if it persists
            except LitestreamError as exc:
                failures.append((db, exc))
        if len(failures) == tried == len(self.dbs):
            for db in self.dbs:
                db.close()
            if len(failures) == 1:
                raise failures[0][1]
            for db, failure in failures:
                log.error("%s", failure, extra={"db": db.path})
            raise DatabaseError(f"cannot replicate: none of the {len(failures)} databases can be served (see above)")
        unserved = {db.path: exc for db, exc in failures}
        self._unserved.update((path, str(exc)) for path, exc in unserved.items())
        watcher = self._watcher if self._watcher is not None and self._watcher.start() else None
        for db in self.dbs:
            monitor = self._monitor_task(db, unserved.get(db.path))
            self._monitor_tasks.append(monitor)
            self._monitor_of[id(db)] = monitor
            if watcher is not None:
                watcher.watch(db.path, functools.partial(self._monitors.wake, monitor))
            for replica in db.replicas:
                replica.stats.pending()  # behind until a first step shows otherwise
                shipper = self._ship_task(replica)
                db.on_change(functools.partial(self._shadow_changed, db, replica, shipper))
                self._shippers.wake(shipper)
                if replica.compaction_interval:
                    self._shippers.wake(self._compact_task(replica))
            self._monitors.wake(monitor)
        self._monitors.start()
        self._shippers.start()

    def stop(self, final_sync: bool = True) -> bool:
        """Stop the pool, then sync every DB and replica one last time.

        Returns False if anything committed may not have reached a replica.
        """
        ok = True
        if self._watcher is not None:
            self._watcher.stop()
        self._monitors.stop()
        self._shippers.stop()
        for db in self.dbs:
            served = db.path not in self._unserved
            try:
                if final_sync:
                    db.sync(force=True)
                    for replica in db.replicas:
                        try:
                            replica.sync()
                        except LitestreamError as exc:
                            ok = False
                            log.error("%s: final sync of replica %s failed: %s", db.path, replica.name, exc,
                                      extra={"db": db.path, "replica": replica.name})
            except LitestreamError as exc:
                if served:
                    ok = False
                    log.error("%s: final sync failed: %s", db.path, exc, extra={"db": db.path})
                else:  # never served, and reported as such all along: nothing of it was left behind
                    log.warning("%s: not replicated: %s", db.path, exc, extra={"db": db.path})
            finally:
                db.close()
        return ok

    def _events_may_wait(self) -> float:
        """Until the soonest monitor's spacing ends: a WAL write before then could
        not start a sync sooner, so the inotify reader need not wake for it.
        (Read without the pool's lock: a stale value only shifts one pause.)"""
        now = time.monotonic()
        soonest = min((task.earliest for task in self._monitor_tasks), default=now)
        return min(soonest - now, MAX_BUSY_SPACING)

    def _shadow_changed(self, db: DB[Replica], replica: Replica, shipper: _Task) -> None:
        replica.stats.pending()
        urgent = replica.ship.is_urgent(replica.pos().generation != db.pos().generation, replica.has_full_segment)
        self._shippers.wake(shipper, urgent=urgent)

    def _poll_interval(self, db: DB[Replica]) -> float:
        """With inotify, polling is only a safety net; without it, it is the detector."""
        interval = db.monitor_interval.total_seconds()
        watched = self._watcher is not None and self._watcher.watching(db.path)
        return max(interval, self._safety_net(FALLBACK_POLL_INTERVAL, len(self.dbs))) if watched else interval

    @staticmethod
    def _safety_net(interval: float, count: int) -> float:
        """``interval``, or longer when ``count`` tasks would wake more than MAX_SAFETY_NET_WAKES_PER_SECOND."""
        return max(interval, count / MAX_SAFETY_NET_WAKES_PER_SECOND)

    def _monitor_task(self, db: DB[Replica], failure: LitestreamError | None = None) -> _Task:
        errors = _ErrorLog(f"{db.path}: sync", {"db": db.path})
        if failure is not None:
            errors.failed(failure)
        # A busy writer's commits are copied in batches, not one sync each.
        task = _Task(f"{db.path}: sync", lambda: self._monitor_step(db, errors, task), MIN_SYNC_SPACING,
                     BUSY_SPACING_FACTOR)
        return task

    def _monitor_step(self, db: DB[Replica], errors: _ErrorLog, task: _Task) -> float:
        if self._watcher is not None:
            self._watcher.arm(db.path)  # before the sync reads the WAL: no write goes unseen
        if db.needs_wake() and self._awake.full():
            with self._waiting_lock:
                self._waiting[id(task)] = task
            return self._poll_interval(db)
        unserved = False  # the database cannot be opened at all (not WAL, a directory...)
        try:
            db.sync()
            errors.ok()
        except DatabaseBusyError as exc:
            errors.failed(exc)  # the application's long transaction: once is enough
        except LitestreamError as exc:
            unserved = not db.is_open()
            errors.failed(exc, repeat=unserved)
        except Exception as exc:  # keep the sidecar alive; report the bug
            log.exception("%s: unexpected sync failure", db.path)
            errors.failed(exc)
        if unserved:
            self._unserved[db.path] = errors.last
        else:
            self._unserved.pop(db.path, None)
        wait = self._poll_interval(db)
        if unserved:
            wait = errors.retry
        elif errors.last or not db.is_open():
            wait = db.monitor_interval.total_seconds()
        retry = db.checkpoints.seconds_until_retry()
        if retry is not None:
            wait = min(wait, retry)
        if db.is_awake() and not errors.last:
            wait = min(wait, self._rest(db))
        # A stretched safety net must not put off the interval checkpoint of a DB gone quiet.
        checkpoint = db.seconds_until_checkpoint()
        if checkpoint is not None:
            wait = min(wait, max(checkpoint, db.monitor_interval.total_seconds()))
        self._let_waiting_in()
        return wait

    def _rest(self, db: DB[Replica]) -> float:
        """Put ``db`` to sleep (dormancy.py) if it is quiet and shipped; else when to look again (inf: never)."""
        after = quiet_before_dormant(db.dormant_after, len(self.dbs), bool(self._waiting))
        if after <= 0:
            return math.inf
        if db.checkpoints.seconds_until_retry() is not None:
            return after
        position = db.pos()
        if any(replica.pos() != position for replica in db.replicas):
            return after  # what is not shipped yet may still need the database (a snapshot)
        quiet = db.unwritten_for()
        if quiet < after:
            return max(after - quiet, DORMANT_RECHECK)
        return math.inf if db.sleep(after) else DORMANT_RECHECK

    def _let_waiting_in(self) -> None:
        """Wake as many monitors waiting for room to open their DB as there is room."""
        if not self._waiting:
            return
        limit = self._awake.limit
        room = len(self._waiting) if limit is None else limit - self._awake.awake
        with self._waiting_lock:
            while room > 0 and self._waiting:
                task = self._waiting.pop(next(iter(self._waiting)))
                self._monitors.wake(task)
                room -= 1

    def _ship_task(self, replica: Replica) -> _Task:
        db = replica.db
        assert db is not None
        retention_check = min(replica.retention_check_interval, replica.retention)
        state = _ShipState(
            _ErrorLog(f"{db.path}: replica {replica.name}", {"db": db.path, "replica": replica.name}),
            snapshot=_Periodic(replica.snapshot_interval),
            retention=_Periodic(retention_check if replica.retention.total_seconds() > 0 else None),
            validation=_Periodic(replica.validation_interval),
            intact=_Periodic(replica.ship.intact_check_period),
            include_partial=_Periodic(replica.ship.sync_interval, now=True, slack=MIN_SYNC_SPACING),
        )
        task = _Task(f"{db.path}: replica {replica.name}", lambda: self._ship_step(replica, db, state, task),
                     replica.ship.spacing, quiet_run_after=replica.ship.quiet_run_after, quiet_for=db.unwritten_for)
        state.task = task
        self._ship_states[id(replica)] = state
        return task

    def _ship_step(self, replica: Replica, db: DB[Replica], state: _ShipState, task: _Task) -> float:
        was_awake = db.is_awake()
        try:
            now = time.monotonic()
            requested = state.flush_requests
            flush = requested != state.flushed
            include_partial = replica.ship.ships_everything(flush, lambda: state.include_partial.claim(now), task.quiet)
            full_while_growing = replica.ship.full_segments_while_growing and not flush
            state.flushed = requested
            if state.intact.claim(now):
                replica.check_intact()  # if wiped, this sync ships it again from a new snapshot
            # Only a step that wrote to the replica shows an outage is over: an
            # early run with no full segment to ship sends nothing at all.
            reached = replica.sync(include_partial, full_while_growing)
            if (not include_partial or full_while_growing) and replica.pos() != db.pos():
                # What is left goes at the pause or at the interval, whichever
                # comes first: the wakes that would bring it may all be spent.
                self._shippers.wake(task)
            now = time.monotonic()
            if state.snapshot.claim(now):
                replica.snapshot()
                reached = True
            if state.retention.claim(now):
                # Retention on a wiped replica would snapshot an index whose
                # start was never shipped: ship it again first.
                if not replica.check_intact():
                    replica.sync()
                replica.enforce_retention()
                reached = True
            if state.validation.claim(now):
                self._validate(replica)
                reached = True
            if reached:
                state.errors.ok()
            replica.stats.succeeded(caught_up=replica.pos() == db.pos())
        except LitestreamError as exc:
            state.errors.failed(exc)
            replica.stats.failed(exc)
        except Exception as exc:  # keep the sidecar alive; report the bug
            log.exception("%s: unexpected failure in replica %s", db.path, replica.name)
            state.errors.failed(exc)
            replica.stats.failed(exc)
        with self._shipped:
            self._shipped.notify_all()
        monitor = self._monitor_of.get(id(db))
        if not was_awake and db.is_awake() and monitor is not None:
            self._monitors.wake(monitor)  # a snapshot woke it: its monitor lets it sleep again
        # Until the next scheduled job; new WAL wakes the shipper sooner.
        now = time.monotonic()
        jobs = (state.snapshot, state.retention, state.validation, state.intact)
        wait = min(self._safety_net(IDLE_WAKE_INTERVAL, len(self._ship_states)), *(job.due - now for job in jobs))
        if state.errors.last:
            wait = min(wait, RETRY_INTERVAL)
        return max(wait, 0.0)

    def _compact_task(self, replica: Replica) -> _Task:
        """Compaction is a task of its own: a long pass never holds back a shipment."""
        db = replica.db
        assert db is not None and replica.compaction_interval is not None
        interval = replica.compaction_interval.total_seconds()
        # A failed pass is tried again at the next interval: a pass costs
        # requests, and nothing waits for it.
        errors = _ErrorLog(f"{db.path}: compaction of replica {replica.name}", {"db": db.path, "replica": replica.name},
                           retry=interval, storage_level=logging.INFO)
        first = [True]
        passed_at: list[Pos | None] = [None]  # the replica's position at the last pass
        gate = BusyGate(lambda: replica.stats.wal_bytes)  # a burst of writes goes first

        def step() -> float:
            if first[0]:  # started with the replicator: nothing is old enough yet
                first[0] = False
                return interval
            wait = gate.wait()
            if wait > 0:
                return wait
            try:
                pos = replica.pos()
                more = replica.compact()
                errors.ok()
                if not more:
                    gate.done()
                if not more and pos == passed_at[0]:  # idle: what is left only ages
                    return self._safety_net(interval, len(self._ship_states))
                passed_at[0] = pos
            except LitestreamError as exc:
                errors.failed(exc)
                return interval
            except Exception as exc:  # keep the sidecar alive; report the bug
                log.exception("%s: unexpected compaction failure in replica %s", db.path, replica.name)
                errors.failed(exc)
                return interval
            return 0.0 if more else interval

        return _Task(f"{db.path}: compaction of replica {replica.name}", step)

    @staticmethod
    def _validate(replica: Replica) -> None:
        db = replica.db
        assert db is not None
        replica.check_intact()  # a wiped replica is shipped again (catch_up) before it is compared
        with db.kept_awake():  # it reads the live files through the DB's descriptors
            result = verify_database(db.path, replica.reader, db.meta_path, shm_fd=db.shm_fd, catch_up=replica.sync)
        replica.stats.validations["ok" if result.ok else "error"] += 1
        if result.ok:
            log.info("%s: replica %s verified: %s", db.path, replica.name, result.describe())
        else:
            log.error("%s: replica %s verification failed: %s", db.path, replica.name, result.describe())

    # -- what the control socket and the monitor ask -----------------------------
    def find_db(self, path: str) -> DB[Replica] | None:
        """The replicated DB at ``path`` (as given, or after resolving links)."""
        wanted = {os.path.abspath(path), os.path.realpath(path)}
        return next((db for db in self.dbs if db.path in wanted or os.path.realpath(db.path) in wanted), None)

    def schedules(self, db: DB[Replica]) -> dict[str, dict[str, float | None]]:
        """replica name -> {"snapshot", "retention"} -> when the job runs next (wall time)."""
        offset = time.time() - time.monotonic()
        out: dict[str, dict[str, float | None]] = {}
        for replica in db.replicas:
            state = self._ship_states.get(id(replica))
            if state is not None:
                out[replica.name] = {
                    job: (periodic.due + offset if math.isfinite(periodic.due) else None)
                    for job, periodic in (("snapshot", state.snapshot), ("retention", state.retention))
                }
        return out

    def flush(self, db: DB[Replica]) -> Pos:
        """Copy the WAL now and have every replica that lacks some of it ship at
        once; returns the position every commit made before the call is within.

        A replica that already holds it is not woken: the barrier makes no request then.
        """
        db.sync()
        target = db.pos()
        for replica in db.replicas:
            state = self._ship_states.get(id(replica))
            if state is not None and state.task is not None and not health.holds(replica.pos(), target, target.generation):
                state.flush_requests += 1
                self._shippers.wake(state.task, urgent=True)
        return target

    def wait_replicated(self, db: DB[Replica], target: Pos, timeout: float) -> list[Replica]:
        """Wait until every replica of ``db`` holds ``target``; the replicas that do not, at the timeout."""
        deadline = time.monotonic() + timeout

        def behind() -> list[Replica]:
            current = db.pos().generation
            return [r for r in db.replicas if not health.holds(r.pos(), target, current)]

        with self._shipped:
            while (late := behind()) and (left := deadline - time.monotonic()) > 0:
                self._shipped.wait(min(left, RETRY_INTERVAL))
        return late

    def report(self, dbs: list[DB[Replica]] | None = None) -> dict[str, Any]:
        """The state of ``dbs`` (default: all) and their replicas, as /healthz and ``lsr status`` show it."""
        now = time.time()
        return health.report([health.db_report(db, now, self.schedules(db), self._unserved.get(db.path))
                              for db in (dbs or self.dbs)])

    def healthy(self) -> bool:
        return health.healthy(r for db in self.dbs for r in db.replicas)


def acquire_leases(dbs: Sequence[DB[Replica]], ttl: timedelta, takeover: bool, stop: threading.Event) -> LeaseKeeper:
    """Refuse to start (naming the holder) where another sidecar holds a replica's lease;
    each lease is then taken by its replica's first write, and renewed from here on."""
    if ttl.total_seconds() <= 0:
        raise ConfigError("cannot use -lease-ttl: it must be positive")
    leases: list[Lease] = []
    took_over = False
    for db in dbs:
        for replica in db.replicas:
            lease = Lease(replica.client, db.path, ttl, takeover=takeover, resting=db.is_dormant)
            took_over |= lease.check_available()
            leases.append(lease)
            replica.lease = lease
    keeper = LeaseKeeper(leases)
    keeper.start()
    if took_over:
        # A live previous holder notices at its next renewal; write only after it has.
        wait = max(lease.renew_interval for lease in leases)
        log.info("waiting %.1fs for the previous lease holder to stop writing", wait)
        stop.wait(wait)
    return keeper
