"""The one writer of lsr (and Go litestream) YAML configs for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

__all__ = ["write_config"]

Replica = str | Path | Mapping[str, object]


def write_config(
    path: Path,
    db: str | Path,
    *replicas: Replica,
    log_level: str | None = None,
    extra: str = "",
    **db_settings: object,
) -> Path:
    """A config with one database and its replicas; ``path`` is returned.

    A replica is a URL (``file://...``, ``s3://...``), a directory (a file
    replica), or its keys in order (``{"type": "s3", "bucket": ...}``).
    ``db_settings`` are the database's keys (``monitor_interval="50ms"``, with
    ``_`` for ``-``); ``extra`` is appended as is (an ``age:`` block, say).
    """
    lines = [f"logging:\n  level: {log_level}"] if log_level else []
    lines += ["dbs:", f"  - path: {db}"]
    lines += [f"    {key.replace('_', '-')}: {value}" for key, value in db_settings.items()]
    lines.append("    replicas:")
    for replica in replicas:
        if isinstance(replica, Path) or (isinstance(replica, str) and "://" not in replica):
            replica = {"path": replica}
        elif isinstance(replica, str):
            replica = {"url": replica}
        for i, (key, value) in enumerate(replica.items()):
            lines.append(f"      {'- ' if i == 0 else '  '}{key}: {value}")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path
