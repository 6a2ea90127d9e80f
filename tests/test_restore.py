"""Restore: long chains of segments, gaps, retention racing a restore, verify.

These tests drive the engine in-process; the application's connection is apsw,
so that it shares SQLite's lock tables with lsr's own connections (two SQLite
libraries in one process would not see each other's POSIX locks).
"""

from __future__ import annotations

import errno
import importlib
import os
import sqlite3
import struct
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable, Iterator

import apsw
import pytest

from conftest import Processes, integrity_ok, rows, run_lsr, wait_for
from litestream_py import codec
from fixtures_s3 import S3Server, make_s3_client
from litestream_py.clients.file import FileReplicaClient
from litestream_py.config import ReplicaConfig
from litestream_py.db import DB
from litestream_py.errors import RestoreGapError, WALFormatError
from litestream_py.factory import replica_from_config
from litestream_py.pos import Pos, SnapshotInfo, WALSegmentInfo
from litestream_py.replica import Replica
from litestream_py.apply import WALApplier
from litestream_py.restore import CachedListing, RestoreOptions, calc_restore_target, restore
from litestream_py.wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WALHeader, checksum

apply_module = importlib.import_module("litestream_py.apply")


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


@pytest.fixture
def engine(tmp_path: Path):
    client = FileReplicaClient(str(tmp_path / "replica"))
    with replicated_app(tmp_path / "app.db", lambda db: Replica(db, client, "file"),
                        min_checkpoint_page_count=200, max_checkpoint_page_count=400) as (app, db, replica):
        yield app, db, client, replica


def test_restore_over_a_thousand_segments_in_parallel(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 1100)
    segments = [w for g in client.generations() for w in client.wal_segments(g)]
    assert len(segments) >= 1000
    assert len({w.index for w in segments}) > 1  # several WAL indexes, via checkpoints
    progress: list[tuple[int, int]] = []
    out = tmp_path / "out.db"
    restore(client, RestoreOptions(output_path=str(out), parallelism=8, progress=lambda d, t: progress.append((d, t))))
    assert rows(out, "SELECT v FROM t ORDER BY id") == [(f"row-{i}",) for i in range(1100)]
    assert integrity_ok(out)
    assert progress and progress[-1][0] == progress[-1][1]


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


def test_retention_keeps_newest_snapshot_and_its_wal(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 20)
    replica.snapshot()
    commit_and_ship(app, db, replica, 20, start=20)
    replica.retention = __import__("datetime").timedelta(0)
    replica.enforce_retention()
    (generation,) = client.generations()
    snapshots = client.snapshots(generation)
    assert len(snapshots) >= 1
    oldest = min(s.index for s in snapshots)
    assert all(w.index >= oldest for w in client.wal_segments(generation))
    out = tmp_path / "out.db"
    restore(client, RestoreOptions(output_path=str(out)))
    assert rows(out, "SELECT count(*) FROM t") == [(40,)]


def test_last_frame_rewritten_behind_lsr_starts_a_new_generation(engine, caplog) -> None:
    """Each sync checks that the shadow still continues the WAL, down to the bytes of
    the last frame it copied: one rewritten behind lsr's back ends the generation."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 3)
    before = db.pos()
    wal = Path(db.wal_path)
    data = bytearray(wal.read_bytes())
    data[before.offset - 10] ^= 0xFF  # in the page of the last frame copied
    wal.write_bytes(bytes(data))
    with caplog.at_level("INFO", logger="litestream_py.db"):
        db.sync()
    assert db.pos().generation != before.generation
    assert "wal overwritten by another process" in caplog.text


def test_second_snapshot_never_overwrites_the_first_of_its_index(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 5)
    first = replica.snapshot()
    commit_and_ship(app, db, replica, 5, start=5)
    second = replica.snapshot()
    assert second.index > first.index
    (generation,) = client.generations()
    assert {first.index, second.index} <= {s.index for s in client.snapshots(generation)}


def reseal(data: bytes, mutate) -> bytes:
    """Apply ``mutate`` to a segment's WAL bytes, then recompute every checksum (a 'valid' forgery)."""
    header = WALHeader.parse(data)
    buf = bytearray(data)
    mutate(buf)
    s0, s1 = header.checksum1, header.checksum2
    frame = WAL_FRAME_HEADER_SIZE + header.page_size
    for off in range(WAL_HEADER_SIZE, len(buf), frame):
        s0, s1 = checksum(header.big_endian, s0, s1, bytes(buf[off : off + 8]))
        s0, s1 = checksum(header.big_endian, s0, s1, bytes(buf[off + WAL_FRAME_HEADER_SIZE : off + frame]))
        buf[off + 16 : off + 24] = s0.to_bytes(4, "big") + s1.to_bytes(4, "big")
    return bytes(buf)


