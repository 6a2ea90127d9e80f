"""standby.Standby: applies reach readers whole, and a killed apply is rolled back or kept, never half.

Readers run in another process (SQLite's file locks are per process); the
killed applies SIGKILL their own process at a chosen point of the protocol.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from support.procs import stop_process, wait_for
from support.sqlite import integrity_ok
from litestream_py.standby import FollowState, Standby, read_database_pages

# (rows, multiplier of x): B is larger than A, so applies grow and shrink the file; C has B's
# size but other values, so only the change counter tells a reader's cache that it changed.
STATES = {"a": (1500, 1), "b": (2500, 1), "c": (2500, 2)}
ROWS = {name: rows for name, (rows, _) in STATES.items()}

READER = textwrap.dedent("""
    import json, sqlite3, sys, os
    path, result, stop = sys.argv[1:4]
    valid = {(1500, 1500 * 1501 // 2), (2500, 2500 * 2501 // 2), (2500, 2500 * 2501)}
    torn, checks, errors, seen = [], 0, 0, set()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30)
    while not os.path.exists(stop):
        try:
            conn.execute("BEGIN")
            n, total = conn.execute("SELECT count(*), sum(x) FROM t").fetchone()
            (m,) = conn.execute("SELECT n FROM meta").fetchone()
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            errors += 1
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            torn.append(str(exc))  # waiting is all a reader may ever have to do
            continue
        checks += 1
        seen.add((n, total))
        if checks == 1:
            open(stop + ".ready", "w").close()
        if (n, total) not in valid or m != n:
            torn.append([n, total, m])
    json.dump({"checks": checks, "torn": torn[:5], "errors": errors, "seen": sorted(seen)}, open(result, "w"))
""")


def make_db(path: Path, rows: int, factor: int) -> None:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x INTEGER, pad BLOB)")
    conn.execute("CREATE TABLE meta (n INTEGER)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?, randomblob(300))", [(i * factor,) for i in range(1, rows + 1)])
    conn.execute("INSERT INTO meta VALUES (?)", (rows,))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def state(tag: int) -> FollowState:
    return FollowState("file:///replica", "0123456789abcdef", tag, 0, (0, 0), "", tag, 0)


@pytest.fixture
def dbs(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, (rows, factor) in STATES.items():
        out[name] = tmp_path / f"{name}.db"
        make_db(out[name], rows, factor)
    standby = tmp_path / "standby.db"
    standby.write_bytes(out["a"].read_bytes())
    Standby.prepare(str(standby), state(1))
    out["standby"] = standby
    return out


def count(path: Path) -> int:
    conn = sqlite3.connect(str(path))
    try:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


def test_readers_in_another_process_never_see_a_torn_apply(dbs: dict[str, Path], tmp_path: Path) -> None:
    result, stop = tmp_path / "reader.json", tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(dbs["standby"]), str(result), str(stop)])
    try:
        wait_for(lambda: Path(str(stop) + ".ready").exists(), what="the reader's first check")
        standby = Standby(str(dbs["standby"]), threading.Event())
        current = standby.open()
        pages = {name: read_database_pages(str(dbs[name])) for name in STATES}
        for i in range(2, 82):
            name = "abcb"[i % 4]
            after = state(i)
            standby.apply(*pages[name], current, after)
            current = after
            time.sleep(0.02)  # a follower's applies come with pauses; readers get in between
        standby.close(current)
        stop.touch()
        assert reader.wait(timeout=60) == 0
    finally:
        stop_process(reader, signal.SIGKILL)
    summary = json.loads(result.read_text())
    assert summary["torn"] == [] and summary["errors"] == 0, summary
    assert summary["checks"] > 20, summary
    # It saw every state, not a stale cache.
    assert summary["seen"] == [[1500, 1500 * 1501 // 2], [2500, 2500 * 2501 // 2], [2500, 2500 * 2501]], summary
    assert count(dbs["standby"]) == ROWS["abcb"[81 % 4]] and integrity_ok(dbs["standby"])


KILLED_APPLY = textwrap.dedent("""
    import os, signal, sys, threading
    sys.path.insert(0, sys.argv[4])
    from litestream_py.standby import FollowState, Standby, read_database_pages
    standby_path, source, when = sys.argv[1:4]
    real_unlink = os.unlink
    def unlink(path, *a, **k):
        if path.endswith("-journal"):
            if when == "before-commit":
                os.kill(os.getpid(), signal.SIGKILL)
            real_unlink(path)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_unlink(path, *a, **k)
    os.unlink = unlink
    s = Standby(standby_path, threading.Event())
    before = s.open()
    after = FollowState(before.replica, before.generation, 2, 0, (0, 0), "", 2, 0)
    s.apply(*read_database_pages(source), before, after)
""")


@pytest.mark.parametrize("when", ["before-commit", "after-commit"])
@pytest.mark.parametrize("shrink", [False, True], ids=["grow", "shrink"])
def test_killed_apply_is_rolled_back_or_kept_whole(dbs: dict[str, Path], when: str, shrink: bool) -> None:
    """SIGKILL inside the apply (pages written, journal not yet deleted) or just after its commit
    (journal deleted, lock still held): STANDBY and its saved position agree either way, whether
    the apply grows the file or truncates it."""
    old, new = ("b", "a") if shrink else ("a", "b")
    if shrink:
        dbs["standby"].write_bytes(dbs["b"].read_bytes())
        Standby.prepare(str(dbs["standby"]), state(1))
    repo = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", KILLED_APPLY, str(dbs["standby"]), str(dbs[new]), when, repo])
    assert proc.returncode == -signal.SIGKILL
    journal = Path(str(dbs["standby"]) + "-journal")
    assert journal.exists() == (when == "before-commit")
    if when == "before-commit":
        # Pages of B were written over A: a read-only reader must not see them.
        reader = sqlite3.connect(f"file:{dbs['standby']}?mode=ro", uri=True)
        try:
            seen = reader.execute("SELECT count(*) FROM t").fetchone()[0]
            assert seen == ROWS[old]
        except sqlite3.DatabaseError as exc:
            assert "malformed" not in str(exc), exc  # refused (hot journal, read-only), not torn
        finally:
            reader.close()
    standby = Standby(str(dbs["standby"]), threading.Event())
    resumed = standby.open()  # rolls a hot journal back
    expected = (old, 1) if when == "before-commit" else (new, 2)
    assert resumed.index == expected[1]
    standby.close(resumed)
    assert count(dbs["standby"]) == ROWS[expected[0]]
    assert integrity_ok(dbs["standby"]) and not journal.exists()
