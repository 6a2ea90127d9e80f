"""Positions in a generation's WAL stream and the metadata of replica objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["LeaseObject", "Pos", "SnapshotInfo", "WALSegmentInfo"]


@dataclass(frozen=True, order=True)
class Pos:
    """A byte position in the shadow WAL: generation, WAL index, byte offset."""

    generation: str = ""
    index: int = 0
    offset: int = 0

    def __str__(self) -> str:
        if self.is_zero():
            return ""
        return f"{self.generation}/{self.index:08x}:{self.offset}"

    def is_zero(self) -> bool:
        return self == Pos()

    def truncate(self) -> Pos:
        """The start of this position's WAL index."""
        return Pos(self.generation, self.index, 0)


@dataclass(frozen=True)
class SnapshotInfo:
    generation: str
    index: int
    size: int
    created_at: datetime

    @property
    def pos(self) -> Pos:
        return Pos(self.generation, self.index, 0)


@dataclass(frozen=True)
class WALSegmentInfo:
    generation: str
    index: int
    offset: int
    size: int
    created_at: datetime

    @property
    def pos(self) -> Pos:
        return Pos(self.generation, self.index, self.offset)


@dataclass(frozen=True)
class LeaseObject:
    """The replica's lease object and the version a conditional write must name to replace it.

    ``renewed_at``: when a store that marks renewals apart from the content (a
    file's mtime) last did; None where a renewal rewrites the content.
    """

    data: bytes
    version: str
    renewed_at: float | None = field(default=None, compare=False)
