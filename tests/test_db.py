"""DB's checkpoint protocol and continuity rules, against real SQLite.

The application runs in its own process (test_checkpoint.AppProcess): POSIX locks
never conflict within one process, and closing another descriptor of the
database in lsr's process would drop lsr's locks. What is asserted is what a
replica would receive: the shadow WAL index, byte for byte, against the WAL.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from litestream_py.db import DB
from litestream_py.pos import Pos
from litestream_py import shadow as shadow_module
from litestream_py.shadow import COPY_CHUNK_SIZE, COPY_PROGRESS_BYTES
from litestream_py.wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WALHeader
from support.app import AppProcess
from support.sqlite import integrity_ok, open_app_db, rows


def _shadow_continues_wal(db: DB[Any]) -> bool:
    """The current shadow index holds the live WAL's header and frames, up to the shadow's position."""
    pos = db.pos()
    shadow = Path(db.shadow.wal_path(pos.generation, pos.index)).read_bytes()
    wal = Path(db.wal_path).read_bytes()
    return len(shadow) == pos.offset and shadow == wal[: pos.offset]


def _synced_and_stopped(path: str, app: AppProcess) -> Pos:
    """lsr copies five new commits of the application's, then stops; returns where its shadow ended."""
    app.insert(5)
    db: DB[Any] = DB(path)
    try:
        db.sync()
        return db.pos()
    finally:
        db.close()


@contextmanager
def _restarted(path: str, **settings: Any) -> Iterator[DB[Any]]:
    db: DB[Any] = DB(path, **settings)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def app(tmp_path: Path) -> Any:
    app = AppProcess(tmp_path / "app.db")
    yield app
    app.close()


@pytest.fixture
def db(tmp_path: Path) -> Any:
    db: DB[Any] = DB(str(tmp_path / "app.db"))
    yield db
    db.close()


def test_a_passive_checkpoint_that_readers_pin_keeps_the_read_lock_and_the_shadow_index(
        tmp_path: Path, app: AppProcess, db: DB[Any]) -> None:
    app.insert(10)
    reader = AppProcess(tmp_path / "app.db")  # a read transaction of the application's, behind what follows
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM t") == [[10]]
        app.insert(10)
        db.sync()
        before = db.pos()
        db.checkpoint("PASSIVE")
        # Partial (the reader pins the frames past its mark): the WAL cannot
        # restart, and the shadow index goes on.
        assert (db.pos().generation, db.pos().index) == (before.generation, before.index)
        reader.execute("ROLLBACK")
        app.execute("PRAGMA busy_timeout=100")
        assert app.execute("PRAGMA wal_checkpoint(TRUNCATE)")[0][0] == 1, "lsr's read lock was let go"
        app.insert(5)
        db.sync()
        assert (db.pos().generation, db.pos().index) == (before.generation, before.index)
        assert db.pos().offset == before.offset + 5 * (WAL_FRAME_HEADER_SIZE + db.page_size)
        assert _shadow_continues_wal(db)
    finally:
        reader.close()


