"""Tasks run by a small pool of threads: when woken, when a timer is due, never twice at once.

The replicator's monitors and shippers are tasks (replicator.py says what each
one does); this module says only *when* a task runs: its spacing, its
busy-factor, its quiet runs, its timers. Time comes from a ``Clock``, so that the
rules can be tested by advancing a fake clock instead of sleeping.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import threading
import time
from datetime import timedelta
from typing import Callable, Protocol

__all__ = [
    "Clock",
    "MonotonicClock",
    "SYSTEM_CLOCK",
    "Task",
    "Pool",
    "Periodic",
    "MAX_WORKERS",
    "MAX_BUSY_SPACING",
    "RETRY_INTERVAL",
    "QUIET_RUN_BURST",
    "TIMER_TICK",
    "COALESCED_TIMER",
]

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Monotonic seconds, and a wait on a condition that ends when they pass."""

    def now(self) -> float: ...

    def wait(self, cv: threading.Condition, timeout: float | None) -> None:
        """Wait on ``cv`` (its lock held) until notified or ``timeout`` seconds of this clock pass."""


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, cv: threading.Condition, timeout: float | None) -> None:
        cv.wait(timeout)


SYSTEM_CLOCK: Clock = MonotonicClock()

# A step that starts again no sooner than busy_factor times its duration waits
# at most this long for it.
MAX_BUSY_SPACING = 0.1
# A step that raised runs again this soon (and the replicator retries a failed sync so soon).
RETRY_INTERVAL = 1.0
# Workers are added while every one is busy, up to this many per pool.
MAX_WORKERS = 32
# Timers of ten seconds or more (safety-net polls, idle wakes) fire on
# whole-second ticks: an idle process with a thousand databases wakes once a
# second for a batch of them, not for each one.
TIMER_TICK = 1.0
COALESCED_TIMER = 10.0
# Quiet runs (a run once the writer paused, inside the spacing) a task may make back
# to back; they refill at one per spacing. With one, a stall of the writer (a pause
# past quiet_run_after) late in a burst would spend the interval's only quiet run,
# and the burst's final commits would wait out the spacing.
QUIET_RUN_BURST = 2.0



class Task:
    """A DB's monitor or a replica's shipper: ``step`` does one round of work and
    returns the seconds until it wants to run again, unless woken sooner.

    Two steps start at least ``spacing`` seconds apart, however often the task
    is woken, unless a wake is urgent; with a ``busy_factor``, a step that took
    t seconds also starts again no sooner than busy_factor * t after it began
    (at most MAX_BUSY_SPACING). With ``quiet_run_after``, a task woken inside its
    spacing and then left alone for ``quiet_run_after`` seconds (counted from the wake,
    even one that came while its step ran) runs at that point, at most once per
    spacing on average (QUIET_RUN_BURST in a row), once ``quiet_for()`` (seconds
    since what wakes it last stirred) reaches ``quiet_run_after`` too: the trailing edge
    of a burst of wakes goes out at once instead of waiting out the spacing.
    """

    __slots__ = (
        "name", "step", "spacing", "busy_factor", "quiet_run_after", "quiet_for", "earliest", "due", "quiet_run_due", "quiet_runs",
        "quiet_runs_at", "ready", "running", "woken", "woken_at", "urgent",
    )

    def __init__(
        self,
        name: str,
        step: Callable[[], float],
        spacing: float = 0.0,
        busy_factor: float = 0.0,
        quiet_run_after: float = 0.0,
        quiet_for: Callable[[], float] = lambda: math.inf,
    ) -> None:
        self.name = name
        self.step = step
        self.spacing = spacing
        self.busy_factor = busy_factor
        self.quiet_run_after = quiet_run_after
        self.quiet_for = quiet_for  # called with the pool's lock held: must not block
        self.earliest = 0.0  # the next step starts no sooner (unless urgent)
        self.due = math.inf  # when its timer fires; inf: no timer pending
        self.quiet_run_due = math.inf  # when it runs if not woken again before; inf: not waiting for quiet
        self.quiet_runs = QUIET_RUN_BURST  # quiet runs it may run, as of quiet_runs_at
        self.quiet_runs_at = 0.0
        self.ready = False  # queued for a worker
        self.running = False
        self.woken = False  # woken while its step ran: run again after it
        self.woken_at = 0.0  # when, last
        self.urgent = False

    def quiet(self) -> bool:
        return self.quiet_for() >= self.quiet_run_after

    def quiet_runs_left(self, now: float) -> float:
        """How many quiet runs it may run at ``now``: QUIET_RUN_BURST, less those of the last spacings."""
        refill = (now - self.quiet_runs_at) / self.spacing if self.spacing > 0 else QUIET_RUN_BURST
        return min(QUIET_RUN_BURST, self.quiet_runs + refill)


