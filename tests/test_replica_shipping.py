"""What a replica ships: snapshots, bounded frame-aligned segments, retention,
new generations, and only frames already durable in the shadow WAL.
"""

from __future__ import annotations

import dataclasses
import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from litestream_py import codec
from litestream_py.config import ReplicaConfig
from litestream_py.errors import StorageError
from litestream_py.factory import replica_from_config
from litestream_py.pos import Pos, WALSegmentInfo
from litestream_py.restore import RestoreOptions, restore
from litestream_py.wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE
from support.engine import commit_and_ship, replicated_app
from support.procs import Processes, run_lsr, wait_for
from support.s3 import S3Server
from support.sqlite import rows
from support.workload import sidecar_on_new_db


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


@pytest.mark.parametrize("kind, cap_mib", [("file", 2), ("s3", 8)])
def test_segment_cap_depends_on_the_replica_type(tmp_path: Path, kind: str, cap_mib: int,
                                                 s3_servers: dict[str, S3Server]) -> None:
    """A 20 MiB backlog: file replicas get segments of at most 2 MiB (small buffers
    keep the sidecar's RSS down), object stores 8 MiB (fewer PUTs)."""
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
    replica.ship = dataclasses.replace(replica.ship, max_segment_size=64 * 1024)
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


def _backlog(app, db, replica, rows_: int = 300) -> None:
    """A snapshot shipped, then one transaction that makes several 64 KiB segments of backlog."""
    replica.ship = dataclasses.replace(replica.ship, max_segment_size=64 * 1024)
    db.sync()
    replica.sync()
    app.execute("BEGIN")
    for i in range(rows_):
        app.execute("INSERT INTO t (v) VALUES (?)", ("x" * 1000 + str(i),))
    app.execute("COMMIT")
    db.sync()


def test_a_backlog_segment_is_written_while_the_next_is_compressed(tmp_path: Path, engine, monkeypatch) -> None:
    """The shipper compresses the next segment of a backlog while the previous
    one's write (and fsync) runs: the I/O waits overlap the CPU."""
    app, db, client, replica = engine
    _backlog(app, db, replica)
    encoded, overlapped = [0], []
    encode, write = codec.encode_segment_into, client.write_wal_segment

    def counted_encode(*args, **kwargs):
        encoded[0] += 1
        return encode(*args, **kwargs)

    def slow_first_write(pos, data, created_at=None):
        if not overlapped:
            seen, deadline = encoded[0], time.monotonic() + 5
            while encoded[0] == seen and time.monotonic() < deadline:
                time.sleep(0.005)
            overlapped.append(encoded[0] > seen)
        return write(pos, data, created_at)

    monkeypatch.setattr(codec, "encode_segment_into", counted_encode)
    monkeypatch.setattr(client, "write_wal_segment", slow_first_write)
    assert replica.sync() and replica.pos() == db.pos()
    assert overlapped == [True]
    out = tmp_path / "out.db"
    restore(client, RestoreOptions(output_path=str(out)))
    assert rows(out, "SELECT count(*) FROM t") == [(300,)]


def test_a_failed_write_in_a_backlog_writes_nothing_after_it(tmp_path: Path, engine, monkeypatch) -> None:
    """A segment written on the put thread that fails stops the shipment there:
    the position stays before it, no later segment reaches the replica, and
    the next sync ships the rest."""
    app, db, client, replica = engine
    _backlog(app, db, replica)
    start = replica.pos()
    write = client.write_wal_segment
    calls = [0]

    def failing_second_write(pos, data, created_at=None):
        calls[0] += 1
        if calls[0] == 2:
            raise StorageError("cannot write wal segment: disk full (test)")
        return write(pos, data, created_at)

    monkeypatch.setattr(client, "write_wal_segment", failing_second_write)
    with pytest.raises(StorageError):
        replica.sync()
    (generation,) = client.generations()
    after = [w for w in client.wal_segments(generation) if w.index == start.index and w.offset >= start.offset]
    assert len(after) == 1 and after[0].offset == start.offset  # the first, and nothing past the failed one
    assert replica.pos().offset > start.offset  # the first segment's end
    monkeypatch.setattr(client, "write_wal_segment", write)
    assert replica.sync() and replica.pos() == db.pos()
    out = tmp_path / "out.db"
    restore(client, RestoreOptions(output_path=str(out)))
    assert rows(out, "SELECT count(*) FROM t") == [(300,)]


def _backlog_of_64k_segments(app, db, client, replica) -> tuple[str, set[Pos]]:
    """Segments of 64 KiB, and a transaction of 200 rows copied to the shadow WAL
    and not shipped; (the generation, the positions of the segments shipped before it)."""
    replica.ship = dataclasses.replace(replica.ship, max_segment_size=64 * 1024)
    db.sync()
    replica.sync()  # the generation's snapshot, and what the WAL held then
    (generation,) = client.generations()
    before = {w.pos for w in client.wal_segments(generation)}
    app.execute("BEGIN")
    for i in range(200):
        app.execute("INSERT INTO t (v) VALUES (?)", ("x" * 1000 + str(i),))
    app.execute("COMMIT")
    db.sync()
    return generation, before


