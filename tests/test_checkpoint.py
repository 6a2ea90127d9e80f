"""lsr's read lock and the application's own checkpoints.

lsr pins the WAL with a read transaction. Taken on a fully checkpointed WAL,
SQLite gives that reader read-mark 0, which forbids every checkpoint from
writing anything into the database file; the application's automatic
checkpoint then fails on every commit once its WAL passes 1000 pages, after
sorting the whole WAL's index each time (about 3x the cost of the commit in a
small transaction). lsr moves its read lock onto a WAL frame it has copied.

Far behind the WAL's end, lsr's read lock lets every checkpoint backfill only
up to it: the WAL grows, and whichever checkpoint gets past it later backfills
all of it, inside one of the application's commits if that one wins. lsr keeps
its read lock near the WAL's end, so the application's own checkpoints keep up
as they would without lsr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import apsw
import pytest

from litestream_py import db as db_module
from litestream_py import shadow as shadow_module
from litestream_py.clients.file import FileReplicaClient
from litestream_py.db import DB
from litestream_py.replica import Replica
from litestream_py.shadow import WALTail
from litestream_py.sqlite_locks import read_wal_index
from litestream_py.wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE

from support.app import AppProcess
from support.sqlite import integrity_ok, rows


def test_after_lsr_checkpoints_the_apps_checkpoint_backfills_only_what_lsr_copied(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    app = AppProcess(path)
    db = DB(str(path))
    db.replicas.append(Replica(db, FileReplicaClient(str(tmp_path / "replica")), "file"))
    try:
        app.insert(10)
        db.sync()
        db.checkpoint()  # everything backfilled, then lsr's own write restarts the WAL
        app.insert(5)
        db.sync()
        generation, index = db.pos().generation, db.pos().index
        copied = (db.pos().offset - WAL_HEADER_SIZE) // (WAL_FRAME_HEADER_SIZE + db.page_size)
        app.insert(5)  # not copied yet

        busy, frames, backfilled = app.execute("PRAGMA wal_checkpoint(PASSIVE)")[0]
        assert 0 < backfilled <= copied < frames, (
            f"the application's checkpoint backfilled {backfilled} of {frames} frames; lsr had copied {copied} "
            "(0 means lsr's read lock still forbade any backfill)")
        # A second try finds nothing more it may do, and nothing restarts the WAL.
        assert app.execute("PRAGMA wal_checkpoint(PASSIVE)")[0][2] == backfilled
        app.execute("PRAGMA busy_timeout=100")
        assert app.execute("PRAGMA wal_checkpoint(TRUNCATE)")[0][0] == 1  # busy: lsr pins the WAL
        app.insert(5)
        db.sync()
        assert (db.pos().generation, db.pos().index) == (generation, index)
        assert db.pos().offset > (copied + 5) * (WAL_FRAME_HEADER_SIZE + db.page_size)
        db.checkpoint()
        db.sync()
        assert db.pos().generation == generation and db.pos().index > index
    finally:
        db.close()
        app.close()
    assert integrity_ok(path)
    assert rows(path, "SELECT count(*) FROM t") == [(25,)]


def test_a_checkpoint_behind_by_much_copies_and_backfills_without_the_write_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more WAL past the shadow than lsr may copy, or backfill, while the
    application waits, lsr hands its read lock over to the WAL's end (a read-mark
    past 0, so the WAL cannot restart) and does both after the write lock is
    gone; the WAL restarts only once everything is copied."""
    path = tmp_path / "app.db"
    app = AppProcess(path)
    db = DB(str(path))
    db.replicas.append(Replica(db, FileReplicaClient(str(tmp_path / "replica")), "file"))
    monkeypatch.setattr(shadow_module, "MAX_WAL_TAIL", 0)
    monkeypatch.setattr(db_module, "MAX_LOCKED_BACKFILL", 0)
    locked = [False]
    writes: list[int] = []
    frames: list[int] = []  # the WAL's frames each time lsr held the write lock
    under_lock: list[tuple[str, int]] = []  # (what, frames) done while the application would wait
    write_lock = DB._write_lock

    @contextmanager
    def watched_write_lock(self: DB[Replica]) -> Iterator[None]:
        if writes:
            app.insert(writes.pop())  # commits the application makes while lsr checkpoints
        with write_lock(self):
            frames.append(read_wal_index(db.shm_fd).mx_frame)
            locked[0] = True
            try:
                yield
            finally:
                locked[0] = False

    monkeypatch.setattr(DB, "_write_lock", watched_write_lock)
    copy, backfill = db._copy_to_shadow, DB._run_checkpoint

    def shadow_size(generation: str, index: int) -> int:
        return os.path.getsize(db.shadow.wal_path(generation, index))

    def watched_copy(generation: str, index: int, tail: WALTail | None = None) -> int:
        before = shadow_size(generation, index)
        after = copy(generation, index, tail)
        if locked[0] and after > before:
            under_lock.append(("copy", after - before))
        return after

    def watched_backfill(conn: apsw.Connection | None) -> tuple[int, int, int]:
        before = read_wal_index(db.shm_fd).backfilled
        counts = backfill(conn)
        if locked[0] and counts[2] > before:
            under_lock.append(("backfill", counts[2] - before))
        return counts

    monkeypatch.setattr(db, "_copy_to_shadow", watched_copy)
    monkeypatch.setattr(DB, "_run_checkpoint", staticmethod(watched_backfill))
    try:
        app.insert(10)
        db.sync()
        generation, index = db.pos().generation, db.pos().index
        app.insert(30)  # not copied yet
        writes = [10, 10]  # just before each of the checkpoint's first two takes of the write lock
        db.checkpoint("RESTART")
        assert under_lock == []
        assert not writes  # both writes came while lsr checkpointed
        frame_size = WAL_FRAME_HEADER_SIZE + db.page_size
        assert shadow_size(generation, index) == WAL_HEADER_SIZE + max(frames) * frame_size
        db.sync()
        assert (db.pos().generation, db.pos().index) == (generation, index + 1)  # restarted after the copy
        app.insert(5)
        db.sync()
        assert db.pos().index == index + 1
    finally:
        db.close()
        app.close()
    assert integrity_ok(path)
    assert rows(path, "SELECT count(*) FROM t") == [(65,)]