def test_a_forced_checkpoint_that_a_reader_blocks_is_retried_until_the_wal_restarts(
        tmp_path: Path, app: AppProcess, db: DB[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    app.insert(10)
    reader = AppProcess(tmp_path / "app.db")
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t")
        app.insert(10)
        db.sync()
        before = db.pos()
        attempts: list[tuple[int, int, int]] = []
        retake = DB._retake_read_lock

        def spy(self: DB[Any], generation: str, index: int, checkpoint: bool = False) -> Any:
            done = retake(self, generation, index, checkpoint)
            if checkpoint:
                attempts.append(done.counts)
                if len(attempts) == 1:
                    reader.execute("ROLLBACK")  # the reader goes away only after the first try failed
            return done

        monkeypatch.setattr(DB, "_retake_read_lock", spy)
        db.checkpoint("RESTART")
        busy, frames, backfilled = attempts[0]
        assert backfilled < frames, "the first try was not held back by the reader"
        assert len(attempts) >= 2 and attempts[-1][1] == attempts[-1][2], attempts
        app.insert(3)
        db.sync()
        # Restarted by lsr's own write: the next shadow index of the same generation.
        assert (db.pos().generation, db.pos().index) == (before.generation, before.index + 1)
        assert _shadow_continues_wal(db)
    finally:
        reader.close()
    assert rows(tmp_path / "app.db", "SELECT count(*) FROM t") == [(23,)]


def test_a_wal_that_only_grew_while_lsr_was_down_is_continued(tmp_path: Path, app: AppProcess) -> None:
    path = str(tmp_path / "app.db")
    before = _synced_and_stopped(path, app)
    app.insert(5)
    with _restarted(path) as db:
        db.sync()
        assert (db.pos().generation, db.pos().index) == (before.generation, before.index)
        assert db.pos().offset == before.offset + 5 * (WAL_FRAME_HEADER_SIZE + db.page_size)
        assert _shadow_continues_wal(db)


def test_an_external_checkpoint_while_lsr_was_down_starts_a_new_generation(tmp_path: Path, app: AppProcess) -> None:
    path = str(tmp_path / "app.db")
    before = _synced_and_stopped(path, app)
    # With lsr's read lock gone, the application's TRUNCATE empties the WAL;
    # its next write starts one with new salts: what was between is unknowable.
    assert app.execute("PRAGMA wal_checkpoint(TRUNCATE)")[0][0] == 0
    assert os.path.getsize(path + "-wal") == 0
    app.insert(5)
    with _restarted(path) as db:
        db.sync()
        assert db.pos().generation != before.generation
        assert db.pos().index == 0
        assert os.listdir(os.path.join(db.meta_path, "generations")) == [db.pos().generation]
        assert _shadow_continues_wal(db)


@pytest.mark.parametrize("grew", [False, True], ids=["idle", "grew"])
def test_a_shadow_wal_torn_mid_frame_is_cut_back_on_open(tmp_path: Path, app: AppProcess, grew: bool) -> None:
    """A crash in the middle of an append leaves half a frame: cut on open, and
    the frame copied again whole if the WAL has it (``grew``)."""
    path = str(tmp_path / "app.db")
    before = _synced_and_stopped(path, app)
    frame = WAL_FRAME_HEADER_SIZE + WALHeader.parse(Path(path + "-wal").read_bytes()[:WAL_HEADER_SIZE]).page_size
    if grew:
        app.insert(1)
        torn = Path(path + "-wal").read_bytes()[before.offset:before.offset + frame // 2]
    else:
        torn = b"\x5a" * (frame // 2)
    with _restarted(path) as db:
        shadow_path = db.shadow.wal_path(before.generation, before.index)
        with open(shadow_path, "ab") as f:
            f.write(torn)
        db.open()
        expected = before.offset + (frame if grew else 0)
        assert os.path.getsize(shadow_path) == expected, "the torn frame was left in the shadow"
        db.sync()
        assert (db.pos().generation, db.pos().index, db.pos().offset) == (before.generation, before.index, expected)
        assert _shadow_continues_wal(db)


def test_a_database_replaced_with_another_page_size_starts_a_new_generation(tmp_path: Path, app: AppProcess) -> None:
    path = str(tmp_path / "app.db")
    before = _synced_and_stopped(path, app)
    app.close()
    for suffix in ("", "-wal", "-shm"):
        os.unlink(path + suffix)
    conn = open_app_db(path, page_size=8192)  # lsr is not running: no lock of its own to drop
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t (v) VALUES ('replaced')")
    conn.close()
    with _restarted(path) as db:
        db.sync()
        assert db.pos().generation != before.generation
        assert db.page_size == 8192
        header = WALHeader.parse(Path(db.shadow.wal_path(db.pos().generation, 0)).read_bytes()[:WAL_HEADER_SIZE])
        assert header.page_size == 8192
        assert _shadow_continues_wal(db)
    assert integrity_ok(path)
    assert rows(path, "SELECT v FROM t") == [("replaced",)]


BIG_TRANSACTION = ("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000) "
                   "INSERT INTO t (v) SELECT hex(randomblob(500)) FROM c")  # ~3 MiB of WAL


def test_a_long_copy_publishes_its_first_part_while_the_rest_is_copied(tmp_path: Path, app: AppProcess) -> None:
    """A sync behind by several segments' worth of WAL publishes every
    COPY_PROGRESS_BYTES (the commits' times recorded first), so that replicas
    ship the first part of a burst's backlog while the rest is copied."""
    with _restarted(str(tmp_path / "app.db"), min_checkpoint_page_count=10**6) as db:  # no checkpoint in between
        _copied_in_parts(app, db)


def _copied_in_parts(app: AppProcess, db: DB[Any]) -> None:
    app.insert(1)
    db.sync()
    start = db.pos()
    seen: list[tuple[Pos, list[tuple[int, int]]]] = []
    db.on_change(lambda: seen.append((db.pos(), db.shadow.commit_log.between(
        db.pos().generation, db.pos().index, start.offset, db.pos().offset))))
    for _ in range(3):
        app.execute(BIG_TRANSACTION)
    db.sync()
    end = db.pos()
    assert (end.generation, end.index) == (start.generation, start.index)
    partial = [(pos, times) for pos, times in seen if start.offset < pos.offset < end.offset]
    assert partial, f"only {[pos.offset for pos, _ in seen]} published between {start.offset} and {end.offset}"
    pos, times = partial[0]
    assert pos.offset - start.offset >= COPY_PROGRESS_BYTES
    assert times and times[-1][0] == pos.offset  # the commits it holds are dated
    assert seen[-1][0] == end and len(seen[-1][1]) == 3
    assert _shadow_continues_wal(db)


@pytest.fixture
def frames_verified(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The whole frames each verification of the shadow copy is handed (a spy on scan_frames)."""
    seen: list[int] = []
    real_scan = shadow_module.scan_frames

    def scan(data: Any, header: WALHeader, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(data) // (WAL_FRAME_HEADER_SIZE + header.page_size))
        return real_scan(data, header, *args, **kwargs)

    monkeypatch.setattr(shadow_module, "scan_frames", scan)
    return seen


def test_a_transaction_larger_than_a_read_is_read_and_verified_once(
        tmp_path: Path, app: AppProcess, frames_verified: list[int]) -> None:
    """The copy reads the WAL in pieces of COPY_CHUNK_SIZE and up; a transaction
    larger than a piece is read on behind its first frames, not from its start
    again (which verified a burst's WAL about twice)."""
    with _restarted(str(tmp_path / "app.db"), min_checkpoint_page_count=10**6) as db:
        app.insert(1)
        db.sync()
        start = db.pos()
        for _ in range(2):
            app.execute(BIG_TRANSACTION)
        frames_verified.clear()
        db.sync()
        end = db.pos()
        frame_size = WAL_FRAME_HEADER_SIZE + db.page_size
        assert end.offset - start.offset > 2 * COPY_CHUNK_SIZE
        assert sum(frames_verified) * frame_size == end.offset - start.offset
        assert _shadow_continues_wal(db)


def _spilled(app: AppProcess, db: DB[Any]) -> Pos:
    """lsr copies a first commit, then the application begins a large transaction
    whose frames spill into the WAL before COMMIT; returns the shadow's position."""
    app.insert(1)
    db.sync()
    app.execute("PRAGMA cache_size = 10")
    app.execute("BEGIN")
    app.execute(BIG_TRANSACTION)
    assert os.path.getsize(db.wal_path) > db.pos().offset + 2 * COPY_CHUNK_SIZE  # uncommitted frames to read
    return db.pos()


def test_a_transaction_being_written_is_verified_once_over_two_copies(
        tmp_path: Path, app: AppProcess, frames_verified: list[int]) -> None:
    """A copy keeps the verified frames of a transaction not yet committed for the next copy."""
    with _restarted(str(tmp_path / "app.db"), min_checkpoint_page_count=10**6) as db:
        start = _spilled(app, db)
        frames_verified.clear()
        db.sync()
        assert db.pos() == start and sum(frames_verified) > 0  # read and verified, nothing to copy yet
        app.execute("COMMIT")
        db.sync()
        frame_size = WAL_FRAME_HEADER_SIZE + db.page_size
        assert db.pos().offset == os.path.getsize(db.wal_path)
        assert sum(frames_verified) * frame_size == db.pos().offset - start.offset
        assert _shadow_continues_wal(db)


def test_frames_kept_from_a_rolled_back_transaction_are_not_copied(tmp_path: Path, app: AppProcess) -> None:
    """The frames kept for the next copy are gone from the WAL when their
    transaction rolls back and the next one is written over them: that one is
    read anew, and the shadow holds the WAL as it is."""
    with _restarted(str(tmp_path / "app.db"), min_checkpoint_page_count=10**6) as db:
        start = _spilled(app, db)
        db.sync()
        assert db.pos() == start
        app.execute("ROLLBACK")
        app.execute("PRAGMA cache_size = -2000")
        app.insert(3)
        db.sync()
        assert db.pos().offset > start.offset  # the three commits, read anew
        assert _shadow_continues_wal(db)
        assert app.execute("SELECT count(*) FROM t") == [[4]]


def test_a_quiet_database_says_when_its_interval_checkpoint_falls_due(db_path: Path) -> None:
    """What the monitor wakes for when its safety-net poll is stretched (replicator.py)."""
    db: DB[Any] = DB(str(db_path))
    try:
        app = open_app_db(db_path)
        app.execute("INSERT INTO t (v) VALUES ('x')")
        app.close()
        db.sync()
        due = db.seconds_until_checkpoint()
        interval = db.checkpoints.interval.total_seconds()
        assert due is not None and 0 < due <= interval
        db.checkpoints.last -= interval + 1  # as if the interval had passed
        assert db.seconds_until_checkpoint() == 0
        db.sync()  # the sync checkpoints, which starts the interval over
        assert db.stats.checkpoints, "no checkpoint ran"
        after = db.seconds_until_checkpoint()  # None once the WAL restarted with lsr's own frame only
        assert after is None or after > interval / 2
    finally:
        db.close()
