"""The replicator's worker pool, driven with real threads and real clocks.

Each task here is a plain function: what is under test is when and where the
pool runs it (never twice at once, woken promptly, timers kept, a blocked
step holding up no one), which a database cannot be made to show on demand.
"""

from __future__ import annotations

import math
import threading
import time

import pytest

from litestream_py.replicator import BUSY_SPACING_FACTOR, MAX_BUSY_SPACING, MAX_WORKERS, SETTLE_BURST, _Pool, _Task

WAIT = 5.0


class Recorder:
    """A step that records when it runs, optionally blocking until released."""

    def __init__(self, name: str, delay: float = 60.0, block: threading.Event | None = None, work: float = 0.01) -> None:
        self.name = name
        self.work = work
        self.delay = delay
        self.block = block
        self.runs: list[float] = []
        self.active = 0
        self.overlaps = 0
        self.ran = threading.Semaphore(0)
        self._lock = threading.Lock()
        self.task = _Task(name, self.step)

    def step(self) -> float:
        with self._lock:
            self.active += 1
            if self.active > 1:
                self.overlaps += 1
        self.runs.append(time.monotonic())
        if self.block is not None:
            self.block.wait(WAIT)
        time.sleep(self.work)
        with self._lock:
            self.active -= 1
        self.ran.release()
        return self.delay


def started(*recorders: Recorder) -> _Pool:
    pool = _Pool("test")
    for r in recorders:
        pool.wake(r.task)
    pool.start()
    return pool


def test_added_tasks_run_once_then_wait_for_a_wake() -> None:
    r = Recorder("a")
    pool = started(r)
    try:
        assert r.ran.acquire(timeout=WAIT)
        assert not r.ran.acquire(timeout=0.3), "ran again without a wake or a due timer"
        pool.wake(r.task)
        assert r.ran.acquire(timeout=WAIT)
    finally:
        pool.stop()
    assert len(r.runs) == 2


def test_wakes_during_a_step_run_it_again_once_and_never_concurrently() -> None:
    release = threading.Event()
    r = Recorder("a", block=release)
    pool = started(r)
    try:
        deadline = time.monotonic() + WAIT
        while not r.runs and time.monotonic() < deadline:
            time.sleep(0.005)
        for _ in range(20):  # all while the first step blocks
            pool.wake(r.task)
        release.set()
        assert r.ran.acquire(timeout=WAIT) and r.ran.acquire(timeout=WAIT)
        assert not r.ran.acquire(timeout=0.3), "twenty wakes during one step ran it more than once after"
    finally:
        pool.stop()
    assert r.overlaps == 0
    assert len(r.runs) == 2


def test_timer_reruns_a_task_and_a_wake_comes_before_a_long_timer() -> None:
    ticking = Recorder("ticking", delay=0.05)
    sleepy = Recorder("sleepy", delay=60.0)
    pool = started(ticking, sleepy)
    try:
        for _ in range(5):
            assert ticking.ran.acquire(timeout=WAIT)
        assert sleepy.ran.acquire(timeout=WAIT)
        woken_at = time.monotonic()
        pool.wake(sleepy.task)
        assert sleepy.ran.acquire(timeout=WAIT)
        assert sleepy.runs[-1] - woken_at < 1.0
    finally:
        pool.stop()
    gaps = [b - a for a, b in zip(ticking.runs, ticking.runs[1:])]
    assert min(gaps) >= 0.05


def test_a_blocked_step_holds_up_no_other_task() -> None:
    release = threading.Event()
    stuck = [Recorder(f"stuck{i}", block=release) for i in range(3)]
    free = Recorder("free")
    pool = started(*stuck)
    try:
        deadline = time.monotonic() + WAIT
        while not all(s.runs for s in stuck) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert all(s.runs for s in stuck)
        pool.wake(free.task)
        assert free.ran.acquire(timeout=WAIT), "a free task waited for blocked ones"
        release.set()
    finally:
        pool.stop()


