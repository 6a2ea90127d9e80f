"""lsr's read lock and the application's own checkpoints.

lsr pins the WAL with a read transaction. Taken on a fully checkpointed WAL,
SQLite gives that reader read-mark 0, which forbids every checkpoint from
writing anything into the database file; the application's automatic
checkpoint then fails on every commit once its WAL passes 1000 pages, after
sorting the whole WAL's index each time (about 3x the cost of the commit in a
small transaction). lsr moves its read lock onto a WAL frame it has copied.
"""

from __future__ import annotations

from pathlib import Path

from litestream_py.clients.file import FileReplicaClient
from litestream_py.db import DB
from litestream_py.replica import Replica
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
