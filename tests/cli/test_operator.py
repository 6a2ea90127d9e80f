"""What an operator trips over when running lsr as a sidecar (issue 25): two sidecars on
one database, JSON logs, one bad database among good ones, an -exec child killed by a signal.

Real ``lsr`` processes, real SQLite files, real signals.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
from pathlib import Path

from support.config import write_config
from support.procs import LSR, Processes, assert_one_line_error, run_lsr, stop_process, wait_for
from support.sqlite import open_app_db
from support.workload import (
    assert_same_data, meta_dir, replica_ready, restore, rollback_db, stop_lsr, wait_ready, write_stop_and_restore,
)

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")


# -- 1. one lsr per database, one restore per output ------------------------------

def test_second_replicate_of_a_database_is_refused(tmp_path: Path, db_path: Path, procs: Processes) -> None:
    replica = tmp_path / "replica"
    app, first = replicating(db_path, replica, procs)
    line = assert_one_line_error(run_lsr("replicate", str(db_path), f"file://{tmp_path / 'other'}", timeout=60),
                                 f"pid {first.pid}", str(db_path), "another lsr process")
    assert "stop that one first" in line
    assert not replica_ready(tmp_path / "other")
    # The first one was not disturbed: it still ships, and its replica restores.
    write_stop_and_restore(app, first, db_path, replica)


def replicating(db: Path, replica: Path, procs: Processes) -> tuple[sqlite3.Connection, subprocess.Popen[bytes]]:
    """An application connection with one commit, and an lsr that has shipped its snapshot."""
    app = open_app_db(db)
    app.execute("INSERT INTO t (v) VALUES ('one')")
    p = procs.lsr_replicate(str(db), f"file://{replica}")
    wait_ready(p, replica)
    return app, p


def test_sigkilled_replicate_does_not_block_the_next(tmp_path: Path, db_path: Path, procs: Processes) -> None:
    replica = tmp_path / "replica"
    app, first = replicating(db_path, replica, procs)
    lock = meta_dir(db_path) / "lsr.lock"
    assert lock.read_text().strip() == str(first.pid)
    stop_process(first, signal.SIGKILL, timeout=30)
    second = procs.lsr_replicate(str(db_path), f"file://{replica}")
    wait_for(lambda: lock.read_text().strip() == str(second.pid), what="the restarted lsr to take the lock")
    write_stop_and_restore(app, second, db_path, replica)


def test_second_restore_into_one_path_is_refused(tmp_path: Path, db_path: Path, procs: Processes) -> None:
    replica = tmp_path / "replica"
    app = open_app_db(db_path)
    app.execute("INSERT INTO t (v) VALUES ('one')")
    app.close()
    p = procs.lsr_replicate(str(db_path), f"file://{replica}")
    wait_ready(p, replica)
    stop_lsr(p)
    # The first restore blocks on its snapshot, a FIFO, until the test feeds it.
    snapshot = next(replica.glob("generations/*/snapshots/*.snapshot.lz4"))
    data = snapshot.read_bytes()
    snapshot.unlink()
    os.mkfifo(snapshot)
    out = tmp_path / "out.db"
    first = procs.start([LSR, "restore", "-o", str(out), f"file://{replica}"], "restore")
    lock = tmp_path / ".out.db.lsr-restore.lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), what="the first restore's lock")
    assert_one_line_error(run_lsr("restore", "-o", str(out), f"file://{replica}", timeout=60),
                   f"pid {first.pid}", str(out), "another lsr restore")
    fifo = -1

    def writer_opened() -> bool:
        nonlocal fifo
        try:
            fifo = os.open(snapshot, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return False
        return True

    wait_for(writer_opened, what="the first restore to open its snapshot")
    os.set_blocking(fifo, True)
    os.write(fifo, data)
    os.close(fifo)
    assert first.wait(timeout=60) == 0, Processes.output(first)
    assert_same_data(db_path, out)
    assert not lock.exists()


# -- 2. JSON logs -----------------------------------------------------------------

def parse_json_lines(text: str) -> list[dict[str, object]]:
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)  # fails the test on any line that is not one JSON object
        assert isinstance(entry, dict), line
        assert RFC3339_MS.match(str(entry["time"])), line
        assert entry["level"] in {"DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"}, line
        assert isinstance(entry["msg"], str), line
        entries.append(entry)
    return entries


def test_json_logs_parse_line_by_line(tmp_path: Path, db_path: Path, procs: Processes) -> None:
    replica = tmp_path / "replica"
    cfg = write_config(tmp_path / "litestream.yml", db_path, f"file://{replica}", top={"logging": {"type": "json"}})
    app = open_app_db(db_path)
    app.execute("INSERT INTO t (v) VALUES ('it''s \"quoted\"')")
    p = procs.lsr_replicate("-config", str(cfg))
    wait_ready(p, replica)
    stop_lsr(p)
    app.close()
    entries = parse_json_lines(Processes.output(p))
    assert len(entries) >= 3
    snapshot = next(e for e in entries if "snapshot written" in str(e["msg"]))
    assert snapshot["db"] == str(db_path) and snapshot["replica"] == "file"
    assert re.fullmatch(r"[0-9a-f]{16}", str(snapshot["generation"]))
    assert any(e.get("db") == str(db_path) and "generation" in e for e in entries if "new generation" in str(e["msg"]))

    out = tmp_path / "restored.db"
    res = run_lsr("restore", "-config", str(cfg), "-o", str(out), str(db_path))
    assert res.returncode == 0, res.stdout + res.stderr
    restored = [e for e in parse_json_lines(res.stdout + res.stderr) if str(e["msg"]).startswith("restored")]
    assert restored and restored[0]["pos"] and restored[0]["generation"] == snapshot["generation"]

    # A failure is a JSON line too, and still exits 1.
    res = run_lsr("restore", "-config", str(cfg), "-o", str(out), str(db_path))
    assert res.returncode == 1
    errors = [e for e in parse_json_lines(res.stdout + res.stderr) if e["level"] == "ERROR"]
    assert len(errors) == 1 and "already exists" in str(errors[0]["msg"])
    missing = tmp_path / "missing" / "app.db"
    write_config(cfg, missing, f"file://{replica}", top={"logging": {"type": "json"}})
    res = run_lsr("replicate", "-config", str(cfg), timeout=60)
    assert res.returncode == 1
    errors = [e for e in parse_json_lines(res.stdout + res.stderr) if e["level"] == "ERROR"]
    assert len(errors) == 1 and str(missing.parent) in str(errors[0]["msg"])


# -- 3. one bad database among good ones ---------------------------------------------

def test_bad_databases_do_not_stop_the_others(tmp_path: Path, db_path: Path, procs: Processes) -> None:
    rollback = tmp_path / "rollback.db"
    rollback_db(rollback)
    directory = tmp_path / "dir.db"
    directory.mkdir()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database, not readable as one" * 200)
    cfg = write_config(tmp_path / "litestream.yml", {db: [f"file://{tmp_path / ('replica-' + db.name)}"]
                                                     for db in (rollback, directory, junk, db_path)})
    app = open_app_db(db_path)
    app.execute("INSERT INTO t (v) VALUES ('good')")
    p = procs.lsr_replicate("-config", str(cfg))
    wait_ready(p, tmp_path / "replica-app.db")

    def logged(pattern: str, times: int = 1) -> bool:
        return len(re.findall(pattern, Processes.output(p))) >= times

    # Reported at start and again at the retries (1 s, then 2 s, ... apart).
    wait_for(lambda: logged(rf"{re.escape(str(directory))}.*is a directory", 2), what="a retry of the directory")
    assert logged(rf"{re.escape(str(rollback))}.*not WAL")
    assert logged(rf"{re.escape(str(junk))}.*file is not a database")
    assert "unable to open database file" not in Processes.output(p)
    # lsr status says which databases are not served, and why.
    shown = run_lsr("status", "-json", "-config", str(cfg))
    assert shown.returncode == 0, shown.stderr
    report = {db["path"]: db for db in json.loads(shown.stdout)["dbs"]}
    assert report[str(directory)]["served"] is False and "is a directory" in report[str(directory)]["error"]
    assert report[str(rollback)]["healthy"] is False and "WAL" in report[str(rollback)]["error"]
    assert report[str(db_path)]["served"] is True and report[str(db_path)]["error"] is None
    assert json.loads(shown.stdout)["healthy"] is False
    # Once fixed, the bad database is picked up without a restart.
    conn = sqlite3.connect(str(rollback))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    wait_ready(p, tmp_path / "replica-rollback.db", timeout=60)
    app.execute("INSERT INTO t (v) VALUES ('more')")
    stop_lsr(p)
    app.close()
    for db in (db_path, rollback):
        out = tmp_path / f"restored-{db.name}"
        restore(f"file://{tmp_path / ('replica-' + db.name)}", out)
        assert_same_data(db, out)


def test_no_database_can_be_served(tmp_path: Path) -> None:
    directory = tmp_path / "dir.db"
    directory.mkdir()
    res = run_lsr("replicate", str(directory), f"file://{tmp_path / 'replica'}", timeout=60)
    line = assert_one_line_error(res, str(directory), "is a directory")
    assert "unable to open" not in line and not (tmp_path / "replica").exists()


# -- 4. -exec child killed by a signal ------------------------------------------

def test_exec_child_killed_by_signal_exits_128_plus_n(tmp_path: Path, db_path: Path) -> None:
    res = run_lsr("replicate", "-exec", "sh -c 'kill -KILL $$'", str(db_path), f"file://{tmp_path / 'replica'}",
                  timeout=60)
    assert res.returncode == 128 + signal.SIGKILL, res.stdout + res.stderr
    assert stat.S_ISDIR(os.stat(tmp_path / "replica").st_mode)
