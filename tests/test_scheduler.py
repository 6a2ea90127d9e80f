"""The scheduler's pool, driven with real threads and a fake clock.

Each task here is a plain function: what is under test is when and where the
pool runs it (never twice at once, woken promptly, timers kept, a blocked step
holding up no one, spacing, quiet_run_after, busy factor). Time is a FakeClock that only
the test, or a step standing for work that takes time, advances: no assertion
depends on how fast this machine runs. Only the checks that a step did *not*
run wait a little real time (QUIET) for a run that must not come.
"""

from __future__ import annotations

import math
import threading

import pytest

from support.procs import wait_for
from litestream_py.scheduler import MAX_BUSY_SPACING, MAX_WORKERS, QUIET_RUN_BURST, Pool, Task
from support.clock import FakeClock

# Fake times are sums of decimal fractions: a step due at a deadline is reached
# by advancing a hair past it, and times compare to within a few hairs.
EPS = 1e-6
WAIT = 10.0  # real seconds an expected run may take to show (only a failure waits this long)
QUIET = 0.2  # real seconds in which a run that must not happen would have shown
BUSY_FACTOR = 8.0


class Recorder:
    """A step that records when it runs (by the fake clock), optionally blocking
    until released, and taking ``work`` seconds of the fake clock."""

    def __init__(self, name: str, clock: FakeClock, delay: float = 60.0, block: threading.Event | None = None,
                 work: float = 0.0) -> None:
        self.name = name
        self.clock = clock
        self.work = work
        self.delay = delay
        self.block = block
        self.runs: list[float] = []
        self.active = 0
        self.overlaps = 0
        self.ran = threading.Semaphore(0)
        self._lock = threading.Lock()
        self.task = Task(name, self.step)

    def step(self) -> float:
        with self._lock:
            self.active += 1
            if self.active > 1:
                self.overlaps += 1
        self.runs.append(self.clock.now())
        if self.block is not None:
            self.block.wait(WAIT)
        if self.work:
            self.clock.advance(self.work)
        with self._lock:
            self.active -= 1
        self.ran.release()
        return self.delay

    def expect_run(self) -> None:
        assert self.ran.acquire(timeout=WAIT), f"{self.name} did not run"

    def expect_no_run(self, why: str) -> None:
        assert not self.ran.acquire(timeout=QUIET), why


def approx(seconds: float) -> object:
    return pytest.approx(seconds, abs=10 * EPS)


def started(clock: FakeClock, *recorders: Recorder) -> Pool:
    pool = Pool("test", clock)
    for r in recorders:
        pool.wake(r.task)
    pool.start()
    return pool


def settled(pool: Pool, r: Recorder) -> None:
    """Wait until the pool is done with r's last step (its next timer set)."""
    wait_for(lambda: pool.is_idle(r.task), timeout=WAIT, what=f"{r.name} idle")


def test_added_tasks_run_once_then_on_a_wake_or_their_timer() -> None:
    clock = FakeClock()
    r = Recorder("a", clock, delay=60.0)
    pool = started(clock, r)
    try:
        r.expect_run()
        settled(pool, r)
        clock.advance(59.9)
        r.expect_no_run("ran again without a wake or a due timer")
        clock.advance(0.1 + EPS)
        r.expect_run()  # its 60 s timer
        settled(pool, r)
        pool.wake(r.task)
        r.expect_run()
    finally:
        pool.stop()
    assert r.runs == pytest.approx([1000.0, 1060.0, 1060.0], abs=10 * EPS)


def test_wakes_during_a_step_run_it_again_once_and_never_concurrently() -> None:
    clock = FakeClock()
    release = threading.Event()
    r = Recorder("a", clock, block=release)
    pool = started(clock, r)
    try:
        wait_for(lambda: bool(r.runs), timeout=WAIT, what="first step")
        for _ in range(20):  # all while the first step blocks
            pool.wake(r.task)
        release.set()
        r.expect_run()
        r.expect_run()
        r.expect_no_run("twenty wakes during one step ran it more than once after")
    finally:
        pool.stop()
    assert r.overlaps == 0
    assert len(r.runs) == 2


