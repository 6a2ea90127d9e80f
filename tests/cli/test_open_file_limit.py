"""The sidecar's open-file limit: raised to the hard limit at start, and a clear
refusal when the databases it is asked to replicate cannot all be held open."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

from support.procs import LSR, Processes, assert_one_line_error, wait_for
from support.sqlite import integrity_ok, rows
from support.workload import replica_ready, restore, stop_lsr, wait_ready


def dir_config(tmp_path: Path, db_path: Path, count: int) -> Path:
    """A ``dir:`` config over ``count`` copies of ``db_path``, each with a file replica."""
    dbs = tmp_path / "dbs"
    dbs.mkdir()
    for i in range(count):
        shutil.copyfile(db_path, dbs / f"db{i:03d}.db")
    cfg = tmp_path / "litestream.yml"
    cfg.write_text(f"dbs:\n  - dir: {dbs}\n    pattern: '*.db'\n    replicas:\n"
                   f"      - type: file\n        path: {tmp_path / 'replicas'}\n")
    return cfg


def test_too_many_databases_for_the_limit_is_one_line_before_any_is_opened(tmp_path: Path, db_path: Path) -> None:
    cfg = dir_config(tmp_path, db_path, 40)
    res = subprocess.run(["prlimit", "--nofile=200:200", LSR, "replicate", "-config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert_one_line_error(res, "cannot open 40 databases", "open-file limit is 200", "LimitNOFILE")
    assert not (tmp_path / "replicas").exists()
    assert not list((tmp_path / "dbs").glob(".*-litestream"))


def test_the_soft_limit_is_raised_to_the_hard_limit(tmp_path: Path, db_path: Path, procs: Processes) -> None:
    cfg = dir_config(tmp_path, db_path, 2)
    p = procs.start(["prlimit", "--nofile=300:2048", LSR, "replicate", "-config", str(cfg)], "lsr")
    wait_ready(p, tmp_path / "replicas" / "db001.db")
    limits = Path(f"/proc/{p.pid}/limits").read_text()
    assert re.search(r"^Max open files\s+2048\s+2048\s", limits, re.M), limits
    stop_lsr(p)


def test_more_databases_than_fit_awake_are_all_replicated_as_others_go_dormant(
        tmp_path: Path, db_path: Path, procs: Processes) -> None:
    """100 databases need ~1,056 descriptors awake: under a limit of 1,024, some
    open only once others went dormant (dormancy.py), and every one is replicated."""
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO t (v) VALUES ('kept')")
    conn.commit()
    conn.close()
    count = 100
    cfg = dir_config(tmp_path, db_path, count)
    p = procs.start(["prlimit", "--nofile=1024:1024", LSR, "replicate", "-config", str(cfg)], "lsr")
    names = [f"db{i:03d}.db" for i in range(count)]

    def all_ready() -> bool:
        assert p.poll() is None, Processes.output(p)
        return all(replica_ready(tmp_path / "replicas" / name) for name in names)

    wait_for(all_ready, timeout=120, what="a snapshot of every database")
    out = stop_lsr(p)
    assert "Too many open files" not in out
    for name in (names[0], names[-1]):
        restored = tmp_path / f"restored-{name}"
        restore(f"file://{tmp_path / 'replicas' / name}", restored)
        assert integrity_ok(restored) and rows(restored, "SELECT v FROM t") == [("kept",)]
