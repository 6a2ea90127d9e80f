"""A restore whose chain is broken fails loudly and writes nothing; one whose
objects disappear mid-restore (retention) starts over on the newer set.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from litestream_py.clients.file import FileReplicaClient
from litestream_py.errors import RestoreGapError
from litestream_py.pos import Pos
from litestream_py.replica import Replica
from litestream_py.restore import RestoreOptions, restore
from support.engine import commit_and_ship
from support.procs import run_lsr
from support.sqlite import integrity_ok, rows


def test_missing_segment_fails_loudly_and_writes_nothing(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 30)
    (generation,) = client.generations()
    segments = client.wal_segments(generation)
    victim = segments[len(segments) // 2]
    client.delete_wal_segments([victim.pos])
    out = tmp_path / "out.db"
    with pytest.raises(RestoreGapError) as err:
        restore(client, RestoreOptions(output_path=str(out)))
    assert f"wal segment generations/{generation}/wal/{victim.index:08x}_{victim.offset:08x}.wal.lz4 is missing" \
        in str(err.value)
    assert not out.exists()
    assert not list(tmp_path.glob("out.db*"))  # no temp file left behind either
    r = run_lsr("restore", "-o", str(out), f"file://{tmp_path / 'replica'}")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_initial_segment_is_named(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 5)
    (generation,) = client.generations()
    first = client.wal_segments(generation)[0]
    assert first.offset == 0
    client.delete_wal_segments([first.pos])
    with pytest.raises(RestoreGapError, match="missing initial wal segment") as err:
        restore(client, RestoreOptions(output_path=str(tmp_path / "out.db")))
    assert f"wal segment generations/{generation}/wal/{first.index:08x}_00000000.wal.lz4 is missing" in str(err.value)


class RetentionDuringRestore(FileReplicaClient):
    """A real file client whose first segment read lets retention run (a race made deterministic)."""

    def __init__(self, root: str, replica: Replica) -> None:
        super().__init__(root)
        self.replica = replica
        self.fired = False

    def read_wal_segment(self, pos: Pos) -> bytes:
        if not self.fired:
            self.fired = True
            self.replica.snapshot()  # a newer snapshot ...
            self.replica.enforce_retention()  # ... and retention drops everything older
        return super().read_wal_segment(pos)


def test_retention_while_a_restore_reads_retries_on_the_newer_set(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 50)
    replica.retention = __import__("datetime").timedelta(0)
    racing = RetentionDuringRestore(client.root, replica)
    replica.client = racing
    out = tmp_path / "out.db"
    restore(racing, RestoreOptions(output_path=str(out), parallelism=1))
    assert racing.fired
    assert rows(out, "SELECT count(*) FROM t") == [(50,)]
    assert integrity_ok(out)
