"""One SQLite database under replication: its shadow WAL, generations and checkpoints.

lsr copies every committed WAL frame into a *shadow WAL* next to the database
(``.<name>-litestream/generations/<gen>/wal/<index>.wal``) before SQLite may
checkpoint it away. Shadow index N holds one lifetime of the real WAL: its
header and its frames from the first on; a WAL restart starts index N+1.

Continuity rests on one invariant: lsr always holds a read transaction (the
*read lock*), and takes it anew only while it also holds the write lock and has
just copied the WAL to its end (or read its tail into memory, written to the
shadow before anything else), or while it still holds the old one and copies
the WAL to its end before letting that one go, or while it holds both the old
one and the write lock on a WAL not fully checkpointed (the new one then has a
read-mark past 0, and no restart can drop what it has not copied yet). A
reader pins the WAL: SQLite
can neither restart nor truncate it past a reader's mark, and cannot backfill
past a reader on the database file (read-mark 0). So while the read lock is held without a gap, no
committed frame can leave the WAL before lsr has copied it, and a WAL that was
restarted or truncated since the last sync was restarted only after a full copy.
When that cannot be shown (first start, a gap in the read lock, a WAL changed
while lsr was down) lsr starts a new generation.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Callable, Iterator

import apsw

from . import paths
from .commits import COMMITS_EXT, CommitLog
from .errors import DatabaseBusyError, DatabaseError, InUseError, LitestreamError
from .fsutil import atomic_write, fsync_dir
from .lockfile import ProcessLock, describe_holder
from .pos import Pos
from .stats import DBStats
from .wal import (
    WAL_FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    WALHeader,
    frame_align,
    scan_frames,
    wal_size,
)

if TYPE_CHECKING:
    from .replica import Replica

__all__ = [
    "DB",
    "DEFAULT_MONITOR_INTERVAL",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "DEFAULT_MIN_CHECKPOINT_PAGE_COUNT",
    "DEFAULT_MAX_CHECKPOINT_PAGE_COUNT",
    "DEFAULT_TRUNCATE_PAGE_COUNT",
    "BUSY_TIMEOUT",
]

log = logging.getLogger(__name__)

DEFAULT_MONITOR_INTERVAL = timedelta(seconds=1)
DEFAULT_CHECKPOINT_INTERVAL = timedelta(minutes=1)
DEFAULT_MIN_CHECKPOINT_PAGE_COUNT = 1000
DEFAULT_MAX_CHECKPOINT_PAGE_COUNT = 10000
DEFAULT_TRUNCATE_PAGE_COUNT = 500_000
BUSY_TIMEOUT = timedelta(seconds=1)
FORCED_CHECKPOINT_RETRY = 0.01
# Scheduled PASSIVE checkpoints are opportunistic: under a busy writer they give
# up on the write lock quickly (instead of stalling every sync behind it) and
# try again a little later; the forced modes wait the full busy timeout.
OPPORTUNISTIC_LOCK_TIMEOUT = timedelta(milliseconds=20)
OPPORTUNISTIC_RETRY_INTERVAL = 0.1
# A checkpoint from a sync restarts the WAL with a write of lsr's own only once
# the application has not written for this long; before, its next commit does.
RESTART_QUIET = timedelta(milliseconds=50)
# How often lsr's writer retries a busy write lock. SQLite's own busy timeout
# sleeps ever longer (up to 100 ms) and rarely hits the short gaps between a
# busy application's transactions; polling finds one within milliseconds.
WRITE_LOCK_POLL = 0.0005

# In the meta directory: held (flock) by the one lsr process replicating the database.
LOCK_FILE_NAME = "lsr.lock"

# A WAL index lsr will not exceed within a generation (Litestream's MaxIndex).
MAX_WAL_INDEX = 0x7FFFFFFF
# Copy the WAL in bounded pieces so a WAL that grew while lsr was down does not
# have to fit in memory at once.
COPY_CHUNK_SIZE = 256 << 10
# The most WAL a checkpoint reads into memory under the write lock (_read_wal_tail):
# a bound on lsr's memory, as the application rarely commits more while lsr waits for the lock.
MAX_WAL_TAIL = 4 << 20
# The most frames a checkpoint backfills under the write lock: SQLite's default
# wal_autocheckpoint, what an application's own commit backfills without lsr.
# Past it, the bulk is backfilled without the lock first (_hand_over_read_lock).
MAX_LOCKED_BACKFILL = 1000
# The two copies of the WalIndexHdr and the checkpoint info at the start of -shm.
WAL_INDEX_HEADER_SIZE = 136
# The two WalIndexHdr copies alone: every commit rewrites them, while checkpoints
# and read locks (the application's included) change only the checkpoint info.
WAL_INDEX_HDR_COPIES_SIZE = 96
# Of a WAL fingerprint (DB._change_token), the parts only a write changes: the
# file's identity, size and mtime, and the WalIndexHdr copies.
WRITTEN_TOKEN_PARTS = 4
# In -shm (native byte order): WalIndexHdr.mxFrame, the WAL's last committed
# frame, and WalCkptInfo.nBackfill, the last frame checkpointed into the database.
SHM_MX_FRAME_OFFSET = 16
SHM_BACKFILL_OFFSET = 96

CHECKPOINT_PASSIVE = "PASSIVE"
CHECKPOINT_RESTART = "RESTART"
CHECKPOINT_TRUNCATE = "TRUNCATE"

BUMP_SEQ_SQL = (
    "INSERT INTO _litestream_seq (id, seq) VALUES (1, 1) "
    "ON CONFLICT (id) DO UPDATE SET seq = seq + 1"
)


def _commit_time(wal_fd: int) -> int:
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


@dataclass
class _WALTail:
    """WAL bytes from ``offset`` on, read at ``captured`` (time_ns) under the write lock."""

    offset: int
    data: bytes
    captured: int


@dataclass
class _LockedRetake:
    """What DB._retake_read_lock did under the write lock, and for how long (s)."""

    tail: _WALTail | None
    counts: tuple[int, int, int] | None  # the checkpoint's (busy, frames, backfilled); None: handed over
    held: float


@dataclass
class _SyncState:
    generation: str = ""
    reason: str = ""  # non-empty: continuity is lost, start a new generation
    restart: bool = False  # the real WAL was restarted; shadow moves to a new index
    shadow_index: int = 0
    shadow_size: int = 0


class _PollingBusyHandler:
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


def _begin_read(conn: apsw.Connection) -> None:
    """Start a read transaction on ``conn`` that holds a WAL read lock until it ends."""
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT COUNT(1) FROM _litestream_seq").fetchall()
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _int(value: object) -> int:
    """An SQLite integer result."""
    assert isinstance(value, int)
    return value


def _read_at(path: str, offset: int, size: int) -> bytes:
    return _read_pieces(path, (offset, size))[0]


def _read_pieces(path: str, *pieces: tuple[int, int]) -> list[bytes]:
    """The bytes at each (offset, size) of ``path`` (fewer at its end), through one open."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return [os.pread(fd, size, offset) for offset, size in pieces]
    finally:
        os.close(fd)


