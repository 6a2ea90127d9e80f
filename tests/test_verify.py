"""Verify: a replica restored and compared with the live database, on demand
and inside the sidecar (validation-interval).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


from litestream_py import codec
from litestream_py.wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WALHeader, checksum
from support.config import write_config
from support.procs import Processes, run_lsr, wait_for
from support.workload import sidecar_on_new_db


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
    config = write_config(tmp_path / "lsr.yml", db, f"file://{tmp_path / 'replica'}")
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


def test_validation_interval_verifies_inside_the_sidecar(tmp_path: Path, procs: Processes) -> None:
    conn, _, lsr = sidecar_on_new_db(tmp_path, procs, {"validation-interval": "1s"})
    for i in range(50):
        conn.execute("INSERT INTO t (v) VALUES (?)", (f"v{i}",))
    wait_for(lambda: "verified: OK" in procs.output(lsr), timeout=60, what="a validation in the sidecar")
    assert procs.stop(lsr) == 0
    assert "verification failed" not in procs.output(lsr)


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
