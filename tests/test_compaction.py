"""Compaction: old small segments merged into large ones, and everything that reads them still right.

The engine runs in-process (as in test_restore.py, the application's
connection is apsw); the races are made deterministic by real clients whose
read of a segment lets compaction run first, and the crash by a real process
that SIGKILLs itself between writing a merged segment and deleting the ones
it replaces.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from support.config import write_config
from support.procs import Processes, run_lsr, wait_for
from support.sqlite import integrity_ok, open_app_db, rows
from support.s3 import S3Server, make_s3_client
from litestream_py import codec
from litestream_py.clients.file import FileReplicaClient
from litestream_py.clients.s3 import S3ReplicaClient
from litestream_py import replicator as replicator_module
from litestream_py.compaction import DEFAULT_COMPACTION_INTERVAL, BusyGate, Compactor
from litestream_py.config import parse_config
from litestream_py.db import DB
from litestream_py.errors import ConfigError, LeaseLostError, LitestreamError, RestoreGapError
from litestream_py.factory import db_from_config
from litestream_py.encryption import AgeKeys, AgeReader
from litestream_py.lease import Lease
from litestream_py.pos import Pos
from litestream_py.replica import Replica
from litestream_py.replica_client import ReplicaClient
from litestream_py.replicator import Replicator
from litestream_py.restore import RestoreOptions, restore
from litestream_py.wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WALHeader
from support.workload import AgeKeyPair, assert_encrypted, segment_count, stop_lsr, wait_ready, wait_synced
from support.engine import FollowerThread, app_connection, commit_and_ship, replicated_app


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def compactor(client: ReplicaClient, **kwargs: Any) -> Compactor:
    """A compactor to which every segment is old enough."""
    kwargs.setdefault("age", timedelta(0))
    return Compactor(client, "test", threading.Lock(), **kwargs)


def segment_lengths(client: ReplicaClient) -> list[tuple[int, int, int]]:
    """(index, offset, WAL bytes) of every segment, in order."""
    out = []
    for g in client.generations():
        for w in client.wal_segments(g):
            data, _ = codec.decode_segment(client.read_wal_segment(w.pos))
            out.append((w.index, w.offset, len(data)))
    return out


def commit_times(client: ReplicaClient) -> list[int]:
    """The capture time of every commit the replica holds, in WAL order."""
    times = []
    for g in client.generations():
        for w in client.wal_segments(g):
            times += [t for _, t in codec.decode_segment(client.read_wal_segment(w.pos))[1]]
    return times


def restored_count(client: ReplicaClient, out: Path, **opts: Any) -> int:
    restore(client, RestoreOptions(output_path=str(out), **opts))
    assert integrity_ok(out)
    (count,), = rows(out, "SELECT count(*) FROM t")
    return int(count)  # type: ignore[call-overload]


def test_merges_each_index_into_contiguous_capped_segments(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 300)
    before = segment_lengths(client)
    indexes = {i for i, _, _ in before}
    assert len(before) >= 300 and len(indexes) > 1
    cap = 64 << 10
    c = compactor(client, max_size=cap)
    c.compact()
    after = segment_lengths(client)
    # Each index still covers the same bytes, back to back from 0, in fewer, larger objects.
    for index in indexes:
        old = [(o, n) for i, o, n in before if i == index]
        new = [(o, n) for i, o, n in after if i == index]
        assert new[0][0] == 0 and all(o + n == o2 for (o, n), (o2, _) in zip(new, new[1:]))
        assert new[-1][0] + new[-1][1] == old[-1][0] + old[-1][1]
        assert all(n <= cap for _, n in new) or len(new) == 1
    assert len(after) <= len(before) // 10
    assert c.stats.merged - c.stats.written == len(before) - len(after)
    assert restored_count(client, tmp_path / "out.db") == 300
    # lsr wal -compaction shows it: each segment's WAL bytes, and how many shipped segments it holds.
    r = run_lsr("wal", "-compaction", f"file://{client.root}")
    assert r.returncode == 0, r.stderr
    header, *lines = [line.split() for line in r.stdout.strip().splitlines()]
    assert header[-2:] == ["wal-size", "merged"]
    assert [int(line[-2]) for line in lines] == [n for _, _, n in after]
    assert sum(int(line[-1]) for line in lines) == len(before) and max(int(line[-1]) for line in lines) > 1
    # A second pass finds nothing left to merge, and reads nothing to know it.
    reads: list[Pos] = []
    original = client.read_wal_segment
    client.read_wal_segment = lambda pos: reads.append(pos) or original(pos)  # type: ignore[method-assign]
    written = c.stats.written
    c.compact()
    assert not reads and c.stats.written == written
    assert segment_lengths(client) == after


def test_a_segment_replaced_while_its_group_is_merged_is_merged_only_as_it_is_now(tmp_path: Path, engine) -> None:
    # A merge reads each member twice (to size the group, then to compress it):
    # a member that changed in between aborts the merge, and the next pass
    # merges what is there then.
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 6)
    g = client.generations()[0]
    victim = client.wal_segments(g)[2]
    raw = client.read_wal_segment(victim.pos)
    data, times = codec.decode_segment(raw)
    restamped = codec.encode_segment(data, [(o, t + 1) for o, t in times])
    reads: dict[Pos, int] = {}
    original = client.read_wal_segment

    def read_and_replace(pos: Pos) -> bytes:
        reads[pos] = reads.get(pos, 0) + 1
        if pos == victim.pos and reads[pos] == 2:  # between the two reads of one pass
            client.write_wal_segment(pos, restamped, victim.created_at)
        return original(pos)

    before = segment_lengths(client)
    client.read_wal_segment = read_and_replace  # type: ignore[method-assign]
    c = compactor(client)
    c.compact()
    assert reads[victim.pos] == 2 and c.stats.written == 0
    assert segment_lengths(client) == before
    c.compact()
    assert c.stats.written == 1 and len(client.wal_segments(g)) == 2  # the merged one and the live edge
    assert [t for _, t in times][0] + 1 in commit_times(client)
    assert restored_count(client, tmp_path / "out.db") == 6


def test_live_edge_is_left_alone(tmp_path: Path, engine) -> None:
    """Segments younger than the age stay as shipped; shipping goes on after a compaction."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 40)
    (generation,) = client.generations()
    segments = client.wal_segments(generation)
    cutoff = segments[20].created_at
    c = compactor(client, age=timedelta(seconds=60), now=lambda: cutoff + timedelta(seconds=60))
    c.compact()
    after = client.wal_segments(generation)
    young = [w.pos for w in segments if w.created_at > cutoff]
    assert young and [w.pos for w in after][-len(young):] == young
    assert len(after) < len(segments) - 10
    commit_and_ship(app, db, replica, 10, start=40)
    assert restored_count(client, tmp_path / "out.db") == 50