def test_verify_reports_ok_then_the_table_that_differs(tmp_path: Path, procs: Processes) -> None:
    db = tmp_path / "app.db"
    conn = __import__("sqlite3").connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO a (v) VALUES ('keep')")
    config = tmp_path / "lsr.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{tmp_path / 'replica'}\n")
    lsr = procs.lsr_replicate("-config", str(config))
    for i in range(200):
        conn.execute("INSERT INTO t (v) VALUES (?)", (f"value-{i:04d}",))
    ok = run_lsr("verify", "-config", str(config), str(db))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    procs.stop(lsr)
    # Forge the last WAL index: same structure, valid checksums, one changed value.
    # (How its frames were split into segments depends on timing: reseal them together.)
    segments = sorted((tmp_path / "replica").glob("generations/*/wal/*.wal.lz4"))
    segments = [s for s in segments if s.name[:8] == segments[-1].name[:8]]
    decoded = [codec.decode_segment(s.read_bytes()) for s in segments]

    def flip(buf: bytearray) -> None:
        i = bytes(buf).rfind(b"value-0199")
        assert i > 0
        buf[i : i + 10] = b"value-XXXX"

    forged = reseal(b"".join(data for data, _ in decoded), flip)
    for segment, (data, commits) in zip(segments, decoded):
        segment.write_bytes(codec.encode_segment(forged[: len(data)], commits))
        forged = forged[len(data) :]
    bad = run_lsr("verify", "-config", str(config), "-timeout", "5", str(db))
    assert bad.returncode == 1
    assert "MISMATCH" in bad.stdout and "table t differs" in bad.stdout
    # A forged segment that breaks the checksum chain fails verify too.
    segment, (data, commits) = segments[-1], decoded[-1]
    segment.write_bytes(codec.encode_segment(data[:-50] + b"x" * 50, commits))
    broken = run_lsr("verify", "-config", str(config), "-timeout", "5", str(db))
    assert broken.returncode == 1 and "checksum mismatch" in broken.stderr


def test_restore_streams_a_snapshot_of_many_ranges_from_s3(tmp_path: Path, s3_servers: dict[str, S3Server]) -> None:
    """The snapshot arrives in 256 KiB ranges fetched ahead of the decompressor; the
    segments after it apply on top; the result matches the application's database."""
    server = s3_servers["moto"]
    client = make_s3_client(server, server.create_bucket(), multipart_chunksize=256 * 1024,
                            multipart_concurrency=3)
    with replicated_app(tmp_path / "app.db", lambda db: Replica(db, client, "s3")) as (app, db, replica):
        app.execute("BEGIN")
        for _ in range(3000):
            app.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(1000).hex(),))
        app.execute("COMMIT")
        db.sync()
        replica.sync()  # the snapshot
        commit_and_ship(app, db, replica, 20, start=3000)
        (generation,) = client.generations()
        assert client.snapshots(generation)[0].size > (1 << 20) + 4 * 256 * 1024  # the first range and 4+ more
        assert len(client.wal_segments(generation)) >= 20
        out = tmp_path / "out.db"
        restore(client, RestoreOptions(output_path=str(out)))
        expected = app.execute("SELECT id, v FROM t ORDER BY id").fetchall()
        assert len(expected) == 3020
        assert rows(out, "SELECT id, v FROM t ORDER BY id") == expected
        assert integrity_ok(out)