def test_an_early_shipment_leaves_the_partial_segment_for_later(tmp_path: Path, engine) -> None:
    """``sync(include_partial=False)``, an S3 replica's shipment before its interval is up,
    writes only full segments (what any shipment would cut anyway); the partial
    one at the end waits for the next whole shipment."""
    app, db, client, replica = engine
    generation, before = _backlog_of_64k_segments(app, db, client, replica)
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


@pytest.mark.parametrize("grows", [True, False])
def test_a_shipment_leaves_a_growing_backlogs_partial_segment_to_the_next(tmp_path: Path, engine, monkeypatch,
                                                                           grows: bool) -> None:
    """``sync(full_while_growing=True)``, a file replica's shipment: once a segment of
    a backlog has shipped and the shadow WAL has grown meanwhile (a writer faster
    than the shipments), the partial segment at the end goes with the next
    shipment, full; a backlog that stopped growing ships whole."""
    app, db, client, replica = engine
    generation, before = _backlog_of_64k_segments(app, db, client, replica)
    write = client.write_wal_segment
    commits = [0]

    def write_while_the_app_commits(*args, **kwargs):  # the real write, and a commit copied meanwhile
        if grows and not commits[0]:
            commits[0] += 1
            app.execute("INSERT INTO t (v) VALUES ('meanwhile')")
            db.sync()
        return write(*args, **kwargs)

    monkeypatch.setattr(client, "write_wal_segment", write_while_the_app_commits)
    shipped_to = db.pos()
    assert replica.sync(full_while_growing=True)
    full = (64 * 1024 // (WAL_FRAME_HEADER_SIZE + 4096)) * (WAL_FRAME_HEADER_SIZE + 4096)
    sizes = [len(codec.decode_segment(client.read_wal_segment(w.pos))[0])
             for w in client.wal_segments(generation) if w.pos not in before]
    if grows:
        assert len(sizes) >= 3 and all(size >= full for size in sizes), sizes
        assert 0 < shipped_to.offset - replica.pos().offset < full
        assert replica.sync() and replica.pos() == db.pos()
    else:
        assert replica.pos() == shipped_to == db.pos()
    out = tmp_path / "out.db"
    restore(client, RestoreOptions(output_path=str(out)))
    assert rows(out, "SELECT count(*) FROM t") == [(200 + commits[0],)]


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

    def spy_write(pos: Pos, data: bytes | memoryview, created_at: datetime | None = None) -> WALSegmentInfo:
        end = pos.offset + len(codec.decode_segment(bytes(data))[0])
        events.append(("ship", db.shadow.wal_path(pos.generation, pos.index), end))
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


def test_snapshot_interval_and_retention_run_inside_the_sidecar(tmp_path: Path, procs: Processes) -> None:
    """Scheduled snapshots keep coming, and retention removes the expired ones, while lsr runs."""
    conn, db, lsr = sidecar_on_new_db(
        tmp_path, procs, {"snapshot-interval": "1s", "retention": "3s", "retention-check-interval": "1s"}
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


@pytest.mark.parametrize("source", ["view", "bytes", "empty", "two blocks", "without liblz4's exports"])
def test_a_segment_encoded_in_place_is_the_one_lz4_frame_compress_writes(
        source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipper's segments come from liblz4's frame compressor called into a
    reused buffer (codec.encode_segment_into), not from python-lz4's compress:
    the same bytes, byte for byte, content checksum included (added by
    encode_segment_into itself), whatever holds the WAL bytes (and through
    python-lz4 where its extension does not export liblz4's functions)."""
    if source.startswith("without"):
        monkeypatch.setattr(codec, "_lz4f", None)
    wal = b"" if source == "empty" else (os.urandom(300_000).hex().encode() + bytes(200_000))
    if source == "two blocks":  # an object store's segment: past one 4 MiB block
        wal *= 10
    commits = [(WAL_HEADER_SIZE + 4120, 1_700_000_000_123_456_789)] if wal else []
    held = bytearray(b"x" * 10 + wal)
    data = memoryview(held)[10:] if source == "view" else wal
    out = bytearray(b"\xff" * (codec.segment_bound(len(wal), len(commits)) + 5))
    size = codec.encode_segment_into(out, data, commits)
    assert bytes(out[:size]) == codec.encode_segment(wal, commits)
    assert codec.decode_segment(bytes(out[:size])) == (wal, commits)
    assert out[size:] == b"\xff" * (len(out) - size)  # nothing written past the segment
