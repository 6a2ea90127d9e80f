"""ProcessLock: flock on a file naming its holder. flock locks belong to an open file
description, so two locks opened in one process contend exactly as two processes do."""

from __future__ import annotations

import os
from pathlib import Path

from litestream_py.lockfile import ProcessLock, describe_holder


def test_second_lock_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    path = tmp_path / "lsr.lock"
    first, second = ProcessLock(str(path)), ProcessLock(str(path))
    assert first.acquire() is None and first.held
    assert second.acquire() == os.getpid() and not second.held
    assert first.acquire() is None  # taking it again is a no-op
    first.release()
    assert second.acquire() is None
    assert path.read_text() == f"{os.getpid()}\n"
    second.release()


def test_release_with_unlink_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / ".out.db.lsr-restore.lock"
    first = ProcessLock(str(path))
    assert first.acquire() is None
    first.release(unlink=True)
    assert not path.exists()
    again = ProcessLock(str(path))
    assert again.acquire() is None
    assert ProcessLock(str(path)).acquire() == os.getpid()
    again.release(unlink=True)
    assert not path.exists()


def test_describe_holder() -> None:
    assert describe_holder(42) == "pid 42" and describe_holder(0) == "pid unknown"
