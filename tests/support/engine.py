"""In-process replication for the engine's tests: an application's apsw
connection, lsr's DB of it and its replica, and a client that counts its calls.

The application's connection is apsw, so that it shares SQLite's lock tables
with lsr's own connections (two SQLite libraries in one process would not see
each other's POSIX locks).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import apsw

from litestream_py.clients.file import FileReplicaClient
from litestream_py.db import DB
from litestream_py.pos import Pos, SnapshotInfo, WALSegmentInfo
from litestream_py.replica import Replica

__all__ = ["CountingClient", "FollowerThread", "app_connection", "commit_and_ship", "replicated_app"]


def app_connection(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(10_000)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    return conn


def commit_and_ship(app: apsw.Connection, db: DB, replica: Replica, n: int, start: int = 0) -> None:
    """One commit, one sync, one segment: n times."""
    for i in range(start, start + n):
        app.execute("INSERT INTO t (v) VALUES (?)", (f"row-{i}",))
        db.sync()
        replica.sync()


@contextmanager
def replicated_app(path: Path, make_replica: Callable[[DB], Replica],
                   **db_options: Any) -> Iterator[tuple[apsw.Connection, DB, Replica]]:
    """The application's connection to ``path``, lsr's DB of it and one replica."""
    app = app_connection(path)
    db = DB(str(path), **db_options)
    replica = make_replica(db)
    db.replicas.append(replica)
    try:
        yield app, db, replica
    finally:
        db.close()
        app.close()


class CountingClient(FileReplicaClient):
    """A real file client that counts its listings and segment reads."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.listings: list[str] = []
        self.reads = 0

    def generations(self) -> list[str]:
        self.listings.append("generations")
        return super().generations()

    def snapshots(self, generation: str) -> list[SnapshotInfo]:
        self.listings.append("snapshots")
        return super().snapshots(generation)

    def wal_segments(self, generation: str) -> list[WALSegmentInfo]:
        self.listings.append("wal")
        return super().wal_segments(generation)

    def read_wal_segment(self, pos: Pos) -> bytes:
        self.reads += 1
        return super().read_wal_segment(pos)


class FollowerThread:
    """A Follower on its own thread, stopped and joined by the test."""

    def __init__(self, replica: Path, standby: Path) -> None:
        import threading
        from datetime import timedelta

        from litestream_py.clients.file import FileReplicaClient
        from litestream_py.follow import Follower

        self.stop = threading.Event()
        self.follower = Follower(FileReplicaClient(str(replica)), str(standby), self.stop,
                                 interval=timedelta(milliseconds=50), watch_dir=str(replica))
        self.thread = threading.Thread(target=self.follower.run)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
