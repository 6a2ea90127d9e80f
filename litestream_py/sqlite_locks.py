"""SQLite's locks as lsr takes them, and the -shm header fields lsr reads.

lsr never writes the database: it holds a read transaction to pin the WAL
(db.py's invariant), takes the write lock to keep the application from
committing for a moment, and writes one row of its own table to give an empty
WAL a header or to restart a checkpointed one. The -shm (wal-index) header
tells it, without a query, how far the WAL is committed and backfilled.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator

import apsw

from .errors import DatabaseError

__all__ = [
    "BUMP_SEQ_SQL",
    "PollingBusyHandler",
    "ReadLock",
    "WAL_INDEX_HEADER_SIZE",
    "WAL_INDEX_HDR_COPIES_SIZE",
    "WalIndex",
    "begin_read",
    "connect",
    "end_read",
    "hold_write_lock",
    "read_wal_index",
]

log = logging.getLogger(__name__)

# How often lsr's writer retries a busy write lock. SQLite's own busy timeout
# sleeps ever longer (up to 100 ms) and rarely hits the short gaps between a
# busy application's transactions; polling finds one within milliseconds.
WRITE_LOCK_POLL = 0.0005

# lsr's one write: a commit to its own table (created at open).
BUMP_SEQ_SQL = (
    "INSERT INTO _litestream_seq (id, seq) VALUES (1, 1) "
    "ON CONFLICT (id) DO UPDATE SET seq = seq + 1"
)

# The two copies of the WalIndexHdr and the checkpoint info at the start of -shm.
WAL_INDEX_HEADER_SIZE = 136
# The two WalIndexHdr copies alone: every commit rewrites them, while checkpoints
# and read locks (the application's included) change only the checkpoint info.
WAL_INDEX_HDR_COPIES_SIZE = 96
# In -shm (native byte order): WalIndexHdr.szPage (the page size, 65536 as 1),
# WalIndexHdr.mxFrame, the WAL's last committed frame, and
# WalCkptInfo.nBackfill, the last frame checkpointed into the database.
SHM_PAGE_SIZE_OFFSET = 14
SHM_MX_FRAME_OFFSET = 16
SHM_BACKFILL_OFFSET = 96


class WalIndex:
    """The -shm header fields lsr reads (all 0 for a missing or empty -shm)."""

    __slots__ = ("mx_frame", "backfilled", "page_size", "settled")

    def __init__(self, shm: bytes) -> None:
        # Both copies alike: not read while a commit rewrote them (SQLite's own test).
        half = WAL_INDEX_HDR_COPIES_SIZE // 2
        self.settled = len(shm) >= WAL_INDEX_HEADER_SIZE and shm[:half] == shm[half:WAL_INDEX_HDR_COPIES_SIZE]
        if len(shm) < WAL_INDEX_HEADER_SIZE:
            self.mx_frame = self.backfilled = self.page_size = 0
            return

        def field(offset: int, size: int = 4) -> int:
            return int.from_bytes(shm[offset:offset + size], sys.byteorder)

        self.mx_frame = field(SHM_MX_FRAME_OFFSET)
        self.backfilled = field(SHM_BACKFILL_OFFSET)
        sz_page = field(SHM_PAGE_SIZE_OFFSET, 2)
        self.page_size = (sz_page & 0xFE00) + ((sz_page & 1) << 16)


def read_wal_index(shm_fd: int) -> WalIndex:
    """The -shm header as it stands (read with pread: never close another descriptor of -shm)."""
    return WalIndex(os.pread(shm_fd, WAL_INDEX_HEADER_SIZE, 0))


class PollingBusyHandler:
    """A busy handler that retries every WRITE_LOCK_POLL for up to ``timeout``."""

    def __init__(self, timeout: timedelta) -> None:
        self.timeout = timeout.total_seconds()
        self._since = 0.0

    def __call__(self, prior_calls: int) -> bool:
        now = time.monotonic()
        if prior_calls == 0:
            self._since = now
        if now - self._since >= self.timeout:
            return False
        time.sleep(WRITE_LOCK_POLL)
        return True


def connect(path: str, busy_timeout: timedelta, statement_cache: int = 32) -> apsw.Connection:
    """A connection of lsr's to the database at ``path``."""
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE, statementcachesize=statement_cache)
    except apsw.Error as exc:
        raise DatabaseError(f"cannot open database {path}: {exc}") from exc
    conn.set_busy_timeout(int(busy_timeout.total_seconds() * 1000))
    # Keep the WAL file when lsr's connections close: deleting it would end
    # the generation for no reason.
    persist = ctypes.c_int(1)
    conn.file_control("main", apsw.SQLITE_FCNTL_PERSIST_WAL, ctypes.addressof(persist))
    return conn


