"""The replicate service: keeps every DB's replicas current from a small pool of threads.

Each DB has a monitor task that copies the WAL into the shadow WAL when
inotify reports a write (at most every MIN_SYNC_SPACING, and less often while
its syncs are slow: see BUSY_SPACING_FACTOR); each replica has a shipper task
that writes new segments as soon as the shadow WAL changes (at most once per
``sync-interval``, never more often than MIN_SYNC_SPACING, and without one as
the syncs allow, but at least MIN_SHIP_SPACING apart; an object store left
at its default interval also ships full segments at once, and the rest when
the writer pauses: see replica.QUIET_FLUSH), and runs retention and
scheduled snapshots. A task is a step that runs when it is woken or its timer
is due, never on two threads at once. ``stop()`` ends the pool, then runs one
final sync of every DB and replica so that nothing committed before shutdown
stays behind.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

from . import health
from .db import DB
from .errors import DatabaseBusyError, LitestreamError
from .pos import Pos
from .replica import QUIET_FLUSH, Replica
from .verify import verify_database
from .watch import WALWatcher

__all__ = ["Replicator"]

log = logging.getLogger(__name__)

# With inotify the poll only catches what events miss (e.g. network file systems).
FALLBACK_POLL_INTERVAL = 30.0
# A replica with nothing to do still wakes this often (timers, lost notifications).
IDLE_WAKE_INTERVAL = 60.0
# Shortest time between two syncs of one DB: a busy writer's commits go out in
# batches, bounding the per-sync and per-segment overhead (a new file, fsyncs,
# requests) at a few ms of added lag. Under commits every 10 ms, 50 ms gives a
# median lag near 29 ms (the target is 35 ms) for a quarter less steady-state
# CPU than 35 ms (22 ms) took; in this Python sidecar, each sync and segment
# costs ~3 ms of CPU.
MIN_SYNC_SPACING = 0.05
# Shortest time between two shipments of a replica without a sync-interval.
# The syncs that feed it already come at most every MIN_SYNC_SPACING; spaced
# alike, the shipper's start would wander out of step with them (each spacing
# counts from its own start) and ship a sync's commits up to a whole spacing
# late: in the benchmark, shipments 34 ms behind their sync at p90 (3 ms at
# the median) and a median file lag of 32-38 ms, against 7 ms and 28-29 ms.
MIN_SHIP_SPACING = MIN_SYNC_SPACING / 2
# A DB's sync that took t seconds starts again no sooner than BUSY_SPACING_FACTOR * t
# after it began (at most MAX_BUSY_SPACING): under a saturated writer each sync,
# and so each segment, carries more commits, so fixed per-sync costs shrink per
# MiB of WAL. (Shippers follow the syncs; they need no factor of their own.)
BUSY_SPACING_FACTOR = 8.0
MAX_BUSY_SPACING = 0.1
# After a failed sync, try again this soon even without new writes.
RETRY_INTERVAL = 1.0
# Workers are added while every one is busy, up to this many per pool.
MAX_WORKERS = 32
# Timers of ten seconds or more (safety-net polls, idle wakes) fire on
# whole-second ticks: an idle process with a thousand databases wakes once a
# second for a batch of them, not for each one.
TIMER_TICK = 1.0
COALESCED_TIMER = 10.0
# Settles a task may run back to back; its credit refills at one per spacing.
# With one, a stall of the writer (a pause past the settle) late in a burst
# would spend the interval's only settle, and the burst's final commits would
# wait out the spacing.
SETTLE_BURST = 2.0


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


class _Task:
    """A DB's monitor or a replica's shipper: ``step`` does one round of work and
    returns the seconds until it wants to run again, unless woken sooner.

    Two steps start at least ``spacing`` seconds apart, however often the task
    is woken, unless a wake is urgent; with a ``busy_factor``, a step that took
    t seconds also starts again no sooner than busy_factor * t after it began
    (at most MAX_BUSY_SPACING). With ``settle``, a task woken inside its
    spacing and then left alone for ``settle`` seconds (counted from the wake,
    even one that came while its step ran) runs at that point, at most once per
    spacing on average (SETTLE_BURST in a row), once ``quiet_for()`` (seconds
    since what wakes it last stirred) reaches ``settle`` too: the trailing edge
    of a burst of wakes goes out at once instead of waiting out the spacing.
    """

    __slots__ = (
        "name", "step", "spacing", "busy_factor", "settle", "quiet_for", "earliest", "due", "settle_due", "credit",
        "credit_at", "ready", "running", "woken", "woken_at", "urgent",
    )

    def __init__(
        self,
        name: str,
        step: Callable[[], float],
        spacing: float = 0.0,
        busy_factor: float = 0.0,
        settle: float = 0.0,
        quiet_for: Callable[[], float] = lambda: math.inf,
    ) -> None:
        self.name = name
        self.step = step
        self.spacing = spacing
        self.busy_factor = busy_factor
        self.settle = settle
        self.quiet_for = quiet_for  # called with the pool's lock held: must not block
        self.earliest = 0.0  # the next step starts no sooner (unless urgent)
        self.due = math.inf  # when its timer fires; inf: no timer pending
        self.settle_due = math.inf  # when it runs if not woken again before; inf: not settling
        self.credit = SETTLE_BURST  # settles it may run, as of credit_at
        self.credit_at = 0.0
        self.ready = False  # queued for a worker
        self.running = False
        self.woken = False  # woken while its step ran: run again after it
        self.woken_at = 0.0  # when, last
        self.urgent = False

    def quiet(self) -> bool:
        return self.quiet_for() >= self.settle

    def settle_credit(self, now: float) -> float:
        """How many settles it may run at ``now``: SETTLE_BURST, less those of the last spacings."""
        refill = (now - self.credit_at) / self.spacing if self.spacing > 0 else SETTLE_BURST
        return min(SETTLE_BURST, self.credit + refill)


class _Pool:
    """Runs tasks' steps when woken or when their timer fires, each on one worker at a time.

    A thread of its own per DB and per replica cost ~30 KiB each in stacks and
    interpreter state: ~60 MiB for 1,000 idle databases. Here one timer thread
    hands due tasks to workers, which are added while every worker is busy (a
    slow upload must not hold up other databases), up to MAX_WORKERS.
    """

    def __init__(self, name: str) -> None:
        self.name = name  # of its threads
        lock = threading.Lock()
        self._timer_cv = threading.Condition(lock)
        self._work_cv = threading.Condition(lock)
        self._timers: list[tuple[float, int, _Task]] = []  # heap; superseded entries are skipped
        self._order = itertools.count()
        self._ready: collections.deque[_Task] = collections.deque()
        self._timer_thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._idle = 0  # workers waiting for a task
        self._waking = 0  # workers called for a task that have not reached the queue yet
        self._stopping = False

    def start(self) -> None:
        self._timer_thread = threading.Thread(target=self._run_timers, name=f"{self.name}-timers", daemon=True)
        self._timer_thread.start()

    def wake(self, task: _Task, urgent: bool = False) -> None:
        """Run ``task`` as soon as its spacing allows (``urgent``: now), or after its current step."""
        with self._work_cv:
            self._wake(task, urgent)

    def stop(self) -> None:
        """Start no more steps and wait for the running ones to finish."""
        with self._work_cv:
            self._stopping = True
            self._work_cv.notify_all()
            self._timer_cv.notify_all()
            threads = list(self._workers)
        if self._timer_thread is not None:
            threads.append(self._timer_thread)
        for thread in threads:
            thread.join()

    # The methods below run with the lock held.

    def _wake(self, task: _Task, urgent: bool, at: float | None = None) -> None:
        """``at``: when the wake happened, if before now (it came during a step)."""
        now = time.monotonic()
        if task.running:
            task.woken = True
            task.woken_at = now
            task.urgent = task.urgent or urgent
        elif task.ready:
            pass
        elif urgent or task.earliest <= now:
            self._make_ready(task)
        else:
            if task.due > task.earliest:
                self._set_timer_at(task, task.earliest)
            settle_due = (now if at is None else at) + task.settle
            if task.settle and settle_due < task.earliest and task.settle_credit(now) >= 1:
                # Each wake moves the deadline: it passes only once the wakes pause.
                task.settle_due = settle_due
                self._push_timer(settle_due, task)

    def _make_ready(self, task: _Task) -> None:
        task.ready = True
        task.due = task.settle_due = math.inf
        self._ready.append(task)
        if not self._waking:  # else the worker on its way takes it, or calls the next
            self._call_worker()

    def _call_worker(self) -> None:
        if self._idle > self._waking:
            self._waking += 1
            self._work_cv.notify()
        elif len(self._workers) < MAX_WORKERS and not self._stopping:
            self._waking += 1
            worker = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._workers.append(worker)
            worker.start()

    def _set_timer(self, task: _Task, delay: float) -> None:
        when = time.monotonic() + max(delay, 0.0)
        if delay >= COALESCED_TIMER:
            when = math.ceil(when / TIMER_TICK) * TIMER_TICK
        self._set_timer_at(task, max(when, task.earliest))

    def _set_timer_at(self, task: _Task, when: float) -> None:
        task.due = when
        self._push_timer(when, task)

    def _push_timer(self, when: float, task: _Task) -> None:
        heapq.heappush(self._timers, (when, next(self._order), task))
        if self._timers[0][2] is task:
            self._timer_cv.notify()

    def _run_timers(self) -> None:
        with self._timer_cv:
            while not self._stopping:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    due, _, task = heapq.heappop(self._timers)
                    if due == task.settle_due:
                        task.settle_due = math.inf
                        not_yet = task.settle - task.quiet_for()
                        if not_yet <= 0:
                            task.credit, task.credit_at = task.settle_credit(now) - 1, now
                            self._wake(task, urgent=True)
                        elif now + not_yet < task.earliest:
                            # Look again when it may be quiet: no wake need come
                            # first (a sync that finds a commit already copied by
                            # the one before wakes no shipper).
                            task.settle_due = now + not_yet
                            self._push_timer(task.settle_due, task)
                    elif due == task.due:
                        task.due = math.inf
                        self._wake(task, urgent=False)
                self._timer_cv.wait(self._timers[0][0] - now if self._timers else None)

    def _work(self) -> None:
        with self._work_cv:
            self._waking -= 1
            while not self._stopping:
                if not self._ready:
                    self._idle += 1
                    self._work_cv.wait()
                    self._idle -= 1
                    self._waking = max(self._waking - 1, 0)  # 0: woken by stop()
                    continue
                task = self._ready.popleft()
                task.ready, task.running = False, True
                started = time.monotonic()
                task.earliest = started + task.spacing
                if self._ready and not self._waking:
                    self._call_worker()  # this step may block: the rest go to another worker
                self._work_cv.release()
                try:
                    delay = task.step()
                except BaseException:  # keep the sidecar alive; report the bug
                    log.exception("%s: unexpected failure", task.name)
                    delay = RETRY_INTERVAL
                finally:
                    self._work_cv.acquire()
                task.running = False
                busy = (time.monotonic() - started) * task.busy_factor
                task.earliest = max(task.earliest, started + min(busy, MAX_BUSY_SPACING))
                if task.woken:
                    urgent, task.woken, task.urgent = task.urgent, False, False
                    self._wake(task, urgent, at=task.woken_at)
                else:
                    self._set_timer(task, delay)


class _Periodic:
    """A replica's job that runs every ``interval`` (never, if it has none), the
    first time one interval after it is made, or at once if ``now``; ``slack``
    lets a run count as due that much early (the pool's timer starts steps at
    the interval, and a step reads the clock a moment after it starts)."""

    def __init__(self, interval: timedelta | None, now: bool = False, slack: float = 0.0) -> None:
        self.seconds = interval.total_seconds() if interval else 0.0
        self.slack = slack
        self.due = math.inf if self.seconds <= 0 else time.monotonic() + (0.0 if now else self.seconds)

    def take(self, now: float) -> bool:
        """Whether the job is due at ``now``; if so, its next run is one interval later."""
        if now < self.due - self.slack:
            return False
        self.due = now + self.seconds
        return True


@dataclass
class _ShipState:
    errors: _ErrorLog
    snapshot: _Periodic
    retention: _Periodic
    validation: _Periodic
    whole: _Periodic  # shipping everything, partial segment included
    task: _Task | None = None
    # Barriers that asked for everything to ship at once, and how many of them a
    # step has served: a request made while a step runs is served by the next.
    flush_requests: int = 0
    flushed: int = 0


class Replicator:
    """Runs and stops the replication of a set of databases."""

    def __init__(self, dbs: list[DB], *, watch: bool = True) -> None:
        self.dbs = dbs
        # A pool each: shipments waiting on a slow or dead endpoint (up to the
        # client's timeouts and retries) may take every shipper thread, never a
        # monitor's, so every WAL is still copied and checkpointed meanwhile.
        self._monitors = _Pool("lsr-sync")
        self._shippers = _Pool("lsr-ship")
        self._monitor_tasks: list[_Task] = []
        self._ship_states: dict[int, _ShipState] = {}  # by id(replica)
        # Notified after every shipping step: the sync barrier waits on it.
        self._shipped = threading.Condition()
        self._watcher: WALWatcher | None = WALWatcher(self._events_may_wait) if watch else None

    def start(self) -> None:
        """Open every DB that exists (raising on one that cannot be replicated) and start."""
        for db in self.dbs:
            db.check_path()
            try:
                db.open()
            except DatabaseBusyError:
                pass  # the monitor retries, and logs it once if it persists
        watcher = self._watcher if self._watcher is not None and self._watcher.start() else None
        for db in self.dbs:
            monitor = self._monitor_task(db)
            self._monitor_tasks.append(monitor)
            if watcher is not None:
                watcher.watch(db.path, functools.partial(self._monitors.wake, monitor))
            for replica in db.replicas:
                replica.stats.pending()  # behind until a first step shows otherwise
                shipper = self._ship_task(replica)
                db.on_change(functools.partial(self._shadow_changed, db, replica, shipper))
                self._shippers.wake(shipper)
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

    def _events_may_wait(self) -> float:
        """Until the soonest monitor's spacing ends: a WAL write before then could
        not start a sync sooner, so the inotify reader need not wake for it.
        (Read without the pool's lock: a stale value only shifts one pause.)"""
        now = time.monotonic()
        soonest = min((task.earliest for task in self._monitor_tasks), default=now)
        return min(soonest - now, MAX_BUSY_SPACING)

    def _shadow_changed(self, db: DB, replica: Replica, shipper: _Task) -> None:
        replica.stats.pending()
        # A new generation's snapshot goes out at once, whatever the sync-interval,
        # and so do the full segments of a replica that ships early.
        urgent = replica.pos().generation != db.pos().generation
        urgent = urgent or (replica.ships_early and replica.has_full_segment())
        self._shippers.wake(shipper, urgent=urgent)

    def _poll_interval(self, db: DB) -> float:
        """With inotify, polling is only a safety net; without it, it is the detector."""
        interval = db.monitor_interval.total_seconds()
        watched = self._watcher is not None and self._watcher.watching(db.path)
        return max(interval, FALLBACK_POLL_INTERVAL) if watched else interval

    def _monitor_task(self, db: DB) -> _Task:
        errors = _ErrorLog(f"{db.path}: sync")
        # A busy writer's commits are copied in batches, not one sync each.
        return _Task(f"{db.path}: sync", lambda: self._monitor_step(db, errors), MIN_SYNC_SPACING, BUSY_SPACING_FACTOR)

    def _monitor_step(self, db: DB, errors: _ErrorLog) -> float:
        if self._watcher is not None:
            self._watcher.arm(db.path)  # before the sync reads the WAL: no write goes unseen
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
        return wait

    def _ship_task(self, replica: Replica) -> _Task:
        db = replica.db
        assert db is not None
        retention_check = min(replica.retention_check_interval, replica.retention)
        state = _ShipState(
            _ErrorLog(f"{db.path}: replica {replica.name}"),
            snapshot=_Periodic(replica.snapshot_interval),
            retention=_Periodic(retention_check if replica.retention.total_seconds() > 0 else None),
            validation=_Periodic(replica.validation_interval),
            whole=_Periodic(replica.sync_interval, now=True, slack=MIN_SYNC_SPACING),
        )
        # sync-interval bounds the request rate (object stores bill per PUT).
        interval = replica.sync_interval.total_seconds()
        spacing = max(interval, MIN_SYNC_SPACING) if interval > 0 else MIN_SHIP_SPACING
        settle = QUIET_FLUSH.total_seconds() if replica.ships_early else 0.0
        task = _Task(f"{db.path}: replica {replica.name}", lambda: self._ship_step(replica, db, state, task), spacing,
                     settle=settle, quiet_for=db.unwritten_for)
        state.task = task
        self._ship_states[id(replica)] = state
        return task

    def _ship_step(self, replica: Replica, db: DB, state: _ShipState, task: _Task) -> float:
        try:
            now = time.monotonic()
            # An early run (full segments pending, the interval not yet up) ships
            # only those; once per interval, or after a pause, everything goes.
            requested = state.flush_requests
            whole = not replica.ships_early or requested != state.flushed or state.whole.take(now) or task.quiet()
            state.flushed = requested
            # Only a step that wrote to the replica shows an outage is over: an
            # early run with no full segment to ship sends nothing at all.
            reached = replica.sync(whole)
            if not whole and replica.pos() != db.pos():
                # What is left goes at the pause or at the interval, whichever
                # comes first: the wakes that would bring it may all be spent.
                self._shippers.wake(task)
            now = time.monotonic()
            if state.snapshot.take(now):
                replica.snapshot()
                reached = True
            if state.retention.take(now):
                replica.enforce_retention()
                reached = True
            if state.validation.take(now):
                self._validate(replica)
                reached = True
            if reached:
                state.errors.ok()
            replica.stats.succeeded(caught_up=replica.pos() == db.pos())
        except LitestreamError as exc:
            state.errors.failed(exc)
            replica.stats.failed(exc)
        except Exception as exc:
            log.exception("%s: unexpected failure in replica %s", db.path, replica.name)
            state.errors.failed(exc)
            replica.stats.failed(exc)
        with self._shipped:
            self._shipped.notify_all()
        # Until the next scheduled job; new WAL wakes the shipper sooner.
        now = time.monotonic()
        wait = min(IDLE_WAKE_INTERVAL, *(job.due - now for job in (state.snapshot, state.retention, state.validation)))
        if state.errors.last:
            wait = min(wait, RETRY_INTERVAL)
        return max(wait, 0.0)

    @staticmethod
    def _validate(replica: Replica) -> None:
        db = replica.db
        assert db is not None
        result = verify_database(db.path, replica.client, db.meta_path, shm_fd=db.shm_fd, catch_up=replica.sync)
        replica.stats.validations["ok" if result.ok else "error"] += 1
        if result.ok:
            log.info("%s: replica %s verified: %s", db.path, replica.name, result.describe())
        else:
            log.error("%s: replica %s verification failed: %s", db.path, replica.name, result.describe())

    # -- what the control socket and the monitor ask -----------------------------
    def find_db(self, path: str) -> DB | None:
        """The replicated DB at ``path`` (as given, or after resolving links)."""
        wanted = {os.path.abspath(path), os.path.realpath(path)}
        return next((db for db in self.dbs if db.path in wanted or os.path.realpath(db.path) in wanted), None)

    def schedules(self, db: DB) -> dict[str, dict[str, float | None]]:
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

    def flush(self, db: DB) -> Pos:
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

    def wait_replicated(self, db: DB, target: Pos, timeout: float) -> list[Replica]:
        """Wait until every replica of ``db`` holds ``target``; the replicas that do not, at the timeout."""
        deadline = time.monotonic() + timeout

        def behind() -> list[Replica]:
            current = db.pos().generation
            return [r for r in db.replicas if not health.holds(r.pos(), target, current)]

        with self._shipped:
            while (late := behind()) and (left := deadline - time.monotonic()) > 0:
                self._shipped.wait(min(left, RETRY_INTERVAL))
        return late

    def report(self, dbs: list[DB] | None = None) -> dict[str, Any]:
        """The state of ``dbs`` (default: all) and their replicas, as /healthz and ``lsr status`` show it."""
        now = time.time()
        return health.report([health.db_report(db, now, self.schedules(db)) for db in (dbs or self.dbs)])

    def healthy(self) -> bool:
        return health.healthy(r for db in self.dbs for r in db.replicas)
