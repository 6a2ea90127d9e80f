"""The narrow interface every replica backend implements.

A backend stores LZ4-compressed snapshots and WAL segments under the layout of
Litestream 0.3.13 (see ``paths``). The engine never imports a backend: it talks
to this Protocol, and a backend translates its own errors into ``errors``
(a missing object is always ``NotFoundError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Iterable, Protocol, runtime_checkable

from .pos import LeaseObject, Pos, SnapshotInfo, WALSegmentInfo
from .stats import OperationStats

__all__ = ["ReplicaClient", "ReplicaReader", "ReplicaTarget"]


class ReplicaReader(Protocol):
    """The read side of a replica: all that listing and restoring need."""

    def generations(self) -> list[str]:
        """Names of the generations on the replica, sorted."""
        ...

    def snapshots(self, generation: str) -> list[SnapshotInfo]:
        """Snapshots of one generation, sorted by index."""
        ...

    def open_snapshot(self, generation: str, index: int) -> BinaryIO:
        """A readable stream of the compressed snapshot; the caller closes it."""
        ...

    def wal_segments(self, generation: str) -> list[WALSegmentInfo]:
        """WAL segments of one generation, sorted by (index, offset)."""
        ...

    def read_wal_segment(self, pos: Pos) -> bytes:
        """The compressed bytes of one segment."""
        ...


@runtime_checkable
class ReplicaClient(ReplicaReader, Protocol):
    """Storage for one replica: generations of snapshots and WAL segments."""

    # Requests made to the storage, by operation (GET, PUT, DELETE, LIST), for metrics.
    operations: OperationStats

    @property
    def type(self) -> str:
        """The config ``type:`` of this backend ("file", "s3")."""
        ...

    def describe(self) -> str:
        """Where the replica lives, for messages (never includes credentials)."""
        ...

    def delete_generation(self, generation: str) -> None: ...

    def write_snapshot(
        self, generation: str, index: int, data: BinaryIO, created_at: datetime | None = None
    ) -> SnapshotInfo:
        """Store compressed snapshot bytes read from ``data`` (a seekable file at 0)."""
        ...

    def delete_snapshot(self, generation: str, index: int) -> None: ...

    def write_wal_segment(
        self, pos: Pos, data: bytes | memoryview | BinaryIO, created_at: datetime | None = None
    ) -> WALSegmentInfo:
        """Store compressed segment bytes, given whole or as a seekable file at 0 (a merged
        segment); ``created_at`` becomes its timestamp where the backend allows."""
        ...

    def delete_wal_segments(self, positions: Iterable[Pos]) -> None: ...

    # -- the writer's lease (see ``lease``) -------------------------------------
    def read_lease(self) -> LeaseObject | None:
        """The lease object beside ``generations/``, or None if there is none."""
        ...

    def write_lease(self, data: bytes, expect: str | None) -> str:
        """Create the lease (``expect=None``: only if absent) or replace the version ``expect``;
        returns the new version. Raises PreconditionFailedError when that condition fails."""
        ...

    def renew_lease(self, data: bytes, expect: str, renewed_at: float) -> str:
        """Mark the lease at version ``expect`` renewed at ``renewed_at``, as ``write_lease``'s
        condition; returns its version. ``data`` is the lease with that renewal time, for a store
        that can only rewrite it; one with modification times may set that instead (and then
        reports it as ``LeaseObject.renewed_at``). Need not survive a power failure: its holder
        would not either."""
        ...

    def delete_lease(self, expect: str) -> None:
        """Remove the lease if it is still at version ``expect``."""
        ...


@dataclass(frozen=True)
class ReplicaTarget:
    """A replica that is only read (inspect, verify, restore, follow): its name
    and client, and the reader objects are read through (it decrypts an age
    replica, given the identity). A replica that is written is a ``Replica``."""

    name: str
    client: ReplicaClient
    reader: ReplicaReader
