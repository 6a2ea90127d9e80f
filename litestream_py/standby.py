"""STANDBY: a copy of a database that a follower keeps current while others read it.

Invariant: a reader of STANDBY sees only states the primary committed.

Pages reach STANDBY the way SQLite itself changes a database in rollback-journal
mode, under SQLite's own file locks (this SQLite build has no ``sqlite_dbpage``
to write pages through SQL):

1. ``BEGIN EXCLUSIVE`` on a connection to STANDBY: SQLite waits for readers
   to finish their read transactions and keeps new ones out (they wait on
   their busy timeout).
2. The pages about to change are copied, as SQLite's journal format, into
   ``STANDBY-journal`` (synced). Killed from here to step 5, the journal is
   *hot*: the next connection to open STANDBY rolls it back, as SQLite does
   after a crashed writer, so no reader ever sees half an apply.
3. The follow position is saved beside STANDBY (``STANDBY-lsr-follow.json``,
   temp + fsync + rename) for both outcomes, keyed by the change counter
   (page 1, offset 24): the counter STANDBY holds says which one happened.
4. The pages are written, page 1's header is set (rollback mode, a new change
   counter so readers drop their caches, the page count), and STANDBY synced.
5. Deleting the journal commits; ``COMMIT`` releases the lock.

STANDBY is in rollback-journal mode while followed (its readers need no
``-shm``) and is switched back to WAL mode when the follower stops, so it can
be promoted as it is. No file descriptor of STANDBY is ever closed while the
connection lives: closing any descriptor of a file drops every POSIX lock the
process holds on it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import struct
import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import apsw

from .errors import StandbyError
from .fsutil import atomic_write, fsync_dir

__all__ = ["FollowState", "Standby", "STATE_SUFFIX", "page_size_of", "read_database_pages"]

log = logging.getLogger(__name__)

STATE_SUFFIX = "-lsr-follow.json"
JOURNAL_SUFFIX = "-journal"
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
# The journal header takes one sector; SQLite reads the size back from it.
JOURNAL_SECTOR_SIZE = 512
# Page 1 header fields (SQLite file format, "The Database Header").
HDR_PAGE_SIZE = 16
HDR_WRITE_VERSION = 18
HDR_READ_VERSION = 19
HDR_CHANGE_COUNTER = 24
HDR_PAGE_COUNT = 28
HDR_VERSION_VALID_FOR = 92
ROLLBACK_MODE = 1
# How long one attempt at the exclusive lock waits for readers.
LOCK_TIMEOUT_MS = 2000
# Lock timeouts a stopping follower waits out to leave STANDBY in WAL mode.
CLOSE_ATTEMPTS = 10


@dataclass(frozen=True)
class FollowState:
    """How far STANDBY is along the replica's WAL stream.

    ``offset`` is where the next segment to read starts, with the WAL's
    ``checksum`` there and its ``header`` (hex, "" at the start of an index);
    no transaction is open at it. ``applied_index``/``applied`` is the end of
    the last commit applied: commits re-read up to it are not applied again.
    """

    replica: str
    generation: str
    index: int
    offset: int
    checksum: tuple[int, int]
    header: str
    applied_index: int
    applied: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FollowState:
        return cls(
            str(d["replica"]), str(d["generation"]), int(d["index"]), int(d["offset"]),
            (int(d["checksum"][0]), int(d["checksum"][1])), str(d["header"]), int(d["applied_index"]),
            int(d["applied"]),
        )


def page_size_of(page1: bytes) -> int:
    (size,) = struct.unpack_from(">H", page1, HDR_PAGE_SIZE)
    return 65536 if size == 1 else size


def _journal_checksum(nonce: int, page: bytes) -> int:
    """SQLite's journal record checksum: the nonce plus every 200th byte from the end."""
    total = nonce
    i = len(page) - 200
    while i > 0:
        total += page[i]
        i -= 200
    return total & 0xFFFFFFFF


