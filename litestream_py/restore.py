"""Restore a database from a replica: a snapshot, then WAL segments applied in order.

Segments are downloaded in parallel but applied strictly in (index, offset)
order. Every frame's salt and cumulative checksum is verified, and only whole
transactions reach the database. The result is written to a temp file next to
the output path, synced, and renamed into place only once it is complete: a
failed restore leaves nothing at the output path.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Callable, Iterable

from . import codec
from .errors import (
    NoGenerationError,
    NoSnapshotError,
    OutputExistsError,
    RestoreGapError,
    WALFormatError,
)
from .fsutil import fsync_dir
from .pos import Pos, SnapshotInfo, WALSegmentInfo
from .replica_client import ReplicaClient
from .wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, FrameHeader, WALHeader, checksum

__all__ = [
    "DEFAULT_RESTORE_PARALLELISM",
    "RestoreOptions",
    "RestorePlan",
    "RestoreResult",
    "generation_time_bounds",
    "calc_restore_target",
    "plan_restore",
    "restore",
]

log = logging.getLogger(__name__)

DEFAULT_RESTORE_PARALLELISM = 8
# How many downloaded-but-unapplied segments may wait in memory per worker.
PREFETCH_PER_WORKER = 4

ProgressCallback = Callable[[int, int], None]


@dataclass
class RestoreOptions:
    output_path: str
    generation: str = ""
    index: int | None = None  # restore through this WAL index (inclusive)
    timestamp: datetime | None = None
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


def generation_time_bounds(client: ReplicaClient, generation: str) -> tuple[datetime | None, datetime | None]:
    """Earliest and latest timestamps of a generation's snapshots and segments."""
    times = [s.created_at for s in client.snapshots(generation)]
    times += [w.created_at for w in client.wal_segments(generation)]
    if not times:
        return None, None
    return min(times), max(times)


def calc_restore_target(
    client: ReplicaClient, generation: str = "", timestamp: datetime | None = None
) -> tuple[str, datetime | None]:
    """The generation with the latest data (optionally one that covers ``timestamp``)."""
    best, best_updated = "", None
    for g in client.generations():
        if generation and g != generation:
            continue
        created, updated = generation_time_bounds(client, g)
        if created is None or updated is None:
            continue
        if timestamp is not None and not (created <= timestamp <= updated):
            continue
        if best_updated is None or updated > best_updated:
            best, best_updated = g, updated
    return best, best_updated


def plan_restore(client: ReplicaClient, generation: str, index: int | None, timestamp: datetime | None) -> RestorePlan:
    """Choose the snapshot and the chain of segments to apply; fail on any gap."""
    if not generation:
        raise NoGenerationError("cannot restore: no generation found on the replica")
    snapshots = client.snapshots(generation)
    candidates = [
        s
        for s in snapshots
        if (index is None or s.index <= index) and (timestamp is None or s.created_at <= timestamp)
    ]
    if not candidates:
        raise NoSnapshotError(f"cannot restore generation {generation}: no snapshot at or before the target")
    snapshot = max(candidates, key=lambda s: (s.index, s.created_at))
    segments: list[WALSegmentInfo] = []
    for seg in client.wal_segments(generation):
        if seg.index < snapshot.index:
            continue
        if index is not None and seg.index > index:
            break
        if timestamp is not None and seg.created_at > timestamp:
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


def _check_chain(generation: str, snapshot: SnapshotInfo, segments: list[WALSegmentInfo]) -> None:
    expected_index = snapshot.index
    previous: WALSegmentInfo | None = None
    for seg in segments:
        if previous is None or seg.index != previous.index:
            if seg.index != expected_index:
                raise RestoreGapError(
                    f"cannot restore generation {generation}: missing wal index {expected_index:08x}"
                )
            if seg.offset != 0:
                raise RestoreGapError(
                    f"cannot restore generation {generation}: missing initial wal segment "
                    f"{seg.index:08x}_{0:08x} (first is at offset {seg.offset})"
                )
            expected_index = seg.index + 1
        elif seg.offset <= previous.offset:
            raise RestoreGapError(
                f"cannot restore generation {generation}: wal segments out of order at index "
                f"{seg.index:08x} (offsets {previous.offset}, {seg.offset})"
            )
        previous = seg