def test_timestamp_restores_stay_exact_across_a_compacted_range(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 60)
    times = commit_times(client)
    assert times == sorted(times)
    inserts = times[len(times) - 60 :]  # the first commits made the table
    assert len(set(inserts)) == 60
    (generation,) = client.generations()
    middle = client.wal_segments(generation)[30].created_at
    # Compacted mid-way: the first half merged, the second as shipped.
    compactor(client, age=timedelta(0), now=lambda: middle).compact()
    assert len(client.wal_segments(generation)) < 40
    assert commit_times(client) == times  # every commit keeps its own time
    for k in (1, 7, 29, 30, 31, 59):  # commit 0 was captured before the snapshot was taken
        # Just past the commit: timestamps hold µs, and restore turns them into ns through a float.
        at = EPOCH + timedelta(microseconds=inserts[k] // 1000 + 2)
        assert restored_count(client, tmp_path / f"at-{k}.db", timestamp=at) == k + 1, k


class CompactsOnFirstRead(FileReplicaClient):
    """A real file client whose first segment read lets a whole compaction pass run first."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.fired = False

    def read_wal_segment(self, pos: Pos) -> bytes:
        if not self.fired:
            self.fired = True
            compactor(FileReplicaClient(self.root)).compact()
        return super().read_wal_segment(pos)


def test_restore_racing_a_compaction_starts_over_and_applies_nothing_twice(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 80)
    racing = CompactsOnFirstRead(client.root)
    assert restored_count(racing, tmp_path / "out.db", parallelism=1) == 80
    assert racing.fired and len(segment_lengths(client)) < 10


class WritesOnly(FileReplicaClient):
    """A compaction interrupted after its merged objects were written: no deletes."""

    def delete_wal_segments(self, positions: Any) -> None:
        pass


def test_leftovers_of_an_interrupted_pass_are_skipped_then_deleted(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 80)
    before = len(segment_lengths(client))
    compactor(WritesOnly(client.root)).compact()
    # Merged objects and every segment they cover, listed side by side: a restore skips what it applied.
    assert len(segment_lengths(client)) == before
    assert restored_count(client, tmp_path / "mid.db") == 80
    c = compactor(client)
    c.compact()
    assert c.stats.leftovers > 0 and len(segment_lengths(client)) < 10
    assert restored_count(client, tmp_path / "out.db") == 80


# A compaction pass that SIGKILLs its own process between writing a merged
# segment and deleting what it replaced: the crash a real sidecar can suffer there.
KILL_MID_PASS = """
import os, signal, sys, threading
from datetime import timedelta
from litestream_py.clients import new_client
from litestream_py import replicator as replicator_module
from litestream_py.compaction import DEFAULT_COMPACTION_INTERVAL, BusyGate, Compactor
from litestream_py.config import parse_config
from litestream_py.db import DB
from litestream_py.errors import ConfigError, LeaseLostError, LitestreamError, RestoreGapError
from litestream_py.factory import replica_from_config
from litestream_py.encryption import AgeKeys, AgeReader
from litestream_py.config import ReplicaConfig

client = new_client(ReplicaConfig(url=sys.argv[1]))
def die(positions):
    os.kill(os.getpid(), signal.SIGKILL)
client.delete_wal_segments = die
Compactor(client, "killed", threading.Lock(), age=timedelta(0)).compact()
"""


@pytest.fixture(params=["file", "s3"])
def any_replica(request: pytest.FixtureRequest, tmp_path: Path, s3_servers: dict[str, S3Server],
                monkeypatch: pytest.MonkeyPatch) -> tuple[ReplicaClient, str]:
    """A file or S3 (moto) replica client, and its URL for another process."""
    if request.param == "file":
        root = tmp_path / "replica"
        return FileReplicaClient(str(root)), f"file://{root}"
    server = s3_servers["moto"]
    bucket = server.create_bucket()
    monkeypatch.setenv("LITESTREAM_ACCESS_KEY_ID", server.access_key_id)
    monkeypatch.setenv("LITESTREAM_SECRET_ACCESS_KEY", server.secret_access_key)
    return make_s3_client(server, bucket), f"s3://{bucket}/db?endpoint={server.endpoint}"


def test_sigkill_mid_compaction_leaves_a_replica_that_restores_and_a_pass_that_finishes(
        tmp_path: Path, any_replica: tuple[ReplicaClient, str]) -> None:
    client, url = any_replica
    with replicated_app(tmp_path / "app.db", lambda db: Replica(db, client, "r"),
                        min_checkpoint_page_count=200, max_checkpoint_page_count=400) as (app, db, replica):
        commit_and_ship(app, db, replica, 80)
    before = segment_lengths(client)
    p = subprocess.run([sys.executable, "-c", KILL_MID_PASS, url], timeout=120)
    assert p.returncode == -signal.SIGKILL
    after_kill = segment_lengths(client)
    assert len(after_kill) == len(before) and after_kill != before  # one merged object written, nothing deleted
    assert restored_count(client, tmp_path / "crashed.db") == 80
    r = run_lsr("restore", "-o", str(tmp_path / "cli.db"), url)
    assert r.returncode == 0, r.stderr
    assert rows(tmp_path / "cli.db", "SELECT count(*) FROM t") == [(80,)]
    c = compactor(client)
    c.compact()
    assert c.stats.leftovers > 0
    assert len(segment_lengths(client)) < 10
    assert restored_count(client, tmp_path / "out.db") == 80


class RacingS3(S3ReplicaClient):
    """A real S3 client whose first segment read lets a whole compaction pass (another client) run first."""

    compact_with: ReplicaClient
    fired = False

    def read_wal_segment(self, pos: Pos) -> bytes:
        if not self.fired:
            self.fired = True
            compactor(self.compact_with).compact()
        return super().read_wal_segment(pos)


def test_restore_racing_compaction_on_s3(tmp_path: Path, s3_server: S3Server, s3_bucket: str) -> None:
    s3 = make_s3_client(s3_server, s3_bucket)
    with replicated_app(tmp_path / "app.db", lambda db: Replica(db, s3, "s3"),
                        min_checkpoint_page_count=200, max_checkpoint_page_count=400) as (app, db, replica):
        commit_and_ship(app, db, replica, 40)
    (generation,) = s3.generations()
    before = len(s3.wal_segments(generation))
    racing = RacingS3(s3.settings, s3_server.access_key_id, s3_server.secret_access_key)
    racing.compact_with = s3
    assert restored_count(racing, tmp_path / "out.db", parallelism=2) == 40
    assert racing.fired and len(s3.wal_segments(generation)) < before // 5


def test_the_sidecar_compacts_behind_the_live_edge_while_restores_and_a_kill_race_it(
        tmp_path: Path, procs: Processes) -> None:
    """A real lsr with a one-second compaction-interval: it merges what it shipped
    while the application writes and restores run, survives a SIGKILL, and the
    replica ends with the database's every row in a few segments."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    cfg = write_config(tmp_path / "lsr.yml", db, {"type": "file", "path": replica, "compaction-interval": "1s"},
                       monitor_interval="50ms")
    written = [0]

    def write(n: int) -> None:
        for _ in range(n):
            app.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
            written[0] += 1
            time.sleep(0.005)

    def compactions(p: Any) -> int:
        return Processes.output(p).count("compacted ")

    for run in range(2):
        p = procs.lsr_replicate("-config", str(cfg))
        wait_ready(p, replica)
        restores = 0

        def compacted_while_restoring() -> bool:
            nonlocal restores
            write(20)
            restores += 1
            out = tmp_path / f"during-{run}-{restores}.db"
            r = run_lsr("restore", "-o", str(out), f"file://{replica}")
            assert r.returncode == 0, r.stderr
            assert integrity_ok(out)
            return compactions(p) >= 2

        wait_for(compacted_while_restoring, timeout=120, what="two compaction passes that merged segments")
        if run == 0:
            Processes.stop(p, signal.SIGKILL)
    # lsr status shows what compaction did in this process.
    res = run_lsr("status", "-json", str(db))
    assert res.returncode == 0, res.stderr
    [entry] = json.loads(res.stdout)["dbs"]
    [r] = entry["replicas"]
    assert r["compaction"]["segments_merged"] > r["compaction"]["segments_written"] >= 2
    assert "segments into" in run_lsr("status", str(db)).stdout
    write(10)
    wait_synced(db, replica)
    stop_lsr(p)
    app.close()
    restore_url = tmp_path / "final.db"
    r = run_lsr("restore", "-o", str(restore_url), f"file://{replica}")
    assert r.returncode == 0, r.stderr
    assert rows(restore_url, "SELECT count(*) FROM t") == [(written[0],)]
    assert integrity_ok(restore_url)
    # Written one commit (or a few) per segment: hundreds, had nothing been merged.
    assert segment_count(replica) < written[0] / 4


