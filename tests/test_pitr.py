"""Exact point-in-time restore, on an event table appended at irregular intervals.

The application records when each commit started and returned; lsr records when
it captured each commit. A restore to instant T must hold exactly the events
whose commit returned before T, for instants that are not inside a commit's own
capture window (a guard band of GUARD seconds after each commit).
"""

from __future__ import annotations

import json
import random
import sqlite3
import struct
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from support.procs import Processes, run_lsr, wait_for
from support.sqlite import integrity_ok, open_app_db, rows
from support.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, SERVER_NAMES, S3Server

GUARD = 0.05  # lsr captures a commit within milliseconds; stay clear of that window
# A commit's time is the WAL's mtime, which the kernel takes from a clock that
# can lag the precise one by a tick (4 ms at 250 Hz): instants closer than this
# before a commit started are inside its window too.
COARSE_CLOCK = 0.01
EVENTS = 60


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds")


def append_events(db: Path, n: int, seed: int) -> list[tuple[float, float]]:
    """Vitrage-style events (id autoincrement, collector_timestamp, JSON payload)."""
    rng = random.Random(seed)
    conn = open_app_db(db)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS event (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "collector_timestamp TEXT NOT NULL, payload TEXT NOT NULL)"
    )
    windows = []
    for i in range(n):
        time.sleep(rng.uniform(0.05, 0.15))
        payload = json.dumps({"vitrage_id": f"v-{i}", "state": rng.choice(["ok", "alarm"]), "n": i})
        before = time.time()
        conn.execute(
            "INSERT INTO event (collector_timestamp, payload) VALUES (?, ?)",
            (datetime.now(timezone.utc).isoformat(), payload),
        )
        windows.append((before, time.time()))
    conn.close()
    return windows


def random_instants(windows: list[tuple[float, float]], count: int, seed: int,
                    guard: float = GUARD) -> list[tuple[float, int]]:
    """Instants between commits, ``guard`` after a commit returned and clear of
    the next one's window, with the expected event count."""
    rng = random.Random(seed)
    gaps = [
        (windows[i][1] + guard, windows[i + 1][0] - COARSE_CLOCK)
        for i in range(len(windows) - 1)
        if windows[i + 1][0] - COARSE_CLOCK - windows[i][1] > guard + 0.01
    ]
    picks = rng.sample(gaps, min(count, len(gaps)))
    out = []
    for lo, hi in picks:
        t = rng.uniform(lo, hi)
        out.append((t, sum(1 for _, after in windows if after <= t)))
    return out


S3_ENV = {
    "LITESTREAM_ACCESS_KEY_ID": ACCESS_KEY_ID,
    "LITESTREAM_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def replicate_events(tmp: Path, replica: str, env: dict[str, str] | None = None,
                     events: int = EVENTS) -> tuple[Path, str, list[tuple[float, float]]]:
    db = tmp / "events.db"
    open_app_db(db).close()
    procs = Processes(tmp)
    try:
        lsr = procs.lsr_replicate(str(db), replica, env=env)
        # Nothing can be restored before the first snapshot: start once it exists.
        wait_for(lambda: len(run_lsr("snapshots", replica, env=env).stdout.splitlines()) > 1, what="first snapshot")
        windows = append_events(db, events, seed=4)
        assert procs.stop(lsr) == 0, procs.output(lsr)
    finally:
        procs.kill_all()
    return db, replica, windows


@pytest.fixture(scope="module")
def replicated_events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[tuple[float, float]]]:
    tmp = tmp_path_factory.mktemp("pitr")
    return replicate_events(tmp, f"file://{tmp / 'replica'}")


