"""The seed scenario: an event-history service (oCIS eventhistory) on SQLite.

The primary stores every consumed event by its ID; other services look events
up by ID. Here a writer process plays the primary (one event per transaction,
with a counter row updated in the same transaction), and a reader process
plays a service reading the warm standby: in each read transaction it checks
that the counter equals the number of events (a torn apply would break it) and
looks a random event up by ID (its payload is a function of its ID).

Run as ``python eventhistory.py write DB`` or ``python eventhistory.py read STANDBY RESULT_JSON STOP_FILE``.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

SCHEMA = [
    "CREATE TABLE events (id TEXT PRIMARY KEY, type TEXT NOT NULL, payload BLOB NOT NULL, stored_at REAL NOT NULL)",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    "INSERT INTO counters VALUES ('events', 0)",
]
TYPES = ("ShareCreated", "FileUploaded", "SpaceDisabled", "UserDeleted")


def event_id(n: int) -> str:
    return f"evt-{n:08d}"


def payload(n: int) -> bytes:
    # A few hundred bytes, so that events spill over many pages.
    return (f"{{\"event\": {n}, \"actor\": \"user-{n % 97}\"}}".encode() * 8)[: 200 + n % 300]


def create(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for sql in SCHEMA:
        conn.execute(sql)
    conn.close()


def write(path: str, pause: float = 0.005) -> None:
    """Store events until killed; each event is one transaction."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    (n,) = conn.execute("SELECT n FROM counters WHERE name = 'events'").fetchone()
    while True:
        n += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (event_id(n), TYPES[n % 4], payload(n), time.time()))
        conn.execute("UPDATE counters SET n = ? WHERE name = 'events'", (n,))
        conn.execute("COMMIT")
        time.sleep(pause)


def check(conn: sqlite3.Connection, rng: random.Random) -> int:
    """One read transaction on the standby; the number of events it shows. Raises AssertionError if torn."""
    conn.execute("BEGIN")
    try:
        (n,) = conn.execute("SELECT n FROM counters WHERE name = 'events'").fetchone()
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
        assert count == n, f"torn state: counter says {n} events, table holds {count}"
        if n:
            k = rng.randint(1, n)
            row = conn.execute("SELECT type, payload FROM events WHERE id = ?", (event_id(k),)).fetchone()
            assert row == (TYPES[k % 4], payload(k)), f"event {event_id(k)} reads {row!r}"
        return int(n)
    finally:
        conn.execute("COMMIT")


def read(path: str, result_path: str, stop_path: str) -> None:
    """Look events up on the standby until ``stop_path`` exists; write a JSON summary."""
    rng = random.Random(7)
    summary = {"checks": 0, "max_events": 0, "unavailable": 0, "failures": []}  # type: dict[str, object]
    conn = None
    while not os.path.exists(stop_path):
        try:
            if conn is None:
                if not os.path.exists(path):
                    time.sleep(0.05)
                    continue
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30)
            n = check(conn, rng)
            summary["checks"] = int(summary["checks"]) + 1  # type: ignore[call-overload]
            summary["max_events"] = max(int(summary["max_events"]), n)  # type: ignore[call-overload]
        except AssertionError as exc:
            summary["failures"].append(str(exc))  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            # Locked, or a hot journal left by a killed follower that only it may roll back:
            # the standby is unavailable for a moment, never torn.
            summary["unavailable"] = int(summary["unavailable"]) + 1  # type: ignore[call-overload]
            summary["last_error"] = str(exc)
            if conn is not None:
                conn.close()
                conn = None
            time.sleep(0.01)
        tmp = result_path + ".tmp"
        if int(summary["checks"]) % 20 == 0:  # type: ignore[call-overload]
            with open(tmp, "w") as f:
                json.dump(summary, f)
            os.replace(tmp, result_path)
        time.sleep(0.002)
    with open(result_path + ".tmp", "w") as f:
        json.dump(summary, f)
    os.replace(result_path + ".tmp", result_path)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    elif sys.argv[1] == "read":
        read(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")


def event_count(path: Path) -> int:
    """Counted in another process: SQLite's locks are per process, and a connection closed
    here would drop an in-process follower's lock on STANDBY."""
    out = subprocess.run(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True, "
         "timeout=30); print(c.execute('SELECT count(*) FROM events').fetchone()[0])", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout)
