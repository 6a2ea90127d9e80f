"""A clock that moves only when a test says so, for the scheduler's rules."""

from __future__ import annotations

import threading

# A waiter re-reads the fake time at least this often (real seconds): an
# advance that races a waiter's registration costs this much, never a hang.
POLL = 0.01


class FakeClock:
    """scheduler.Clock whose time is advanced by the test (and by steps that
    stand for work taking time), never by the machine's load."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._waiting: set[threading.Condition] = set()

    def now(self) -> float:
        with self._lock:
            return self._now

    def wait(self, cv: threading.Condition, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            return
        with self._lock:
            self._waiting.add(cv)
        cv.wait(POLL)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            waiting = list(self._waiting)
        for cv in waiting:
            with cv:
                cv.notify_all()
