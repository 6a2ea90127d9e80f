"""The application in its own process, driven line by line from a test."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from support.procs import stop_process

__all__ = ["AppProcess"]

# Runs each line of SQL it reads, answering with its rows in JSON.
APP_PROCESS = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
for sql in sys.stdin:
    print(json.dumps(conn.execute(sql).fetchall()), flush=True)
"""


class AppProcess:
    """The application in its own process, as it must be: POSIX locks never
    conflict within one process, so in lsr's process it could ignore lsr's
    read lock. It uses Python's sqlite3 (the system's SQLite, not apsw's)."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", APP_PROCESS, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for sql in ("PRAGMA journal_mode=WAL", "PRAGMA wal_autocheckpoint=0",  # checkpoints only when told
                    "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)"):
            self.execute(sql)

    def execute(self, sql: str) -> list[list[object]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(sql + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def insert(self, n: int) -> None:
        for i in range(n):
            self.execute(f"INSERT INTO t (v) VALUES ('{'row %d ' % i * 20}')")

    def close(self) -> None:
        stop_process(self.proc, signal.SIGKILL)