@pytest.mark.parametrize("server_name", SERVER_NAMES)
def test_exact_restores_from_s3(tmp_path: Path, server_name: str, s3_servers: dict[str, S3Server]) -> None:
    server = s3_servers[server_name]
    bucket = server.create_bucket()
    replica = f"s3://{bucket}/events?endpoint={server.endpoint}"
    # Half the file test's events and instants: the rule is the same, S3 restores cost more.
    db, replica, windows = replicate_events(tmp_path, replica, S3_ENV, events=EVENTS // 2)
    for i, (t, expected) in enumerate(random_instants(windows, 10, seed=8)):
        out = tmp_path / f"s3-pitr-{i}.db"
        r = run_lsr("restore", "-timestamp", iso(t), "-o", str(out), replica, env=S3_ENV)
        assert r.returncode == 0, r.stderr
        ids = [row[0] for row in rows(out, "SELECT id FROM event ORDER BY id")]
        assert ids == list(range(1, expected + 1)), f"instant {iso(t)}: {len(ids)} events, expected {expected}"


def test_restore_to_twenty_random_instants_is_exact(tmp_path: Path, replicated_events) -> None:
    db, replica, windows = replicated_events
    instants = random_instants(windows, 20, seed=7)
    assert len(instants) == 20
    for i, (t, expected) in enumerate(instants):
        out = tmp_path / f"pitr-{i}.db"
        r = run_lsr("restore", "-timestamp", iso(t), "-o", str(out), replica)
        assert r.returncode == 0, r.stderr
        ids = [row[0] for row in rows(out, "SELECT id FROM event ORDER BY id")]
        assert ids == list(range(1, expected + 1)), f"instant {iso(t)}: {len(ids)} events, expected {expected}"
        assert integrity_ok(out)


def test_exact_restores_on_a_loaded_machine(tmp_path: Path, cpu_burners: list[object]) -> None:
    """With both cores busy lsr reads a commit tens of ms after it was made; the
    commit's time is still when it was made (the WAL's mtime), not when lsr read
    it, so instants just after a commit (2 ms) restore exactly."""
    db, replica, windows = replicate_events(tmp_path, f"file://{tmp_path / 'replica'}", events=30)
    instants = random_instants(windows, 10, seed=5, guard=0.002)
    assert len(instants) == 10
    wrong = []
    for i, (t, expected) in enumerate(instants):
        out = tmp_path / f"loaded-{i}.db"
        r = run_lsr("restore", "-timestamp", iso(t), "-o", str(out), replica)
        assert r.returncode == 0, r.stderr
        got = rows(out, "SELECT count(*) FROM event")[0][0]
        if got != expected:
            wrong.append(f"{iso(t)}: {got} events, expected {expected}")
    assert not wrong, f"{len(wrong)} of 10 instants inexact: {wrong}"


def test_timestamp_accepts_offsets_and_fractions(tmp_path: Path, replicated_events) -> None:
    _, replica, windows = replicated_events
    (t, expected), = random_instants(windows, 1, seed=11)
    local = datetime.fromtimestamp(t, timezone.utc).astimezone(timezone(__import__("datetime").timedelta(hours=5, minutes=30)))
    out = tmp_path / "offset.db"
    r = run_lsr("restore", "--timestamp", local.isoformat(timespec="microseconds"), "-o", str(out), replica)
    assert r.returncode == 0, r.stderr
    assert rows(out, "SELECT count(*) FROM event") == [(expected,)]


def test_timestamp_out_of_range_is_one_clear_line(tmp_path: Path, replicated_events) -> None:
    _, replica, windows = replicated_events
    early = run_lsr("restore", "-timestamp", "2001-01-01T00:00:00Z", "-o", str(tmp_path / "a.db"), replica)
    assert early.returncode == 1
    assert "before the earliest snapshot" in early.stderr and len(early.stderr.strip().splitlines()) == 1
    late = run_lsr("restore", "-timestamp", iso(windows[-1][1] + 3600), "-o", str(tmp_path / "b.db"), replica)
    assert late.returncode == 1
    assert "after the last captured commit" in late.stderr and len(late.stderr.strip().splitlines()) == 1
    bad = run_lsr("restore", "-timestamp", "yesterday", "-o", str(tmp_path / "c.db"), replica)
    assert bad.returncode == 1 and "RFC 3339" in bad.stderr
    assert not any((tmp_path / n).exists() for n in ("a.db", "b.db", "c.db"))


def test_segments_carry_commit_times_and_go_still_restores(tmp_path: Path, replicated_events, go: str) -> None:
    db, replica, _ = replicated_events
    segments = sorted(Path(replica[len("file://"):]).glob("generations/*/wal/*.wal.lz4"))
    assert segments
    magic = struct.unpack("<I", segments[-1].read_bytes()[:4])[0]
    assert magic & 0xFFFFFFF0 == 0x184D2A50  # an LZ4 skippable frame with the capture times
    import subprocess

    out = tmp_path / "go.db"
    r = subprocess.run([go, "restore", "-o", str(out), replica], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert rows(out, "SELECT * FROM event ORDER BY id") == rows(db, "SELECT * FROM event ORDER BY id")
    assert integrity_ok(out)


def test_timestamp_restore_downloads_the_snapshot_once(tmp_path: Path, replicated_events) -> None:
    """A snapshot listed well before the timestamp is not opened just to read its capture time
    (on S3 every open downloads the whole snapshot)."""
    from litestream_py.clients.file import FileReplicaClient
    from litestream_py.restore import RestoreOptions, restore

    db, replica, windows = replicated_events
    client = FileReplicaClient(replica[len("file://"):])
    opened: list[int] = []
    real_open = client.open_snapshot

    def counting_open(generation: str, index: int):  # instrumentation: every call reaches the real client
        opened.append(index)
        return real_open(generation, index)

    client.open_snapshot = counting_open  # type: ignore[method-assign]
    t = windows[-1][1] + GUARD  # seconds after the snapshot (taken before the first event)
    out = tmp_path / "late.db"
    restore(client, RestoreOptions(output_path=str(out), timestamp=datetime.fromtimestamp(t, timezone.utc)))
    assert len(opened) == 1, opened
    assert rows(out, "SELECT COUNT(*) FROM event") == [(EVENTS,)]
    assert integrity_ok(out)


def test_commit_times_survive_a_torn_or_stale_commits_file(tmp_path: Path) -> None:
    """The .commits file is not fsynced: after a power loss its tail may be torn,
    or hold times of frames the shadow WAL lost. Neither may misplace a time."""
    from litestream_py.db import DB

    db = DB(str(tmp_path / "app.db"))
    path = Path(db.shadow.commits_path("0123456789abcdef", 0))
    path.parent.mkdir(parents=True)
    entry = struct.Struct("<QQ")
    # Two good entries, a stale one past a lost shadow tail, garbage, a torn half entry.
    good = entry.pack(100, 1_000) + entry.pack(200, 2_000) + entry.pack(300, 3_000)
    path.write_bytes(good + entry.pack(50, 7) + entry.pack(400, 0)[:7])
    assert db.shadow.commit_log.between("0123456789abcdef", 0, 0, 10_000) == [(100, 1_000), (200, 2_000), (300, 3_000)]
    assert path.stat().st_size == 3 * entry.size  # torn tail cut before the next append

    # The shadow lost its frames past 200: frame 250 is new, and 300's time was for a lost frame.
    db.shadow.commit_log.record("0123456789abcdef", 0, [(250, 5_000), (330, 6_000)])
    expected = [(100, 1_000), (200, 2_000), (250, 5_000), (330, 6_000)]
    assert db.shadow.commit_log.between("0123456789abcdef", 0, 0, 10_000) == expected
    reloaded = DB(str(tmp_path / "app.db"))
    assert reloaded.shadow.commit_log.between("0123456789abcdef", 0, 0, 10_000) == expected
    assert reloaded.shadow.commit_log.between("0123456789abcdef", 0, 200, 300) == [(250, 5_000)]