def test_workers_are_bounded_and_stop_waits_for_running_steps() -> None:
    release = threading.Event()
    tasks = [Recorder(f"t{i}", block=release) for i in range(MAX_WORKERS + 10)]
    pool = started(*tasks)
    before = threading.active_count()
    time.sleep(0.3)
    running = sum(1 for t in tasks if t.active)
    assert running == MAX_WORKERS
    stopper = threading.Thread(target=pool.stop)
    stopper.start()
    time.sleep(0.2)
    assert stopper.is_alive(), "stop() returned while steps were still running"
    release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert sum(1 for t in tasks if t.runs) == MAX_WORKERS, "a step started after stop()"
    assert all(t.active == 0 for t in tasks)
    assert threading.active_count() < before


def test_many_quick_tasks_all_run_and_long_timers_share_whole_second_ticks() -> None:
    quick = [Recorder(f"q{i}") for i in range(300)]
    pool = started(*quick)
    try:
        for r in quick:
            assert r.ran.acquire(timeout=WAIT), f"{r.name} never ran"
    finally:
        pool.stop()
    assert all(len(r.runs) == 1 for r in quick)
    # A 12.3 s timer lands on a whole second, at most one tick late; a short one is exact.
    idle = _Pool("test")
    long_task, short_task = _Task("long", lambda: 0.0), _Task("short", lambda: 0.0)
    with idle._work_cv:
        before = time.monotonic()
        idle._set_timer(long_task, 12.3)
        idle._set_timer(short_task, 0.25)
        after = time.monotonic()
    assert long_task.due == int(long_task.due)
    assert before + 12.3 <= long_task.due < after + 13.3
    assert before + 0.25 <= short_task.due <= after + 0.25


def test_spacing_batches_wakes_unless_urgent() -> None:
    r = Recorder("spaced")
    r.task.spacing = 0.3
    pool = started(r)
    try:
        assert r.ran.acquire(timeout=WAIT)
        for _ in range(10):  # a burst of wakes inside the spacing
            pool.wake(r.task)
            time.sleep(0.01)
        assert r.ran.acquire(timeout=WAIT)
        assert r.runs[1] - r.runs[0] >= 0.3
        assert not r.ran.acquire(timeout=0.4), "a burst of wakes ran the step more than once"
        pool.wake(r.task)  # spacing since the last start has passed: at once
        assert r.ran.acquire(timeout=WAIT)
        pool.wake(r.task, urgent=True)  # inside the spacing, but urgent
        assert r.ran.acquire(timeout=WAIT)
        assert r.runs[3] - r.runs[2] < 0.3
    finally:
        pool.stop()


def test_settle_runs_the_trailing_edge_of_a_burst_twice_in_a_row_then_once_per_spacing() -> None:
    """With ``settle``, a burst of wakes inside the spacing runs the step once the
    wakes pause for ``settle`` seconds, not at the end of the spacing. A second
    pause soon after runs it again (SETTLE_BURST: a writer's stall late in a
    burst must not hold back the burst's end); a third waits the spacing out,
    and the credit comes back at one settle per spacing."""
    assert SETTLE_BURST == 2
    r = Recorder("settling")
    r.task.spacing, r.task.settle = 1.0, 0.15
    pool = started(r)
    try:
        assert r.ran.acquire(timeout=WAIT)
        end = time.monotonic() + 0.3
        while time.monotonic() < end:  # wakes closer together than settle: no pause yet
            pool.wake(r.task)
            last_wake = time.monotonic()
            time.sleep(0.02)
        assert len(r.runs) == 1, "ran before the wakes paused"
        assert r.ran.acquire(timeout=WAIT)
        assert 0.15 <= r.runs[1] - last_wake < 0.45
        pool.wake(r.task)  # a second pause inside the spacing: settles too
        assert r.ran.acquire(timeout=WAIT)
        assert 0.15 <= r.runs[2] - r.runs[1] < 0.45
        pool.wake(r.task)  # a third: the credit is spent, the spacing holds
        assert r.ran.acquire(timeout=WAIT)
        assert r.runs[3] - r.runs[2] >= 0.95
        # That spacing brought back one settle's worth of credit, not two.
        for expect_settle in (True, False):
            before = len(r.runs)
            time.sleep(0.05)
            pool.wake(r.task)
            woke = time.monotonic()
            assert r.ran.acquire(timeout=WAIT)
            took = r.runs[before] - woke
            assert (took < 0.45) == expect_settle, (expect_settle, took)
    finally:
        pool.stop()


