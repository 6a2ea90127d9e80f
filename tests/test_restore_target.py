"""Choosing where a restore reads from (Go's CalcRestoreTarget): which replica,
which generation, and the checks made once before anything is listed or written.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from litestream_py.clients.file import FileReplicaClient
from litestream_py.errors import NoGenerationError, NoSnapshotError, OutputExistsError, TimestampOutOfRangeError
from litestream_py.replica import Replica
from litestream_py.replica_client import ReplicaTarget
from litestream_py.restore import RestoreOptions, restore_from_replicas
from litestream_py.restore_target import choose_restore_target
from support.config import write_config
from support.engine import CountingClient, commit_and_ship, replicated_app
from support.procs import run_lsr
from support.sqlite import rows


def counted(root: str | Path, name: str = "file") -> tuple[ReplicaTarget, CountingClient]:
    client = CountingClient(str(root))
    return ReplicaTarget(name, client, client), client


def test_choosing_and_restoring_a_generation_lists_the_replica_once(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 10)
    target, counting = counted(client.root)
    result = restore_from_replicas([target], RestoreOptions(output_path=str(tmp_path / "out.db")))
    assert sorted(counting.listings) == ["generations", "snapshots", "wal"]
    assert result.generation == db.pos().generation
    assert rows(tmp_path / "out.db", "SELECT count(*) FROM t") == [(10,)]


def test_the_replica_with_the_latest_generation_is_restored(tmp_path: Path, engine) -> None:
    """Go's CalcRestoreTarget: of two replicas, the one updated last, unless
    -generation pins one that only the other holds."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 5)
    other = FileReplicaClient(str(tmp_path / "other"))
    with replicated_app(tmp_path / "b.db", lambda b: Replica(b, other, "other")) as (app_b, db_b, replica_b):
        commit_and_ship(app_b, db_b, replica_b, 2)
        pinned_generation = db_b.pos().generation
    commit_and_ship(app, db, replica, 5, start=5)
    targets = [ReplicaTarget("other", other, other), ReplicaTarget("file", client, client)]
    chosen = choose_restore_target(targets)
    assert (chosen.replica.name, chosen.generation) == ("file", db.pos().generation)
    restore_from_replicas(targets, RestoreOptions(output_path=str(tmp_path / "latest.db")))
    assert rows(tmp_path / "latest.db", "SELECT count(*) FROM t") == [(10,)]
    assert choose_restore_target(targets, generation=pinned_generation).replica.name == "other"
    restore_from_replicas(targets, RestoreOptions(output_path=str(tmp_path / "pinned.db"), generation=pinned_generation))
    assert rows(tmp_path / "pinned.db", "SELECT count(*) FROM t") == [(2,)]
    with pytest.raises(NoGenerationError, match="no matching backups found"):
        choose_restore_target(targets, generation="0123456789abcdef")
    with pytest.raises(NoGenerationError, match="no matching backups found"):
        choose_restore_target([])


def test_a_timestamp_no_replica_covers_names_the_range_held(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 3)
    target = ReplicaTarget("file", client, client)
    before = datetime(2001, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(TimestampOutOfRangeError, match="before the earliest snapshot"):
        restore_from_replicas([target], RestoreOptions(output_path=str(tmp_path / "out.db"), timestamp=before))
    empty = FileReplicaClient(str(tmp_path / "empty"))
    with pytest.raises(NoSnapshotError, match="holds no snapshot"):
        choose_restore_target([ReplicaTarget("empty", empty, empty)], timestamp=before)
    assert not os.path.lexists(tmp_path / "out.db")


def test_an_existing_output_is_refused_before_any_listing(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 1)
    target, counting = counted(client.root)
    out = tmp_path / "out.db"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="file already exists"):
        restore_from_replicas([target], RestoreOptions(output_path=str(out)))
    assert counting.listings == [] and out.read_bytes() == b"keep me"


def test_lsr_restore_reads_the_latest_of_the_configured_replicas(tmp_path: Path, engine) -> None:
    """The command hands every configured replica to the engine (or only -replica's)."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 3)
    stale = tmp_path / "stale"
    shutil.copytree(client.root, stale)  # the replica as it was; its objects keep their times
    commit_and_ship(app, db, replica, 3, start=3)
    cfg = write_config(tmp_path / "lsr.yml", db.path, {"name": "stale", "path": stale},
                       {"name": "file", "path": client.root})
    for extra, name, count in (((), "latest.db", 6), (("-replica", "stale"), "stale.db", 3)):
        res = run_lsr("restore", "-config", str(cfg), *extra, "-o", str(tmp_path / name), db.path)
        assert res.returncode == 0, res.stderr
        assert rows(tmp_path / name, "SELECT count(*) FROM t") == [(count,)]
