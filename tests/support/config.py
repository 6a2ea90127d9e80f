"""The one writer of lsr (and Go litestream) YAML configs for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["ReplicaSpec", "write_config"]

ReplicaSpec = str | Path | Mapping[str, object]


def write_config(
    path: Path,
    db: str | Path | Mapping[Path, Sequence[ReplicaSpec]],
    *replicas: ReplicaSpec,
    top: Mapping[str, object] | None = None,
    extra: str = "",
    **db_settings: object,
) -> Path:
    """A config with one database and its replicas (or several: ``db`` maps each
    database to its replicas); ``path`` is returned.

    A replica is a URL (``file://...``, ``s3://...``), a directory (a file
    replica), or its keys in order (``{"type": "s3", "bucket": ...}``).
    ``db_settings`` are the database's keys (``monitor_interval="50ms"``, with
    ``_`` for ``-``); ``top`` the file's own keys, a mapping for a section
    (``{"logging": {"level": "debug"}, "addr": ":9090"}``); ``extra`` is
    appended as is (an ``age:`` block, say).
    """
    lines = []
    for key, value in (top or {}).items():
        if isinstance(value, Mapping):
            lines.append(f"{key}:")
            lines += [f"  {k}: {v}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {value}")
    lines.append("dbs:")
    for db_path, its_replicas in (db.items() if isinstance(db, Mapping) else [(db, replicas)]):
        lines.append(f"  - path: {db_path}")
        lines += [f"    {key.replace('_', '-')}: {value}" for key, value in db_settings.items()]
        lines.append("    replicas:")
        for replica in its_replicas:
            if isinstance(replica, Path) or (isinstance(replica, str) and "://" not in replica):
                replica = {"path": replica}
            elif isinstance(replica, str):
                replica = {"url": replica}
            for i, (key, value) in enumerate(replica.items()):
                lines.append(f"      {'- ' if i == 0 else '  '}{key}: {value}")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path
