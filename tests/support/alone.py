"""Tests that judge wall-clock timing run alone when the suite runs in pytest-xdist workers.

A test marked ``alone`` holds an exclusive lock for its whole run; every other test
holds the same lock shared. A turnstile lock, held by the ``alone`` test while it waits,
keeps the other worker from starting new tests in the meantime, so it is not starved.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def _flock(path: Path, kind: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def run_alone_or_shared(session_dir: Path, alone: bool) -> Iterator[None]:
    """``session_dir``: one directory per pytest run, shared by its workers."""
    turnstile, gate = session_dir / "alone.turnstile", session_dir / "alone.gate"
    if alone:
        with _flock(turnstile, fcntl.LOCK_EX), _flock(gate, fcntl.LOCK_EX):
            yield
        return
    with _flock(turnstile, fcntl.LOCK_EX):
        pass
    with _flock(gate, fcntl.LOCK_SH):
        yield