def begin_read(conn: apsw.Connection) -> None:
    """Start a read transaction on ``conn`` that holds a WAL read lock until it ends."""
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT COUNT(1) FROM _litestream_seq").fetchall()
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def end_read(conn: apsw.Connection) -> None:
    """End the read transaction on ``conn``, if any (a broken connection has none left)."""
    try:
        conn.execute("ROLLBACK")
    except apsw.Error:
        pass


@contextmanager
def hold_write_lock(conn: apsw.Connection) -> Iterator[None]:
    """Hold SQLite's write lock through ``conn``: the application cannot commit meanwhile."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")


class ReadLock:
    """lsr's read transaction, which pins the WAL (see db.py), on a connection of its own."""

    def __init__(self) -> None:
        self.conn: apsw.Connection | None = None
        self.held = False
        # Taken on a fully checkpointed WAL, so SQLite gave it read-mark 0
        # (see advance).
        self.on_db_file = False
        # The WAL's last committed frame when it was taken: no backfill passes it.
        self.mark = 0

    def acquire(self, shm_fd: int) -> None:
        assert self.conn is not None
        if self.held:
            return
        begin_read(self.conn)
        self._taken(shm_fd)

    def release(self) -> None:
        if self.held and self.conn is not None:
            end_read(self.conn)
        self.held = False
        self.on_db_file = False
        self.mark = 0

    def advance(self, new_conn: Callable[[], apsw.Connection], shm_fd: int,
                catch_up: Callable[[], object], min_frames: int) -> bool:
        """Move the read lock to the WAL's end, without a gap and without the
        write lock, when it sits on read-mark 0 below a frame or ``min_frames``
        behind the end; True when it moved.

        On read-mark 0 (taken on a fully checkpointed WAL) it forbids every
        checkpoint to write a single frame into the database; far behind the
        end it lets backfills reach only its mark. Either way the application's
        automatic checkpoint, due on each of its commits once the WAL passes
        wal_autocheckpoint pages, cannot keep up with its writes: the WAL grows,
        and whichever checkpoint first gets past the mark later must backfill
        all of it (inside one of the application's commits, if that one wins:
        most of a second under a saturating writer). Kept near the end, every
        checkpoint backfills a step of at most ``min_frames`` and what was
        committed since, as it would without lsr. The new read transaction
        starts before the old one ends, and ``catch_up`` copies the WAL to its
        end in between, so the read lock never lets a checkpoint pass the
        shadow's end (db.py's docstring).
        """
        shm = read_wal_index(shm_fd)
        if shm.mx_frame <= shm.backfilled:
            return False  # fully checkpointed: a new reader would get read-mark 0 again
        if not self.on_db_file and shm.mx_frame - self.mark < min_frames:
            return False
        conn = new_conn()
        try:
            begin_read(conn)
        except apsw.Error as exc:
            conn.close()
            log.debug("read lock stays at frame %d: %s", self.mark, exc)
            return False
        try:
            catch_up()
        except BaseException:
            conn.close()
            raise
        self._switch(conn, shm_fd)
        return True

    def hand_over(self, new_conn: Callable[[], apsw.Connection], shm_fd: int) -> bool:
        """Under the write lock: take the read lock anew at the WAL's end on a new
        connection before letting the old one go, copying nothing first.

        Safe while the WAL's end is not fully checkpointed: the new read lock then
        has a read-mark past 0, and while lsr holds one SQLite cannot restart the
        WAL, so the frames past the shadow's end stay in the WAL until lsr copies
        them (the old read lock kept backfills from passing the shadow's end until
        then). False, and nothing changed, when the WAL is fully checkpointed
        (the new reader would get read-mark 0)."""
        shm = read_wal_index(shm_fd)
        if shm.mx_frame <= shm.backfilled:
            return False
        conn = new_conn()
        try:
            begin_read(conn)
        except apsw.Error:
            conn.close()
            return False
        self._switch(conn, shm_fd)
        return True

    def _switch(self, conn: apsw.Connection, shm_fd: int) -> None:
        """Make ``conn``, inside its read transaction already, hold the read lock; end the old one."""
        old, self.conn = self.conn, conn
        self._taken(shm_fd)
        assert old is not None
        try:
            old.execute("ROLLBACK")
        finally:
            old.close()

    def _taken(self, shm_fd: int) -> None:
        self.held = True
        shm = read_wal_index(shm_fd)
        self.on_db_file = shm.mx_frame == shm.backfilled
        self.mark = shm.mx_frame