class Standby:
    """The follower's handle on STANDBY: applies pages as described above."""

    def __init__(self, path: str, stop: threading.Event) -> None:
        self.path = os.path.abspath(path)
        self.state_path = self.path + STATE_SUFFIX
        self.journal_path = self.path + JOURNAL_SUFFIX
        self._stop = stop
        self._conn: apsw.Connection | None = None
        self._fd = -1

    # -- opening and closing ---------------------------------------------------
    def open(self) -> FollowState:
        """Open STANDBY (rolling back a hot journal) and return where it stands."""
        wal = self.path + "-wal"
        if os.path.exists(wal) and os.path.getsize(wal) > 32:
            raise StandbyError(
                f"cannot follow into {self.path}: it was written since the follower stopped "
                f"({wal} holds frames); restore into a new path"
            )
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        conn = apsw.Connection(self.path)
        self._conn = conn
        conn.set_busy_timeout(LOCK_TIMEOUT_MS)
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # rolls a hot journal back
        states = self._read_states()
        mode = str(conn.execute("PRAGMA journal_mode").fetchall()[0][0]).lower()
        state = states.get(self._counter())
        if state is None:
            raise StandbyError(
                f"cannot follow into {self.path}: its follow state {self.state_path} does not match it; "
                "remove both to restore afresh"
            )
        if mode != "delete":
            self._rekey(state, lambda: conn.execute("PRAGMA journal_mode=DELETE").fetchall())
        return state

    def close(self, state: FollowState | None) -> None:
        """Switch STANDBY back to WAL mode (it can be promoted as it is) and close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if state is not None:
                try:
                    self._rekey(state, lambda: conn.execute("PRAGMA journal_mode=WAL").fetchall(), CLOSE_ATTEMPTS)
                except StandbyError as exc:
                    log.error("%s; it stays in rollback mode: run PRAGMA journal_mode=WAL on it before promoting", exc)
        finally:
            conn.close()
            os.close(self._fd)
            self._fd = -1

    def _rekey(self, state: FollowState, change: Callable[[], object], attempts: int | None = None) -> None:
        """Run ``change`` (which bumps the change counter) with the state saved for either outcome.

        Switching journal modes needs STANDBY to itself: it is retried while
        readers have it open, until stopped (or ``attempts`` run out).
        """
        before = self._counter()
        self._write_states({before: state, (before + 1) & 0xFFFFFFFF: state})
        tries = 0
        while True:
            try:
                change()
                break
            except apsw.BusyError:
                tries += 1
                if tries == 1:
                    log.warning("waiting for readers of %s to let it switch journal mode", self.path)
                if (attempts is not None and tries >= attempts) or (attempts is None and self._stop.is_set()):
                    raise StandbyError(
                        f"cannot switch the journal mode of {self.path}: readers keep it open"
                    ) from None
        self._write_states({self._counter(): state})

    # -- the state file ---------------------------------------------------------
    def _read_states(self) -> dict[int, FollowState]:
        try:
            with open(self.state_path, encoding="utf-8") as f:
                raw = json.load(f)
            return {int(k): FollowState.from_json(v) for k, v in raw["states"].items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError) as exc:
            raise StandbyError(f"cannot read follow state {self.state_path}: {exc}") from exc

    def _write_states(self, states: dict[int, FollowState]) -> None:
        body = {"states": {str(k): asdict(v) for k, v in states.items()}}
        with atomic_write(self.state_path, 0o600) as f:
            f.write(json.dumps(body, sort_keys=True).encode())

    @staticmethod
    def prepare(db_path: str, state: FollowState) -> None:
        """Ready a freshly restored, private file to become STANDBY: rollback mode
        (switched while no reader can have it open) and its follow state beside it."""
        conn = apsw.Connection(db_path)
        try:
            conn.execute("PRAGMA journal_mode=DELETE").fetchall()
        finally:
            conn.close()
        with open(db_path, "rb") as f:
            counter = struct.unpack(">I", f.read(HDR_CHANGE_COUNTER + 4)[HDR_CHANGE_COUNTER:])[0]
        body = {"states": {str(counter): asdict(state)}}
        with atomic_write(os.path.abspath(db_path) + STATE_SUFFIX, 0o600) as f:
            f.write(json.dumps(body, sort_keys=True).encode())

    # -- applying ---------------------------------------------------------------
    def _page1(self) -> bytes:
        return os.pread(self._fd, 100, 0)

    def _counter(self) -> int:
        return int(struct.unpack_from(">I", self._page1(), HDR_CHANGE_COUNTER)[0])

    def page_size(self) -> int:
        return page_size_of(self._page1())

    def apply(self, pages: dict[int, bytes], db_pages: int, before: FollowState, after: FollowState) -> None:
        """Make STANDBY hold ``pages`` and be ``db_pages`` long, atomically for its readers."""
        conn = self._conn
        assert conn is not None
        self._lock_exclusive(conn)
        try:
            self._apply_locked(pages, db_pages, before, after)
        finally:
            conn.execute("COMMIT")

    def _lock_exclusive(self, conn: apsw.Connection) -> None:
        waited = False
        while True:
            try:
                conn.execute("BEGIN EXCLUSIVE")
                return
            except apsw.BusyError:
                if self._stop.is_set():
                    raise StandbyError(f"cannot apply to {self.path}: stopping while readers hold it") from None
                if not waited:
                    log.warning("waiting for readers of %s to let the follower apply", self.path)
                    waited = True

    def _apply_locked(self, pages: dict[int, bytes], db_pages: int, before: FollowState, after: FollowState) -> None:
        fd = self._fd
        page1 = os.pread(fd, 4096, 0)
        page_size = page_size_of(page1)
        for pgno, page in pages.items():
            if len(page) != page_size:
                raise StandbyError(
                    f"cannot apply page {pgno} to {self.path}: {len(page)} bytes, STANDBY's pages are {page_size}"
                )
        old_pages = os.fstat(fd).st_size // page_size
        counter = int(struct.unpack_from(">I", page1, HDR_CHANGE_COUNTER)[0])
        new_counter = (counter + 1) & 0xFFFFFFFF
        # Pages a shrink cuts off are saved too: a rollback extends the file again, with zeros unless journaled.
        touched = sorted({1, *(p for p in pages if p <= old_pages), *range(db_pages + 1, old_pages + 1)})
        self._write_journal(touched, old_pages, page_size)
        self._write_states({counter: before, new_counter: after})
        first = bytearray(pages[1] if 1 in pages else os.pread(fd, page_size, 0))
        first[HDR_WRITE_VERSION] = first[HDR_READ_VERSION] = ROLLBACK_MODE
        struct.pack_into(">I", first, HDR_CHANGE_COUNTER, new_counter)
        struct.pack_into(">I", first, HDR_PAGE_COUNT, db_pages)
        struct.pack_into(">I", first, HDR_VERSION_VALID_FOR, new_counter)
        writes = dict(pages)
        writes[1] = bytes(first)
        for pgno in sorted(writes):
            if pgno <= db_pages:
                os.pwrite(fd, writes[pgno], (pgno - 1) * page_size)
        if db_pages != old_pages or os.fstat(fd).st_size != db_pages * page_size:
            os.ftruncate(fd, db_pages * page_size)
        os.fsync(fd)
        os.unlink(self.journal_path)  # the commit point
        fsync_dir(os.path.dirname(self.path))

    def _write_journal(self, pgnos: Iterable[int], old_pages: int, page_size: int) -> None:
        """The original of every page about to change, in SQLite's rollback journal format."""
        nonce = secrets.randbits(32)
        records = []
        for pgno in pgnos:
            page = os.pread(self._fd, page_size, (pgno - 1) * page_size)
            records.append(struct.pack(">I", pgno) + page + struct.pack(">I", _journal_checksum(nonce, page)))
        header = JOURNAL_MAGIC + struct.pack(">IIIII", len(records), nonce, old_pages, JOURNAL_SECTOR_SIZE, page_size)
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, header.ljust(JOURNAL_SECTOR_SIZE, b"\0") + b"".join(records))
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(os.path.dirname(self.path))


def read_database_pages(path: str) -> tuple[dict[int, bytes], int]:
    """Every page of a private database file (a restore's output) and its page count."""
    with open(path, "rb") as f:
        data = f.read()
    page_size = page_size_of(data[:100])
    count = len(data) // page_size
    return {i + 1: data[i * page_size : (i + 1) * page_size] for i in range(count)}, count
