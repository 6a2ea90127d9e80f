"""What ``lsr restore`` loads: a file replica's restore starts none of the
replication machinery, no S3 SDK and no numpy (its frames are checked in C, _walcheck).

A real restore in a fresh interpreter through the command group, which then
writes the names of the modules it imported; the restored database is checked too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.config import write_config
from support.engine import commit_and_ship
from support.procs import run_lsr
from support.sqlite import integrity_ok, rows

# Runs ``lsr ARGS...`` in this interpreter, then writes sys.modules' names to the file named first.
ENTRY = """
import json, sys
from litestream_py.cmd.main import cli
try:
    cli(sys.argv[2:], prog_name="lsr")
except SystemExit as exc:
    status = exc.code
with open(sys.argv[1], "w") as f:
    json.dump(sorted(sys.modules), f)
sys.exit(status)
"""

NOT_FOR_A_FILE_RESTORE = (
    "boto3", "botocore", "numpy", "watchdog", "apsw",
    # a few ms each of every start-up: imported where a rarer path needs them
    "hashlib", "secrets", "shutil", "tempfile",
    "litestream_py.db", "litestream_py.replica", "litestream_py.replicator", "litestream_py.scheduler",
    "litestream_py.shadow", "litestream_py.watch", "litestream_py.compaction", "litestream_py.control",
)


def test_file_restore_imports_only_the_restore_path(tmp_path: Path, engine: Any) -> None:
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 5)
    config = write_config(tmp_path / "lsr.yml", db.path, client.root)
    out, modules = tmp_path / "restored.db", tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", ENTRY, str(modules), "restore", "-config", str(config), "-o", str(out), db.path],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert integrity_ok(out)
    assert rows(out, "SELECT v FROM t ORDER BY id") == [(f"row-{i}",) for i in range(5)]
    loaded = set(json.loads(modules.read_text()))
    assert "litestream_py.restore" in loaded  # the entry did run the restore command
    assert sorted(m for m in NOT_FOR_A_FILE_RESTORE if m in loaded) == []


def test_a_command_that_succeeds_ends_at_once_with_its_output_whole(tmp_path: Path, engine: Any) -> None:
    """The console script skips the interpreter's teardown after a command that
    succeeded: what the command printed (here the restore's log line, to a pipe)
    is all there, the database is synced and whole, the exit status is 0."""
    app, db, client, replica = engine
    commit_and_ship(app, db, replica, 5)
    config = write_config(tmp_path / "lsr.yml", db.path, client.root)
    out = tmp_path / "out.db"
    done = run_lsr("restore", "-config", str(config), "-o", str(out), db.path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(f"INFO restored {out} from generation") == 1, done.stdout
    assert integrity_ok(out)
    assert rows(out, "SELECT v FROM t ORDER BY id") == [(f"row-{i}",) for i in range(5)]
    version = run_lsr("version")
    assert version.returncode == 0 and version.stdout.startswith("v")
