"""lsr: streaming replication for SQLite, in Litestream 0.3.13's replica format."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .control import wait_replicated
    from .db import DB
    from .errors import LitestreamError
    from .pos import Pos, SnapshotInfo, WALSegmentInfo
    from .replica import Replica
    from .replica_client import ReplicaClient
    from .restore import RestoreOptions

__version__ = "0.1.0"

__all__ = [
    "DB",
    "LitestreamError",
    "Pos",
    "Replica",
    "ReplicaClient",
    "RestoreOptions",
    "SnapshotInfo",
    "WALSegmentInfo",
    "wait_replicated",
    "__version__",
]

# Each name loads its module on first use: importing any part of the package
# (``lsr restore`` imports its restore path only) must not pay for the rest,
# such as the database monitor and SQLite. The restore function is not among
# them: ``litestream_py.restore`` names its module (``litestream_py.restore.restore``).
_HOMES = {
    "DB": "db",
    "LitestreamError": "errors",
    "Pos": "pos",
    "Replica": "replica",
    "ReplicaClient": "replica_client",
    "RestoreOptions": "restore",
    "SnapshotInfo": "pos",
    "WALSegmentInfo": "pos",
    "wait_replicated": "control",
}


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
