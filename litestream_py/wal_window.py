"""The live WAL past the shadow's end, read forward into one window.

The shadow copy (shadow.ShadowWAL.append) reads the WAL in pieces and writes
whole transactions only. The frames of a transaction not yet read to its end
stay in the window, verified once, and the next piece is read in behind them;
a file's window is kept for the next copy too, when a transaction is still
being written as a copy ends. Reading again from the transaction's start
instead read and verified a burst's large transactions about twice over.

Frames kept in a window are trusted no more than SQLite trusts them: a
transaction's frames may be rewritten before it commits (a page changed
again, a rollback), and the checksum chain of what follows them then breaks;
the copy drops the window and reads from the shadow's end again.
"""

from __future__ import annotations

import ctypes
import os
import time

from .fsutil import ReadBuffers

__all__ = ["WALWindow", "FileWindow", "HeldWindow", "commit_time"]


def commit_time(wal_fd: int) -> int:
    """When the commits just read from the WAL were made, as time_ns: an upper bound.

    The WAL's mtime, taken after the read, is the time of the last write to it,
    and so no earlier than any commit the read returned; it does not lag behind
    the commit when lsr is slow to get to the read (a loaded machine), as the
    time of the read does. The read's own time bounds it from above (a clock
    step, an mtime set by hand). Of several commits in one read, all but the
    last are stamped late: that is as much as the kernel can prove.
    """
    now = time.time_ns()
    return min(os.fstat(wal_fd).st_mtime_ns, now)


class WALWindow:
    """WAL bytes from a start offset on: ``have`` of them so far, the first at ``view(0, ...)``.

    The first ``verified`` of them are whole frames whose checksum chain holds,
    ``checksum`` the chain's value after them (what the next frame continues).
    """

    def __init__(self, checksum: tuple[int, int]) -> None:
        self.have = 0
        self.verified = 0
        self.checksum = checksum

    def extend(self, size: int) -> tuple[int, int]:
        """Take up to ``size`` more bytes in; (how many came, when they were read as time_ns)."""
        raise NotImplementedError

    def view(self, start: int, end: int) -> memoryview:
        """Bytes ``start`` to ``end`` of the window: release the view before the next ``extend``."""
        raise NotImplementedError

    def consume(self, size: int) -> None:
        """Drop the first ``size`` bytes (written to the shadow, all verified): the window starts past them."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FileWindow(WALWindow):
    """Read from the WAL file (the descriptor ``fd``, set for each copy) into a
    buffer of ``buffers`` (reused across copies); ``offset`` is where it starts."""

    def __init__(self, offset: int, checksum: tuple[int, int], buffers: ReadBuffers) -> None:
        super().__init__(checksum)
        self.fd = -1
        self.offset = offset
        self._buffers = buffers
        self._buf = bytearray()

    def extend(self, size: int) -> tuple[int, int]:
        if len(self._buf) < self.have + size:
            bigger = self._buffers.take(self.have + size)
            with memoryview(self._buf) as held:  # a slice of the bytearray would be one more copy
                bigger[: self.have] = held[: self.have]
            self._buffers.give(self._buf)
            self._buf = bigger
        got = 0
        with memoryview(self._buf) as buf:
            while got < size:
                with buf[self.have + got : self.have + size] as room:
                    n = os.preadv(self.fd, [room], self.offset + self.have + got)
                if n == 0:
                    break
                got += n
        self.have += got
        return got, commit_time(self.fd)

    def view(self, start: int, end: int) -> memoryview:
        return memoryview(self._buf)[start : min(end, self.have)]

    def consume(self, size: int) -> None:
        # What is left is a transaction's first frames (less than a piece or
        # two): moved to the buffer's start, so the buffer never grows past
        # one transaction and one piece. One memmove: a slice assignment
        # copies through a temporary, a fresh mapping of up to a few MiB.
        if self.have > size:
            with _Address(self._buf) as start:
                ctypes.memmove(start, start + size, self.have - size)
        self.offset += size
        self.have -= size
        self.verified -= size

    def keep_verified(self) -> None:
        """Forget what is past the verified frames (a frame perhaps read half written)."""
        self.have = self.verified

    def close(self) -> None:
        self._buffers.give(self._buf)
        self._buf = bytearray()
        self.have = self.verified = 0


class _Address:
    """The address of a bytearray's first byte, for ctypes, while the ``with`` lasts
    (the bytearray cannot be resized meanwhile)."""

    def __init__(self, buf: bytearray) -> None:
        self._buf = buf
        self._export: ctypes.Array[ctypes.c_char] | None = None

    def __enter__(self) -> int:
        self._export = (ctypes.c_char * len(self._buf)).from_buffer(self._buf)
        return ctypes.addressof(self._export)

    def __exit__(self, *exc: object) -> None:
        self._export = None


class HeldWindow(WALWindow):
    """Over bytes already in memory (a tail read under the write lock)."""

    def __init__(self, data: bytes, checksum: tuple[int, int], captured: int) -> None:
        super().__init__(checksum)
        self._data, self._start, self._captured = data, 0, captured

    def extend(self, size: int) -> tuple[int, int]:
        got = max(min(size, len(self._data) - self._start - self.have), 0)
        self.have += got
        return got, self._captured

    def view(self, start: int, end: int) -> memoryview:
        return memoryview(self._data)[self._start + start : self._start + min(end, self.have)]

    def consume(self, size: int) -> None:
        self._start += size
        self.have -= size
        self.verified -= size
