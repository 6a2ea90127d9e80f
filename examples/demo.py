"""Replicate a demo SQLite database to a local file replica, restore it, and show that it matches.

Run from the repository root (the README's first command does):
    .venv/bin/python examples/demo.py
Everything lands in ./demo/ (deleted and recreated on each run).
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

DEMO = Path("demo").resolve()
LSR = str(Path(sys.executable).parent / "lsr")


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    db, replica, restored = DEMO / "app.db", DEMO / "replica", DEMO / "restored.db"

    app = sqlite3.connect(db, isolation_level=None)
    app.execute("PRAGMA journal_mode=WAL")
    app.execute("CREATE TABLE bookmarks (client TEXT PRIMARY KEY, bookmark TEXT, updated_at REAL)")

    print(f"$ lsr replicate {db} file://{replica}")
    sidecar = subprocess.Popen([LSR, "replicate", str(db), f"file://{replica}"])
    try:
        for batch in range(40):
            for client in range(50):
                app.execute(
                    "INSERT INTO bookmarks VALUES (?, ?, ?) ON CONFLICT(client) DO UPDATE "
                    "SET bookmark = excluded.bookmark, updated_at = excluded.updated_at",
                    (f"client-{client}", f"event-{batch * 1000 + client}", time.time()),
                )
            time.sleep(0.1)
    finally:
        sidecar.send_signal(signal.SIGTERM)  # lsr syncs one last time, then exits 0
        code = sidecar.wait(timeout=60)
    if code != 0:
        print(f"lsr replicate exited with {code}")
        return 1

    for command in (["generations"], ["snapshots"], ["wal"]):
        print(f"\n$ lsr {command[0]} file://{replica}")
        subprocess.run([LSR, *command, f"file://{replica}"], check=True)

    print(f"\n$ lsr restore -o {restored} file://{replica}")
    subprocess.run([LSR, "restore", "-o", str(restored), f"file://{replica}"], check=True)

    source = app.execute("SELECT * FROM bookmarks ORDER BY client").fetchall()
    copy = sqlite3.connect(restored).execute("SELECT * FROM bookmarks ORDER BY client").fetchall()
    check = sqlite3.connect(restored).execute("PRAGMA integrity_check").fetchone()[0]
    ok = source == copy and check == "ok"
    print(f"\nsource rows: {len(source)}, restored rows: {len(copy)}, integrity: {check}")
    print("OK: the restored database matches the source" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
