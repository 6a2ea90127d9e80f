"""Bad input to the CLI: a non-zero exit, one line on stderr, no traceback, nothing written.

Every test runs the installed ``lsr`` as a real process, the way an operator
(or an init system) would.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
from pathlib import Path

import pytest

from support.procs import Processes, assert_one_line_error, run_lsr, wait_for
from support.sqlite import open_app_db
from support.workload import catches_sigterm, meta_dir, replica_ready, restore, rollback_db, stop_lsr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config(tmp_path: Path, db: Path, replica_lines: str, extra_db_lines: str = "") -> Path:
    cfg = tmp_path / "litestream.yml"
    cfg.write_text(f"dbs:\n  - path: {db}\n{extra_db_lines}    replicas:\n{replica_lines}")
    return cfg


@pytest.fixture
def replicated(tmp_path: Path, db_path: Path, procs: Processes) -> Path:
    """A file replica of ``db_path`` holding one generation with a snapshot and WAL."""
    replica = tmp_path / "replica"
    conn = open_app_db(db_path)
    conn.execute("INSERT INTO t (v) VALUES ('x')")
    p = procs.lsr_replicate(str(db_path), f"file://{replica}")
    wait_for(lambda: replica_ready(replica), what="a snapshot")
    conn.execute("INSERT INTO t (v) VALUES ('y')")
    stop_lsr(p)
    conn.close()
    return replica


# -- configuration ----------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["replicate"], ["databases"], ["generations", "DB"], ["snapshots", "DB"], ["wal", "DB"], ["restore", "DB"],
])
def test_malformed_yaml(tmp_path: Path, db_path: Path, command: list[str]) -> None:
    cfg = tmp_path / "bad.yml"
    cfg.write_text(f"dbs:\n  - path: {db_path}\n    replicas: [{{url: file://{tmp_path / 'replica'}\n")
    before = sorted(os.listdir(tmp_path))
    args = [str(db_path) if a == "DB" else a for a in command]
    res = run_lsr(args[0], "-config", str(cfg), *args[1:], timeout=30)
    assert_one_line_error(res, "bad.yml", "line")
    assert sorted(os.listdir(tmp_path)) == before


def test_unknown_replica_type_in_config(tmp_path: Path, db_path: Path) -> None:
    cfg = config(tmp_path, db_path, "      - type: gcs2\n        path: /somewhere\n")
    for args in (["replicate", "-config", str(cfg)], ["generations", "-config", str(cfg), str(db_path)]):
        assert_one_line_error(run_lsr(*args, timeout=30), "gcs2")
    assert not meta_dir(db_path).exists()


def test_unknown_replica_url_scheme(tmp_path: Path, db_path: Path) -> None:
    assert_one_line_error(run_lsr("replicate", str(db_path), "ftp://host/backups", timeout=30), "ftp")
    assert_one_line_error(run_lsr("restore", "-o", str(tmp_path / "out.db"), "ftp://host/backups"), "ftp")
    assert not meta_dir(db_path).exists() and not (tmp_path / "out.db").exists()


def test_unknown_config_key_is_a_warning(tmp_path: Path, db_path: Path, procs: Processes) -> None:
    replica = tmp_path / "replica"
    cfg = config(tmp_path, db_path, f"      - url: file://{replica}\n        sync-intervall: 1s\n",
                 "    monitor-intervall: 1s\n")
    p = procs.lsr_replicate("-config", str(cfg))  # stdout and stderr both land in the log
    wait_for(lambda: replica_ready(replica), what="replication despite unknown keys")
    out = stop_lsr(p)
    for key in ("monitor-intervall", "sync-intervall"):
        warnings = [line for line in out.splitlines() if key in line]
        assert len(warnings) == 1, f"{key}: {warnings}"
        assert re.search(r"warn", warnings[0], re.I), warnings[0]


def test_unknown_config_key_does_not_stop_inspection(tmp_path: Path, db_path: Path, replicated: Path) -> None:
    cfg = config(tmp_path, db_path, f"      - url: file://{replicated}\n", "    colour: blue\n")
    res = run_lsr("generations", "-config", str(cfg), str(db_path))
    assert res.returncode == 0, res.stderr
    assert "colour" in res.stdout + res.stderr
    assert len(res.stdout.strip().splitlines()) >= 2


def test_no_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    assert_one_line_error(run_lsr("replicate", "-config", str(missing), timeout=30), str(missing))
    assert_one_line_error(run_lsr("databases", "-config", str(missing)), str(missing))


def test_replica_url_with_config_is_refused(tmp_path: Path, db_path: Path) -> None:
    cfg = config(tmp_path, db_path, f"      - url: file://{tmp_path / 'replica'}\n")
    assert_one_line_error(run_lsr("generations", "-config", str(cfg), f"file://{tmp_path / 'replica'}"), "config")
    assert_one_line_error(run_lsr("replicate", "-config", str(cfg), str(db_path), f"file://{tmp_path}/r"), "config")


def test_database_not_in_config(tmp_path: Path, db_path: Path) -> None:
    cfg = config(tmp_path, db_path, f"      - url: file://{tmp_path / 'replica'}\n")
    assert_one_line_error(run_lsr("restore", "-config", str(cfg), str(tmp_path / "other.db")), "other.db")


@pytest.mark.parametrize("flags", [["-index", "zz", "-generation", "0123456789abcdef"], ["-timestamp", "yesterday"],
                                   ["-index", "1"]])
def test_bad_restore_flags(tmp_path: Path, replicated: Path, flags: list[str]) -> None:
    out = tmp_path / "out.db"
    assert_one_line_error(run_lsr("restore", "-o", str(out), *flags, f"file://{replicated}"))
    assert not out.exists()


# -- the database ------------------------------------------------------------------

def test_restore_config_db_without_backups(tmp_path: Path) -> None:
    """A database that does not exist, whose replica holds nothing: an error, or 0 if asked."""
    db = tmp_path / "gone.db"
    cfg = config(tmp_path, db, f"      - url: file://{tmp_path / 'replica'}\n")
    assert_one_line_error(run_lsr("restore", "-config", str(cfg), str(db)), "no")
    res = run_lsr("restore", "-config", str(cfg), "-if-replica-exists", str(db))
    assert res.returncode == 0, res.stderr
    assert not db.exists()


def test_replicate_with_missing_parent_directory(tmp_path: Path) -> None:
    db = tmp_path / "missing" / "app.db"
    cfg = config(tmp_path, db, f"      - url: file://{tmp_path / 'replica'}\n")
    assert_one_line_error(run_lsr("replicate", "-config", str(cfg), timeout=30), str(db.parent))
    assert not (tmp_path / "replica").exists() and not db.parent.exists()


def test_database_not_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "rollback.db"
    rollback_db(db)
    before, listing = digest(db), sorted(os.listdir(tmp_path))
    replica = tmp_path / "replica"
    assert_one_line_error(run_lsr("replicate", str(db), f"file://{replica}", timeout=30), "wal")
    assert digest(db) == before
    assert sorted(os.listdir(tmp_path)) == listing  # no -wal, no .rollback.db-litestream, no replica


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_bytes(b"these are not the pages you are looking for" * 200)
    before, listing = digest(db), sorted(os.listdir(tmp_path))
    assert_one_line_error(run_lsr("replicate", str(db), f"file://{tmp_path / 'replica'}", timeout=30), str(db))
    assert digest(db) == before and sorted(os.listdir(tmp_path)) == listing


# -- the replica -----------------------------------------------------------------

@pytest.mark.parametrize("command", ["restore", "generations", "snapshots", "wal"])
def test_replica_path_is_a_file(tmp_path: Path, command: str) -> None:
    not_a_dir = tmp_path / "replica"
    not_a_dir.write_text("a file, not a replica directory")
    out = tmp_path / "out.db"
    args = ["-o", str(out)] if command == "restore" else []
    assert_one_line_error(run_lsr(command, *args, f"file://{not_a_dir}"), str(not_a_dir))
    assert not out.exists()


def test_unreadable_snapshot(tmp_path: Path, replicated: Path) -> None:
    """A snapshot that is a directory: even root cannot read it."""
    (snapshot,) = replicated.glob("generations/*/snapshots/*.snapshot.lz4")
    snapshot.unlink()
    snapshot.mkdir()
    out = tmp_path / "out.db"
    assert_one_line_error(run_lsr("restore", "-o", str(out), f"file://{replicated}"), "snapshot")
    assert not out.exists() and not list(tmp_path.glob("out.db*"))


def test_corrupt_snapshot(tmp_path: Path, replicated: Path) -> None:
    (snapshot,) = replicated.glob("generations/*/snapshots/*.snapshot.lz4")
    snapshot.write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "out.db"
    assert_one_line_error(run_lsr("restore", "-o", str(out), f"file://{replicated}"), "snapshot")
    assert not out.exists() and not list(tmp_path.glob("out.db*"))


def test_corrupt_wal_segment(tmp_path: Path, replicated: Path) -> None:
    segment = sorted(replicated.glob("generations/*/wal/*.wal.lz4"))[-1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    out = tmp_path / "out.db"
    assert_one_line_error(run_lsr("restore", "-o", str(out), f"file://{replicated}"), "wal segment")
    assert not out.exists() and not list(tmp_path.glob("out.db*"))


@pytest.mark.parametrize("exists", [True, False])
def test_replica_without_backups(tmp_path: Path, exists: bool) -> None:
    replica = tmp_path / "replica"
    if exists:
        (replica / "generations").mkdir(parents=True)
    out = tmp_path / "out.db"
    assert_one_line_error(run_lsr("restore", "-o", str(out), f"file://{replica}"), "backups")
    res = run_lsr("restore", "-if-replica-exists", "-o", str(out), f"file://{replica}")
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    assert not out.exists()


# -- the output path ----------------------------------------------------------------

def test_restore_refuses_existing_output(tmp_path: Path, replicated: Path) -> None:
    out = tmp_path / "out.db"
    out.write_bytes(b"precious")
    line = assert_one_line_error(run_lsr("restore", "-o", str(out), f"file://{replicated}"), "exists")
    assert "pass -o" not in line and "choose another -o path" in line  # -o was passed
    assert out.read_bytes() == b"precious"


def test_restore_onto_the_config_database_suggests_o(tmp_path: Path, db_path: Path, replicated: Path) -> None:
    cfg = config(tmp_path, db_path, f"      - url: file://{replicated}\n")
    line = assert_one_line_error(run_lsr("restore", "-config", str(cfg), str(db_path)), str(db_path), "exists")
    assert "pass -o PATH to restore elsewhere" in line


def test_verify_of_a_replica_url_does_not_claim_a_comparison(replicated: Path) -> None:
    res = run_lsr("verify", f"file://{replicated}")
    assert res.returncode == 0, res.stderr
    assert "match" not in res.stdout and "integrity_check ok" in res.stdout and "nothing compared" in res.stdout


def test_restore_if_db_not_exists(tmp_path: Path, replicated: Path) -> None:
    out = tmp_path / "out.db"
    out.write_bytes(b"precious")
    res = run_lsr("restore", "-if-db-not-exists", "-o", str(out), f"file://{replicated}")
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    assert out.read_bytes() == b"precious"
    # Without an existing output the flag changes nothing: the restore happens.
    fresh = tmp_path / "fresh.db"
    restore(f"file://{replicated}", fresh, "--if-db-not-exists")
    assert sqlite3.connect(str(fresh)).execute("SELECT v FROM t ORDER BY id").fetchall() == [("x",), ("y",)]


def test_sigterm_while_waiting_for_the_database(tmp_path: Path, procs: Processes) -> None:
    """A sidecar waiting for its database stops cleanly on SIGTERM."""
    db = tmp_path / "never.db"
    p = procs.lsr_replicate(str(db), f"file://{tmp_path / 'replica'}")
    wait_for(lambda: "does not exist" in Processes.output(p), what="the waiting message")
    # Start-up is over once lsr catches SIGTERM (see the next test for the window before).
    wait_for(lambda: catches_sigterm(p.pid), what="lsr to install its SIGTERM handler")
    assert Processes.stop(p, signal.SIGTERM, timeout=30) == 0, Processes.output(p)
    assert not db.exists() and not (tmp_path / "replica").exists()


def test_sigterm_during_start_up_exits_cleanly(tmp_path: Path, procs: Processes) -> None:
    """SIGTERM as soon as lsr prints anything: it must still exit 0 (Go installs its handler first)."""
    for attempt in range(3):
        p = procs.lsr_replicate(str(tmp_path / "never.db"), f"file://{tmp_path / 'replica'}")
        wait_for(lambda: os.path.getsize(p.log_path) > 0, interval=0.0005,  # type: ignore[attr-defined]
                 what="the first line of output")
        code = Processes.stop(p, signal.SIGTERM, timeout=30)
        assert code == 0, f"attempt {attempt}: exit {code}\n{Processes.output(p)}"
