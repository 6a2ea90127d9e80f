"""Where a restore reads from: which replica, which generation (Go's
CalcRestoreTarget), and whether a point in time lies within what it holds.

The listings read while choosing are kept (``CachedListing``), so the restore
that follows lists nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO, Sequence

from .errors import NoGenerationError, NoSnapshotError, TimestampOutOfRangeError
from .pos import Pos, SnapshotInfo, WALSegmentInfo
from .replica_client import ReplicaReader, ReplicaTarget

__all__ = [
    "LISTING_TIME_SLACK",
    "CachedListing",
    "RestoreTarget",
    "calc_restore_target",
    "check_timestamp",
    "choose_restore_target",
    "generation_time_bounds",
    "timestamp_bounds",
]

log = logging.getLogger(__name__)

# Object listings give times to the second, stamped when an upload completed.
LISTING_TIME_SLACK = timedelta(seconds=2)


@dataclass(frozen=True)
class RestoreTarget:
    """The replica and generation a restore reads, and the listings read to choose them."""

    replica: ReplicaTarget
    generation: str
    updated_at: datetime
    listing: CachedListing


def choose_restore_target(
    replicas: Sequence[ReplicaTarget], generation: str = "", timestamp: datetime | None = None
) -> RestoreTarget:
    """Among ``replicas``, the one holding the latest matching generation (Go's
    CalcRestoreTarget): ``generation`` if given, and one that covers ``timestamp``.

    Finding none is ``NoGenerationError``; with a timestamp outside all the
    first replica holds, the error names the range it does hold.
    """
    best: RestoreTarget | None = None
    listings = []
    for replica in replicas:
        listing = CachedListing(replica.reader)
        listings.append(listing)
        g, updated = calc_restore_target(listing, generation, timestamp)
        if g and updated is not None and (best is None or updated > best.updated_at):
            best = RestoreTarget(replica, g, updated, listing)
    if best is None:
        if timestamp is not None and listings:
            check_timestamp(listings[0], timestamp)
        raise NoGenerationError("cannot restore: no matching backups found on the replica(s)")
    log.debug("restoring generation %s from replica %s", best.generation, best.replica.name)
    return best


class CachedListing:
    """A replica reader whose listings are read once: choosing a generation and
    planning its restore then cost one LIST each instead of two.

    Objects are read straight from the client. ``clear()`` forgets the
    listings, for a restore that starts over because the replica changed.
    """

    def __init__(self, client: ReplicaReader) -> None:
        self.client = client
        self._generations: list[str] | None = None
        self._snapshots: dict[str, list[SnapshotInfo]] = {}
        self._segments: dict[str, list[WALSegmentInfo]] = {}

    def clear(self) -> None:
        self._generations = None
        self._snapshots.clear()
        self._segments.clear()

    def generations(self) -> list[str]:
        if self._generations is None:
            self._generations = self.client.generations()
        return list(self._generations)

    def snapshots(self, generation: str) -> list[SnapshotInfo]:
        if generation not in self._snapshots:
            self._snapshots[generation] = self.client.snapshots(generation)
        return list(self._snapshots[generation])

    def wal_segments(self, generation: str) -> list[WALSegmentInfo]:
        if generation not in self._segments:
            self._segments[generation] = self.client.wal_segments(generation)
        return list(self._segments[generation])

    def open_snapshot(self, generation: str, index: int) -> BinaryIO:
        return self.client.open_snapshot(generation, index)

    def read_wal_segment(self, pos: Pos) -> bytes:
        return self.client.read_wal_segment(pos)


def generation_time_bounds(client: ReplicaReader, generation: str) -> tuple[datetime | None, datetime | None]:
    """Earliest and latest timestamps of a generation's snapshots and segments."""
    times = [s.created_at for s in client.snapshots(generation)]
    times += [w.created_at for w in client.wal_segments(generation)]
    if not times:
        return None, None
    return min(times), max(times)


def calc_restore_target(
    client: ReplicaReader, generation: str = "", timestamp: datetime | None = None
) -> tuple[str, datetime | None]:
    """The generation with the latest data (optionally one that covers ``timestamp``)."""
    best, best_updated = "", None
    for g in client.generations():
        if generation and g != generation:
            continue
        created, updated = generation_time_bounds(client, g)
        if created is None or updated is None:
            continue
        if timestamp is not None and not (created - LISTING_TIME_SLACK <= timestamp <= updated + LISTING_TIME_SLACK):
            continue
        if best_updated is None or updated > best_updated:
            best, best_updated = g, updated
    return best, best_updated


def timestamp_bounds(client: ReplicaReader) -> tuple[datetime | None, datetime | None]:
    """The earliest snapshot and the latest capture on a replica, over all generations."""
    first: datetime | None = None
    last: datetime | None = None
    for g in client.generations():
        snaps = client.snapshots(g)
        times = [s.created_at for s in snaps] + [w.created_at for w in client.wal_segments(g)]
        if snaps:
            earliest = min(s.created_at for s in snaps)
            first = earliest if first is None else min(first, earliest)
        if times:
            last = max(times) if last is None else max(last, max(times))
    return first, last


def check_timestamp(client: ReplicaReader, timestamp: datetime) -> None:
    """Fail with one clear line when ``timestamp`` lies outside what the replica holds."""
    first, last = timestamp_bounds(client)
    if first is None or last is None:
        raise NoSnapshotError("cannot restore to a timestamp: the replica holds no snapshot")
    if timestamp < first - LISTING_TIME_SLACK:
        raise TimestampOutOfRangeError(
            f"cannot restore to {timestamp.isoformat()}: it is before the earliest snapshot "
            f"({first.isoformat()})"
        )
    if timestamp > last + LISTING_TIME_SLACK:
        raise TimestampOutOfRangeError(
            f"cannot restore to {timestamp.isoformat()}: it is after the last captured commit "
            f"({last.isoformat()}); restore without -timestamp for the latest state"
        )
