"""lsr: streaming replication for SQLite, in Litestream 0.3.13's replica format."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .db import DB
from .errors import LitestreamError
from .pos import Pos, SnapshotInfo, WALSegmentInfo
from .replica import Replica
from .replica_client import ReplicaClient
from .restore import RestoreOptions, restore

if TYPE_CHECKING:
    from .control import wait_replicated

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


def __getattr__(name: str) -> object:
    # The control socket's client loads on first use: a restore need not pay for it.
    if name == "wait_replicated":
        from .control import wait_replicated

        return wait_replicated
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