def test_timer_reruns_a_task_and_a_wake_comes_before_a_long_timer() -> None:
    clock = FakeClock()
    ticking = Recorder("ticking", clock, delay=0.05)
    sleepy = Recorder("sleepy", clock, delay=60.0)
    pool = started(clock, ticking, sleepy)
    try:
        ticking.expect_run()
        sleepy.expect_run()
        for _ in range(4):
            settled(pool, ticking)
            ticking.expect_no_run("ran before its timer")
            clock.advance(0.05 + EPS)
            ticking.expect_run()
        settled(pool, sleepy)
        woken_at = clock.now()
        pool.wake(sleepy.task)
        sleepy.expect_run()
        assert sleepy.runs[-1] == woken_at  # at once, not at its 60 s timer
    finally:
        pool.stop()
    gaps = [b - a for a, b in zip(ticking.runs, ticking.runs[1:])]
    assert gaps == pytest.approx([0.05] * 4, abs=10 * EPS)


def test_a_blocked_step_holds_up_no_other_task() -> None:
    clock = FakeClock()
    release = threading.Event()
    stuck = [Recorder(f"stuck{i}", clock, block=release) for i in range(3)]
    free = Recorder("free", clock)
    pool = started(clock, *stuck)
    try:
        wait_for(lambda: all(s.runs for s in stuck), timeout=WAIT, what="the blocking steps")
        pool.wake(free.task)
        free.expect_run()  # while the other three still block
        assert all(s.active for s in stuck)
        release.set()
    finally:
        pool.stop()


def test_workers_are_bounded_and_stop_waits_for_running_steps() -> None:
    clock = FakeClock()
    release = threading.Event()
    tasks = [Recorder(f"t{i}", clock, block=release) for i in range(MAX_WORKERS + 10)]
    before = threading.active_count()
    pool = started(clock, *tasks)

    def running() -> int:
        return sum(1 for t in tasks if t.active)

    wait_for(lambda: running() == MAX_WORKERS, timeout=WAIT, what=f"{MAX_WORKERS} steps running")
    assert not tasks[0].ran.acquire(timeout=QUIET)
    assert running() == MAX_WORKERS, "more workers than MAX_WORKERS"
    stopper = threading.Thread(target=pool.stop)
    stopper.start()
    stopper.join(QUIET)
    assert stopper.is_alive(), "stop() returned while steps were still running"
    release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert sum(1 for t in tasks if t.runs) == MAX_WORKERS, "a step started after stop()"
    assert all(t.active == 0 for t in tasks)
    assert threading.active_count() <= before


def test_many_quick_tasks_all_run_and_long_timers_share_whole_second_ticks() -> None:
    clock = FakeClock()
    quick = [Recorder(f"q{i}", clock) for i in range(300)]
    pool = started(clock, *quick)
    try:
        for r in quick:
            r.expect_run()
    finally:
        pool.stop()
    assert all(len(r.runs) == 1 for r in quick)
    # A 12.3 s timer lands on the next whole second; a short one is exact.
    clock.advance(0.5)  # 1000.5
    idle = Pool("test", clock)
    long_task, short_task = Task("long", lambda: 0.0), Task("short", lambda: 0.0)
    with idle._work_cv:
        idle._set_timer(long_task, 12.3)
        idle._set_timer(short_task, 0.25)
    assert long_task.due == 1013.0
    assert short_task.due == 1000.75


