"""Restore a database from a replica: choose a generation, plan a snapshot and
the chain of WAL segments after it, and have ``apply`` carry the plan out.

The result is written to a temp file next to the output path, synced, and
linked into place only once it is complete: a failed restore leaves nothing at
the output path.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import BinaryIO

from . import codec
from .apply import ProgressCallback, apply_plan
from .apply import missing_segment as _missing
from .errors import (
    InUseError,
    NoGenerationError,
    NoSnapshotError,
    NotFoundError,
    OutputExistsError,
    RestoreGapError,
    TimestampOutOfRangeError,
)
from .fsutil import fsync_dir
from .lockfile import ProcessLock, describe_holder
from .pos import Pos, SnapshotInfo, WALSegmentInfo
from .replica_client import ReplicaReader

__all__ = [
    "DEFAULT_RESTORE_PARALLELISM",
    "CachedListing",
    "RestoreOptions",
    "RestorePlan",
    "RestoreResult",
    "generation_time_bounds",
    "calc_restore_target",
    "check_timestamp",
    "plan_restore",
    "timestamp_bounds",
    "restore",
]

log = logging.getLogger(__name__)

DEFAULT_RESTORE_PARALLELISM = 8
RESTORE_ATTEMPTS = 3
# Object listings give times to the second, stamped when an upload completed.
LISTING_TIME_SLACK = timedelta(seconds=2)

@dataclass
class RestoreOptions:
    output_path: str
    generation: str = ""
    index: int | None = None  # restore through this WAL index (inclusive)
    timestamp: datetime | None = None  # restore the commits captured at or before this instant
    pos: Pos | None = None  # restore exactly through this shadow WAL position
    parallelism: int = DEFAULT_RESTORE_PARALLELISM
    progress: ProgressCallback | None = None  # (segments applied, segments in plan)


@dataclass
class RestorePlan:
    generation: str
    snapshot: SnapshotInfo
    segments: list[WALSegmentInfo] = field(default_factory=list)


@dataclass
class RestoreResult:
    output_path: str
    generation: str
    snapshot_index: int
    pos: Pos  # the last position applied
    transactions: int


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


def plan_restore(
    client: ReplicaReader,
    generation: str,
    index: int | None = None,
    timestamp: datetime | None = None,
    pos: Pos | None = None,
) -> RestorePlan:
    """Choose the snapshot and the chain of segments to apply; fail on any gap.

    With a timestamp the plan does not end at the first segment stamped after
    it: an object's timestamp is when it was written (an upload can finish long
    after its commits were captured), so later segments may still hold earlier
    commits. The applier stops at the first commit captured after the
    timestamp, and the downloads stop with it.
    """
    if not generation:
        raise NoGenerationError("cannot restore: no generation found on the replica")
    if pos is not None:
        index = pos.index
    snapshots = client.snapshots(generation)
    candidates = [
        s
        for s in snapshots
        if (index is None or s.index <= index)
        and (timestamp is None or s.created_at <= timestamp + LISTING_TIME_SLACK)
    ]
    candidates.sort(key=lambda s: s.index, reverse=True)
    if timestamp is not None:
        # The newest candidate captured by the timestamp (reading at most the few near it).
        chosen = next((s for s in candidates if _captured_by(client, s, timestamp)), None)
        candidates = [chosen] if chosen is not None else []
    if not candidates:
        if timestamp is not None:
            raise TimestampOutOfRangeError(
                f"cannot restore to {timestamp.isoformat()}: it is before the earliest snapshot of "
                f"generation {generation}"
            )
        raise NoSnapshotError(f"cannot restore generation {generation}: no snapshot at or before the target")
    snapshot = candidates[0]
    segments: list[WALSegmentInfo] = []
    for seg in client.wal_segments(generation):
        if seg.index < snapshot.index:
            continue
        if index is not None and seg.index > index:
            break
        if pos is not None and seg.index == pos.index and seg.offset >= pos.offset:
            break
        segments.append(seg)
    if index is not None:
        highest = segments[-1].index if segments else snapshot.index
        if highest < index:
            raise RestoreGapError(
                f"cannot restore generation {generation} to index {index:08x}: highest index is {highest:08x}"
            )
    _check_chain(generation, snapshot, segments)
    return RestorePlan(generation, snapshot, segments)


def _captured_by(client: ReplicaReader, snapshot: SnapshotInfo, timestamp: datetime) -> bool:
    """Whether the snapshot's database state was taken at or before ``timestamp``.

    Listings are coarse (whole seconds, upload time). A snapshot listed well
    before the timestamp was captured before it too; only one listed near it
    is opened (on S3, downloaded) to read the capture time it records.
    """
    if snapshot.created_at <= timestamp - LISTING_TIME_SLACK:
        return True
    return _snapshot_time(client, snapshot) <= timestamp


def _snapshot_time(client: ReplicaReader, snapshot: SnapshotInfo) -> datetime:
    """The capture time recorded in an lsr snapshot, else the listing's time."""
    with client.open_snapshot(snapshot.generation, snapshot.index) as src:
        ns = codec.read_snapshot_header(src)
    return snapshot.created_at if ns is None else datetime.fromtimestamp(ns / 1e9, timezone.utc)