def test_encrypted_replica_compacts_with_its_identity_and_is_skipped_once_without(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pair = AgeKeyPair()
    keys = pair.keys()
    client = FileReplicaClient(str(tmp_path / "replica"))
    with replicated_app(tmp_path / "app.db", lambda db: Replica(db, client, "file", age=keys),
                        min_checkpoint_page_count=200, max_checkpoint_page_count=400) as (app, db, replica):
        commit_and_ship(app, db, replica, 40)
        reader = AgeReader(client, keys)
        (generation,) = client.generations()
        before = len(client.wal_segments(generation))
        times = commit_times(reader)

        # Recipients only (the sidecar cannot decrypt): skipped, and said once.
        sealed_only = Replica(db, client, "sealed", age=AgeKeys([], keys.recipients))
        sealed_only.compaction_interval = timedelta(microseconds=1)
        with caplog.at_level(logging.INFO, logger="litestream_py.replica"):
            assert sealed_only.compact() is False
            assert sealed_only.compact() is False
        assert len([r for r in caplog.records if "compaction skipped" in r.getMessage()]) == 1
        assert len(client.wal_segments(generation)) == before

        # With the identity: decrypted, merged, encrypted again to the same recipients.
        replica.compaction_interval = timedelta(microseconds=1)
        replica.compact()
    assert len(client.wal_segments(generation)) < before // 5
    assert_encrypted(tmp_path / "replica", b"row-")
    assert commit_times(reader) == times
    assert restored_count(reader, tmp_path / "out.db") == 40


class RetentionDuringCompaction(FileReplicaClient):
    """A real file client whose first segment read (by compaction) starts retention on another thread."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.replica: Replica | None = None
        self.retention: threading.Thread | None = None
        self.lock_held = False

    def read_wal_segment(self, pos: Pos) -> bytes:
        if self.retention is None and self.replica is not None:
            self.lock_held = self.replica.prune_lock.locked()
            self.retention = threading.Thread(target=self.replica.enforce_retention)
            self.retention.start()
        return super().read_wal_segment(pos)


def test_retention_waits_for_a_compaction_pass_and_nothing_it_deleted_comes_back(tmp_path: Path) -> None:
    client = RetentionDuringCompaction(str(tmp_path / "replica"))
    with replicated_app(tmp_path / "app.db", lambda db: Replica(db, client, "file"),
                        min_checkpoint_page_count=200, max_checkpoint_page_count=400) as (app, db, replica):
        commit_and_ship(app, db, replica, 320)
        replica.retention = timedelta(0)
        replica.compaction_interval = timedelta(microseconds=1)
        client.replica = replica
        replica.compact()
        assert client.retention is not None
        client.retention.join(timeout=60)
        assert client.lock_held  # the pass held the lock retention waits for
    (generation,) = client.generations()
    # Retention (0) took a new snapshot and kept only it, and the WAL from its index on.
    (snapshot,) = client.snapshots(generation)
    assert snapshot.index > 0 and all(w.index >= snapshot.index for w in client.wal_segments(generation))
    assert restored_count(client, tmp_path / "out.db") == 320


def test_compaction_interval_config_key(tmp_path: Path) -> None:
    """On by default (10s), set per replica, 0 turns it off, a bad value is one config error."""
    def replica(extra: str) -> Replica:
        cfg = parse_config(f"dbs:\n  - path: {tmp_path}/a.db\n    replicas:\n      - url: file://{tmp_path}/r\n{extra}")
        assert not cfg.warnings
        return db_from_config(cfg.dbs[0]).replicas[0]

    assert replica("").compaction_interval == DEFAULT_COMPACTION_INTERVAL == timedelta(seconds=10)
    assert replica("        compaction-interval: 1m\n").compaction_interval == timedelta(minutes=1)
    off = replica("        compaction-interval: 0\n")
    assert off.compaction_interval is None and off.compaction_stats() is None and off.compact() is False
    with pytest.raises(ConfigError, match="compaction-interval: 'often' is not a duration"):
        replica("        compaction-interval: often\n")
    bad = tmp_path / "bad.yml"
    bad.write_text(f"dbs:\n  - path: {tmp_path}/a.db\n    replicas:\n      - url: file://{tmp_path}/r\n"
                   "        compaction-interval: often\n")
    r = run_lsr("replicate", "-config", str(bad))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "compaction-interval" in r.stderr


class SlowReads(FileReplicaClient):
    """A file client whose reads hang while ``slow`` is set, until ``gate`` opens: storage that
    stalls a compaction pass (a fault no local part makes on demand; shipping only writes)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.slow = False
        self.gate = threading.Event()
        self.stuck = threading.Event()

    def read_wal_segment(self, pos: Pos) -> bytes:
        if self.slow:
            self.stuck.set()
            self.gate.wait(120)
        return super().read_wal_segment(pos)


def replica_holds(client: FileReplicaClient, tmp_path: Path, n: int) -> bool:
    """Whether a restore of the replica (as it is now) has ``n`` rows in table t."""
    out = tmp_path / f"probe-{time.monotonic_ns()}.db"
    try:
        return restored_count(FileReplicaClient(client.root), out) == n
    except (LitestreamError, sqlite3.OperationalError):
        return False  # nothing shipped yet, or only the snapshot taken before table t


def started_replicator(tmp_path: Path, client: FileReplicaClient,
                       compaction_interval: timedelta) -> tuple[Any, Replica, Replicator]:
    """The application's connection, and a running replicator shipping its every commit to ``client``."""
    app = app_connection(tmp_path / "app.db")
    db = DB(str(tmp_path / "app.db"))
    replica = Replica(db, client, "file", sync_interval=timedelta(0))
    replica.compaction_interval = compaction_interval
    db.replicas.append(replica)
    replicator = Replicator([db])
    replicator.start()
    return app, replica, replicator


def test_a_stuck_compaction_pass_never_holds_back_shipping(tmp_path: Path) -> None:
    client = SlowReads(str(tmp_path / "replica"))
    app, _, replicator = started_replicator(tmp_path, client, timedelta(milliseconds=100))
    try:
        app.execute("INSERT INTO t (v) VALUES ('first')")
        wait_for(lambda: replica_holds(client, tmp_path, 1), what="the first row on the replica")
        client.slow = True
        for i in range(30):
            app.execute("INSERT INTO t (v) VALUES (?)", (f"row-{i}",))
            time.sleep(0.01)
        wait_for(client.stuck.is_set, timeout=60, what="a compaction pass stuck on a read")
        for i in range(30, 50):
            app.execute("INSERT INTO t (v) VALUES (?)", (f"row-{i}",))
        wait_for(lambda: replica_holds(client, tmp_path, 51), timeout=60, what="every row shipped while compaction is stuck")
        assert not client.gate.is_set()
    finally:
        client.gate.set()
        replicator.stop()
        app.close()


def test_a_sidecar_compacts_only_the_generation_it_writes(tmp_path: Path, engine) -> None:
    """An object store dates a merged segment by its upload: an older generation compacted
    later would look newest to a restore (lsr's and Go's), so the sidecar leaves it alone."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 30)
    (current,) = client.generations()
    older = "0000000000000001"
    for s in client.snapshots(current):
        with client.open_snapshot(current, s.index) as f:
            client.write_snapshot(older, s.index, f, s.created_at)
    for w in client.wal_segments(current):
        client.write_wal_segment(Pos(older, w.index, w.offset), client.read_wal_segment(w.pos), w.created_at)
    before = len(client.wal_segments(older))
    replica.compaction_interval = timedelta(microseconds=1)
    replica.compact()
    assert len(client.wal_segments(older)) == before
    assert len(client.wal_segments(current)) < before // 5


def test_a_segment_inside_the_previous_one_that_breaks_the_chain_is_still_refused(tmp_path: Path, engine) -> None:
    """Skipping what a merged segment covers must not hide two writers: a segment that starts
    inside the previous one and does not continue its checksum chain fails as before."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 5)
    app.execute("INSERT INTO t (v) VALUES (?)", ("x" * 20_000,))  # a segment of several frames
    db.sync()
    replica.sync()
    commit_and_ship(app, db, replica, 5, start=5)
    (generation,) = client.generations()
    segments = [w for w in client.wal_segments(generation) if w.index == 0]
    page_size = WALHeader.parse(codec.decode_segment(client.read_wal_segment(segments[0].pos))[0][:WAL_HEADER_SIZE],
                                verify=False).page_size
    frame = WAL_FRAME_HEADER_SIZE + page_size
    # A segment with two frames or more, and an impostor starting at its second frame.
    victim = next(w for w in segments[1:] if len(codec.decode_segment(client.read_wal_segment(w.pos))[0]) >= 2 * frame)
    foreign = codec.decode_segment(client.read_wal_segment(segments[-1].pos))[0]
    client.write_wal_segment(Pos(generation, 0, victim.offset + frame), codec.encode_segment(foreign, []))
    with pytest.raises(RestoreGapError, match="inside the previous one"):
        restore(client, RestoreOptions(output_path=str(tmp_path / "out.db")))


def standby_rows(path: Path) -> int:
    """Counted in another process: a connection closed here would drop the follower's lock on STANDBY."""
    out = subprocess.run(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True, "
         "timeout=30); print(c.execute('SELECT count(*) FROM t').fetchone()[0])", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    return int(out.stdout) if out.returncode == 0 else -1


def test_a_follower_whose_position_compaction_merged_away_reads_on_from_inside_the_merged_segment(
        tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    standby = tmp_path / "standby.db"
    commit_and_ship(app, db, replica, 30)
    following = FollowerThread(Path(client.root), standby)
    try:
        wait_for(lambda: standby_rows(standby) == 30, timeout=60, what="the standby to follow 30 rows")
    finally:
        following.close()
    # While it is stopped: more segments, then a compaction that merges across its position.
    commit_and_ship(app, db, replica, 30, start=30)
    (generation,) = client.generations()
    before = len(client.wal_segments(generation))
    compactor(client).compact()
    assert len(client.wal_segments(generation)) < before // 5
    following = FollowerThread(Path(client.root), standby)
    try:
        wait_for(lambda: standby_rows(standby) == 60, timeout=60, what="the standby to read on past the merge")
        assert following.follower.status().error == ""
    finally:
        following.close()
    assert integrity_ok(standby)
    assert rows(standby, "SELECT v FROM t ORDER BY id") == [(f"row-{i}",) for i in range(60)]


def test_a_fenced_sidecar_stops_compacting(tmp_path: Path, engine) -> None:
    """Another sidecar took the replica's lease: this one's compaction writes and deletes nothing."""
    app, db, client, replica = engine
    replica.lease = Lease(client, str(tmp_path / "app.db"), timedelta(seconds=30))
    commit_and_ship(app, db, replica, 30)
    Lease(client, "/elsewhere/app.db", timedelta(seconds=30), takeover=True).ensure()
    assert replica.lease.renew() is False
    before = segment_lengths(client)
    replica.compaction_interval = timedelta(microseconds=1)
    with pytest.raises(LeaseLostError, match="its lease was taken"):
        replica.compact()
    assert segment_lengths(client) == before


def test_the_busy_gate_holds_a_pass_back_while_wal_pours_in_and_for_no_longer_than_its_bound() -> None:
    """A pass waits while the replica ships faster than the rate (measured over a
    fresh window), runs once it slows, and runs anyway once the wait reached its
    bound, until a pass leaves nothing to do. A replica that shipped nothing is
    not probed."""
    clock, shipped = [100.0], [0]
    gate = BusyGate(lambda: shipped[0], lambda: clock[0], rate=1000, window=1.0, max_wait=10.0)

    def after(seconds: float, nbytes: int) -> float:
        clock[0] += seconds
        shipped[0] += nbytes
        return gate.wait()

    assert after(10, 0) == 0.0  # idle: no probe
    assert after(10, 50_000) == 1.0  # the last look is stale: a window to measure the rate
    assert after(1, 500) == 0.0  # 500 B/s: quiet enough
    assert after(10, 50_000) == 1.0
    assert after(1, 5_000) == 1.0  # 5,000 B/s: busy, ask again after a window
    assert after(1, 5_000) == 1.0
    assert after(1, 400) == 0.0  # the burst ended: the pass runs
    gate.done()
    waits = [after(1, 5_000) for _ in range(12)]
    # Busy since the start of the first of those windows: held back until 10 s had passed, then let through.
    assert waits == [1.0] * 9 + [0.0] * 3
    assert after(5, 100_000) == 0.0  # still busy, but its backlog is not done: no wait in between
    gate.done()
    assert after(1, 5_000) == 1.0  # a new wait starts after a pass that finished the backlog


@pytest.mark.parametrize("max_wait", [60.0, 0.5])
def test_the_sidecar_compacts_after_a_burst_not_during_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          max_wait: float) -> None:
    """A real replicator with a short compaction-interval, and a writer shipping far
    over the (lowered) busy rate: no pass runs while it writes, a pass merges once it
    stops; with a short bound on the wait, passes run during the burst too."""
    monkeypatch.setattr(replicator_module, "BusyGate",
                        functools.partial(BusyGate, rate=64 << 10, max_wait=max_wait))
    client = FileReplicaClient(str(tmp_path / "replica"))
    app, replica, replicator = started_replicator(tmp_path, client, timedelta(milliseconds=300))

    def stats() -> tuple[int, int]:
        s = replica.compaction_stats()
        assert s is not None
        return s.passes, s.merged

    def write_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # ~2 MiB/s of WAL, 32 times the rate
            app.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(8 << 10).hex(),))
            time.sleep(0.01)

    try:
        write_for(1.5)  # the burst is under way (a pass may have started before it)
        during = stats()
        write_for(4.0)
        if max_wait > 10:
            assert stats() == during, "a compaction pass ran while the replica shipped WAL far over the busy rate"
            wait_for(lambda: stats()[1] > during[1], timeout=60, what="a pass that merges once the burst ended")
        else:
            assert stats()[1] > during[1], "the bound on the wait did not let a pass run during the burst"
        n = app.execute("SELECT count(*) FROM t").fetchall()[0][0]
        wait_for(lambda: replica_holds(client, tmp_path, n), timeout=60, what="every row on the replica")
    finally:
        replicator.stop()
        app.close()
