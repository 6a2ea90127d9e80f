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
while lsr was down) lsr starts a new generation. A dormant DB (dormancy.py) is
such a gap by choice: it wakes through the same check as a start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Generic, Iterator, Protocol, TypeVar

import apsw

from . import paths
from .dormancy import MIN_DORMANT_QUIET, AwakeLimit
from .checkpoint_policy import (
    CHECKPOINT_PASSIVE,
    CHECKPOINT_TRUNCATE,
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_MAX_CHECKPOINT_PAGE_COUNT,
    DEFAULT_MIN_CHECKPOINT_PAGE_COUNT,
    DEFAULT_TRUNCATE_PAGE_COUNT,
    CheckpointPolicy,
)
from .errors import DatabaseBusyError, DatabaseError, InUseError
from .fingerprint import WALFingerprint, Token
from .fsutil import read_pieces
from .lockfile import ProcessLock, describe_holder
from .pos import Pos
from .shadow import ShadowWAL, WALTail
from .ship_policy import MIN_SYNC_SPACING
from .sqlite_locks import (
    BUMP_SEQ_SQL,
    PollingBusyHandler,
    ReadLock,
    connect,
    hold_write_lock,
    read_wal_index,
)
from .stats import DBStats
from .wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WALHeader, frame_align

__all__ = [
    "DB",
    "ReplicaView",
    "DEFAULT_MONITOR_INTERVAL",
    "BUSY_TIMEOUT",
]

log = logging.getLogger(__name__)

DEFAULT_MONITOR_INTERVAL = timedelta(seconds=1)
BUSY_TIMEOUT = timedelta(seconds=1)
FORCED_CHECKPOINT_RETRY = 0.01
# How often commits made during a backfill are copied to the shadow while it
# runs: as often as syncs may run (a backfill holds up the DB's next sync).
COPY_DURING_BACKFILL_SPACING = MIN_SYNC_SPACING
# Scheduled PASSIVE checkpoints are opportunistic: under a busy writer they give
# up on the write lock quickly (instead of stalling every sync behind it) and
# try again a little later (checkpoint_policy); the forced modes wait the full busy timeout.
OPPORTUNISTIC_LOCK_TIMEOUT = timedelta(milliseconds=20)
# A checkpoint from a sync restarts the WAL with a write of lsr's own only once
# the application has not written for this long; before, its next commit does.
RESTART_QUIET = timedelta(milliseconds=50)

# In the meta directory: held (flock) by the one lsr process replicating the database.
LOCK_FILE_NAME = "lsr.lock"

# The most frames a checkpoint backfills under the write lock: SQLite's default
# wal_autocheckpoint, what an application's own commit backfills without lsr.
# Past it, the bulk is backfilled without the lock first (ReadLock.hand_over).
MAX_LOCKED_BACKFILL = 1000
# How far the WAL's end may pass lsr's read lock before a sync moves the lock
# there (ReadLock.advance): the most frames any one checkpoint, the
# application's own included, then finds to backfill beyond what was committed
# since, well under MAX_LOCKED_BACKFILL (1 MiB of 4 KiB pages).
ADVANCE_READ_LOCK_FRAMES = 256
# Under the write lock, how long lsr waits for a checkpoint of the
# application's, which holds SQLite's checkpoint lock, to end before its own.
CHECKPOINT_LOCK_WAIT = 0.05
CHECKPOINT_LOCK_POLL = 0.0005

# A WAL index lsr will not exceed within a generation (Litestream's MaxIndex).
MAX_WAL_INDEX = 0x7FFFFFFF


class ReplicaView(Protocol):
    """What a DB needs of a replica: how far it shipped, and how it writes (a generation's format)."""

    @property
    def name(self) -> str: ...

    @property
    def encryption(self) -> str: ...

    def pos(self) -> Pos: ...


R = TypeVar("R", bound=ReplicaView)