def _publishes_the_wal_end(db: DB[Replica]) -> bool:
    """Whether ``db`` publishes everything the WAL holds now (waiting up to 5 s)."""
    wal_end = WAL_HEADER_SIZE + read_wal_index(db.shm_fd).mx_frame * (WAL_FRAME_HEADER_SIZE + db.page_size)
    deadline = time.monotonic() + 5
    while db.pos().offset < wal_end and time.monotonic() < deadline:
        time.sleep(0.005)
    return db.pos().offset == wal_end


def test_the_tail_read_under_the_write_lock_is_published_while_the_backfill_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest commits, read under the write lock, reach the shadow and the
    replicas during the checkpoint's backfill (most of a second after a burst),
    not after it."""
    monkeypatch.setattr(db_module, "MAX_LOCKED_BACKFILL", 0)  # a backlog: backfilled without the lock
    path = tmp_path / "app.db"
    app = AppProcess(path)
    db = DB(str(path))
    db.replicas.append(Replica(db, FileReplicaClient(str(tmp_path / "replica")), "file"))
    writes: list[int] = []
    write_lock, backfill = DB._write_lock, DB._run_checkpoint
    published_during_backfill: list[bool] = []

    @contextmanager
    def late_commits(self: DB[Replica]) -> Iterator[None]:
        if writes:
            app.insert(writes.pop())  # after lsr's last copy: they are the tail
        with write_lock(self):
            yield

    def waiting_backfill(conn: apsw.Connection | None) -> tuple[int, int, int]:
        if not published_during_backfill:
            published_during_backfill.append(_publishes_the_wal_end(db))
        return backfill(conn)

    monkeypatch.setattr(DB, "_write_lock", late_commits)
    monkeypatch.setattr(DB, "_run_checkpoint", staticmethod(waiting_backfill))
    try:
        app.insert(10)
        db.sync()
        before = db.pos()
        writes.append(5)
        db.checkpoint()
        assert not writes
        assert published_during_backfill == [True]
        db.sync()
        assert db.pos().index == before.index + 1  # everything was copied before the WAL restarted
    finally:
        db.close()
        app.close()
    assert integrity_ok(path)
    assert rows(path, "SELECT count(*) FROM t") == [(15,)]


def test_commits_made_while_the_backfill_runs_are_published_before_it_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a saturating writer a backfill takes most of a second: what the
    application commits meanwhile reaches the shadow and the replicas during it,
    not after it (the burst's last commit would wait for the whole backfill)."""
    monkeypatch.setattr(db_module, "MAX_LOCKED_BACKFILL", 0)  # a backlog: backfilled without the lock
    path = tmp_path / "app.db"
    app = AppProcess(path)
    db = DB(str(path))
    db.replicas.append(Replica(db, FileReplicaClient(str(tmp_path / "replica")), "file"))
    backfill = DB._run_checkpoint
    published_during_backfill: list[bool] = []

    def backfill_with_a_commit_meanwhile(conn: apsw.Connection | None) -> tuple[int, int, int]:
        if not published_during_backfill:
            app.insert(7)  # lsr holds no lock of the application's here
            published_during_backfill.append(_publishes_the_wal_end(db))
        return backfill(conn)

    monkeypatch.setattr(DB, "_run_checkpoint", staticmethod(backfill_with_a_commit_meanwhile))
    try:
        app.insert(10)
        db.sync()
        db.checkpoint()
        assert published_during_backfill == [True]
        db.sync()
    finally:
        db.close()
        app.close()
    assert integrity_ok(path)
    assert rows(path, "SELECT count(*) FROM t") == [(17,)]