def test_spacing_batches_wakes_unless_urgent() -> None:
    clock = FakeClock()
    r = Recorder("spaced", clock)
    r.task.spacing = 0.3
    pool = started(clock, r)
    try:
        r.expect_run()
        settled(pool, r)
        for _ in range(10):  # a burst of wakes inside the spacing
            pool.wake(r.task)
            clock.advance(0.01)
        r.expect_no_run("a wake inside the spacing ran the step")
        clock.advance(0.19)  # 0.29 s after the first start
        r.expect_no_run("ran before the spacing was up")
        clock.advance(0.01 + EPS)
        r.expect_run()
        assert r.runs[1] - r.runs[0] == approx(0.3)
        r.expect_no_run("a burst of wakes ran the step more than once")
        settled(pool, r)
        clock.advance(0.3)
        pool.wake(r.task)  # spacing since the last start has passed: at once
        r.expect_run()
        settled(pool, r)
        pool.wake(r.task, urgent=True)  # inside the spacing, but urgent
        r.expect_run()
        assert r.runs[3] == r.runs[2]
    finally:
        pool.stop()


def test_quiet_runs_take_the_trailing_edge_of_a_burst_twice_in_a_row_then_once_per_spacing() -> None:
    """With ``quiet_run_after``, a burst of wakes inside the spacing runs the step once the
    wakes pause for ``quiet_run_after`` seconds, not at the end of the spacing. A second
    pause soon after runs it again (QUIET_RUN_BURST: a writer's stall late in a
    burst must not hold back the burst's end); a third waits the spacing out,
    and the quiet_runs comes back at one quiet_run_after per spacing."""
    assert QUIET_RUN_BURST == 2
    clock = FakeClock()
    r = Recorder("waiting for quiet", clock)
    r.task.spacing, r.task.quiet_run_after = 1.0, 0.15
    pool = started(clock, r)
    try:
        r.expect_run()
        settled(pool, r)
        for _ in range(15):  # wakes closer together than quiet_run_after: no pause yet
            pool.wake(r.task)
            last_wake = clock.now()
            clock.advance(0.02)
        r.expect_no_run("ran before the wakes paused")
        clock.advance(0.12)  # 0.14 s after the last wake
        r.expect_no_run("ran before the quiet_run_after")
        clock.advance(0.01 + EPS)
        r.expect_run()
        assert r.runs[1] - last_wake == approx(0.15)
        settled(pool, r)
        pool.wake(r.task)  # a second pause inside the spacing: quiet runs too
        clock.advance(0.15 + EPS)
        r.expect_run()
        assert r.runs[2] - r.runs[1] == approx(0.15)
        settled(pool, r)
        pool.wake(r.task)  # a third: the quiet_runs is spent, the spacing holds
        clock.advance(0.15)
        r.expect_no_run("a third quiet_run_after in a row")
        clock.advance(0.85 + EPS)
        r.expect_run()
        assert r.runs[3] - r.runs[2] == approx(1.0)
        # That spacing brought back one quiet_run_after's worth of quiet_runs, not two.
        settled(pool, r)
        clock.advance(0.05)
        pool.wake(r.task)
        clock.advance(0.15 + EPS)
        r.expect_run()
        assert r.runs[4] - r.runs[3] == approx(0.2)  # settled
        settled(pool, r)
        clock.advance(0.05)
        pool.wake(r.task)
        clock.advance(0.15)
        r.expect_no_run("the quiet_runs came back faster than one quiet_run_after per spacing")
        clock.advance(0.8 + EPS)
        r.expect_run()
        assert r.runs[5] - r.runs[4] == approx(1.0)  # the spacing
    finally:
        pool.stop()


def test_settle_counts_from_a_wake_that_came_during_a_step() -> None:
    """A wake that arrives while the step runs, and is the last one, starts the
    quiet_run_after then: a step longer than ``quiet_run_after`` is followed at once by the next
    run, not ``quiet_run_after`` after it ended."""
    clock = FakeClock()
    release = threading.Event()
    r = Recorder("long step", clock, block=release, work=0.4)
    r.task.spacing, r.task.quiet_run_after = 5.0, 0.2
    pool = started(clock, r)
    try:
        wait_for(lambda: bool(r.runs), timeout=WAIT, what="first step")
        clock.advance(0.05)
        pool.wake(r.task)  # while the step runs
        release.set()  # the step ends 0.45 s after it began
        r.expect_run()
        r.expect_run()  # with no more time passing
        assert r.runs[1] - r.runs[0] == approx(0.45)
    finally:
        pool.stop()


