"""Restore a database from a replica: choose a generation, plan a snapshot and
the chain of WAL segments after it, and have ``apply`` carry the plan out.

The result is written to a temp file next to the output path, synced, and
linked into place only once it is complete: a failed restore leaves nothing at
the output path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Sequence

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
from .fsutil import create_temp, fsync_dir
from .lockfile import ProcessLock, describe_holder
from .pos import Pos, SnapshotInfo, WALSegmentInfo
from .replica_client import ReplicaReader, ReplicaTarget
from .restore_target import LISTING_TIME_SLACK, CachedListing, calc_restore_target, check_timestamp, choose_restore_target

__all__ = [
    "DEFAULT_RESTORE_PARALLELISM",
    "RestoreOptions",
    "RestorePlan",
    "RestoreResult",
    "plan_restore",
    "restore",
    "restore_from_replicas",
]

log = logging.getLogger(__name__)

DEFAULT_RESTORE_PARALLELISM = 8
# A restore that finds a listed segment gone (compaction or retention deleted it
# meanwhile) starts over from a fresh listing; a gap fails at planning instead.
# Under a one-second compaction-interval on a loaded machine, three attempts in
# a row lost that race (tests/test_compaction.py, two CPU burners).
RESTORE_ATTEMPTS = 10


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
    output = _free_output(opts.output_path)
    listing = client if isinstance(client, CachedListing) else CachedListing(client)
    if opts.timestamp is not None:
        check_timestamp(listing, opts.timestamp)
    return _restore_locking(listing, opts, output)


def restore_from_replicas(replicas: Sequence[ReplicaTarget], opts: RestoreOptions) -> RestoreResult:
    """Restore from whichever of ``replicas`` holds the latest generation that
    matches ``opts`` (see ``choose_restore_target``), reusing what choosing listed."""
    output = _free_output(opts.output_path)
    target = choose_restore_target(replicas, opts.generation, opts.timestamp)
    return _restore_locking(target.listing, replace(opts, generation=target.generation), output)


def _free_output(path: str) -> str:
    """The output's absolute path; it must not exist yet (the one place that checks)."""
    output = os.path.abspath(path)
    if os.path.lexists(output):
        raise OutputExistsError(f"cannot restore to {output}: file already exists")
    return output


def _restore_locking(listing: CachedListing, opts: RestoreOptions, output: str) -> RestoreResult:
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
        return _restore_locked(listing, opts, output)
    finally:
        lock.release(unlink=True)


def _restore_locked(listing: CachedListing, opts: RestoreOptions, output: str) -> RestoreResult:
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
    fd, tmp_path = create_temp(output, suffix=".lsr-restore.tmp")
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