@contextmanager
def _app_beside_lsr(tmp_path: Path) -> Iterator[tuple[Path, AppProcess, DB[Replica]]]:
    """The application in its own process and lsr's DB of its database, closed at the end."""
    path = tmp_path / "app.db"
    app = AppProcess(path)
    db = DB(str(path))
    db.replicas.append(Replica(db, FileReplicaClient(str(tmp_path / "replica")), "file"))
    try:
        yield path, app, db
    finally:
        db.close()
        app.close()


def _frames(db: DB[Replica]) -> int:
    """The frames lsr has copied into the shadow's current index."""
    return (db.pos().offset - WAL_HEADER_SIZE) // (WAL_FRAME_HEADER_SIZE + db.page_size)


def test_a_sync_moves_the_read_lock_so_the_apps_own_checkpoint_keeps_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no checkpoint of lsr's, the application's own checkpoint may backfill
    everything lsr has copied (and nothing more), a step at a time."""
    monkeypatch.setattr(db_module, "ADVANCE_READ_LOCK_FRAMES", 4)
    with _app_beside_lsr(tmp_path) as (path, app, db):
        app.insert(10)
        db.sync()
        for step in range(3):
            app.insert(10)
            db.sync()
            copied = _frames(db)
            app.insert(3)  # not copied yet
            busy, frames, backfilled = app.execute("PRAGMA wal_checkpoint(PASSIVE)")[0]
            assert (busy, backfilled) == (0, copied) and frames > copied, (
                f"step {step}: the application's checkpoint backfilled {backfilled} of {frames} frames; "
                f"lsr had copied {copied}")
        generation, index = db.pos().generation, db.pos().index
        db.sync()
        assert (db.pos().generation, db.pos().index) == (generation, index)  # nothing restarted the WAL
        assert db.pos().offset == WAL_HEADER_SIZE + read_wal_index(db.shm_fd).mx_frame * (
            WAL_FRAME_HEADER_SIZE + db.page_size)
    assert integrity_ok(path)
    assert rows(path, "SELECT count(*) FROM t") == [(49,)]


def test_where_the_app_never_checkpoints_lsr_backfills_behind_its_read_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The application's automatic checkpoint is off (AppProcess): once the
    frames behind lsr's read lock reach MAX_LOCKED_BACKFILL, lsr backfills up to
    its new read lock at the sync that moves it, without the write lock."""
    monkeypatch.setattr(db_module, "ADVANCE_READ_LOCK_FRAMES", 4)
    monkeypatch.setattr(db_module, "MAX_LOCKED_BACKFILL", 8)
    write_lock = DB._write_lock
    with _app_beside_lsr(tmp_path) as (path, app, db):
        app.insert(10)
        db.sync()
        monkeypatch.setattr(DB, "_write_lock", lambda self: pytest.fail("the write lock was taken"))
        app.insert(10)
        db.sync()
        shm = read_wal_index(db.shm_fd)
        assert shm.backfilled == shm.mx_frame == _frames(db) > 8
        generation, index = db.pos().generation, db.pos().index
        monkeypatch.setattr(DB, "_write_lock", write_lock)
        db.checkpoint()
        db.sync()
        assert (db.pos().generation, db.pos().index) == (generation, index + 1)
    assert integrity_ok(path)
    assert rows(path, "SELECT count(*) FROM t") == [(20,)]


