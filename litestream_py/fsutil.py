"""Crash-safe file writes: write a temp name, fsync, rename, fsync the directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import BinaryIO, Iterator

__all__ = ["atomic_write", "atomic_copy_stream", "fsync_dir", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"
COPY_BUFFER_SIZE = 1 << 20


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a file that appears at ``path`` only once fully written and synced.

    The temp file sits next to ``path`` (same file system, so rename is atomic)
    and is removed if the body raises.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=directory)
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
    with atomic_write(path, mode) as f:
        shutil.copyfileobj(src, f, COPY_BUFFER_SIZE)
        return f.tell()
