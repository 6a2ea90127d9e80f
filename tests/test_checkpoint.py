"""lsr's read lock and the application's own checkpoints.

lsr pins the WAL with a read transaction. Taken on a fully checkpointed WAL,
SQLite gives that reader read-mark 0, which forbids every checkpoint from
writing anything into the database file; the application's automatic
checkpoint then fails on every commit once its WAL passes 1000 pages, after
sorting the whole WAL's index each time (about 3x the cost of the commit in a
small transaction). lsr moves its read lock onto a WAL frame it has copied.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from litestream_py import db as db_module
from litestream_py.clients.file import FileReplicaClient
from litestream_py.db import DB
from litestream_py.replica import Replica
from litestream_py.wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE

from conftest import integrity_ok, rows


# Runs each line of SQL it reads, answering with its rows in JSON.
APP_PROCESS = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
for sql in sys.stdin:
    print(json.dumps(conn.execute(sql).fetchall()), flush=True)
"""


class _App:
    """The application in its own process, as it must be: POSIX locks never
    conflict within one process, so in lsr's process it could ignore lsr's
    read lock. It uses Python's sqlite3 (the system's SQLite, not apsw's)."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", APP_PROCESS, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for sql in ("PRAGMA journal_mode=WAL", "PRAGMA wal_autocheckpoint=0",  # checkpoints only when told
                    "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)"):
            self.execute(sql)

    def execute(self, sql: str) -> list[list[object]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(sql + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def insert(self, n: int) -> None:
        for i in range(n):
            self.execute(f"INSERT INTO t (v) VALUES ('{'row %d ' % i * 20}')")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_after_lsr_checkpoints_the_apps_checkpoint_backfills_only_what_lsr_copied(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    app = _App(path)
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


def test_a_checkpoint_behind_by_much_copies_and_backfills_without_the_write_lock(tmp_path: Path, monkeypatch) -> None:
    """With more WAL past the shadow than lsr may copy, or backfill, while the
    application waits, lsr hands its read lock over to the WAL's end (a read-mark
    past 0, so the WAL cannot restart) and does both after the write lock is
    gone; the WAL restarts only once everything is copied."""
    path = tmp_path / "app.db"
    app = _App(path)
    db = DB(str(path))
    db.replicas.append(Replica(db, FileReplicaClient(str(tmp_path / "replica")), "file"))
    monkeypatch.setattr(db_module, "MAX_WAL_TAIL", 0)
    monkeypatch.setattr(db_module, "MAX_LOCKED_BACKFILL", 0)
    locked = [False]
    under_lock: list[tuple[str, int]] = []  # (what, frames) done while the application would wait
    enter, leave = DB._WriteLock.__enter__, DB._WriteLock.__exit__

    def locked_enter(self: object) -> None:
        enter(self)  # type: ignore[arg-type]
        locked[0] = True

    def locked_exit(self: object, *exc: object) -> None:
        locked[0] = False
        leave(self, *exc)  # type: ignore[arg-type]

    monkeypatch.setattr(DB._WriteLock, "__enter__", locked_enter)
    monkeypatch.setattr(DB._WriteLock, "__exit__", locked_exit)
    copy, backfill = db._copy_to_shadow, DB._run_checkpoint

    def watched_copy(generation: str, index: int, tail: object = None) -> int:
        before = db.shadow_wal_size(generation, index)
        after = copy(generation, index, tail)  # type: ignore[arg-type]
        if locked[0] and after > before:
            under_lock.append(("copy", after - before))
        return after

    def watched_backfill(conn: object) -> tuple[int, int, int]:
        before = db._wal_frames()[1]
        counts = backfill(conn)  # type: ignore[arg-type]
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
        frames = db._wal_frames()[0]
        db.checkpoint("RESTART")
        assert under_lock == []
        frame_size = WAL_FRAME_HEADER_SIZE + db.page_size
        assert db.shadow_wal_size(generation, index) == WAL_HEADER_SIZE + frames * frame_size
        db.sync()
        assert (db.pos().generation, db.pos().index) == (generation, index + 1)  # restarted after the copy
        app.insert(5)
        db.sync()
        assert db.pos().index == index + 1
    finally:
        db.close()
        app.close()
    assert integrity_ok(path)
    assert rows(path, "SELECT count(*) FROM t") == [(45,)]
