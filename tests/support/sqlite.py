"""The application's side of SQLite: its connection, and what a test reads back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["integrity_ok", "open_app_db", "rows"]


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
