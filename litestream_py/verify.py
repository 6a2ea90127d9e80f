"""Verify a replica: restore it to a temporary file and compare it with the live database.

The comparison is logical (a hash of every table's schema and rows), at the same
position: lsr briefly holds the write lock to pin the live WAL's end, starts a
read transaction there, maps that end to a shadow WAL position, waits for the
replica to hold it, and restores exactly through it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import apsw

from . import paths
from .errors import DatabaseError, LitestreamError, NoSnapshotError, RestoreGapError
from .pos import Pos
from .replica_client import ReplicaReader
from .restore import RestoreOptions, restore
from .shadow import ShadowWAL
from .sqlite_locks import BUMP_SEQ_SQL, read_wal_index
from .wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE

__all__ = ["VerifyResult", "logical_digest", "verify_database", "verify_replica"]

log = logging.getLogger(__name__)

DEFAULT_WAIT = 30.0


@dataclass
class VerifyResult:
    ok: bool
    pos: Pos
    tables: int
    first_mismatch: str = ""  # the first table whose content differs
    # False: a replica checked on its own (integrity_check), with no live database to compare.
    compared: bool = True
    problem: str = ""  # what integrity_check found, when not compared

    def describe(self) -> str:
        if not self.compared:
            if self.ok:
                return (f"OK: restored {self.tables} tables at {self.pos}, integrity_check ok "
                        "(nothing compared: give DB_PATH to compare with the live database)")
            return f"CORRUPT at {self.pos}: integrity_check: {self.problem}"
        if self.ok:
            return f"OK: {self.tables} tables match at {self.pos}"
        return f"MISMATCH at {self.pos}: table {self.first_mismatch} differs"


def logical_digest(conn: apsw.Connection) -> list[tuple[str, str]]:
    """[(table, sha256 of its schema and rows in rowid or primary-key order)], sorted by name."""
    import hashlib  # here: it maps OpenSSL, which a sidecar without validation never needs (see digest.py)

    out = []
    schema = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    for name, sql in schema:
        h = hashlib.sha256(str(sql).encode())
        quoted = '"' + str(name).replace('"', '""') + '"'
        try:
            cursor = conn.execute(f"SELECT * FROM {quoted} ORDER BY rowid")
        except apsw.SQLError:  # WITHOUT ROWID: the primary key orders it
            cursor = conn.execute(f"SELECT * FROM {quoted} ORDER BY 1")
        for row in cursor:
            h.update(repr(row).encode())
        out.append((str(name), h.hexdigest()))
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type != 'table' ORDER BY name").fetchall()
    out.append(("(schema)", hashlib.sha256(repr(indexes).encode()).hexdigest()))
    return out


def _digest_file(path: str) -> list[tuple[str, str]]:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return logical_digest(conn)
    finally:
        conn.close()


@contextmanager
def _live_read(db_path: str, meta_path: str | None, shm_fd: int | None) -> Iterator[tuple[Pos, apsw.Connection]]:
    """A read transaction on the live database, and the shadow WAL position it sees.

    Inside the sidecar, pass the DB's own -shm descriptor: closing another one
    would drop the sidecar's locks on that file (POSIX record locks are per process).
    """
    meta = paths.meta_dir(db_path, meta_path)
    if not os.path.exists(db_path):
        raise DatabaseError(f"cannot verify {db_path}: database does not exist")
    own_fd = shm_fd is None
    if shm_fd is None:
        # Opened before, closed after the connections, for the same reason.
        shm_fd = os.open(db_path + "-shm", os.O_RDONLY)
    writer = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READWRITE)
    reader = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        writer.set_busy_timeout(5000)
        reader.set_busy_timeout(5000)
        if read_wal_index(shm_fd).mx_frame == 0:
            # An empty WAL has no position to name: give it one commit of lsr's own.
            writer.execute(BUMP_SEQ_SQL)
        writer.execute("BEGIN IMMEDIATE")
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
            shm = read_wal_index(shm_fd)
            with open(db_path + "-wal", "rb") as wal:
                wal_header = wal.read(WAL_HEADER_SIZE)
        finally:
            writer.execute("ROLLBACK")
        pos = _shadow_pos(ShadowWAL(meta), wal_header, WAL_HEADER_SIZE + shm.mx_frame * (WAL_FRAME_HEADER_SIZE + shm.page_size))
        yield pos, reader
    finally:
        reader.close()
        writer.close()
        if own_fd:
            os.close(shm_fd)


def _shadow_pos(shadow: ShadowWAL, wal_header: bytes, end: int, wait: float = DEFAULT_WAIT) -> Pos:
    """The shadow WAL index that copies the live WAL (same header), waiting for the sidecar."""
    deadline = time.monotonic() + wait
    while True:
        try:
            generation = shadow.current_generation()
            for index in reversed(shadow.indexes(generation) if generation else []):
                if shadow.header(generation, index).raw == wal_header:
                    return Pos(generation, index, end)
        except (FileNotFoundError, LitestreamError):
            pass
        if time.monotonic() > deadline:
            raise DatabaseError(
                f"cannot verify: no shadow WAL in {shadow.meta_path} matches the live WAL (is `lsr replicate` running?)"
            )
        time.sleep(0.1)


def _restore_to_temp(client: ReplicaReader, opts: RestoreOptions, wait: float,
                     catch_up: Callable[[], object] | None) -> None:
    deadline = time.monotonic() + wait
    while True:
        if catch_up is not None:
            catch_up()
        try:
            restore(client, opts)
            return
        except (RestoreGapError, NoSnapshotError):
            # The replica has not caught up with the position yet (or, for a
            # generation the sidecar has just begun, not even its snapshot).
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def verify_database(
    db_path: str,
    client: ReplicaReader,
    meta_path: str | None = None,
    wait: float = DEFAULT_WAIT,
    *,
    shm_fd: int | None = None,
    catch_up: Callable[[], object] | None = None,
) -> VerifyResult:
    """Compare the live database with the replica restored at the same position.

    ``catch_up`` ships pending WAL (used inside the sidecar, whose shipper is busy verifying).
    """
    with tempfile.TemporaryDirectory(prefix="lsr-verify-") as tmp:
        out = os.path.join(tmp, "restored.db")
        try:
            with _live_read(db_path, meta_path, shm_fd) as (pos, reader):
                live = logical_digest(reader)
        except apsw.Error as exc:
            raise DatabaseError(f"cannot read database {db_path}: {exc}") from exc
        opts = RestoreOptions(output_path=out, generation=pos.generation, pos=pos)
        _restore_to_temp(client, opts, wait, catch_up)
        restored = _digest_file(out)
    return _compare(live, restored, pos)


def verify_replica(client: ReplicaReader) -> VerifyResult:
    """Without a live database: restore the latest state and check its integrity."""
    with tempfile.TemporaryDirectory(prefix="lsr-verify-") as tmp:
        out = os.path.join(tmp, "restored.db")
        result = restore(client, RestoreOptions(output_path=out))  # the latest generation
        conn = apsw.Connection(out, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            check = conn.execute("PRAGMA integrity_check").fetchall()
            tables = len(logical_digest(conn)) - 1
        finally:
            conn.close()
    ok = check == [("ok",)]
    return VerifyResult(ok, result.pos, tables, compared=False, problem="" if ok else str(check[0][0]))


def _compare(live: list[tuple[str, str]], restored: list[tuple[str, str]], pos: Pos) -> VerifyResult:
    a, b = dict(live), dict(restored)
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            return VerifyResult(False, pos, len(live) - 1, name)
    return VerifyResult(True, pos, len(live) - 1)