def test_settle_counts_from_a_wake_that_came_during_a_step() -> None:
    """A wake that arrives while the step runs, and is the last one, starts the
    settle then: a step longer than ``settle`` is followed at once by the next
    run, not ``settle`` after it ended."""
    r = Recorder("long step", work=0.4)
    r.task.spacing, r.task.settle = 5.0, 0.2
    pool = started(r)
    try:
        time.sleep(0.05)  # the first step is running
        pool.wake(r.task)
        assert r.ran.acquire(timeout=WAIT)
        first_done = time.monotonic()
        assert r.ran.acquire(timeout=WAIT)
        assert r.runs[1] - first_done < 0.1, "the settle restarted when the step ended"
    finally:
        pool.stop()


def test_settle_waits_while_the_source_is_not_quiet() -> None:
    """A settle deadline that passes while ``quiet_for()`` stays short of ``settle``
    (the WAL is written again and again) does not run the step: the spacing still holds."""
    r = Recorder("busy source")
    r.task.spacing, r.task.settle, r.task.quiet_for = 0.6, 0.1, lambda: 0.0
    pool = started(r)
    try:
        assert r.ran.acquire(timeout=WAIT)
        pool.wake(r.task)
        assert r.ran.acquire(timeout=WAIT)
        assert r.runs[1] - r.runs[0] >= 0.55
    finally:
        pool.stop()


@pytest.mark.parametrize("stir", ["synced", "written"])
def test_settle_runs_once_the_source_turns_quiet_without_another_wake(stir: str) -> None:
    """A settle deadline that finds the source quiet for too short a time, or not at
    all, looks again: the step runs once the source has been quiet for ``settle``,
    with no further wake, not at the end of the spacing. (A sync that finds a commit
    already copied by the sync before it wakes no shipper; "synced": it began just
    before the deadline; "written": it had not begun yet.)"""
    r = Recorder("stirred source")
    quiet_since = [0.0]
    r.task.spacing, r.task.settle = 3.0, 0.1
    r.task.quiet_for = lambda: max(time.monotonic() - quiet_since[0], 0.0)
    pool = started(r)
    try:
        assert r.ran.acquire(timeout=WAIT)
        pool.wake(r.task)
        woke = time.monotonic()
        if stir == "synced":
            time.sleep(0.07)
            quiet_since[0] = time.monotonic()  # the deadline, 0.03 s away, finds 0.03 s of quiet
        else:
            quiet_since[0] = math.inf  # written, not yet synced
            time.sleep(0.25)
            quiet_since[0] = time.monotonic()
        assert r.ran.acquire(timeout=WAIT)
        assert r.runs[1] - quiet_since[0] >= 0.1, "ran before the source had been quiet for settle"
        assert r.runs[1] - woke < 1.0, f"waited {r.runs[1] - woke:.2f} s: the spacing, not the settle"
    finally:
        pool.stop()


def test_a_slow_step_spaces_out_its_next_runs() -> None:
    """Woken without pause, a step of t seconds starts again no sooner than
    BUSY_SPACING_FACTOR * t later (at most MAX_BUSY_SPACING): a saturated
    writer's commits go out in fewer, larger syncs."""
    slow, quick = Recorder("slow", work=0.03), Recorder("quick", work=0.002)
    slow.task.busy_factor = quick.task.busy_factor = BUSY_SPACING_FACTOR
    pool = started(slow, quick)
    try:
        end = time.monotonic() + 0.8
        while time.monotonic() < end:
            pool.wake(slow.task)
            pool.wake(quick.task)
            time.sleep(0.003)
    finally:
        pool.stop()
    slow_gaps = [b - a for a, b in zip(slow.runs, slow.runs[1:])]
    assert len(slow_gaps) >= 3 and min(slow_gaps) >= min(0.03 * BUSY_SPACING_FACTOR, MAX_BUSY_SPACING) - 0.005
    quick_gaps = [b - a for a, b in zip(quick.runs, quick.runs[1:])]
    assert min(quick_gaps) >= 0.002 * BUSY_SPACING_FACTOR - 0.005
    assert len(quick.runs) > 2 * len(slow.runs), (len(quick.runs), len(slow.runs))