def _check_chain(generation: str, snapshot: SnapshotInfo, segments: list[WALSegmentInfo]) -> None:
    expected_index = snapshot.index
    previous: WALSegmentInfo | None = None
    for seg in segments:
        if previous is None or seg.index != previous.index:
            if seg.index != expected_index:
                raise RestoreGapError(
                    f"cannot restore generation {generation}: {_missing(generation, expected_index, 0)} "
                    f"(the next wal index on the replica is {seg.index:08x})"
                )
            if seg.offset != 0:
                raise RestoreGapError(
                    f"cannot restore generation {generation}: {_missing(generation, seg.index, 0)} "
                    f"(missing initial wal segment; the first one at that index starts at offset {seg.offset})"
                )
            expected_index = seg.index + 1
        elif seg.offset <= previous.offset:
            raise RestoreGapError(
                f"cannot restore generation {generation}: wal segments out of order at index "
                f"{seg.index:08x} (offsets {previous.offset}, {seg.offset})"
            )
        previous = seg



def restore(client: ReplicaReader, opts: RestoreOptions) -> RestoreResult:
    """Restore ``opts.generation`` (or the best one) of ``client`` into ``opts.output_path``.

    If an object of the plan disappears mid-restore (retention ran meanwhile),
    the restore starts over from a fresh listing, a few times at most. Pass a
    ``CachedListing`` to reuse the listings read while choosing the generation.
    """
    output = os.path.abspath(opts.output_path)
    if os.path.lexists(output):
        raise OutputExistsError(f"cannot restore to {output}: file already exists")
    directory, name = os.path.split(output)
    os.makedirs(directory, exist_ok=True)
    # Two restores into one path would each do all the work, and the second fail at the end.
    lock = ProcessLock(os.path.join(directory, f".{name}.lsr-restore.lock"))
    holder = lock.acquire()
    if holder is not None:
        raise InUseError(
            f"cannot restore to {output}: another lsr restore ({describe_holder(holder)}) is writing it "
            "(wait for it to finish, or choose another -o path)"
        )
    try:
        return _restore_locked(client, opts, output)
    finally:
        lock.release(unlink=True)


def _restore_locked(client: ReplicaReader, opts: RestoreOptions, output: str) -> RestoreResult:
    listing = client if isinstance(client, CachedListing) else CachedListing(client)
    if opts.timestamp is not None:
        check_timestamp(listing, opts.timestamp)
    for attempt in range(1, RESTORE_ATTEMPTS + 1):
        try:
            return _restore_once(listing, opts, output)
        except NotFoundError as exc:
            if attempt == RESTORE_ATTEMPTS:
                raise
            log.warning("restore: %s; the replica changed during the restore, starting over", exc)
            listing.clear()
    raise AssertionError("unreachable")


def _restore_once(client: ReplicaReader, opts: RestoreOptions, output: str) -> RestoreResult:
    generation = opts.generation
    if not generation:
        generation, _ = calc_restore_target(client, timestamp=opts.timestamp)
    plan = plan_restore(client, generation, opts.index, opts.timestamp, opts.pos)
    directory = os.path.dirname(output)
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(output) + ".", suffix=".lsr-restore.tmp", dir=directory)
    cutoff = int(opts.timestamp.timestamp() * 1e9) if opts.timestamp is not None else None
    try:
        with os.fdopen(fd, "r+b") as f:
            applier = apply_plan(
                client, generation, plan.snapshot.index, plan.segments, f,
                cutoff_ns=cutoff, end=opts.pos, parallelism=opts.parallelism, progress=opts.progress,
            )
        try:
            # link() never replaces an existing file, unlike rename().
            os.link(tmp_path, output)
        except FileExistsError as exc:
            raise OutputExistsError(f"cannot restore to {output}: file appeared during the restore") from exc
        os.unlink(tmp_path)
        fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise
    pos = applier.last_commit if not applier.last_commit.is_zero() else Pos(generation, plan.snapshot.index, 0)
    log.info(
        "restored %s from generation %s (snapshot %08x, %d transactions) to %s",
        output, generation, plan.snapshot.index, applier.transactions, pos,
        extra={"db": output, "generation": generation, "pos": str(pos)},
    )
    return RestoreResult(output, generation, plan.snapshot.index, pos, applier.transactions)
