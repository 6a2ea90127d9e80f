"""One process at a time: an exclusive flock(2) on a lock file that names its holder's pid.

The kernel drops a flock when its holder dies, SIGKILL included, so a crash
never blocks the next start. flock, not a POSIX record lock (fcntl/lockf):
record locks belong to the process and closing *any* descriptor of the file
drops them all, which on a database or its -shm would also drop SQLite's own.
"""

from __future__ import annotations

import fcntl
import os

__all__ = ["ProcessLock", "describe_holder"]


class ProcessLock:
    """An exclusive, non-blocking lock on ``path`` (created if missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self) -> int | None:
        """Take the lock: None on success, else the holder's pid (0 if not yet written)."""
        if self._fd >= 0:
            return None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                return pid
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = -1
            if current == os.fstat(fd).st_ino:
                break
            # The holder unlinked the file as it let go (release(unlink=True)):
            # this lock is on a file nobody else will open. Start again.
            os.close(fd)
        # Overwritten in place, not renamed into place: a new inode would be a
        # second, independent lock. A reader may see it empty for a moment
        # (pid 0); a crash leaves a stale pid that the next holder overwrites.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return None

    def release(self, unlink: bool = False) -> None:
        """Let go; ``unlink``: remove the file first (only its holder may)."""
        if self._fd < 0:
            return
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self._fd)
        self._fd = -1


def describe_holder(pid: int) -> str:
    """For messages: the pid ``acquire`` returned (0 when the holder had not written it yet)."""
    return f"pid {pid}" if pid else "pid unknown"


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except ValueError:
        return 0
