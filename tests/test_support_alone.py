"""The suite's own scheduling under pytest-xdist: a test marked ``alone`` runs with no other
test running, and the other worker cannot starve it (tests/support/alone.py)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from support.alone import run_alone_or_shared


def _held_by_another(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_an_alone_test_waits_for_the_running_one_and_keeps_new_ones_out(tmp_path: Path) -> None:
    order: list[str] = []
    release = {name: threading.Event() for name in ("shared", "alone", "later")}
    entered = {name: threading.Event() for name in release}

    def run(name: str, alone: bool) -> None:
        with run_alone_or_shared(tmp_path, alone=alone):
            order.append(name)
            entered[name].set()
            release[name].wait(30)

    threads = {"shared": threading.Thread(target=run, args=("shared", False)),
               "alone": threading.Thread(target=run, args=("alone", True)),
               "later": threading.Thread(target=run, args=("later", False))}
    threads["shared"].start()
    assert entered["shared"].wait(10)
    threads["alone"].start()
    deadline = time.monotonic() + 10
    while not _held_by_another(tmp_path / "alone.turnstile"):  # the alone test is waiting at the gate
        assert time.monotonic() < deadline, "the alone test never reached the turnstile"
        time.sleep(0.01)
    threads["later"].start()
    assert not entered["alone"].wait(0.3), "the alone test ran beside a running test"
    assert not entered["later"].is_set(), "a new test started while an alone test waited"
    release["shared"].set()
    assert entered["alone"].wait(10)
    assert not entered["later"].wait(0.3), "a test started beside the alone test"
    release["alone"].set()
    assert entered["later"].wait(10)
    release["later"].set()
    for thread in threads.values():
        thread.join(10)
    assert order == ["shared", "alone", "later"]