class Pool:
    """Runs tasks' steps when woken or when their timer fires, each on one worker at a time.

    A thread of its own per DB and per replica cost ~30 KiB each in stacks and
    interpreter state: ~60 MiB for 1,000 idle databases. Here one timer thread
    hands due tasks to workers, which are added while every worker is busy (a
    slow upload must not hold up other databases), up to MAX_WORKERS.
    """

    def __init__(self, name: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.name = name  # of its threads
        self._clock = clock
        lock = threading.Lock()
        self._timer_cv = threading.Condition(lock)
        self._work_cv = threading.Condition(lock)
        self._timers: list[tuple[float, int, Task]] = []  # heap; superseded entries are skipped
        self._order = itertools.count()
        self._ready: collections.deque[Task] = collections.deque()
        self._timer_thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._idle = 0  # workers waiting for a task
        self._waking = 0  # workers called for a task that have not reached the queue yet
        self._stopping = False

    def start(self) -> None:
        self._timer_thread = threading.Thread(target=self._run_timers, name=f"{self.name}-timers", daemon=True)
        self._timer_thread.start()

    def wake(self, task: Task, urgent: bool = False) -> None:
        """Run ``task`` as soon as its spacing allows (``urgent``: now), or after its current step."""
        with self._work_cv:
            self._wake(task, urgent)

    def is_idle(self, task: Task) -> bool:
        """Whether ``task`` is neither queued nor running, its next timer set."""
        with self._work_cv:
            return not task.ready and not task.running

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

    def _wake(self, task: Task, urgent: bool, at: float | None = None) -> None:
        """``at``: when the wake happened, if before now (it came during a step)."""
        now = self._clock.now()
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
            quiet_run_due = (now if at is None else at) + task.quiet_run_after
            if task.quiet_run_after and quiet_run_due < task.earliest and task.quiet_runs_left(now) >= 1:
                # Each wake moves the deadline: it passes only once the wakes pause.
                task.quiet_run_due = quiet_run_due
                self._push_timer(quiet_run_due, task)

    def _make_ready(self, task: Task) -> None:
        task.ready = True
        task.due = task.quiet_run_due = math.inf
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

    def _set_timer(self, task: Task, delay: float) -> None:
        when = self._clock.now() + max(delay, 0.0)
        if delay >= COALESCED_TIMER:
            when = math.ceil(when / TIMER_TICK) * TIMER_TICK
        self._set_timer_at(task, max(when, task.earliest))

    def _set_timer_at(self, task: Task, when: float) -> None:
        task.due = when
        self._push_timer(when, task)

    def _push_timer(self, when: float, task: Task) -> None:
        heapq.heappush(self._timers, (when, next(self._order), task))
        if self._timers[0][2] is task:
            self._timer_cv.notify()

    def _run_timers(self) -> None:
        with self._timer_cv:
            while not self._stopping:
                now = self._clock.now()
                while self._timers and self._timers[0][0] <= now:
                    due, _, task = heapq.heappop(self._timers)
                    if due == task.quiet_run_due:
                        task.quiet_run_due = math.inf
                        not_yet = task.quiet_run_after - task.quiet_for()
                        if not_yet <= 0:
                            task.quiet_runs, task.quiet_runs_at = task.quiet_runs_left(now) - 1, now
                            self._wake(task, urgent=True)
                        elif now + not_yet < task.earliest:
                            # Look again when it may be quiet: no wake need come
                            # first (a sync that finds a commit already copied by
                            # the one before wakes no shipper).
                            task.quiet_run_due = now + not_yet
                            self._push_timer(task.quiet_run_due, task)
                    elif due == task.due:
                        task.due = math.inf
                        self._wake(task, urgent=False)
                self._clock.wait(self._timer_cv, self._timers[0][0] - now if self._timers else None)

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
                started = self._clock.now()
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
                busy = (self._clock.now() - started) * task.busy_factor
                task.earliest = max(task.earliest, started + min(busy, MAX_BUSY_SPACING))
                if task.woken:
                    urgent, task.woken, task.urgent = task.urgent, False, False
                    self._wake(task, urgent, at=task.woken_at)
                else:
                    self._set_timer(task, delay)


class Periodic:
    """A replica's job that runs every ``interval`` (never, if it has none), the
    first time one interval after it is made, or at once if ``now``; ``slack``
    lets a run count as due that much early (the pool's timer starts steps at
    the interval, and a step reads the clock a moment after it starts)."""

    def __init__(self, interval: timedelta | None, now: bool = False, slack: float = 0.0,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.seconds = interval.total_seconds() if interval else 0.0
        self.slack = slack
        self.due = math.inf if self.seconds <= 0 else clock.now() + (0.0 if now else self.seconds)

    def claim(self, now: float) -> bool:
        """Whether the job is due at ``now``; if so, its next run is one interval later."""
        if now < self.due - self.slack:
            return False
        self.due = now + self.seconds
        return True