@pytest.mark.parametrize("kind, cap_mib", [("file", 4), ("s3", 8)])
def test_segment_cap_depends_on_the_replica_type(tmp_path: Path, kind: str, cap_mib: int,
                                                 s3_servers: dict[str, S3Server]) -> None:
    """A 20 MiB backlog: file replicas get segments of at most 4 MiB (a small reused
    read buffer keeps the sidecar's RSS down), object stores 8 MiB (fewer PUTs)."""
    if kind == "file":
        rc = ReplicaConfig(type="file", path=str(tmp_path / "replica"))
    else:
        server = s3_servers["moto"]
        rc = ReplicaConfig(type="s3", bucket=server.create_bucket(), path="db", endpoint=server.endpoint,
                           region="us-east-1", access_key_id=server.access_key_id,
                           secret_access_key=server.secret_access_key)
    with replicated_app(tmp_path / "app.db", lambda db: replica_from_config(rc, db)) as (app, db, replica):
        db.sync()
        replica.sync()  # the generation's snapshot: what follows goes out as segments
        app.execute("BEGIN")
        for i in range(5000):
            app.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(2000).hex() + str(i),))
        app.execute("COMMIT")
        db.sync()
        replica.sync()
        (generation,) = replica.client.generations()
        sizes = [len(codec.decode_segment(replica.client.read_wal_segment(w.pos))[0])
                 for w in replica.client.wal_segments(generation)]
        assert sum(sizes) > 16 << 20
        assert (cap_mib - 1) << 20 < max(sizes) <= cap_mib << 20


def test_large_backlog_ships_in_bounded_frame_aligned_segments(tmp_path: Path, engine) -> None:
    """A backlog larger than one segment goes out in several, each ending on a frame boundary."""
    app, db, client, replica = engine
    replica.max_segment_size = 64 * 1024
    app.execute("BEGIN")
    for i in range(300):
        app.execute("INSERT INTO t (v) VALUES (?)", ("x" * 1000 + str(i),))
    app.execute("COMMIT")
    db.sync()
    replica.sync()
    (generation,) = client.generations()
    segments = client.wal_segments(generation)
    assert len(segments) > 3
    frame = WAL_FRAME_HEADER_SIZE + 4096
    assert all((w.offset - WAL_HEADER_SIZE) % frame == 0 for w in segments if w.offset)
    out = tmp_path / "out.db"
    restore(client, RestoreOptions(output_path=str(out)))
    assert rows(out, "SELECT count(*) FROM t") == [(300,)]


def test_an_early_shipment_leaves_the_partial_segment_for_later(tmp_path: Path, engine) -> None:
    """``sync(include_partial=False)``, an S3 replica's shipment before its interval is up,
    writes only full segments (what any shipment would cut anyway); the partial
    one at the end waits for the next whole shipment."""
    app, db, client, replica = engine
    replica.max_segment_size = 64 * 1024
    db.sync()
    replica.sync()  # the generation's snapshot, and what the WAL held then
    (generation,) = client.generations()
    before = {w.pos for w in client.wal_segments(generation)}
    app.execute("BEGIN")
    for i in range(200):
        app.execute("INSERT INTO t (v) VALUES (?)", ("x" * 1000 + str(i),))
    app.execute("COMMIT")
    db.sync()
    assert replica.has_full_segment()
    assert replica.sync(include_partial=False)
    full = (64 * 1024 // (WAL_FRAME_HEADER_SIZE + 4096)) * (WAL_FRAME_HEADER_SIZE + 4096)
    sizes = [len(codec.decode_segment(client.read_wal_segment(w.pos))[0])
             for w in client.wal_segments(generation) if w.pos not in before]
    assert len(sizes) >= 3 and all(size >= full for size in sizes), sizes
    left = db.pos().offset - replica.pos().offset
    assert 0 < left < full and not replica.has_full_segment()
    assert not replica.sync(include_partial=False)
    assert replica.sync() and replica.pos() == db.pos()
    out = tmp_path / "out.db"
    restore(client, RestoreOptions(output_path=str(out)))
    assert rows(out, "SELECT count(*) FROM t") == [(200,)]


def test_progress_bar_only_on_a_terminal(tmp_path: Path, engine) -> None:
    import pty

    from conftest import LSR

    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 20)
    url = f"file://{tmp_path / 'replica'}"
    piped = run_lsr("restore", "-o", str(tmp_path / "piped.db"), url)
    assert piped.returncode == 0 and "restoring" not in piped.stdout
    leader, follower = pty.openpty()
    try:
        p = subprocess.run([LSR, "restore", "-o", str(tmp_path / "tty.db"), url],
                           stdout=follower, stderr=subprocess.DEVNULL, timeout=120)
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
    assert p.returncode == 0
    assert b"restoring" in output and b"100%" in output