class _WALApplier:
    """Applies verified WAL frames to a database file, one whole transaction at a time."""

    def __init__(self, f: BinaryIO, generation: str) -> None:
        self.f = f
        self.generation = generation
        self.header: WALHeader | None = None
        self.index = -1
        self.offset = 0
        self.checksum = (0, 0)
        self.pending: dict[int, bytes] = {}
        self.transactions = 0
        self.last_commit = Pos()

    def feed(self, seg: WALSegmentInfo, data: bytes) -> None:
        where = f"{self.generation}/{seg.index:08x}_{seg.offset:08x}"
        if seg.index != self.index:
            self.index, self.offset, self.header = seg.index, 0, None
            self.pending.clear()
        if seg.offset != self.offset:
            raise RestoreGapError(
                f"cannot restore generation {self.generation}: wal segment {where} starts at "
                f"{seg.offset} but the previous one ended at {self.offset}"
            )
        view = memoryview(data)
        pos = 0
        if self.header is None:
            try:
                self.header = WALHeader.parse(view[:WAL_HEADER_SIZE])
            except WALFormatError as exc:
                raise WALFormatError(f"cannot apply wal segment {where}: {exc}") from exc
            self.checksum = (self.header.checksum1, self.header.checksum2)
            pos = WAL_HEADER_SIZE
        header = self.header
        page_size = header.page_size
        frame_size = WAL_FRAME_HEADER_SIZE + page_size
        if (len(data) - pos) % frame_size:
            raise WALFormatError(f"cannot apply wal segment {where}: {len(data)} bytes is not whole frames")
        s0, s1 = self.checksum
        while pos < len(data):
            frame = view[pos : pos + frame_size]
            fh = FrameHeader.parse(frame)
            if (fh.salt1, fh.salt2) != (header.salt1, header.salt2):
                raise WALFormatError(f"cannot apply wal segment {where}: salt mismatch at offset {seg.offset + pos}")
            s0, s1 = checksum(header.big_endian, s0, s1, frame[:8])
            s0, s1 = checksum(header.big_endian, s0, s1, frame[WAL_FRAME_HEADER_SIZE:])
            if (s0, s1) != (fh.checksum1, fh.checksum2):
                raise WALFormatError(
                    f"cannot apply wal segment {where}: checksum mismatch at offset {seg.offset + pos}"
                )
            self.pending[fh.pgno] = bytes(frame[WAL_FRAME_HEADER_SIZE:])
            pos += frame_size
            if fh.commit_size:
                self._commit(fh.commit_size, page_size)
                self.last_commit = Pos(self.generation, seg.index, seg.offset + pos)
        self.checksum = (s0, s1)
        self.offset = seg.offset + len(data)

    def _commit(self, db_pages: int, page_size: int) -> None:
        for pgno in sorted(self.pending):
            if pgno <= db_pages:
                self.f.seek((pgno - 1) * page_size)
                self.f.write(self.pending[pgno])
        self.f.truncate(db_pages * page_size)
        self.pending.clear()
        self.transactions += 1


def _download(client: ReplicaClient, seg: WALSegmentInfo) -> bytes:
    where = f"wal segment {seg.generation}/{seg.index:08x}_{seg.offset:08x}"
    return codec.decompress(client.read_wal_segment(seg.pos), where)


def _in_order(
    client: ReplicaClient, segments: list[WALSegmentInfo], parallelism: int
) -> Iterable[tuple[WALSegmentInfo, bytes]]:
    """Download segments in parallel, yielding them strictly in order with bounded read-ahead."""
    window = max(parallelism, 1) * PREFETCH_PER_WORKER
    with ThreadPoolExecutor(max_workers=max(parallelism, 1), thread_name_prefix="lsr-restore") as pool:
        queue: deque[tuple[WALSegmentInfo, Future[bytes]]] = deque()
        it = iter(segments)
        try:
            for seg in it:
                queue.append((seg, pool.submit(_download, client, seg)))
                if len(queue) >= window:
                    break
            while queue:
                seg, fut = queue.popleft()
                data = fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    queue.append((nxt, pool.submit(_download, client, nxt)))
                yield seg, data
        finally:
            for _, fut in queue:
                fut.cancel()


def restore(client: ReplicaClient, opts: RestoreOptions) -> RestoreResult:
    """Restore ``opts.generation`` (or the best one) of ``client`` into ``opts.output_path``."""
    output = os.path.abspath(opts.output_path)
    if os.path.lexists(output):
        raise OutputExistsError(f"cannot restore to {output}: file already exists")
    generation = opts.generation
    if not generation:
        generation, _ = calc_restore_target(client, timestamp=opts.timestamp)
    plan = plan_restore(client, generation, opts.index, opts.timestamp)
    directory = os.path.dirname(output)
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(output) + ".", suffix=".lsr-restore.tmp", dir=directory)
    try:
        with os.fdopen(fd, "r+b") as f:
            with client.open_snapshot(generation, plan.snapshot.index) as src:
                codec.decompress_stream(src, f, f"snapshot {generation}/{plan.snapshot.index:08x}")
            applier = _WALApplier(f, generation)
            total = len(plan.segments)
            for done, (seg, data) in enumerate(_in_order(client, plan.segments, opts.parallelism), 1):
                applier.feed(seg, data)
                if opts.progress:
                    opts.progress(done, total)
            f.flush()
            os.fsync(f.fileno())
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
    )
    return RestoreResult(output, generation, plan.snapshot.index, pos, applier.transactions)