# Holds SQLite's checkpoint lock (-shm byte 121, as a checkpoint of the
# application's does) until it sees another process hold the write lock (byte
# 120), then 20 ms more.
CHECKPOINTING_APP = """
import fcntl, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
def lock(kind, byte, cmd=fcntl.F_SETLK):
    return fcntl.fcntl(fd, cmd, struct.pack("hhllhh", kind, 0, byte, 1, 0, 0))
lock(fcntl.F_WRLCK, 121)
print("holding", flush=True)
while struct.unpack("hhllhh", lock(fcntl.F_WRLCK, 120, fcntl.F_GETLK))[0] == fcntl.F_UNLCK:
    time.sleep(0.001)
time.sleep(0.02)
lock(fcntl.F_UNLCK, 121)
print("released while the write lock was held", flush=True)
"""


def test_a_checkpoint_under_the_write_lock_waits_for_the_apps_to_end(tmp_path: Path) -> None:
    """lsr takes the write lock in the gap after a commit, where the
    application's own checkpoint often holds SQLite's checkpoint lock (which
    SQLite never waits for): lsr waits for it, and completes the checkpoint in
    the same hold instead of giving up."""
    checkpointing = None
    try:
        with _app_beside_lsr(tmp_path) as (path, app, db):
            app.insert(10)
            db.sync()
            generation, index = db.pos().generation, db.pos().index
            checkpointing = subprocess.Popen([sys.executable, "-c", CHECKPOINTING_APP, f"{path}-shm"],
                                             stdout=subprocess.PIPE, text=True)
            assert checkpointing.stdout is not None
            assert checkpointing.stdout.readline().strip() == "holding"
            db.checkpoint()  # PASSIVE: one take of the write lock
            assert checkpointing.wait(5) == 0
            assert checkpointing.stdout.read().strip() == "released while the write lock was held"
            db.sync()  # the WAL was backfilled, then restarted by lsr's own write
            assert (db.pos().generation, db.pos().index) == (generation, index + 1)
    finally:
        if checkpointing is not None and checkpointing.poll() is None:
            checkpointing.kill()
            checkpointing.wait()
    assert integrity_ok(path)
    assert rows(path, "SELECT count(*) FROM t") == [(10,)]
