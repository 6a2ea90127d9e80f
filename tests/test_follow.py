"""``lsr restore -f``: a warm standby that readers in other processes use while it follows.

Everything is real: the primary's writer, ``lsr replicate``, the follower and
the reader of the standby are separate processes; the follower is SIGKILLed.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import LSR, Processes, integrity_ok, rows, wait_for
from eventhistory import create
from litestream_py.standby import STATE_SUFFIX

HERE = Path(__file__).parent
EVENTHISTORY = str(HERE / "eventhistory.py")


def event_count(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def reader_summary(path: Path) -> dict[str, object]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return {"checks": 0, "max_events": 0, "failures": []}


def follow(procs: Processes, standby: Path, replica_url: str, *extra: str) -> subprocess.Popen[bytes]:
    return procs.start([LSR, "restore", "-f", "-v", *extra, "-o", str(standby), replica_url], "follow")


def test_eventhistory_standby_follows_resumes_and_promotes(tmp_path: Path, procs: Processes) -> None:
    """The seed scenario on a file replica: events looked up by ID on the standby while the
    primary writes; the follower SIGKILLed and resumed without a restore; SIGTERM leaves a
    promotable database with every event."""
    primary, standby, replica = tmp_path / "events.db", tmp_path / "standby.db", tmp_path / "replica"
    create(str(primary))
    sidecar = procs.lsr_replicate(str(primary), f"file://{replica}")
    writer = procs.start([sys.executable, EVENTHISTORY, "write", str(primary)], "writer")
    wait_for(lambda: (replica / "generations").is_dir() and event_count(primary) > 50, what="events on the replica")

    follower = follow(procs, standby, f"file://{replica}")
    result, stop_file = tmp_path / "reader.json", tmp_path / "reader.stop"
    reader = procs.start([sys.executable, EVENTHISTORY, "read", str(standby), str(result), str(stop_file)], "reader")
    wait_for(lambda: int(reader_summary(result)["max_events"]) > 150, timeout=60, what="events read on the standby")  # type: ignore[call-overload]

    # SIGKILL mid-stream: the next run resumes from the state beside STANDBY. With every
    # snapshot gone from the replica, a full restore could not even start.
    procs.stop(follower, signal.SIGKILL)
    state = json.loads(Path(str(standby) + STATE_SUFFIX).read_text())
    assert state["states"], state
    for snap in replica.glob("generations/*/snapshots/*.snapshot.lz4"):
        snap.unlink()
    seen = int(reader_summary(result)["max_events"])  # type: ignore[call-overload]
    follower = follow(procs, standby, f"file://{replica}")
    wait_for(lambda: int(reader_summary(result)["max_events"]) > seen + 100, timeout=60,  # type: ignore[call-overload]
             what="the resumed follower to apply new events")
    log = Processes.output(follower)
    assert "resuming" in log and "snapshot" not in log, log

    procs.stop(writer, signal.SIGKILL)
    total = event_count(primary)
    wait_for(lambda: event_count(standby) == total, timeout=60, what="the standby to catch up with the primary")
    assert procs.stop(follower, signal.SIGTERM) == 0, Processes.output(follower)
    stop_file.touch()
    assert reader.wait(timeout=30) == 0, Processes.output(reader)
    summary = reader_summary(result)
    assert summary["failures"] == [], summary
    assert int(summary["checks"]) > 100, summary  # type: ignore[call-overload]

    # Promotable as it is: WAL mode, intact, every event, writable.
    assert rows(standby, "PRAGMA journal_mode") == [("wal",)]
    assert integrity_ok(standby)
    assert rows(standby, "SELECT count(*), max(id) FROM events") == rows(primary, "SELECT count(*), max(id) FROM events")
    assert not Path(str(standby) + "-journal").exists()
    procs.stop(sidecar)
