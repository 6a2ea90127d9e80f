"""A cheap fingerprint of a WAL: whether it changed since a sync, and for how long it was not written.

SQLite rewrites the wal-index header (in -shm) on every commit and checkpoint,
so a fingerprint made of the WAL file's identity, size and mtime plus that
header tells, for a stat and a 136-byte read, whether a sync has anything new
to copy. Its first WRITTEN_PARTS change only with a write, not with a checkpoint.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from .sqlite_locks import WAL_INDEX_HDR_COPIES_SIZE, WAL_INDEX_HEADER_SIZE

__all__ = ["Token", "WALFingerprint", "WRITTEN_PARTS"]

# Of a fingerprint, the parts only a write changes: the file's identity, size
# and mtime, and the WalIndexHdr copies.
WRITTEN_PARTS = 4

Token = tuple[object, ...]


class WALFingerprint:
    """The fingerprint of one WAL, the one its last sync saw, and since when it stands unwritten."""

    def __init__(self, wal_path: str, shm_fd: Callable[[], int]) -> None:
        self.wal_path = wal_path
        self._shm_fd = shm_fd  # the DB's long-lived -shm descriptor (-1 when closed)
        self.synced: Token = ()  # what the last sync saw
        # The written parts of the newest fingerprint seen (by a sync or by
        # unwritten_for), and since when (monotonic).
        self._last_written: tuple[Token, float] = ((), 0.0)

    def take(self) -> Token:
        """The WAL's fingerprint now: () when there is no WAL."""
        try:
            st = os.stat(self.wal_path)
        except FileNotFoundError:
            return ()
        fd = self._shm_fd()
        shm = os.pread(fd, WAL_INDEX_HEADER_SIZE, 0) if fd >= 0 else b""
        return (st.st_ino, st.st_size, st.st_mtime_ns, shm[:WAL_INDEX_HDR_COPIES_SIZE], shm[WAL_INDEX_HDR_COPIES_SIZE:])

    def saw_synced(self, token: Token, at: float) -> None:
        """A sync that began with ``token`` (taken at ``at``) copied everything it promised."""
        self.synced = token
        self._see_written(token[:WRITTEN_PARTS], at)

    def unwritten_for(self) -> float:
        """Seconds for which the WAL has certainly not been written: since a sync
        or this call last saw its fingerprint change; 0 if it changed just now.
        A stat and a 136-byte read, cheap enough to ask from any thread at any time.

        Counted from what this call sees too, not only from syncs: a commit
        updates the wal-index header after writing its frames, and a sync that
        ran in between copied the commit but kept the old header, with nothing
        (no inotify event) to bring another sync. A checkpoint is not a write
        here: the application's rewrites -shm's checkpoint info, not the WAL."""
        try:
            written = self.take()[:WRITTEN_PARTS]
        except OSError:  # closed meanwhile
            return 0.0
        now = time.monotonic()
        return now - self._see_written(written, now)

    def _see_written(self, written: Token, at: float) -> float:
        """Note the written parts of a fingerprint taken at ``at``; returns since when they stand."""
        seen, since = self._last_written
        if written != seen:
            self._last_written = (written, at)
            return at
        return since