def sidecar_on_new_db(
    tmp_path: Path, procs: Processes, replica_settings: str
) -> tuple[sqlite3.Connection, Path, subprocess.Popen[bytes]]:
    """A WAL-mode app.db with table t, replicated by `lsr replicate` to a file replica in
    tmp_path/replica configured with ``replica_settings`` (YAML lines). Returns (conn, db, lsr)."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    config = tmp_path / "lsr.yml"
    config.write_text(
        f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{tmp_path / 'replica'}\n" + replica_settings
    )
    return conn, db, procs.lsr_replicate("-config", str(config))


def test_validation_interval_verifies_inside_the_sidecar(tmp_path: Path, procs: Processes) -> None:
    conn, _, lsr = sidecar_on_new_db(tmp_path, procs, "        validation-interval: 1s\n")
    for i in range(50):
        conn.execute("INSERT INTO t (v) VALUES (?)", (f"v{i}",))
    wait_for(lambda: "verified: OK" in procs.output(lsr), timeout=60, what="a validation in the sidecar")
    assert procs.stop(lsr) == 0
    assert "verification failed" not in procs.output(lsr)


def test_snapshot_interval_and_retention_run_inside_the_sidecar(tmp_path: Path, procs: Processes) -> None:
    """Scheduled snapshots keep coming, and retention removes the expired ones, while lsr runs."""
    conn, db, lsr = sidecar_on_new_db(
        tmp_path, procs, "        snapshot-interval: 1s\n        retention: 3s\n        retention-check-interval: 1s\n"
    )
    replica = tmp_path / "replica"
    seen: set[str] = set()

    def snapshots() -> set[str]:
        return {p.name for p in replica.glob("generations/*/snapshots/*.snapshot.lz4")}

    def expired_one_gone() -> bool:
        conn.execute("INSERT INTO t (v) VALUES ('x')")
        now = snapshots()
        seen.update(now)
        return len(seen) >= 4 and bool(seen - now)

    wait_for(expired_one_gone, timeout=30, interval=0.2, what="four scheduled snapshots, the oldest removed")
    assert procs.stop(lsr) == 0
    out = tmp_path / "out.db"
    assert run_lsr("restore", "-o", str(out), f"file://{replica}").returncode == 0
    assert rows(out, "SELECT count(*) FROM t") == rows(db, "SELECT count(*) FROM t")


def split_at_commits(wal: bytes) -> list[tuple[int, bytes]]:
    """(offset, bytes) of one segment per transaction, the first carrying the WAL header."""
    frame = WAL_FRAME_HEADER_SIZE + WALHeader.parse(wal).page_size
    segments, start = [], 0
    for off in range(WAL_HEADER_SIZE, len(wal) - frame + 1, frame):
        if struct.unpack_from(">I", wal, off + 4)[0]:  # commit frame
            segments.append((start, wal[start : off + frame]))
            start = off + frame
    return segments


@pytest.mark.parametrize("use_numpy", [True, False], ids=["numpy", "pure-python"])
def test_a_run_of_segments_dates_and_names_each_segment(tmp_path: Path, use_numpy: bool) -> None:
    """Contiguous segments are verified in one pass, yet each keeps its own time and name."""
    from test_wal import write_wal

    _, wal = write_wal(tmp_path, 4096, transactions=4)
    pieces = split_at_commits(wal)
    assert len(pieces) == 5  # CREATE TABLE, then four transactions
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def run(data: list[tuple[int, bytes]]) -> list[tuple[WALSegmentInfo, tuple[bytes, list[tuple[int, int]]]]]:
        # No recorded commit times: each commit is dated by its segment, as for Go's segments.
        return [(WALSegmentInfo("g", 0, off, len(d), t0 + timedelta(seconds=i)), (d, [])) for i, (off, d) in enumerate(data)]

    cutoff = int((t0 + timedelta(seconds=2.5)).timestamp() * 1e9)
    with open(tmp_path / "a.db", "w+b") as f:
        applier = WALApplier(f, "g", cutoff_ns=cutoff, use_numpy=use_numpy)
        applier.feed(run(pieces))
    assert applier.transactions == 3 and applier.done
    assert applier.last_commit == Pos("g", 0, pieces[3][0])

    broken = list(pieces)
    off, data = broken[3]
    broken[3] = (off, data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    with open(tmp_path / "b.db", "w+b") as f:
        applier = WALApplier(f, "g", use_numpy=use_numpy)
        with pytest.raises(WALFormatError, match=f"wal segment g/00000000_{off:08x}: checksum mismatch at offset {off}"):
            applier.feed(run(broken))
    assert applier.transactions == 3  # everything before the bad segment was applied


@pytest.mark.parametrize("dirty_bytes,use_numpy", [(1, True), (64 << 20, True), (64 << 20, False)],
                         ids=["flush-every-commit", "flush-at-end", "flush-at-end-pure-python"])
def test_applied_wal_matches_sqlites_own_checkpoint(tmp_path: Path, dirty_bytes: int, use_numpy: bool,
                                                    monkeypatch) -> None:
    """Growth, a VACUUM that shrinks the file, then growth again: byte for byte what SQLite checkpoints."""
    db = tmp_path / "src.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    base = db.read_bytes()
    for i in range(40):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(os.urandom(1500),) for _ in range(10)])
        conn.execute("COMMIT")
    conn.execute("DELETE FROM t WHERE id % 7 != 0")
    conn.execute("VACUUM")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(os.urandom(3000),) for _ in range(30)])
    wal = Path(f"{db}-wal").read_bytes()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    want = db.read_bytes()
    conn.close()

    monkeypatch.setattr(WALApplier, "DIRTY_PAGE_BYTES", dirty_bytes)
    out = tmp_path / "out.db"
    out.write_bytes(base)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with open(out, "r+b") as f:
        applier = WALApplier(f, "g", use_numpy=use_numpy)
        applier.feed([(WALSegmentInfo("g", 0, off, len(d), t0), (d, [])) for off, d in split_at_commits(wal)])
        applier.flush()
    assert applier.transactions == 40 + 2 + 30  # the last 30 inserts autocommit one by one
    assert len(want) < 400 * 1500  # the VACUUM did shrink it
    assert out.read_bytes() == want
    assert integrity_ok(out)


def test_verify_waits_for_the_snapshot_of_a_generation_just_begun(tmp_path: Path, engine) -> None:
    """Right after the sidecar starts a generation, its replica has no snapshot yet:
    verify waits for it (as for any position not shipped yet) instead of failing."""
    from litestream_py.verify import verify_database

    app, db, client, replica = engine
    for i in range(20):
        app.execute("INSERT INTO t (v) VALUES (?)", (f"row-{i}",))
    db.sync()  # the shadow WAL has a generation; the replica has nothing yet
    assert client.snapshots(db.pos().generation) == []
    calls = []

    def ship_on_second_call() -> None:
        calls.append(1)
        if len(calls) == 2:
            replica.sync()

    result = verify_database(db.path, client, wait=10, shm_fd=db.shm_fd, catch_up=ship_on_second_call)
    assert result.ok, result.describe()
    assert len(calls) >= 2


def test_shadow_frames_are_on_disk_before_they_are_shipped(tmp_path: Path, engine, monkeypatch) -> None:
    """A replica must never hold frames that a power loss could take from the shadow WAL.

    A power loss cannot be produced here, so this spies on the real os.fsync and
    segment writes (both still run) and checks their order: every shipped byte
    of a shadow index was fsynced before its segment was written.
    """
    app, db, client, replica = engine
    events: list[tuple[str, str, int]] = []
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:
        real_fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(".wal"):
            events.append(("fsync", path, os.fstat(fd).st_size))

    real_write = client.write_wal_segment

    def spy_write(pos: Pos, data: bytes, created_at: datetime | None = None) -> WALSegmentInfo:
        end = pos.offset + len(codec.decode_segment(data)[0])
        events.append(("ship", db.shadow_wal_path(pos.generation, pos.index), end))
        return real_write(pos, data, created_at)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(client, "write_wal_segment", spy_write)
    commit_and_ship(app, db, replica, 30)
    db.checkpoint("RESTART")  # the WAL restarts: later frames go to a new shadow index
    commit_and_ship(app, db, replica, 5, start=30)
    durable: dict[str, int] = {}
    shipped = set()
    for kind, path, size in events:
        if kind == "fsync":
            durable[path] = max(durable.get(path, 0), size)
        else:
            assert durable.get(path, 0) >= size, f"{path} shipped through {size} with only {durable.get(path, 0)} on disk"
            shipped.add(path)
    assert len(shipped) >= 2, shipped  # more than one shadow index was shipped


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


def test_choosing_and_restoring_a_generation_lists_the_replica_once(tmp_path: Path, engine) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 10)
    counting = CountingClient(client.root)
    listing = CachedListing(counting)
    generation, _ = calc_restore_target(listing)
    restore(listing, RestoreOptions(output_path=str(tmp_path / "out.db"), generation=generation))
    assert sorted(counting.listings) == ["generations", "snapshots", "wal"]
    assert rows(tmp_path / "out.db", "SELECT count(*) FROM t") == [(10,)]


def test_segments_download_while_the_snapshot_restores_within_a_byte_budget(
    tmp_path: Path, engine, monkeypatch
) -> None:
    """Downloads run ahead of the snapshot (not a fixed handful of segments), but
    never hold more than the read-ahead budget (plus one segment per worker)."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 120)
    (generation,) = client.generations()
    segments = client.wal_segments(generation)
    assert {s.index for s in segments} == {0} and len(segments) == 120  # one index: sizes known below
    decoded = [len(codec.decode_segment(client.read_wal_segment(s.pos))[0]) for s in segments]
    # The 60 smallest: any 60 segments then fill the budget. (The first segment,
    # holding the table's creation, is several times the size of the others.)
    budget = sum(sorted(decoded)[:60])
    monkeypatch.setattr(apply_module, "PREFETCH_BYTES", budget)
    workers = 4
    # Segments handed to the applier. Counted as they are taken, not as progress
    # reports them: a run of many small segments is taken whole before it is applied.
    taken = [0]
    take = apply_module._Prefetch._take

    def counting_take(self: Any) -> Any:
        taken[0] += 1
        return take(self)

    monkeypatch.setattr(apply_module._Prefetch, "_take", counting_take)
    ahead: list[int] = []  # segments downloaded and not yet taken, at each download

    class SlowSnapshot(CountingClient):
        type = "remote"  # not read as a local replica: ``workers`` threads download

        def read_wal_segment(self, pos: Pos) -> bytes:
            data = super().read_wal_segment(pos)
            ahead.append(self.reads - taken[0])
            return data

        def open_snapshot(self, generation: str, index: int) -> BinaryIO:
            # The snapshot "downloads" until the segments have run well ahead.
            wait_for(lambda: self.reads >= 50, timeout=10)
            return super().open_snapshot(generation, index)

    slow = SlowSnapshot(client.root)
    out = tmp_path / "out.db"

    restore(slow, RestoreOptions(output_path=str(out), parallelism=workers))
    assert rows(out, "SELECT count(*) FROM t") == [(120,)]
    assert slow.reads == 120
    most = max(ahead)
    assert most >= 50  # far past the old fixed window of 4 per worker
    assert most <= 60 + workers + 1, ahead


