"""The application's side of SQLite: its connection, and what a test reads back."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["integrity_ok", "open_app_db", "rows", "write_wal"]


def open_app_db(path: str | Path, page_size: int | None = None) -> sqlite3.Connection:
    """An application connection: autocommit, WAL mode, a generous busy timeout."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=False)
    if page_size:
        conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def rows(path: str | Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def integrity_ok(path: str | Path) -> bool:
    return rows(path, "PRAGMA integrity_check") == [("ok",)]


def write_wal(tmp_path: Path, page_size: int, transactions: int = 5) -> tuple[Path, bytes]:
    """Let SQLite write a WAL: a few transactions, no checkpoint. Returns (db path, WAL bytes)."""
    db = tmp_path / f"wal-{page_size}.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    for i in range(transactions):
        conn.execute("BEGIN")
        for _ in range(3):
            conn.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(page_size // 3),))
        conn.execute("COMMIT")
    wal = (tmp_path / f"wal-{page_size}.db-wal").read_bytes()
    # Keep a copy before close (SQLite would checkpoint and delete the WAL).
    snapshot = db.read_bytes()
    conn.close()
    db.write_bytes(snapshot)
    return db, wal
