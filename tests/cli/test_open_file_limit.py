"""The sidecar's open-file limit: raised to the hard limit at start, and a clear
refusal when the databases it is asked to replicate cannot all be held open."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from support.procs import LSR, Processes, assert_one_line_error
from support.workload import stop_lsr, wait_ready


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
