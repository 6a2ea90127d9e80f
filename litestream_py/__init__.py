"""lsr: streaming replication for SQLite, in Litestream 0.3.13's replica format."""

from __future__ import annotations

from .control import wait_replicated
from .db import DB
from .errors import LitestreamError
from .pos import Pos, SnapshotInfo, WALSegmentInfo
from .replica import Replica
from .replica_client import ReplicaClient
from .restore import RestoreOptions, restore

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
    "restore",
    "wait_replicated",
    "__version__",
]
