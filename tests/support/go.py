"""The real Go Litestream 0.3.13 next to lsr: running it, stopping it (its own
shutdown bugs tolerated, nothing else), restoring with it, and the config and
workload both tools are compared on."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .config import write_config
from .procs import Processes, wait_for
from .sqlite import open_app_db
from .workload import AgeKeyPair, OpenWEC, segment_names, shipped_since

__all__ = [
    "GO_SHUTDOWN_BUGS", "checkpoint_pages", "compat_config", "compat_workload", "go_restore", "go_run", "start_go",
    "stop_go",
]


def go_run(go: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([go, *args], capture_output=True, text=True, timeout=120)


def go_restore(go: str, replica: Path, out: Path, config: Path | None = None, db: Path | None = None) -> None:
    """Go restores the replica by URL, or through ``config``'s replica of ``db`` (with its age identities)."""
    source = ["-config", str(config), str(db)] if config else [f"file://{replica}"]
    res = go_run(go, "restore", "-o", str(out), *source)
    assert res.returncode == 0, f"litestream restore failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    assert out.exists()


def start_go(procs: Processes, go: str, cfg: Path) -> subprocess.Popen[bytes]:
    return procs.start([go, "replicate", "-config", str(cfg)], "litestream")


# Go Litestream 0.3.13's own errors, tolerated here (nothing else is): at shutdown
# its final sync checkpoints on the already-cancelled context, and its final
# replica sync can race the replica's own goroutine for the same segment's
# temp file (either way it exits 1 after shipping everything); on a loaded
# machine its passive checkpoint gives up on the application's write lock after
# its busy timeout, logs it and syncs again.
GO_SHUTDOWN_BUGS = (
    re.compile(r"release read lock: context canceled"),
    re.compile(r"client write: stat \S+\.wal\.lz4\.tmp: no such file or directory"),
    re.compile(r'msg="sync error" .*error="checkpoint: mode=PASSIVE err=database is locked"'),
)


def stop_go(p: subprocess.Popen[bytes]) -> str:
    code = Processes.stop(p, timeout=60)
    out = Processes.output(p)
    errors = [line for line in out.splitlines() if "level=ERROR" in line]
    assert all(any(bug.search(line) for bug in GO_SHUTDOWN_BUGS) for line in errors), out
    assert code == 0 or (code == 1 and errors), f"litestream exited {code}:\n{out}"
    return out


def compat_workload(conn_path: Path, page_size: int, rounds: int, replica: Path) -> None:
    """OpenWEC traffic plus a few large rows (multi-page transactions, overflow pages).

    After each round the application waits for the replicating tool to ship
    something, so that its checkpoints fall in the middle of the workload.
    """
    app = open_app_db(conn_path, page_size=page_size)
    wec = OpenWEC(app, clients=25)
    wec.init()
    app.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, body BLOB)")
    for r in range(rounds):
        shipped = segment_names(replica)
        wec.round()
        app.execute("INSERT INTO attachments (body) VALUES (randomblob(?))", (3 * page_size + 17,))
        if r == rounds // 2:
            wec.migrate()
        wait_for(lambda: shipped_since(replica, shipped) > 0, timeout=30, what="the replica to ship the round")
    app.close()


def checkpoint_pages(page_size: int) -> int:
    """A min-checkpoint-page-count of 64 KiB of WAL (at least 8 pages)."""
    return max(8, (64 << 10) // page_size)


def compat_config(path: Path, db: Path, replica: Path, page_count: int, age: AgeKeyPair | None = None) -> Path:
    """One config that lsr and Go litestream both run: a file replica, polled and shipped every 50 ms."""
    return write_config(path, db, {"type": "file", "path": replica, "sync-interval": "50ms"},
                        monitor_interval="50ms", min_checkpoint_page_count=page_count,
                        extra=age.yaml() if age else "")