def test_settle_waits_while_the_source_is_not_quiet() -> None:
    """A quiet_run_after deadline that passes while ``quiet_for()`` stays short of ``quiet_run_after``
    (the WAL is written again and again) does not run the step: the spacing still holds."""
    clock = FakeClock()
    r = Recorder("busy source", clock)
    r.task.spacing, r.task.quiet_run_after, r.task.quiet_for = 0.6, 0.1, lambda: 0.0
    pool = started(clock, r)
    try:
        r.expect_run()
        settled(pool, r)
        pool.wake(r.task)
        for _ in range(5):
            clock.advance(0.1)
            r.expect_no_run("ran while the source was not quiet")
        clock.advance(0.1 + EPS)
        r.expect_run()
        assert r.runs[1] - r.runs[0] == approx(0.6)
    finally:
        pool.stop()


@pytest.mark.parametrize("stir", ["synced", "written"])
def test_settle_runs_once_the_source_turns_quiet_without_another_wake(stir: str) -> None:
    """A quiet_run_after deadline that finds the source quiet for too short a time, or not at
    all, looks again: the step runs once the source has been quiet for ``quiet_run_after``,
    with no further wake, not at the end of the spacing. (A sync that finds a commit
    already copied by the sync before it wakes no shipper; "synced": it began just
    before the deadline; "written": it had not begun yet.)"""
    clock = FakeClock()
    r = Recorder("stirred source", clock)
    quiet_since = [0.0]
    r.task.spacing, r.task.quiet_run_after = 3.0, 0.1
    r.task.quiet_for = lambda: max(clock.now() - quiet_since[0], 0.0)
    pool = started(clock, r)
    try:
        r.expect_run()
        settled(pool, r)
        pool.wake(r.task)
        woke = clock.now()
        if stir == "synced":
            clock.advance(0.07)
            quiet_since[0] = clock.now()  # the deadline, 0.03 s away, finds 0.03 s of quiet
            clock.advance(0.03 + EPS)
            r.expect_no_run("ran before the source had been quiet for quiet_run_after")
            clock.advance(0.07 + EPS)
        else:
            quiet_since[0] = math.inf  # written, not yet synced
            clock.advance(0.25)
            r.expect_no_run("ran while the source was not quiet")
            quiet_since[0] = clock.now()
            r.expect_no_run("ran before the source had been quiet for quiet_run_after")
            clock.advance(0.1 + EPS)
        r.expect_run()
        assert r.runs[1] - quiet_since[0] == approx(0.1)
        assert r.runs[1] - woke < 1.0, "waited out the spacing, not the quiet_run_after"
    finally:
        pool.stop()


@pytest.mark.parametrize("work, spacing", [(0.03, MAX_BUSY_SPACING), (0.002, 0.002 * BUSY_FACTOR), (0.05, 0.0)])
def test_a_slow_step_spaces_out_its_next_runs(work: float, spacing: float) -> None:
    """Woken again at once, a step of t seconds starts again no sooner than
    busy_factor * t after it began (at most MAX_BUSY_SPACING): a saturated
    writer's commits go out in fewer, larger syncs. (Without a busy factor: at once.)"""
    clock = FakeClock()
    r = Recorder("stepping", clock, work=work)
    r.task.busy_factor = BUSY_FACTOR if spacing else 0.0
    pool = started(clock, r)
    try:
        r.expect_run()
        settled(pool, r)
        pool.wake(r.task)
        if spacing:
            clock.advance(spacing - work - 0.001)
            r.expect_no_run("ran before busy_factor times its duration")
            clock.advance(0.001 + EPS)
        r.expect_run()
        assert r.runs[1] - r.runs[0] == approx(max(spacing, work))
    finally:
        pool.stop()