# (inode, size, mtime, ctime) of the WAL and of the database file: what a write to either changes.
Stamp = tuple[tuple[int, int, int, int] | None, tuple[int, int, int, int] | None]


def _stat(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass
class _Dormant:
    """What a dormant DB keeps of its files: their stamp when it let go, and how quiet the WAL was then."""

    stamp: Stamp
    quiet: float  # unwritten_for() at the time
    since: float  # monotonic


@dataclass
class _LockedRetake:
    """What DB._retake_read_lock did under the write lock, and for how long (s)."""

    tail: WALTail | None
    counts: tuple[int, int, int] | None  # the checkpoint's (busy, frames, backfilled); None: handed over
    held: float


@dataclass
class _SyncState:
    generation: str = ""
    reason: str = ""  # non-empty: continuity is lost, start a new generation
    restart: bool = False  # the real WAL was restarted; shadow moves to a new index
    shadow_index: int = 0
    shadow_size: int = 0


def _int(value: object) -> int:
    """An SQLite integer result."""
    assert isinstance(value, int)
    return value


class DB(Generic[R]):
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
        self.meta_path = paths.meta_dir(self.path, meta_path)
        self.monitor_interval = monitor_interval
        self.checkpoints = CheckpointPolicy(checkpoint_interval, min_checkpoint_page_count,
                                            max_checkpoint_page_count, truncate_page_count)
        self.replicas: list[R] = []
        self.shadow = ShadowWAL(self.meta_path)
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
        self._write_busy = PollingBusyHandler(BUSY_TIMEOUT)
        self._read_lock = ReadLock()
        # True once the read lock has been held without a gap since the shadow
        # last matched the end of the WAL (see the module docstring).
        self._continuous = False
        self._page_size = 0
        self._waiting_logged = False
        self.fingerprint = WALFingerprint(self.wal_path, lambda: self._shm_fd)
        # Position published to replicas: only whole, synced transactions.
        self._pos = Pos()
        # (generation, index) of the current shadow WAL as this process last
        # wrote it, so that a sync needs no directory listing; None re-reads disk.
        self._head: tuple[str, int] | None = None
        self._cleaned: tuple[str, int] | None = None  # what _clean last saw shipped
        self._change_listeners: list[Callable[[], None]] = []
        self.stats = DBStats()
        # Set while dormant (see dormancy.py and sleep()).
        self._dormant: _Dormant | None = None
        self._pins = 0  # kept_awake() blocks in progress: no sleep meanwhile
        self.awake_limit = AwakeLimit()  # the replicator's, shared by its DBs
        self.dormant_after: float | None = None  # seconds; 0: never dormant; None: as the replicator sees fit
        self._counted_awake = False  # counted in awake_limit

    # -- paths -------------------------------------------------------------
    @property
    def wal_path(self) -> str:
        return self.path + "-wal"

    @property
    def page_size(self) -> int:
        return self._page_size

    def __repr__(self) -> str:
        return f"DB({self.path!r})"

    # -- state -------------------------------------------------------------
    def _current_head(self) -> tuple[str, int]:
        """(generation, shadow index) now being written, from memory when possible."""
        if self._head is None:
            generation = self.shadow.current_generation()
            if not generation:
                return "", 0
            indexes = self.shadow.indexes(generation)
            if not indexes:
                return generation, -1
            self._head = (generation, indexes[-1])
        return self._head

    def pos(self) -> Pos:
        """The last position copied into the shadow WAL and synced to disk."""
        return self._pos

    def seconds_until_checkpoint(self) -> float | None:
        """Until the interval checkpoint of what was copied since the last one (None: nothing waits,
        or the DB is dormant: its first sync after a wake checkpoints then)."""
        if self._dormant is not None:
            return None
        return self.checkpoints.seconds_until_interval(self._page_size, self._pos.offset)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the syncing thread, or one it waits for) whenever the shadow WAL changes."""
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
        """Served: awake, or dormant (its next sync reopens it if its files changed)."""
        return self._read_lock.conn is not None or self._dormant is not None

    def is_awake(self) -> bool:
        """Holding its connection, read lock and descriptors."""
        return self._read_lock.conn is not None

    def is_dormant(self) -> bool:
        return self._dormant is not None

    def needs_wake(self) -> bool:
        """Whether a sync would open the database now: closed, or dormant with its files changed since."""
        if self._read_lock.conn is not None:
            return False
        dormant = self._dormant
        return dormant is None or self._stamp() != dormant.stamp

    def _stamp(self) -> Stamp:
        return _stat(self.wal_path), _stat(self.path)

    def open(self) -> bool:
        """Connect if the database exists; False while it does not exist yet."""
        with self._lock:
            if self._read_lock.conn is not None:
                return True
            if self._dormant is not None:
                log.debug("%s: waking", self.path, extra={"db": self.path})
                self._dormant = None
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

    def _writer(self) -> apsw.Connection:
        if self._conn is None:
            conn = connect(self.path, BUSY_TIMEOUT)
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
        self._read_lock.conn = self._read_connection()
        self._db_fd = os.open(self.path, os.O_RDONLY)
        self._shm_fd = os.open(self.path + "-shm", os.O_RDONLY)
        os.makedirs(self.meta_path, mode=0o700, exist_ok=True)
        # The read lock is only ever taken under the write lock (module docstring).
        self._ensure_wal_exists()
        self.shadow.truncate_torn_tail()
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
        self.awake_limit.opened()
        self._counted_awake = True
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
            self._dormant = None
            self._meta_lock.release()

    def sleep(self, quiet_for: float) -> bool:
        """Go dormant (dormancy.py) if the WAL was not written for ``quiet_for``
        seconds and everything it committed is in the shadow WAL; True if it did.

        The stamp is taken before the fingerprint is compared with the last
        sync's: a commit before the stamp shows in the fingerprint, one after it
        in the stamp, so no commit falls between the two."""
        quiet_for = max(quiet_for, MIN_DORMANT_QUIET)
        with self._lock:
            if self._read_lock.conn is None or self._pins or not self._continuous:
                return False
            if self.checkpoints.seconds_until_retry() is not None:
                return False
            stamp = self._stamp()
            quiet = self.unwritten_for()
            if quiet < quiet_for or self.fingerprint.take() != self.fingerprint.synced:
                return False
            # A closing connection must leave the WAL as it is: no checkpoint of
            # its own (PERSIST_WAL already keeps the file).
            for conn in (self._read_lock.conn, self._conn):
                if conn is not None:
                    conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            self._disconnect()
            self._dormant = _Dormant(stamp, quiet, time.monotonic())
            log.debug("%s: dormant", self.path, extra={"db": self.path})
            return True

    @contextmanager
    def kept_awake(self) -> Iterator[None]:
        """Open (waking a dormant DB) and stay awake while the block runs (a validation reads the live files)."""
        with self._lock:
            if not self.open():
                raise DatabaseError(f"cannot read {self.path}: database does not exist")
            self._pins += 1
        try:
            yield
        finally:
            with self._lock:
                self._pins -= 1

    def _disconnect(self) -> None:
        if self._counted_awake:
            self.awake_limit.closed()
            self._counted_awake = False
        self._read_lock.release()
        for conn in (self._read_lock.conn, self._conn):
            if conn is not None:
                try:
                    conn.close()
                except apsw.Error:
                    pass
        self._conn = self._read_lock.conn = None
        for fd in (self._db_fd, self._shm_fd):
            if fd >= 0:
                os.close(fd)
        self._db_fd = self._shm_fd = -1
        self._continuous = False
        self._head = self._cleaned = None

    # -- locks -------------------------------------------------------------
    def _acquire_read_lock(self) -> None:
        try:
            self._read_lock.acquire(self._shm_fd)
        except BaseException:
            # A gap in the read lock: continuity can no longer be proven.
            self._continuous = False
            raise

    def _advance_read_lock(self) -> None:
        """Keep the read lock near the WAL's end (ReadLock.advance), copying the
        WAL to its end while both transactions hold it. Where checkpoints left
        MAX_LOCKED_BACKFILL frames behind the old lock (an application whose own
        are off), lsr backfills up to the new one itself, outside the write lock."""
        lock = self._read_lock
        old_mark, was_on_db_file = lock.mark, lock.on_db_file
        if (lock.advance(self._read_connection, self._shm_fd, lambda: self._copy_new_frames(None),
                         ADVANCE_READ_LOCK_FRAMES)
                and not was_on_db_file
                and old_mark - read_wal_index(self._shm_fd).backfilled >= MAX_LOCKED_BACKFILL):
            self._run_checkpoint(self._writer())

    def _read_connection(self) -> apsw.Connection:
        """A new connection for the read lock (it runs no statement worth caching)."""
        conn = connect(self.path, BUSY_TIMEOUT, statement_cache=0)
        # It reads one page now and then: with no page cache, SQLite also frees
        # the 20 pages it allocated up front, ~80 KiB of each idle database's ~0.17 MiB.
        conn.execute("PRAGMA cache_size = 0")
        return conn

    def _write_lock(self) -> AbstractContextManager[None]:
        """Hold SQLite's write lock: the application cannot commit meanwhile."""
        return hold_write_lock(self._writer())

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
            if self._dormant is not None and self._stamp() == self._dormant.stamp:
                return False  # nothing written since everything was copied (sleep)
            if not self.open():
                return False
            # Taken before copying: a commit that lands during the copy changes
            # the fingerprint, so the next sync will not skip it.
            token, token_at = self.fingerprint.take(), time.monotonic()
            if (
                not force
                and token == self.fingerprint.synced
                and self._continuous
                and not self.checkpoints.interval_due(self._page_size, self._pos.offset)
                and not self.checkpoints.retry_pending()
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

    def _sync(self, token: tuple[Token, float] | None = None) -> bool:
        """Copy the WAL's new frames to the shadow WAL, then checkpoint when due.

        ``token``: the WAL's fingerprint taken before this sync began, and when.
        """
        published = self._pos
        after = self._copy_new_frames(token)
        # Frames may have been copied before this sync (at open): compare what
        # replicas were last told, not what this call copied.
        changed = self._pos != published
        mode = self.checkpoints.due(self._page_size, os.path.getsize(self.wal_path), after, self._pos.offset)
        if mode:
            if changed:
                self._notify()  # replicas ship what was copied while the checkpoint runs
            self._checkpoint(mode, opportunistic=mode != CHECKPOINT_TRUNCATE,
                             restart_now=mode == CHECKPOINT_TRUNCATE)
            # The write with which lsr restarted the WAL opens the next shadow
            # index now, not at the next wake: until it is copied, the WAL looks
            # written to (unwritten_for), and a paused writer's S3 replica would
            # wait one more sync for its flush.
            self._copy_new_frames((self.fingerprint.take(), time.monotonic()) if token is not None else None)
            changed = True
        self._advance_read_lock()
        changed = changed or self._pos != published
        self._clean()
        return changed

    def _copy_new_frames(self, token: tuple[Token, float] | None) -> int:
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
            self.fingerprint.saw_synced(*token)
        return after

    def unwritten_for(self) -> float:
        """Seconds for which the WAL has certainly not been written (see fingerprint)."""
        dormant = self._dormant
        if dormant is not None:
            if self._stamp() != dormant.stamp:
                return 0.0
            return dormant.quiet + time.monotonic() - dormant.since
        return self.fingerprint.unwritten_for()

    def _publish(self, generation: str, index: int) -> None:
        self._pos = Pos(generation, index, self.shadow.size(generation, index, self._page_size))

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
        if not self._continuous and (change := self.shadow.format_change(generation, self._replica_formats())):
            state.reason = change
            return state
        if index < 0:
            state.reason = "no shadow wal"
            return state
        if index >= MAX_WAL_INDEX:
            state.reason = "max wal index exceeded"
            return state
        state.shadow_index = index
        shadow_path = self.shadow.wal_path(generation, index)
        shadow_size = self.shadow.size(generation, index, self._page_size)
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
        wal_header, *wal_last = read_pieces(self.wal_path, *pieces)
        shadow_header, *shadow_last = read_pieces(shadow_path, *pieces)
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

    def _replica_formats(self) -> list[tuple[str, str]]:
        return [(r.name, r.encryption) for r in self.replicas]

    def _create_generation(self) -> str:
        generation = self.shadow.create_generation(self._replica_formats())
        self._init_shadow_wal(generation, 0)
        self.shadow.set_current(generation)
        self._head = (generation, 0)
        self._continuous = True
        self._clean()
        return generation

    def _init_shadow_wal(self, generation: str, index: int) -> None:
        """Start shadow index ``index`` with the real WAL's current header."""
        header = WALHeader.parse(read_pieces(self.wal_path, (0, WAL_HEADER_SIZE))[0])
        self._page_size = header.page_size
        self.shadow.init_index(generation, index, header)
        if self._head is not None and self._head[0] == generation:
            self._head = (generation, index)
        self._copy_to_shadow(generation, index)

    def _copy_to_shadow(self, generation: str, index: int, tail: WALTail | None = None) -> int:
        """Append the WAL's newly committed frames to the shadow (shadow.append); returns its size."""
        published = (self._pos.generation, self._pos.index) == (generation, index)
        shm = read_wal_index(self._shm_fd)
        committed = WAL_HEADER_SIZE + shm.mx_frame * (WAL_FRAME_HEADER_SIZE + self._page_size) if shm.settled else None
        start, size = self.shadow.append(generation, index, self.wal_path, tail, committed_end=committed,
                                         progress=self._publish_progress if published else None)
        self.stats.total_wal_bytes += size - start
        if published and size > self._pos.offset:
            # At once, not at the sync's end: a checkpoint may follow, whose
            # backfill takes most of a second after a burst.
            self._publish_progress(size)
        return size

    def _publish_progress(self, size: int) -> None:
        """Publish the part of a long copy already in the shadow: replicas ship
        it while the rest is copied (a burst's backlog drains sooner)."""
        self._pos = Pos(self._pos.generation, self._pos.index, size)
        self._notify()

    def _retake_read_lock(self, generation: str, index: int, checkpoint: bool = False) -> _LockedRetake:
        """Under the write lock: read the WAL's tail, take the read lock anew at
        the WAL's end and, with ``checkpoint``, backfill everything in between
        from the read connection. The caller copies the tail to the shadow
        (_copy_tail_to_shadow) once the lock is gone."""
        counts = None
        with self._write_lock():
            locked_at = time.monotonic()
            tail = self._read_wal_tail(generation, index)
            shm = read_wal_index(self._shm_fd)
            # Too much to copy, or to backfill, while the application waits:
            # move the read lock without either, and leave them to the caller.
            if (tail is None or (checkpoint and shm.mx_frame - shm.backfilled > MAX_LOCKED_BACKFILL)) and (
                self._read_lock.hand_over(self._read_connection, self._shm_fd)
            ):
                return _LockedRetake(tail, None, time.monotonic() - locked_at)
            if tail is None:
                self._copy_to_shadow(generation, index)
            self._read_lock.release()
            if checkpoint:
                # The write connection is inside its transaction; checkpoint from
                # the (now idle) read connection.
                counts = self._checkpoint_once_free(self._read_lock.conn)
            self._acquire_read_lock()
            held = time.monotonic() - locked_at
        return _LockedRetake(tail, counts, held)

    def _copy_tail_to_shadow(self, generation: str, index: int, tail: WALTail | None) -> None:
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

    @contextmanager
    def _copying_meanwhile(self, generation: str, index: int, tail: WALTail | None) -> Iterator[None]:
        """While the block runs (a backfill, which must start before the
        application's next commit and can take most of a second under a
        saturating writer, or the flush before a checkpoint, as long under a
        busy disk), copy to the shadow and publish on a thread of its
        own: ``tail`` first, then every COPY_DURING_BACKFILL_SPACING what the
        application commits meanwhile (lsr's read lock keeps the WAL from
        restarting). Joined at the block's end, re-raising what a copy raised.
        """
        failure: list[BaseException] = []
        done = threading.Event()

        def copy() -> None:
            try:
                if tail is not None and tail.data:
                    self._copy_tail_to_shadow(generation, index, tail)
                    self._publish(generation, index)
                    self._notify()
                seen = -1
                while not done.wait(COPY_DURING_BACKFILL_SPACING):
                    mx_frame = read_wal_index(self._shm_fd).mx_frame
                    if mx_frame != seen:  # a commit since the last look
                        seen = mx_frame
                        self._copy_to_shadow(generation, index)
            except BaseException as exc:  # re-raised by the owner below
                failure.append(exc)

        copier = threading.Thread(target=copy, name="lsr-copy-aside")
        copier.start()
        try:
            yield
        finally:
            done.set()
            copier.join()
        if failure:
            raise failure[0]

    def _read_wal_tail(self, generation: str, index: int) -> WALTail | None:
        """The WAL's committed bytes past the shadow's end, read in one go.

        Under the write lock, where nothing else can commit, this is all the
        copy that must happen there: verifying and writing them can wait until
        the lock is released (_copy_to_shadow), so the application waits for a
        read from the page cache, not for the whole copy.
        """
        end = WAL_HEADER_SIZE + read_wal_index(self._shm_fd).mx_frame * (WAL_FRAME_HEADER_SIZE + self._page_size)
        return self.shadow.read_wal_tail(generation, index, self._page_size, self.wal_path, end)

    # -- checkpoints -----------------------------------------------------------
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
                self.checkpoints.retry_later()
            if not self._read_lock.held:
                self._acquire_read_lock()
        finally:
            self._write_busy.timeout = BUSY_TIMEOUT.total_seconds()
            self.stats.checkpoint(mode, time.monotonic() - started, failed)

    def _checkpoint_under_locks(self, mode: str, restart_now: bool) -> None:
        writer = self._writer()
        generation, index = self._current_head()
        self._copy_to_shadow(generation, index)
        held = 0.0  # the longest the application waited for lsr here, in seconds
        shm = read_wal_index(self._shm_fd)
        if shm.mx_frame - shm.backfilled > MAX_LOCKED_BACKFILL:
            # A backlog (lsr's first checkpoint, or one whose read lock could
            # not advance): move the read lock to the WAL's end and backfill up
            # to it while the application keeps writing. The move happens under
            # the write lock, not as ReadLock.advance does: the application,
            # sent to sleep by its busy handler, cannot commit before lsr's
            # backfill holds the checkpoint lock, or its own automatic checkpoint
            # would take the backlog inside one of its commits.
            retake = self._retake_read_lock(generation, index)
            # The tail holds the newest commits, and this backfill can take most of
            # a second (a burst's whole WAL): they go to the shadow and on to the
            # replicas meanwhile, not after it (SQLite releases the GIL).
            with self._copying_meanwhile(generation, index, retake.tail):
                self._run_checkpoint(writer)
            held = retake.held
            # Copy all but the newest frames first, so that the application's wait
            # for the locked part below stays short.
            self._copy_to_shadow(generation, index)
        with self._copying_meanwhile(generation, index, None):
            self._flush_before_locked_checkpoint()
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
                with self._copying_meanwhile(generation, index, None):
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
        self.checkpoints.last = time.monotonic()
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
            self.checkpoints.retry_later()  # in case it went quiet instead
            return
        limit = 0 if mode == CHECKPOINT_TRUNCATE else -1
        writer.execute(f"PRAGMA journal_size_limit = {limit}")
        try:
            writer.execute(BUMP_SEQ_SQL)
        except apsw.BusyError:
            # The WAL is fully backfilled: the application's next write restarts it,
            # or lsr's own retry does.
            log.debug("%s: checkpoint %s done; wal restart deferred: database busy", self.path, mode)
            self.checkpoints.retry_later()
            return
        finally:
            writer.execute("PRAGMA journal_size_limit = -1")
        self.checkpoints.retry_at = 0.0
        log.debug("%s: checkpoint %s done (%d frames, write lock held %.1f ms)", self.path, mode, frames, held * 1000)

    def _flush_before_locked_checkpoint(self) -> None:
        """fdatasync the database and the WAL before taking the write lock: the
        checkpoint under it then syncs only what was written since, not all
        that the application's own checkpoints and commits left in the page
        cache (under a saturating writer those fsyncs were most of the hold,
        docs/bench.md). The WAL file carries none of SQLite's locks, so this
        process may open and close it."""
        os.fdatasync(self._db_fd)
        try:
            wal_fd = os.open(self.wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return  # gone with the application's last connection: the checkpoint finds no WAL either
        try:
            os.fdatasync(wal_fd)
        finally:
            os.close(wal_fd)

    def _checkpoint_once_free(self, conn: apsw.Connection | None) -> tuple[int, int, int]:
        """Under the write lock: a PASSIVE checkpoint, after waiting up to
        CHECKPOINT_LOCK_WAIT for one of the application's to end. SQLite never
        waits for its checkpoint lock (busy, with no counts), and the
        application's, which cannot be long (ReadLock.advance), holds it in the
        gap after a commit where lsr takes the write lock."""
        deadline = time.monotonic() + CHECKPOINT_LOCK_WAIT
        while True:
            counts = self._run_checkpoint(conn)
            if counts[1] != -1 or time.monotonic() >= deadline:
                return counts
            time.sleep(CHECKPOINT_LOCK_POLL)

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
        self.shadow.remove_other_generations(generation)
        if not generation or not self.replicas:
            return
        self.shadow.remove_before(generation, shipped - 1)  # keep one shipped index as a margin, like Litestream

    # -- snapshots -------------------------------------------------------------
    @contextmanager
    def snapshot_source(self, taken: set[int] | None = None) -> Iterator[Pos]:
        """A consistent view of the database file for a snapshot, at the position it yields;
        read the file meanwhile with ``file_chunks``.

        Holding lsr's lock keeps lsr's own checkpoints out; the read lock keeps
        the application's checkpoints from writing frames past the shadow
        position into the file. The snapshot belongs at the start of the
        current shadow index: replaying that index over it gives the database.

        Snapshots are named by index alone, so one must never replace another
        of the same index (a restore to a point between them would lose its
        base): when the current index is in ``taken``, the WAL is restarted
        first so that the snapshot opens a new index.
        """
        taken = taken or set()
        with self._lock:
            if not self.open():
                raise DatabaseError(f"cannot snapshot {self.path}: database does not exist")
            self._sync()
            if self._pos.index in taken:
                self._checkpoint(CHECKPOINT_PASSIVE)
                self._sync()
                if self._pos.index in taken:
                    raise DatabaseError(
                        f"cannot snapshot {self.path}: index {self._pos.index:08x} already has a "
                        "snapshot and readers keep the WAL from restarting (will retry)"
                    )
            yield self._pos

    def file_chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The database file's bytes, read through lsr's long-lived descriptor (see snapshot_source)."""
        offset = 0
        while chunk := os.pread(self._db_fd, size, offset):
            yield chunk
            offset += len(chunk)
