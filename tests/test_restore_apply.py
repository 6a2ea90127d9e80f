"""The restore pipeline: parallel downloads, the snapshot written behind, WAL
applied a whole transaction at a time, exactly as SQLite's own checkpoint would.
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
from typing import Any, BinaryIO

import pytest

from litestream_py import codec
from litestream_py.errors import WALFormatError
from litestream_py.pos import Pos, WALSegmentInfo
from litestream_py.replica import Replica
from litestream_py.apply import PURE_PYTHON_WAL_BYTES, WALApplier, frame_check
from litestream_py.restore import RestoreOptions, restore
from litestream_py.restore_target import CachedListing
from litestream_py.wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, FrameTerms, WALHeader, checksum
from support.engine import CountingClient, commit_and_ship, replicated_app
from support.procs import run_lsr, wait_for
from support.s3 import S3Server, make_s3_client
from support.sqlite import integrity_ok, rows

apply_module = importlib.import_module("litestream_py.apply")


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


def test_progress_bar_only_on_a_terminal(tmp_path: Path, engine) -> None:
    import pty

    from support.procs import LSR

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


def split_at_commits(wal: bytes) -> list[tuple[int, bytes]]:
    """(offset, bytes) of one segment per transaction, the first carrying the WAL header."""
    frame = WAL_FRAME_HEADER_SIZE + WALHeader.parse(wal).page_size
    segments, start = [], 0
    for off in range(WAL_HEADER_SIZE, len(wal) - frame + 1, frame):
        if struct.unpack_from(">I", wal, off + 4)[0]:  # commit frame
            segments.append((start, wal[start : off + frame]))
            start = off + frame
    return segments


@pytest.mark.parametrize("check", ["c", "numpy", "python"])
def test_a_run_of_segments_dates_and_names_each_segment(tmp_path: Path, check: str) -> None:
    """Contiguous segments are verified in one pass, yet each keeps its own time and name."""
    from support.sqlite import write_wal

    _, wal = write_wal(tmp_path, 4096, transactions=4)
    pieces = split_at_commits(wal)
    assert len(pieces) == 5  # CREATE TABLE, then four transactions
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def run(data: list[tuple[int, bytes]]) -> list[tuple[WALSegmentInfo, tuple[bytes, list[tuple[int, int]]]]]:
        # No recorded commit times: each commit is dated by its segment, as for Go's segments.
        return [(WALSegmentInfo("g", 0, off, len(d), t0 + timedelta(seconds=i)), (d, [])) for i, (off, d) in enumerate(data)]

    cutoff = int((t0 + timedelta(seconds=2.5)).timestamp() * 1e9)
    with open(tmp_path / "a.db", "w+b") as f:
        applier = WALApplier(f, "g", cutoff_ns=cutoff, check=check)
        applier.feed(run(pieces))
    assert applier.transactions == 3 and applier.done
    assert applier.last_commit == Pos("g", 0, pieces[3][0])

    broken = list(pieces)
    off, data = broken[3]
    broken[3] = (off, data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    with open(tmp_path / "b.db", "w+b") as f:
        applier = WALApplier(f, "g", check=check)
        with pytest.raises(WALFormatError, match=f"wal segment g/00000000_{off:08x}: checksum mismatch at offset {off}"):
            applier.feed(run(broken))
    assert applier.transactions == 3  # everything before the bad segment was applied


@pytest.mark.parametrize("dirty_bytes,check", [(1, "c"), (64 << 20, "c"), (64 << 20, "numpy"), (64 << 20, "python")],
                         ids=["flush-every-commit", "flush-at-end", "flush-at-end-numpy", "flush-at-end-pure-python"])
def test_applied_wal_matches_sqlites_own_checkpoint(tmp_path: Path, dirty_bytes: int, check: str,
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
        applier = WALApplier(f, "g", check=check)
        applier.feed([(WALSegmentInfo("g", 0, off, len(d), t0), (d, [])) for off, d in split_at_commits(wal)])
        applier.flush()
    assert applier.transactions == 40 + 2 + 30  # the last 30 inserts autocommit one by one
    assert len(want) < 400 * 1500  # the VACUUM did shrink it
    assert out.read_bytes() == want
    assert integrity_ok(out)


def test_segments_download_while_the_snapshot_restores_within_a_byte_budget(
    tmp_path: Path, engine, monkeypatch
) -> None:
    """Downloads run ahead of an applier waiting for the snapshot (not a fixed handful
    of segments), but never hold more than the read-ahead budget (plus one segment per
    worker). The applier takes runs of one segment and writes each commit's pages at
    once, so it waits for the snapshot from its first commit on."""
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
    monkeypatch.setattr(apply_module, "MAX_RUN_BYTES", 1)
    monkeypatch.setattr(WALApplier, "DIRTY_PAGE_BYTES", 1)
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


def test_the_wal_is_checked_while_the_snapshot_is_written(tmp_path: Path, engine, monkeypatch) -> None:
    """The applier checks the segments and keeps their pages while the snapshot is
    still to be read (here it is held until the WAL has been fed); the pages go into
    the file once the snapshot is in it, and the database is whole."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 30)
    fed = threading.Event()
    feed = WALApplier.feed

    def feeding(self: WALApplier, *args: Any, **kwargs: Any) -> None:
        feed(self, *args, **kwargs)
        fed.set()

    monkeypatch.setattr(WALApplier, "feed", feeding)
    held: list[bool] = []

    class HeldSnapshot(CountingClient):
        def open_snapshot(self, generation: str, index: int) -> BinaryIO:
            held.append(fed.wait(timeout=60))  # never set if the WAL waited for the snapshot
            return super().open_snapshot(generation, index)

    out = tmp_path / "out.db"
    restore(HeldSnapshot(client.root), RestoreOptions(output_path=str(out)))
    assert held == [True]
    assert rows(out, "SELECT v FROM t ORDER BY id") == [(f"row-{i}",) for i in range(30)]
    assert integrity_ok(out)


