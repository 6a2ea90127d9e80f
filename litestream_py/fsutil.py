"""Crash-safe file writes (write a temp name, fsync, rename, fsync the directory),
and reusable buffers for the sidecar's large reads."""

from __future__ import annotations

import itertools
import os
import threading
from contextlib import contextmanager
from typing import BinaryIO, Iterator

__all__ = ["atomic_write", "atomic_copy_stream", "create_temp", "fsync_dir", "read_pieces", "ReadBuffers", "read_buffers",
           "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"
COPY_BUFFER_SIZE = 1 << 20


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_temp_names = itertools.count()


def read_pieces(path: str, *pieces: tuple[int, int]) -> list[bytes]:
    """The bytes at each (offset, size) of ``path`` (fewer at its end), through one open."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return [os.pread(fd, size, offset) for offset, size in pieces]
    finally:
        os.close(fd)


def create_temp(path: str, dir_mode: int | None = None, suffix: str = TMP_SUFFIX) -> tuple[int, str]:
    """A new, empty temp file next to ``path``, open for reading and writing: (fd, its name).

    Unique by process and counter (O_EXCL skips a leftover of an earlier
    process with the same pid). A sidecar writes a segment every few ms, and
    ``tempfile.mkstemp``'s random names cost more than the write itself.
    With ``dir_mode``, a missing directory is created (with that mode) first.
    """
    while True:
        tmp = f"{path}.{os.getpid()}-{next(_temp_names)}{suffix}"
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue
        except FileNotFoundError:
            if dir_mode is None:
                raise
            os.makedirs(os.path.dirname(path) or ".", mode=dir_mode, exist_ok=True)
            dir_mode = None


@contextmanager
def atomic_write(path: str, mode: int = 0o600, dir_mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a file that appears at ``path`` only once fully written and synced.

    The temp file sits next to ``path`` (same file system, so rename is atomic)
    and is removed if the body raises. With ``dir_mode``, a missing directory
    of ``path`` is created with that mode.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = create_temp(path, dir_mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_copy_stream(src: BinaryIO, path: str, mode: int = 0o600) -> int:
    """Copy ``src`` to ``path`` atomically; returns the bytes written."""
    import shutil  # here: importing it costs a restore's start-up ~3 ms (bz2, lzma)

    with atomic_write(path, mode) as f:
        shutil.copyfileobj(src, f, COPY_BUFFER_SIZE)
        return f.tell()


class ReadBuffers:
    """Buffers reused across large reads (the shadow WAL a segment is made of).

    A fresh multi-MiB ``bytes`` is a new memory mapping (glibc maps large
    allocations on their own), and the kernel faults in each of its 4 KiB
    pages as the read fills it: about a tenth of the sidecar's CPU in a
    write burst.
    ``kept`` buffers of at most ``max_kept`` bytes wait for reuse (one: the
    sidecar reads one segment at a time per replica, and a concurrent read
    allocates its own).
    """

    def __init__(self, max_kept: int = 16 << 20, kept: int = 1) -> None:
        self._max_kept = max_kept
        self._kept = kept
        self._free: list[bytearray] = []  # largest last
        self._lock = threading.Lock()

    @contextmanager
    def pread(self, fd: int, size: int, offset: int) -> Iterator[memoryview]:
        """``size`` bytes of ``fd`` from ``offset`` (fewer at its end).

        The view is valid only inside the ``with`` block: its buffer is then
        handed to the next read, unless something still holds a view of it.
        """
        buf = self.take(size)
        try:
            with memoryview(buf)[:size] as view:
                got = 0
                while got < size:
                    n = os.preadv(fd, [view[got:]], offset + got)
                    if n == 0:
                        break
                    got += n
                with view[:got] as data:
                    yield data
        finally:
            self.give(buf)

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes, a waiting one if one is large enough;
        hand it back with ``give``."""
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        """Let ``buf`` serve a later read, unless it is too large or still in use."""
        if not buf or len(buf) > self._max_kept or _exported(buf):
            return
        with self._lock:
            self._free.append(buf)
            self._free.sort(key=len)
            del self._free[: -self._kept]  # the larger ones serve more reads


def _exported(buf: bytearray) -> bool:
    """Whether a view of ``buf`` is still alive somewhere (then it must not be reused).

    A bytearray cannot shrink while exported: popping its last byte (and
    putting it back) asks without copying anything.
    """
    if not buf:
        return False
    try:
        last = buf.pop()
    except BufferError:
        return True
    buf.append(last)
    return False


# Shared by every database and replica of the process.
read_buffers = ReadBuffers()