class DB:
    """A database file, its shadow WAL and the replicas it feeds."""

    def __init__(
        self,
        path: str,
        *,
        meta_path: str | None = None,
        monitor_interval: timedelta = DEFAULT_MONITOR_INTERVAL,
        checkpoint_interval: timedelta = DEFAULT_CHECKPOINT_INTERVAL,
        min_checkpoint_page_count: int = DEFAULT_MIN_CHECKPOINT_PAGE_COUNT,
        max_checkpoint_page_count: int = DEFAULT_MAX_CHECKPOINT_PAGE_COUNT,
        truncate_page_count: int = DEFAULT_TRUNCATE_PAGE_COUNT,
    ) -> None:
        self.path = os.path.abspath(path)
        directory, name = os.path.split(self.path)
        self.meta_path = os.path.abspath(meta_path) if meta_path else os.path.join(
            directory, f".{name}{paths.META_DIR_SUFFIX}"
        )
        self.monitor_interval = monitor_interval
        self.checkpoint_interval = checkpoint_interval
        self.min_checkpoint_page_count = min_checkpoint_page_count
        self.max_checkpoint_page_count = max_checkpoint_page_count
        self.truncate_page_count = truncate_page_count
        self.replicas: list[Replica] = []
        # Two sidecars shipping one shadow WAL interleave their segments and
        # break the replica: the first to open the database keeps it until close().
        self._meta_lock = ProcessLock(os.path.join(self.meta_path, LOCK_FILE_NAME))

        # One lock orders everything that touches the shadow WAL or the read
        # lock: sync, checkpoint, snapshot.
        self._lock = threading.RLock()
        # POSIX record locks belong to the process, and closing *any* descriptor
        # of a file drops all of the process's locks on it, including the ones
        # apsw's SQLite holds. So the database and -shm files are opened once,
        # read with pread(), and closed only after the connections are closed.
        self._db_fd = -1
        self._shm_fd = -1
        # Writes and checkpoints; opened on demand and closed after each sync so
        # that an idle database costs one connection, not two.
        self._conn: apsw.Connection | None = None
        self._write_busy = _PollingBusyHandler(BUSY_TIMEOUT)
        self._read_conn: apsw.Connection | None = None  # holds the read lock
        self._read_lock_held = False
        # The read lock was taken on a fully checkpointed WAL, so SQLite gave it
        # read-mark 0 (see _move_read_lock_off_db_file).
        self._read_lock_on_db_file = False
        # True once the read lock has been held without a gap since the shadow
        # last matched the end of the WAL (see the module docstring).
        self._continuous = False
        self._page_size = 0
        self._last_checkpoint = time.monotonic()
        # After an opportunistic checkpoint gave way to the application: when to
        # try again (monotonic; 0 = nothing pending).
        self._passive_retry_at = 0.0
        self._waiting_logged = False
        self._last_token: tuple[object, ...] = ()
        # The written parts of the newest fingerprint seen (by a sync or by
        # unwritten_for), and since when (monotonic).
        self._last_written: tuple[tuple[object, ...], float] = ((), 0.0)
        self.commit_log = CommitLog(self.commits_path)
        # Position published to replicas: only whole, synced transactions.
        self._pos = Pos()
        # (generation, index) of the current shadow WAL as this process last
        # wrote it, so that a sync needs no directory listing; None re-reads disk.
        self._head: tuple[str, int] | None = None
        self._cleaned: tuple[str, int] | None = None  # what _clean last saw shipped
        # (generation, index, size): shadow bytes known to be on disk (see make_durable).
        self._durable = ("", -1, 0)
        self._durable_lock = threading.Lock()
        self._change_listeners: list[Callable[[], None]] = []
        self.stats = DBStats()

    # -- paths -------------------------------------------------------------
    @property
    def wal_path(self) -> str:
        return self.path + "-wal"

    # Plain formatting, not os.path.join: several of these are built per sync
    # (meta_path is absolute and normalized).
    @property
    def generation_name_path(self) -> str:
        return f"{self.meta_path}/generation"

    def generation_path(self, generation: str) -> str:
        return f"{self.meta_path}/generations/{generation}"

    def shadow_wal_dir(self, generation: str) -> str:
        return f"{self.meta_path}/generations/{generation}/wal"

    def shadow_wal_path(self, generation: str, index: int) -> str:
        return f"{self.meta_path}/generations/{generation}/wal/{paths.format_shadow_wal_path(index)}"

    def replica_formats_path(self, generation: str) -> str:
        """How each replica writes this generation (see _format_change)."""
        return f"{self.meta_path}/generations/{generation}/replicas"

    def commits_path(self, generation: str, index: int) -> str:
        """Capture times of the commits in one shadow WAL index (see commits.CommitLog)."""
        return f"{self.meta_path}/generations/{generation}/wal/{index:08x}{COMMITS_EXT}"

    @property
    def page_size(self) -> int:
        return self._page_size

    def __repr__(self) -> str:
        return f"DB({self.path!r})"

    # -- state -------------------------------------------------------------
    def current_generation(self) -> str:
        try:
            with open(self.generation_name_path) as f:
                name = f.read().strip()
        except FileNotFoundError:
            return ""
        return name if paths.is_generation_name(name) else ""

    def shadow_indexes(self, generation: str) -> list[int]:
        try:
            names = os.listdir(self.shadow_wal_dir(generation))
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            try:
                out.append(paths.parse_shadow_wal_path(n))
            except LitestreamError:
                continue  # not a shadow WAL file (a temp file, the commits file)
        return sorted(out)

    def current_shadow_index(self, generation: str) -> int:
        indexes = self.shadow_indexes(generation)
        return indexes[-1] if indexes else 0

    def _current_head(self) -> tuple[str, int]:
        """(generation, shadow index) now being written, from memory when possible."""
        if self._head is None:
            generation = self.current_generation()
            if not generation:
                return "", 0
            indexes = self.shadow_indexes(generation)
            if not indexes:
                return generation, -1
            self._head = (generation, indexes[-1])
        return self._head

    def pos(self) -> Pos:
        """The last position copied into the shadow WAL and synced to disk."""
        return self._pos

    def shadow_wal_size(self, generation: str, index: int) -> int:
        """Frame-aligned size of a shadow WAL file; 0 if it does not exist."""
        try:
            size = os.path.getsize(self.shadow_wal_path(generation, index))
        except FileNotFoundError:
            return 0
        return frame_align(size, self._page_size) if self._page_size else size

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the syncing thread) whenever the shadow WAL changes."""
        self._change_listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._change_listeners:
            listener()

    # -- opening -----------------------------------------------------------
    def check_path(self) -> None:
        """Reject a database path whose directory does not exist (a typo, not a late app)."""
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise DatabaseError(f"cannot replicate {self.path}: directory {directory} does not exist")

    @property
    def shm_fd(self) -> int:
        """lsr's long-lived descriptor of the -shm file (-1 when closed); never close it."""
        return self._shm_fd

    def is_open(self) -> bool:
        return self._read_conn is not None

    def open(self) -> bool:
        """Connect if the database exists; False while it does not exist yet."""
        with self._lock:
            if self._read_conn is not None:
                return True
            self.check_path()
            if not os.path.exists(self.path):
                if not self._waiting_logged:
                    log.info("%s: database does not exist yet, waiting for it", self.path, extra={"db": self.path})
                    self._waiting_logged = True
                return False
            if os.path.isdir(self.path):
                raise DatabaseError(f"cannot replicate {self.path}: it is a directory, not a database file")
            try:
                self._connect()
            except (apsw.BusyError, apsw.LockedError) as exc:
                self._disconnect()
                raise DatabaseBusyError(f"cannot open database {self.path}: database is locked") from exc
            except apsw.Error as exc:
                self._disconnect()
                raise DatabaseError(f"cannot open database {self.path}: {exc}") from exc
            except BaseException:
                self._disconnect()
                raise
            return True

    def _new_connection(self, statement_cache: int = 32) -> apsw.Connection:
        try:
            conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READWRITE, statementcachesize=statement_cache)
        except apsw.Error as exc:
            raise DatabaseError(f"cannot open database {self.path}: {exc}") from exc
        conn.set_busy_timeout(int(BUSY_TIMEOUT.total_seconds() * 1000))
        # Keep the WAL file when lsr's connections close: deleting it would end
        # the generation for no reason.
        persist = ctypes.c_int(1)
        conn.file_control("main", apsw.SQLITE_FCNTL_PERSIST_WAL, ctypes.addressof(persist))
        return conn

    def _writer(self) -> apsw.Connection:
        if self._conn is None:
            conn = self._new_connection()
            # lsr checkpoints on its own schedule, never as a side effect of its writes.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.set_busy_handler(self._write_busy)
            self._conn = conn
        return self._conn

    def _close_writer(self) -> None:
        # Safe while the read connection holds its locks: SQLite keeps a closed
        # connection's descriptors open until the process's last lock on the file goes.
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> None:
        conn = self._writer()
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
        except apsw.Error as exc:
            raise DatabaseError(f"cannot read database {self.path}: {exc}") from exc
        if str(mode).lower() != "wal":
            raise DatabaseError(
                f"cannot replicate {self.path}: database is in {mode} journal mode, not WAL "
                "(run PRAGMA journal_mode=WAL on it once)"
            )
        self._lock_meta()
        conn.execute("CREATE TABLE IF NOT EXISTS _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)")
        conn.execute("CREATE TABLE IF NOT EXISTS _litestream_lock (id INTEGER)")
        self._page_size = _int(conn.execute("PRAGMA page_size").fetchall()[0][0])
        # It stays open as long as lsr runs, for three statements that rarely
        # run: caching them would cost ~6 KiB per database.
        self._read_conn = self._new_connection(statement_cache=0)
        self._db_fd = os.open(self.path, os.O_RDONLY)
        self._shm_fd = os.open(self.path + "-shm", os.O_RDONLY)
        os.makedirs(self.meta_path, mode=0o700, exist_ok=True)
        # The read lock is only ever taken under the write lock (module docstring).
        self._ensure_wal_exists()
        self._truncate_shadow_tail()
        self._continuous = False
        with self._write_lock():
            # Nothing proves the WAL kept continuity while lsr was not running,
            # so check the shadow against the WAL byte for byte, and copy up to
            # the WAL's end before the read lock starts (module docstring).
            state = self._check_continuity()
            if not state.reason and not state.restart:
                self._copy_to_shadow(state.generation, state.shadow_index)
                self._continuous = True
            self._acquire_read_lock()
        self._close_writer()
        log.info("%s: opened (page size %d)", self.path, self._page_size, extra={"db": self.path})

    def _lock_meta(self) -> None:
        os.makedirs(self.meta_path, mode=0o700, exist_ok=True)
        holder = self._meta_lock.acquire()
        if holder is not None:
            raise InUseError(
                f"cannot replicate {self.path}: another lsr process ({describe_holder(holder)}) already replicates it "
                f"(stop that one first; lock {self._meta_lock.path})"
            )

    def close(self) -> None:
        with self._lock:
            self._disconnect()
            self._meta_lock.release()

    def _disconnect(self) -> None:
        self._release_read_lock()
        for conn in (self._read_conn, self._conn):
            if conn is not None:
                try:
                    conn.close()
                except apsw.Error:
                    pass
        self._conn = self._read_conn = None
        for fd in (self._db_fd, self._shm_fd):
            if fd >= 0:
                os.close(fd)
        self._db_fd = self._shm_fd = -1
        self._continuous = False
        self._head = self._cleaned = None

    # -- locks -------------------------------------------------------------
    def _acquire_read_lock(self) -> None:
        assert self._read_conn is not None
        if self._read_lock_held:
            return
        try:
            _begin_read(self._read_conn)
        except BaseException:
            # A gap in the read lock: continuity can no longer be proven.
            self._continuous = False
            raise
        self._read_lock_taken()

    def _read_lock_taken(self) -> None:
        self._read_lock_held = True
        mx_frame, backfilled = self._wal_frames()
        self._read_lock_on_db_file = mx_frame == backfilled

    def _release_read_lock(self) -> None:
        if self._read_lock_held and self._read_conn is not None:
            try:
                self._read_conn.execute("ROLLBACK")
            except apsw.Error:
                pass
        self._read_lock_held = False
        self._read_lock_on_db_file = False

    def _wal_frames(self) -> tuple[int, int]:
        """The WAL's last committed frame and its last checkpointed one, from -shm."""
        shm = os.pread(self._shm_fd, WAL_INDEX_HEADER_SIZE, 0)
        if len(shm) < WAL_INDEX_HEADER_SIZE:
            return 0, 0
        return (int.from_bytes(shm[SHM_MX_FRAME_OFFSET:SHM_MX_FRAME_OFFSET + 4], sys.byteorder),
                int.from_bytes(shm[SHM_BACKFILL_OFFSET:SHM_BACKFILL_OFFSET + 4], sys.byteorder))

    def _move_read_lock_off_db_file(self) -> None:
        """Move a read lock on read-mark 0 onto a frame of the WAL, once there is one,
        without a gap and without the write lock.

        A reader that began on a fully checkpointed WAL gets read-mark 0, where
        it forbids every checkpoint to write a single frame into the database:
        the application's automatic checkpoint, due on each of its commits once
        the WAL passes wal_autocheckpoint pages, then sorts the whole WAL's
        index each time before it finds it cannot proceed (3-4x the cost of a
        small commit with a 12,000-frame WAL). On a frame, the same checkpoint
        backfills up to it once and then returns at once. The new read
        transaction starts before the old one ends, and the WAL is copied to its
        end in between, so the read lock never lets a checkpoint pass the
        shadow's end (module docstring).
        """
        if not self._read_lock_on_db_file:
            return
        mx_frame, backfilled = self._wal_frames()
        if mx_frame <= backfilled:
            return  # still fully checkpointed: a new reader would get read-mark 0 again
        conn = self._new_connection(statement_cache=0)
        try:
            _begin_read(conn)
        except apsw.Error as exc:
            conn.close()
            log.debug("%s: read lock stays on read-mark 0: %s", self.path, exc)
            return
        try:
            self._copy_new_frames(None)
        except BaseException:
            conn.close()
            raise
        self._switch_read_conn(conn)

    def _switch_read_conn(self, conn: apsw.Connection) -> None:
        """Make ``conn``, inside its read transaction already, hold the read lock; end the old one."""
        old, self._read_conn = self._read_conn, conn
        self._read_lock_taken()
        assert old is not None
        try:
            old.execute("ROLLBACK")
        finally:
            old.close()

    class _WriteLock:
        def __init__(self, db: DB) -> None:
            self.db = db

        def __enter__(self) -> None:
            self.db._writer().execute("BEGIN IMMEDIATE")

        def __exit__(self, *exc: object) -> None:
            assert self.db._conn is not None
            self.db._conn.execute("ROLLBACK")

    def _write_lock(self) -> DB._WriteLock:
        """Hold SQLite's write lock: the application cannot commit meanwhile."""
        return DB._WriteLock(self)

    # -- sync ----------------------------------------------------------------
    def sync(self, force: bool = False) -> bool:
        """Copy new WAL frames to the shadow WAL and checkpoint when due.

        Returns True when the shadow WAL changed. A database that does not
        exist yet is a no-op. Unless ``force``, a WAL whose fingerprint has not
        changed since the last sync is not read at all.
        """
        started = time.monotonic()
        try:
            return self._sync_if_changed(force)
        except BaseException:
            self.stats.sync_errors += 1
            raise
        finally:
            self.stats.sync_count += 1
            self.stats.sync_seconds += time.monotonic() - started

    def _sync_if_changed(self, force: bool) -> bool:
        with self._lock:
            if not self.open():
                return False
            # Taken before copying: a commit that lands during the copy changes
            # the fingerprint, so the next sync will not skip it.
            token, token_at = self._change_token(), time.monotonic()
            if (
                not force
                and token == self._last_token
                and self._continuous
                and not self._checkpoint_interval_due()
                and not 0 < self._passive_retry_at <= time.monotonic()
            ):
                return False
            if token:
                self.stats.wal_size = _int(token[1])
            try:
                changed = self._sync((token, token_at))
                self._close_writer()
                self.stats.db_size = os.fstat(self._db_fd).st_size
            except apsw.Error as exc:
                # A broken connection is reopened by the next sync; the gap in
                # the read lock forces a careful re-verification then.
                self._disconnect()
                raise DatabaseError(f"cannot sync {self.path}: {exc}") from exc
        if changed:
            self._notify()
        return changed

    def _sync(self, token: tuple[tuple[object, ...], float] | None = None) -> bool:
        """Copy the WAL's new frames to the shadow WAL, then checkpoint when due.

        ``token``: the WAL's fingerprint taken before this sync began, and when.
        """
        published = self._pos
        after = self._copy_new_frames(token)
        # Frames may have been copied before this sync (at open): compare what
        # replicas were last told, not what this call copied.
        changed = self._pos != published
        mode = self._checkpoint_due(after)
        if mode:
            if changed:
                self._notify()  # replicas ship what was copied while the checkpoint runs
            self._checkpoint(mode, opportunistic=mode != CHECKPOINT_TRUNCATE,
                             restart_now=mode == CHECKPOINT_TRUNCATE)
            # The write with which lsr restarted the WAL opens the next shadow
            # index now, not at the next wake: until it is copied, the WAL looks
            # written to (unwritten_for), and a paused writer's S3 replica would
            # wait one more sync for its flush.
            self._copy_new_frames((self._change_token(), time.monotonic()) if token is not None else None)
            changed = True
        self._move_read_lock_off_db_file()
        changed = changed or self._pos != published
        self._clean()
        return changed

    def _copy_new_frames(self, token: tuple[tuple[object, ...], float] | None) -> int:
        """Copy what the WAL committed since the last copy and publish the new
        position; a WAL that no longer continues the shadow starts a new index
        (restarted) or a new generation. Returns the shadow's size."""
        self._ensure_wal_exists()
        state = self._check_continuity()
        if state.reason:
            generation = self._create_generation()
            log.info("%s: new generation %s (%s)", self.path, generation, state.reason,
                     extra={"db": self.path, "generation": generation})
            state = _SyncState(generation, shadow_index=0, shadow_size=WAL_HEADER_SIZE)
        elif state.restart:
            # The WAL was restarted after a full copy; close the old index and
            # carry on in the next one.
            self._copy_to_shadow(state.generation, state.shadow_index)
            state.shadow_index += 1
            self._init_shadow_wal(state.generation, state.shadow_index)
        after = self._copy_to_shadow(state.generation, state.shadow_index)
        self._continuous = True
        self._publish(state.generation, state.shadow_index)
        if token is not None:
            self._last_token = token[0]
            self._see_written(token[0][:WRITTEN_TOKEN_PARTS], token[1])
        return after

    def _change_token(self) -> tuple[object, ...]:
        """Cheap fingerprint of the WAL: file identity and size, plus the wal-index header.

        SQLite rewrites the wal-index header (in the -shm file) on every commit
        and checkpoint, so an equal token means there is nothing new to copy.
        """
        try:
            st = os.stat(self.wal_path)
        except FileNotFoundError:
            return ()
        shm = os.pread(self._shm_fd, WAL_INDEX_HEADER_SIZE, 0) if self._shm_fd >= 0 else b""
        # The first WRITTEN_TOKEN_PARTS change only with a write (unwritten_for).
        return (st.st_ino, st.st_size, st.st_mtime_ns, shm[:WAL_INDEX_HDR_COPIES_SIZE], shm[WAL_INDEX_HDR_COPIES_SIZE:])

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
            written = self._change_token()[:WRITTEN_TOKEN_PARTS]
        except OSError:  # closed meanwhile
            return 0.0
        now = time.monotonic()
        return now - self._see_written(written, now)

    def _see_written(self, written: tuple[object, ...], at: float) -> float:
        """Note the written parts of a fingerprint taken at ``at``; returns since when they stand."""
        seen, since = self._last_written
        if written != seen:
            self._last_written = (written, at)
            return at
        return since

    def _checkpoint_interval_due(self) -> bool:
        interval = self.checkpoint_interval.total_seconds()
        return interval > 0 and time.monotonic() - self._last_checkpoint > interval and (
            self._pos.offset > wal_size(self._page_size, 1)
        )

    def _publish(self, generation: str, index: int) -> None:
        self._pos = Pos(generation, index, self.shadow_wal_size(generation, index))

    def _ensure_wal_exists(self) -> None:
        """Make sure the WAL has a header: a write to lsr's own table creates one."""
        try:
            if os.path.getsize(self.wal_path) >= WAL_HEADER_SIZE:
                return
        except FileNotFoundError:
            pass
        self._writer().execute(BUMP_SEQ_SQL)

    def _check_continuity(self) -> _SyncState:
        """Decide whether the shadow WAL still continues the real WAL."""
        generation, index = self._current_head()
        if not generation:
            return _SyncState(reason="no generation exists")
        state = _SyncState(generation)
        if not self._continuous and (change := self._format_change(generation)):
            state.reason = change
            return state
        if index < 0:
            state.reason = "no shadow wal"
            return state
        if index >= MAX_WAL_INDEX:
            state.reason = "max wal index exceeded"
            return state
        state.shadow_index = index
        shadow_path = self.shadow_wal_path(generation, index)
        shadow_size = self.shadow_wal_size(generation, index)
        state.shadow_size = shadow_size
        if shadow_size < WAL_HEADER_SIZE:
            state.reason = "short shadow wal"
            return state
        wal_file_size = frame_align(os.path.getsize(self.wal_path), self._page_size)
        # The header and the last frame of each: one open per file per sync.
        frame = WAL_FRAME_HEADER_SIZE + self._page_size
        pieces = [(0, WAL_HEADER_SIZE)]
        if shadow_size > WAL_HEADER_SIZE:
            pieces.append((shadow_size - frame, frame))
        wal_header, *wal_last = _read_pieces(self.wal_path, *pieces)
        shadow_header, *shadow_last = _read_pieces(shadow_path, *pieces)
        if wal_header != shadow_header:
            if self._continuous:
                state.restart = True
                return state
            state.reason = "wal header changed while lsr was not watching"
            return state
        if shadow_size > wal_file_size:
            # Same header but a shorter WAL: truncated and rewritten behind us.
            state.reason = "wal truncated by another process"
            return state
        if wal_last != shadow_last:
            state.reason = "wal overwritten by another process"
            return state
        return state

    def _replica_formats(self) -> str:
        return "".join(f"{r.name}\t{r.encryption}\n" for r in self.replicas)

    def _format_change(self, generation: str) -> str:
        """Why ``generation`` cannot go on with the replicas as configured now, or "".

        An encrypted generation never continues a plaintext one, nor one
        encrypted to other recipients (nor the reverse): a generation's objects
        are all written one way. A generation without a record (written by Go,
        or by an lsr older than encryption) counts as plaintext: an encrypted
        replica then starts a new generation rather than guess.
        """
        try:
            with open(self.replica_formats_path(generation), encoding="utf-8") as f:
                recorded = dict(line.split("\t", 1) for line in f.read().splitlines() if "\t" in line)
        except FileNotFoundError:
            recorded = {}
        for r in self.replicas:
            before, now = recorded.get(r.name, "plain"), r.encryption
            if before == now:
                continue
            if before == "plain":
                return f"replica {r.name} is now age-encrypted; its plaintext generation is not continued"
            if now == "plain":
                return f"replica {r.name} is no longer encrypted; its encrypted generation is not continued"
            return f"replica {r.name} has new age recipients; a generation is encrypted to one set"
        return ""

    def _create_generation(self) -> str:
        generation = paths.new_generation_name()
        os.makedirs(self.shadow_wal_dir(generation), mode=0o700, exist_ok=True)
        with atomic_write(self.replica_formats_path(generation)) as f:
            f.write(self._replica_formats().encode())
        self._init_shadow_wal(generation, 0)
        with atomic_write(self.generation_name_path) as f:
            f.write(generation.encode() + b"\n")
        self._head = (generation, 0)
        self._continuous = True
        self._clean()
        return generation

    def _init_shadow_wal(self, generation: str, index: int) -> None:
        """Start shadow index ``index`` with the real WAL's current header."""
        header = WALHeader.parse(_read_at(self.wal_path, 0, WAL_HEADER_SIZE))
        self._page_size = header.page_size
        path = self.shadow_wal_path(generation, index)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with atomic_write(path) as f:
            f.write(header.raw)
        if self._head is not None and self._head[0] == generation:
            self._head = (generation, index)
        self._copy_to_shadow(generation, index)

    def _truncate_shadow_tail(self) -> None:
        """Drop a torn frame left at the end of the shadow WAL by a crash."""
        generation = self.current_generation()
        if not generation:
            return
        index = self.current_shadow_index(generation)
        path = self.shadow_wal_path(generation, index)
        try:
            size = os.path.getsize(path)
            header = WALHeader.parse(_read_at(path, 0, WAL_HEADER_SIZE))
        except (FileNotFoundError, Exception):
            return
        aligned = frame_align(size, header.page_size)
        if aligned != size:
            with open(path, "r+b") as f:
                f.truncate(aligned)
                os.fsync(f.fileno())

    def _copy_to_shadow(self, generation: str, index: int, tail: _WALTail | None = None) -> int:
        """Append the WAL's newly committed, checksum-verified frames to the shadow.

        Reads only the bytes past the shadow's end, or takes them from ``tail``
        (see _read_wal_tail). Returns the new shadow size.
        Not fsynced here: a replica makes what it ships durable first
        (``make_durable``), so a busy WAL costs one fsync per shipment, not one
        per sync, and none while the write lock is held.
        """
        path = self.shadow_wal_path(generation, index)
        with open(path, "r+b") as shadow:
            header = WALHeader.parse(shadow.read(WAL_HEADER_SIZE))
            page_size = header.page_size
            frame_size = WAL_FRAME_HEADER_SIZE + page_size
            size = start = frame_align(os.fstat(shadow.fileno()).st_size, page_size)
            if size > WAL_HEADER_SIZE:
                shadow.seek(size - frame_size + 16)
                raw = shadow.read(8)
                s0, s1 = int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:], "big")
            else:
                s0, s1 = header.checksum1, header.checksum2
            commits: list[tuple[int, int]] = []
            if tail is not None and tail.offset != size:
                raise DatabaseError(f"shadow wal {path} changed while lsr held the wal's tail")
            with open(self.wal_path, "rb") as wal:
                # Start small: past the live end of a restarted WAL lie stale
                # frames that every sync would otherwise read again. (Bounded
                # pieces of a held tail too: scanning makes copies of each.)
                chunk = max(COPY_CHUNK_SIZE // frame_size, 1) * frame_size
                while True:
                    if tail is not None:
                        data: bytes | memoryview = memoryview(tail.data)[size - tail.offset:][:chunk]
                        captured = tail.captured
                    else:
                        data = os.pread(wal.fileno(), chunk, size)
                        captured = _commit_time(wal.fileno())
                    if len(data) < frame_size:
                        break
                    result = scan_frames(data, header, (s0, s1))
                    if result.committed:
                        shadow.seek(size)
                        shadow.write(memoryview(data)[: result.committed])
                        commits += [(size + end, captured) for end in result.commits]
                        size += result.committed
                        s0, s1 = result.checksum
                    if len(data) < chunk or result.frames < len(data) // frame_size:
                        break  # reached the end of the file (or tail) or of the valid frames
                    if not result.committed:
                        chunk *= 2  # one transaction larger than the chunk
        if commits:
            self.commit_log.record(generation, index, commits)
        self.stats.total_wal_bytes += size - start
        return size

    def _retake_read_lock(self, generation: str, index: int, checkpoint: bool = False) -> _LockedRetake:
        """Under the write lock: read the WAL's tail, take the read lock anew at
        the WAL's end and, with ``checkpoint``, backfill everything in between
        from the read connection. The caller copies the tail to the shadow
        (_copy_tail_to_shadow) once the lock is gone."""
        counts = None
        with self._write_lock():
            locked_at = time.monotonic()
            tail = self._read_wal_tail(generation, index)
            mx_frame, backfilled = self._wal_frames()
            # Too much to copy, or to backfill, while the application waits:
            # move the read lock without either, and leave them to the caller.
            if (tail is None or (checkpoint and mx_frame - backfilled > MAX_LOCKED_BACKFILL)) and (
                self._hand_over_read_lock()
            ):
                return _LockedRetake(tail, None, time.monotonic() - locked_at)
            if tail is None:
                self._copy_to_shadow(generation, index)
            self._release_read_lock()
            if checkpoint:
                # The write connection is inside its transaction; checkpoint from
                # the (now idle) read connection.
                counts = self._run_checkpoint(self._read_conn)
            self._acquire_read_lock()
            held = time.monotonic() - locked_at
        return _LockedRetake(tail, counts, held)

    def _hand_over_read_lock(self) -> bool:
        """Under the write lock: take the read lock anew at the WAL's end on a
        new connection before letting the old one go, copying nothing first.

        Safe while the WAL's end is not fully checkpointed: the new read lock
        then gets a read-mark at that end (not 0), and while lsr holds a
        read-mark past 0 SQLite cannot restart the WAL, so the frames past the
        shadow's end stay in the WAL until lsr copies them (the old read lock
        kept backfills from passing the shadow's end until then). False, and
        nothing changed, when the WAL is fully checkpointed (read-mark 0)."""
        mx_frame, backfilled = self._wal_frames()
        if mx_frame <= backfilled:
            return False
        conn = self._new_connection(statement_cache=0)
        try:
            _begin_read(conn)
        except apsw.Error:
            conn.close()
            return False
        self._switch_read_conn(conn)
        return True

    def _copy_tail_to_shadow(self, generation: str, index: int, tail: _WALTail | None) -> None:
        """Write a tail read under the write lock to the shadow, before anything
        reads the WAL again: the application may restart it once the lock is
        gone, and then these bytes exist only here."""
        if tail is None:
            return
        try:
            self._copy_to_shadow(generation, index, tail)
        except BaseException:
            self._continuous = False  # the shadow may now miss frames the WAL lost
            raise

    def _read_wal_tail(self, generation: str, index: int) -> _WALTail | None:
        """The WAL's committed bytes past the shadow's end, read in one go.

        Under the write lock, where nothing else can commit, this is all the
        copy that must happen there: verifying and writing them can wait until
        the lock is released (_copy_to_shadow), so the application waits for a
        read from the page cache, not for the whole copy.
        """
        path = self.shadow_wal_path(generation, index)
        offset = frame_align(os.path.getsize(path), self._page_size)
        frame_size = WAL_FRAME_HEADER_SIZE + self._page_size
        end = WAL_HEADER_SIZE + self._wal_frames()[0] * frame_size
        if end - offset > MAX_WAL_TAIL:
            return None  # too much to hold in memory at once: copy it the usual way
        with open(self.wal_path, "rb") as wal:
            data = os.pread(wal.fileno(), end - offset, offset) if end > offset else b""
            captured = _commit_time(wal.fileno())
        return _WALTail(offset, data, captured)

    def make_durable(self, generation: str, index: int, end: int) -> None:
        """fsync shadow index ``index`` if its first ``end`` bytes may not be on disk yet.

        Called before they are shipped: a replica must never hold frames that a
        power loss could take from the shadow, or lsr would resume behind it.
        """
        with self._durable_lock:
            g, i, size = self._durable
            if (g, i) == (generation, index) and end <= size:
                return
            path = self.shadow_wal_path(generation, index)
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    size = os.fstat(fd).st_size  # all of it: what a sync appends meanwhile waits
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise DatabaseError(f"cannot sync shadow wal {path}: {exc.strerror}") from exc
            self._durable = (generation, index, size)

    # -- checkpoints -----------------------------------------------------------
    def _checkpoint_due(self, shadow_size: int) -> str:
        ps = self._page_size
        wal_file_size = os.path.getsize(self.wal_path)
        if self.truncate_page_count > 0 and wal_file_size >= wal_size(ps, self.truncate_page_count):
            return CHECKPOINT_TRUNCATE
        if self.max_checkpoint_page_count > 0 and shadow_size >= wal_size(ps, self.max_checkpoint_page_count):
            return CHECKPOINT_RESTART
        if time.monotonic() < self._passive_retry_at:
            return ""
        self._passive_retry_at = 0.0  # due now, or moot: a restart by the application emptied the shadow
        if shadow_size >= wal_size(ps, self.min_checkpoint_page_count):
            return CHECKPOINT_PASSIVE
        if self._checkpoint_interval_due():
            return CHECKPOINT_PASSIVE
        return ""

    def checkpoint(self, mode: str = CHECKPOINT_PASSIVE) -> None:
        """Checkpoint now (after copying everything to the shadow WAL)."""
        with self._lock:
            if not self.open():
                return
            self._sync()
            self._checkpoint(mode)
        self._notify()

    def _checkpoint(self, mode: str, opportunistic: bool = False, restart_now: bool = True) -> None:
        """Backfill the WAL into the database file and let the WAL restart, losing nothing.

        lsr takes its read lock anew at the WAL's end under the write lock, and
        the bulk of the backfill then runs while the application keeps writing;
        only the last few frames are backfilled under the write lock, where lsr
        again reads the WAL's tail and takes its read lock anew (module docstring).
        The WAL then restarts at the next write: lsr's own, to its table, with
        ``restart_now`` or once the application is quiet, else the
        application's. With ``TRUNCATE`` lsr's write also shrinks the WAL file.
        """
        timeout = OPPORTUNISTIC_LOCK_TIMEOUT if opportunistic else BUSY_TIMEOUT
        self._write_busy.timeout = timeout.total_seconds()
        started, failed = time.monotonic(), True
        try:
            self._checkpoint_under_locks(mode, restart_now)
            failed = False
        except apsw.BusyError:
            failed = False  # put off, not failed
            # The application held its write lock past the timeout; a later
            # sync tries again.
            log.debug("%s: checkpoint %s skipped: database busy", self.path, mode)
            if opportunistic:
                self._retry_checkpoint_later()
            if not self._read_lock_held:
                self._acquire_read_lock()
        finally:
            self._write_busy.timeout = BUSY_TIMEOUT.total_seconds()
            self.stats.checkpoint(mode, time.monotonic() - started, failed)

    def _checkpoint_under_locks(self, mode: str, restart_now: bool) -> None:
        writer = self._writer()
        generation, index = self._current_head()
        # Move the read lock to the WAL's end and backfill up to it while the
        # application keeps writing. The move happens under the write lock, not
        # as _move_read_lock_off_db_file does: the application, sent to sleep by
        # its busy handler, cannot commit before lsr's backfill holds the
        # checkpoint lock, or its own automatic checkpoint would take the new
        # room and backfill thousands of frames inside one of its commits (0.5-0.8 s).
        self._copy_to_shadow(generation, index)
        retake = self._retake_read_lock(generation, index)
        try:
            self._run_checkpoint(writer)
        finally:
            self._copy_tail_to_shadow(generation, index, retake.tail)
        held = retake.held  # the longest the application waited for lsr here, in seconds
        # Copy all but the newest frames first, so that the application's wait
        # for the locked part below stays short.
        self._copy_to_shadow(generation, index)
        # PASSIVE gives up on frames the application's readers still use; the
        # forced modes try again for up to the busy timeout, as RESTART would,
        # but hold the write lock only for moments at a time.
        deadline = time.monotonic() + (BUSY_TIMEOUT.total_seconds() if mode != CHECKPOINT_PASSIVE else 0)
        while True:
            retake = self._retake_read_lock(generation, index, checkpoint=True)
            self._copy_tail_to_shadow(generation, index, retake.tail)
            held = max(held, retake.held)
            if retake.counts is None:
                # Handed over: backfill and copy without the write lock, then
                # take it again for what the application added meanwhile.
                busy, frames, backfilled = self._run_checkpoint(writer)
                busy = 1  # lsr's read-mark, past 0, still keeps the WAL from restarting
                self._copy_to_shadow(generation, index)
                self._publish(generation, index)
                self._notify()
            else:
                busy, frames, backfilled = retake.counts
            if (not busy and frames == backfilled) or time.monotonic() >= deadline:
                break
            time.sleep(FORCED_CHECKPOINT_RETRY)
        self._publish(generation, index)
        self._last_checkpoint = time.monotonic()
        if busy or frames != backfilled:
            log.debug("%s: checkpoint %s partial (%d of %d frames, write lock held %.1f ms): readers pin the wal",
                      self.path, mode, backfilled, frames, held * 1000)
            return
        if not restart_now and self.unwritten_for() < RESTART_QUIET.total_seconds():
            # The application is writing, and its next commit restarts the fully
            # backfilled WAL (lsr's read lock, on read-mark 0 now, does not hold
            # that back). A write of lsr's own would cost it a wait for the write
            # lock: at least the 1 ms first step of SQLite's busy handler.
            log.debug("%s: checkpoint %s done (%d frames, write lock held %.1f ms); the application restarts the wal",
                      self.path, mode, frames, held * 1000)
            self._retry_checkpoint_later()  # in case it went quiet instead
            return
        limit = 0 if mode == CHECKPOINT_TRUNCATE else -1
        writer.execute(f"PRAGMA journal_size_limit = {limit}")
        try:
            writer.execute(BUMP_SEQ_SQL)
        except apsw.BusyError:
            # The WAL is fully backfilled: the application's next write restarts it,
            # or lsr's own retry does.
            log.debug("%s: checkpoint %s done; wal restart deferred: database busy", self.path, mode)
            self._retry_checkpoint_later()
            return
        finally:
            writer.execute("PRAGMA journal_size_limit = -1")
        self._passive_retry_at = 0.0
        log.debug("%s: checkpoint %s done (%d frames, write lock held %.1f ms)", self.path, mode, frames, held * 1000)

    def _retry_checkpoint_later(self) -> None:
        self._passive_retry_at = time.monotonic() + OPPORTUNISTIC_RETRY_INTERVAL

    def seconds_until_checkpoint_retry(self) -> float | None:
        """When the monitor should sync again for a deferred checkpoint, even without writes."""
        if not self._passive_retry_at:
            return None
        return max(self._passive_retry_at - time.monotonic(), 0.0)

    @staticmethod
    def _run_checkpoint(conn: apsw.Connection | None) -> tuple[int, int, int]:
        assert conn is not None
        row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        return _int(row[0]), _int(row[1]), _int(row[2])

    # -- cleanup -------------------------------------------------------------
    def _clean(self) -> None:
        """Remove other generations and shadow WAL files every replica has shipped."""
        generation = self._current_head()[0]
        shipped = 0
        if generation and self.replicas:
            shipped = min((r.pos().index if r.pos().generation == generation else 0) for r in self.replicas)
            if self._cleaned == (generation, shipped):
                return  # nothing shipped since the last clean
            self._cleaned = (generation, shipped)
        generations_dir = os.path.join(self.meta_path, "generations")
        try:
            names = os.listdir(generations_dir)
        except FileNotFoundError:
            names = []
        for name in names:
            if name != generation:
                shutil.rmtree(os.path.join(generations_dir, name), ignore_errors=True)
        if not generation or not self.replicas:
            return
        keep_from = shipped - 1  # keep one shipped index as a margin, like Litestream
        removed = False
        for index in self.shadow_indexes(generation):
            if index < keep_from:
                for path in (self.shadow_wal_path(generation, index), self.commits_path(generation, index)):
                    try:
                        os.unlink(path)
                        removed = True
                    except FileNotFoundError:
                        pass
                self.commit_log.forget(generation, index)
        if removed:
            fsync_dir(self.shadow_wal_dir(generation))

    # -- snapshots -------------------------------------------------------------
    def snapshot_source(self, taken: set[int] | None = None) -> _SnapshotSource:
        """A consistent view of the database file for a snapshot.

        Holding lsr's lock keeps lsr's own checkpoints out; the read lock keeps
        the application's checkpoints from writing frames past the shadow
        position into the file. The snapshot belongs at the start of the
        current shadow index: replaying that index over it gives the database.

        Snapshots are named by index alone, so one must never replace another
        of the same index (a restore to a point between them would lose its
        base): when the current index is in ``taken``, the WAL is restarted
        first so that the snapshot opens a new index.
        """
        return _SnapshotSource(self, taken or set())


class _SnapshotSource:
    def __init__(self, db: DB, taken: set[int]) -> None:
        self.db = db
        self.taken = taken
        self.pos = Pos()

    def __enter__(self) -> _SnapshotSource:
        self.db._lock.acquire()
        try:
            if not self.db.open():
                raise DatabaseError(f"cannot snapshot {self.db.path}: database does not exist")
            self.db._sync()
            if self.db.pos().index in self.taken:
                self.db._checkpoint(CHECKPOINT_PASSIVE)
                self.db._sync()
                if self.db.pos().index in self.taken:
                    raise DatabaseError(
                        f"cannot snapshot {self.db.path}: index {self.db.pos().index:08x} already has a "
                        "snapshot and readers keep the WAL from restarting (will retry)"
                    )
            self.pos = self.db.pos()
        except BaseException:
            self.db._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.db._lock.release()

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The database file's bytes, read through lsr's long-lived descriptor."""
        offset = 0
        while chunk := os.pread(self.db._db_fd, size, offset):
            yield chunk
            offset += len(chunk)