def test_a_local_replica_is_read_by_one_thread_a_remote_one_by_parallelism(tmp_path: Path, engine) -> None:
    """On a file replica a segment read is CPU, not a wait: one reader runs ahead of
    the snapshot, whatever -parallelism says; a remote replica gets that many."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 40)

    class ThreadCounting(CountingClient):
        def __init__(self, root: str, kind: str) -> None:
            super().__init__(root)
            self.type = kind  # type: ignore[misc]
            self.threads: set[str] = set()

        def read_wal_segment(self, pos: Pos) -> bytes:
            self.threads.add(threading.current_thread().name)
            return super().read_wal_segment(pos)

    for kind, want in (("file", 1), ("remote", 4)):
        counting = ThreadCounting(client.root, kind)
        out = tmp_path / f"{kind}.db"
        # Through the listing cache, as the CLI passes it: the type is read through the wrapper.
        restore(CachedListing(counting), RestoreOptions(output_path=str(out), parallelism=4))
        assert rows(out, "SELECT count(*) FROM t") == [(40,)]
        assert counting.reads == 40 and len(counting.threads) == want, (kind, counting.threads)


def test_a_failed_write_back_of_the_snapshot_fails_the_restore(tmp_path: Path, engine, monkeypatch) -> None:
    """A disk that fails to write the snapshot back reports it to one fdatasync only;
    that error must fail the restore. A real disk cannot be made to fail here, so
    fdatasync is replaced by one that reports EIO."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 10)

    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(apply_module.os, "fdatasync", failing_fdatasync)
    out = tmp_path / "out.db"
    with pytest.raises(OSError, match="Input/output error"):
        restore(client, RestoreOptions(output_path=str(out)))
    assert not list(tmp_path.glob("out.db*"))


def test_numpy_starts_no_blas_threads(tmp_path: Path) -> None:
    """OpenBLAS would start a spinning thread per core; lsr never calls BLAS."""
    code = "import os, litestream_py.wal, numpy; print(len(os.listdir('/proc/self/task')))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
