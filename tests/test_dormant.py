"""Dormant databases (dormancy.py): an idle database lets go of SQLite and its
files, wakes on the next write, and loses nothing even when the application
restarts its WAL while lsr holds no read lock.

Real processes throughout: ``lsr replicate`` as a subprocess (its descriptors
read from /proc), the application in processes of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.app import AppProcess
from support.config import write_config
from support.procs import Processes, run_lsr, wait_for
from support.sqlite import integrity_ok, rows
from support.workload import local_generation, meta_dir, replica_generations, restore, stop_lsr, wait_ready, wait_synced

DB_FILES = ("", "-wal", "-shm")


def _descriptors(pid: int, db: Path) -> dict[str, int]:
    """How many of the process's descriptors point at each of the database's files (and its meta directory's)."""
    counts: dict[str, int] = {}
    names = {str(db) + suffix: "db" + suffix for suffix in DB_FILES}
    meta = str(meta_dir(db)) + "/"
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
        name = names.get(target) or (target[len(meta):] if target.startswith(meta) else None)
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _dormant(p: subprocess.Popen[bytes], db: Path) -> bool:
    assert p.poll() is None, f"lsr exited early ({p.returncode}):\n{Processes.output(p)}"
    return _descriptors(p.pid, db) == {"lsr.lock": 1}


def _start(procs: Processes, tmp_path: Path, db: Path, replica: Path) -> subprocess.Popen[bytes]:
    cfg = write_config(tmp_path / "litestream.yml", db, replica, dormant_after="1s",
                       top={"logging": {"level": "debug"}})
    return procs.lsr_replicate("-config", str(cfg))


def _started_and_dormant(procs: Processes, tmp_path: Path, db: Path, replica: Path, app: AppProcess
                         ) -> subprocess.Popen[bytes]:
    """Ten commits, lsr started on them, their snapshot shipped (awake meanwhile), and lsr dormant."""
    app.insert(10)
    p = _start(procs, tmp_path, db, replica)
    wait_ready(p, replica)
    awake = _descriptors(p.pid, db)
    assert awake.get("db", 0) >= 1 and awake.get("db-shm", 0) >= 1, awake
    wait_for(lambda: _dormant(p, db), what="the database to go dormant")
    return p


def _count(db: Path) -> int:
    return int(rows(db, "SELECT count(*) FROM t")[0][0])  # type: ignore[call-overload]


def _restored(tmp_path: Path, replica: Path, name: str) -> Path:
    out = tmp_path / name
    restore(f"file://{replica}", out)
    assert integrity_ok(out)
    return out


def test_an_idle_database_goes_dormant_holding_one_descriptor_and_wakes_on_a_write(
        tmp_path: Path, procs: Processes) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = AppProcess(db)
    try:
        p = _started_and_dormant(procs, tmp_path, db, replica, app)
        generation = local_generation(db)

        app.insert(25)  # wakes it: copied, shipped, and dormant again
        wait_synced(db, replica)
        wait_for(lambda: _dormant(p, db), what="the database to go dormant again")
        assert local_generation(db) == generation, "a wake with the WAL intact continues the generation"
        assert replica_generations(replica) == [generation]
        app.insert(5)
        out = stop_lsr(p)
    finally:
        app.close()
    assert "dormant" in out and "waking" in out
    restored = _restored(tmp_path, replica, "restored.db")
    assert _count(restored) == _count(db) == 40
    assert rows(restored, "SELECT id, v FROM t ORDER BY id") == rows(db, "SELECT id, v FROM t ORDER BY id")


# What the application does while lsr is stopped (SIGSTOP), so that lsr cannot
# wake in between: commits, a checkpoint that restarts the WAL, more commits.
RESTART_WHILE_DORMANT = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
for i in range(20):
    conn.execute("INSERT INTO t (v) VALUES (?)", (f"before {i}",))
busy, log, done = conn.execute(f"PRAGMA wal_checkpoint({sys.argv[2]})").fetchone()
assert busy == 0 and log == done, (busy, log, done)
for i in range(30):
    conn.execute("INSERT INTO t (v) VALUES (?)", (f"after {i}",))
conn.close()
"""


@pytest.mark.parametrize("mode", ["TRUNCATE", "RESTART"])
def test_a_wal_restart_while_dormant_starts_a_new_generation_and_loses_nothing(
        tmp_path: Path, procs: Processes, mode: str) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = AppProcess(db)
    try:
        p = _started_and_dormant(procs, tmp_path, db, replica, app)
        generation = local_generation(db)
        os.kill(p.pid, signal.SIGSTOP)
        try:
            subprocess.run([sys.executable, "-c", RESTART_WHILE_DORMANT, str(db), mode], check=True, timeout=60)
        finally:
            os.kill(p.pid, signal.SIGCONT)
        wait_for(lambda: local_generation(db) != generation, what="a new generation")
        wait_synced(db, replica)
        out = stop_lsr(p)
    finally:
        app.close()
    assert "wal header changed while lsr was not watching" in out
    assert len(replica_generations(replica)) == 2
    restored = _restored(tmp_path, replica, "restored.db")
    assert _count(restored) == _count(db) == 60
    assert rows(restored, "SELECT id, v FROM t ORDER BY id") == rows(db, "SELECT id, v FROM t ORDER BY id")


def test_a_dormant_database_still_excludes_a_second_sidecar(tmp_path: Path, procs: Processes) -> None:
    """Its lock file and its replica's lease stay held while it is dormant."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    other = tmp_path / "other.db"
    app = AppProcess(db)
    other_app = AppProcess(other)
    try:
        app.insert(3)
        other_app.insert(3)
        p = _start(procs, tmp_path, db, replica)
        wait_ready(p, replica)
        wait_for(lambda: _dormant(p, db), what="the database to go dormant")
        same_db = run_lsr("replicate", str(db), f"file://{tmp_path / 'elsewhere'}", timeout=60)
        same_replica = run_lsr("replicate", str(other), f"file://{replica}", timeout=60)
        assert _dormant(p, db), "refusing the others did not need the database"
        stop_lsr(p)
    finally:
        app.close()
        other_app.close()
    assert same_db.returncode != 0 and "already replicates it" in same_db.stderr, same_db.stderr
    assert same_replica.returncode != 0 and "its lease is held by" in same_replica.stderr, same_replica.stderr


def test_only_a_sidecar_of_many_databases_lets_them_go_dormant_unless_configured() -> None:
    """A few databases stay awake (an application that closes its last connection while lsr is
    dormant would cost a new generation); a hundred or more, or any that others wait for,
    go dormant; dormant-after, when set, is obeyed whatever the count (0: never)."""
    from litestream_py.dormancy import DORMANT_AFTER, DORMANT_MIN_DBS, MIN_DORMANT_QUIET, quiet_before_dormant

    assert quiet_before_dormant(None, 1, False) == 0
    assert quiet_before_dormant(None, DORMANT_MIN_DBS - 1, False) == 0
    assert quiet_before_dormant(None, DORMANT_MIN_DBS, False) == DORMANT_AFTER
    assert quiet_before_dormant(None, 1, True) == MIN_DORMANT_QUIET
    assert quiet_before_dormant(5.0, 1, False) == 5.0
    assert quiet_before_dormant(5.0, 1, True) == MIN_DORMANT_QUIET
    assert quiet_before_dormant(0.0, 10_000, True) == 0