def test_a_bad_segment_stops_the_snapshot_being_written(tmp_path: Path, engine, monkeypatch) -> None:
    """A segment that fails its check while the snapshot is being written fails the
    restore with the segment's error (not the snapshot's stop), and leaves nothing."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 10)
    (generation,) = client.generations()
    victim = client.wal_segments(generation)[4]
    data, commits = codec.decode_segment(client.read_wal_segment(victim.pos))
    broken = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
    segment_file = Path(client.root) / "generations" / generation / "wal" / f"{victim.index:08x}_{victim.offset:08x}.wal.lz4"
    segment_file.write_bytes(codec.encode_segment(broken, commits))
    cancelled = threading.Event()
    cancel = apply_module._WriteBehind.cancel

    def cancelling(self: Any) -> None:
        cancel(self)
        cancelled.set()

    monkeypatch.setattr(apply_module._WriteBehind, "cancel", cancelling)
    held: list[bool] = []

    class HeldSnapshot(CountingClient):
        def open_snapshot(self, generation: str, index: int) -> BinaryIO:
            held.append(cancelled.wait(timeout=60))
            return super().open_snapshot(generation, index)

    out = tmp_path / "out.db"
    where = f"{generation}/{victim.index:08x}_{victim.offset:08x}"
    with pytest.raises(WALFormatError, match=f"wal segment {where}: checksum mismatch"):
        restore(HeldSnapshot(client.root), RestoreOptions(output_path=str(out)))
    assert held == [True]
    assert not list(tmp_path.glob("out.db*"))


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


def test_frames_are_checked_in_c_whatever_the_plans_size(monkeypatch) -> None:
    """pip builds _walcheck (the sidecar needs it): a restore then never imports numpy.
    Without it, numpy checks a large plan's frames and pure Python a small one's."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    small, large = ([WALSegmentInfo("g", 0, 0, size, t0)] for size in (1, PURE_PYTHON_WAL_BYTES + 1))
    assert frame_check(small) == frame_check(large) == "c"
    monkeypatch.setattr(apply_module, "C_CHECKS", False)
    assert (frame_check(small), frame_check(large)) == ("python", "numpy")


def test_numpy_starts_no_blas_threads(tmp_path: Path) -> None:
    """OpenBLAS would start a spinning thread per core; lsr never calls BLAS."""
    code = "import os, litestream_py.wal, numpy; print(len(os.listdir('/proc/self/task')))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_frames_read_ahead_must_continue_the_checksum_chain(tmp_path: Path, engine, monkeypatch) -> None:
    """Without _walcheck, the downloading thread reads the frames of a small WAL's large segments ahead
    (their checksums chained from the segment's own first frame); the applier reads
    the others and checks the whole chain, joins included. A segment forged from
    another start, valid in itself, fails the restore there, read ahead or not,
    with the commits before it applied."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 6)
    (generation,) = client.generations()
    segments = client.wal_segments(generation)
    assert len(segments) >= 6 and {s.index for s in segments} == {segments[0].index}
    header = WALHeader.parse(codec.decode_segment(client.read_wal_segment(segments[0].pos))[0])
    victim = segments[3]
    data, commits = codec.decode_segment(client.read_wal_segment(victim.pos))
    forged = bytearray(data)
    s0, s1 = 0x12345678, 0x9ABCDEF0  # not the checksum the previous segment ends at
    frame = WAL_FRAME_HEADER_SIZE + header.page_size
    for off in range(0, len(forged), frame):
        s0, s1 = checksum(header.big_endian, s0, s1, bytes(forged[off : off + 8]))
        s0, s1 = checksum(header.big_endian, s0, s1, bytes(forged[off + WAL_FRAME_HEADER_SIZE : off + frame]))
        forged[off + 16 : off + 24] = s0.to_bytes(4, "big") + s1.to_bytes(4, "big")
    segment_file = Path(client.root) / "generations" / generation / "wal" / f"{victim.index:08x}_{victim.offset:08x}.wal.lz4"
    segment_file.write_bytes(codec.encode_segment(bytes(forged), commits))
    where = f"{generation}/{victim.index:08x}_{victim.offset:08x}"
    mismatch = f"wal segment {where}: checksum mismatch at offset {victim.offset}$"
    read = apply_module._Prefetch._read
    read_ahead: list[int] = []

    def counting_read(self: Any, seg: WALSegmentInfo, data: bytes) -> Any:
        frames = read(self, seg, data)
        if frames is not None:
            read_ahead.append(seg.offset)
        return frames

    monkeypatch.setattr(apply_module._Prefetch, "_read", counting_read)
    monkeypatch.setattr(apply_module, "READ_AHEAD_BYTES", 0)  # these segments are small: read every one ahead
    monkeypatch.setattr(apply_module, "frame_check", lambda segments: "python")  # as without _walcheck
    out = tmp_path / "out.db"
    with pytest.raises(WALFormatError, match=mismatch):
        restore(client, RestoreOptions(output_path=str(out)))
    assert victim.offset in read_ahead
    assert not list(tmp_path.glob("out.db*"))
    # Fed directly, the forged segment starting a run, read ahead or read by the
    # applier beside segments read ahead: its join with the one before is its first frame.
    decoded = [codec.decode_segment(client.read_wal_segment(s.pos)) for s in segments]
    for ahead_of_victim in (True, False):
        ahead = {(s.index, s.offset): FrameTerms.read(d[WAL_HEADER_SIZE:] if s.offset == 0 else d, header.page_size,
                                                       header.big_endian)
                 for i, (s, (d, _)) in enumerate(zip(segments, decoded)) if (i % 2 == 1) == ahead_of_victim}
        with open(tmp_path / f"direct-{ahead_of_victim}.db", "w+b") as f:
            applier = WALApplier(f, generation, check="python")
            applier.feed(list(zip(segments[:3], decoded[:3])), ahead)
            before = applier.transactions
            assert before >= 3
            with pytest.raises(WALFormatError, match=mismatch):
                applier.feed(list(zip(segments[3:], decoded[3:])), ahead)
        assert applier.transactions == before
        assert not ahead  # what was read ahead was used
