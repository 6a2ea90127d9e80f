"""Restore a database from a replica: a snapshot, then WAL segments applied in order.

Segments are downloaded in parallel but applied strictly in (index, offset)
order. Every frame's salt and cumulative checksum is verified, and only whole
transactions reach the database. The result is written to a temp file next to
the output path, synced, and renamed into place only once it is complete: a
failed restore leaves nothing at the output path.
"""

from __future__ import annotations

import bisect
import logging
import os
import tempfile
import threading
from collections import deque
from contextlib import closing
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

from . import codec, paths
from .errors import (
    InUseError,
    NoGenerationError,
    NoSnapshotError,
    NotFoundError,
    OutputExistsError,
    RestoreGapError,
    TimestampOutOfRangeError,
    WALFormatError,
)
from .fsutil import fsync_dir
from .lockfile import ProcessLock, describe_holder
from .pos import Pos, SnapshotInfo, WALSegmentInfo
from .replica_client import ReplicaReader, ReplicaTarget
from .restore_target import LISTING_TIME_SLACK, CachedListing, calc_restore_target, check_timestamp, choose_restore_target
from .wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WALHeader, check_frames, import_numpy_in_background

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
# Decoded WAL that may wait in memory, downloaded but not applied yet. Enough
# that downloads run on through the snapshot's restore instead of idling.
PREFETCH_BYTES = 64 << 20
# Snapshot bytes written between two write-back syncs.
WRITE_BEHIND_BYTES = 16 << 20
# The most WAL checked and applied in one pass.
MAX_RUN_BYTES = 16 << 20
RESTORE_ATTEMPTS = 3
try:
    _IOV_MAX = max(os.sysconf("SC_IOV_MAX"), 16)  # buffers per pwritev call (1024 on Linux)
except (ValueError, OSError):
    _IOV_MAX = 16  # the POSIX minimum

ProgressCallback = Callable[[int, int], None]


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


def _missing(generation: str, index: int, offset: int) -> str:
    """The replica object a gap lacks, as the replica names it."""
    return f"wal segment {paths.wal_segment_path('', generation, index, offset)} is missing"


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


class _WALApplier:
    """Applies verified WAL frames to a database file, one whole transaction at a time.

    Committed pages wait in memory (up to DIRTY_PAGE_BYTES) and go out in page
    order on ``flush()``: a page that many transactions rewrite is written once,
    and neighbouring pages share one pwritev.
    """

    DIRTY_PAGE_BYTES = 64 << 20

    def __init__(self, f: BinaryIO, generation: str, cutoff_ns: int | None = None, end: Pos | None = None) -> None:
        f.flush()  # pages go straight to the descriptor from here on
        self.fd = f.fileno()
        self.size = os.fstat(self.fd).st_size  # the database's size as of the last commit
        self.dirty: dict[int, bytes] = {}  # committed pages not written yet
        self.page_size = 0
        self.generation = generation
        self.cutoff_ns = cutoff_ns  # skip commits captured after this instant
        self.end = end  # stop after the commit that ends exactly here
        self.done = False
        self.header: WALHeader | None = None
        self.index = -1
        self.offset = 0
        self.checksum = (0, 0)
        self.pending: dict[int, bytes] = {}
        self.transactions = 0
        self.last_commit = Pos()
        self.tail = (0, memoryview(b""))  # (offset, bytes) of the last stretch applied in this index

    def feed(self, run: list[tuple[WALSegmentInfo, Segment]]) -> None:
        """Apply segments in order; each stretch of byte-contiguous ones is checked in one pass."""
        stretch: list[tuple[WALSegmentInfo, Segment]] = []
        for seg, segment in run:
            if stretch:
                last, (last_data, _) = stretch[-1]
                if seg.index != last.index or seg.offset != last.offset + len(last_data):
                    self._feed_stretch(stretch)
                    stretch = []
            stretch.append((seg, segment))
        if stretch:
            self._feed_stretch(stretch)

    def _feed_stretch(self, stretch: list[tuple[WALSegmentInfo, Segment]]) -> None:
        if self.done:
            return
        seg = stretch[0][0]
        data = stretch[0][1][0] if len(stretch) == 1 else b"".join(d for _, (d, _) in stretch)
        times = {end: t for _, (_, commit_times) in stretch for end, t in commit_times}
        # Where each segment starts, to name it in errors and date commits
        # from segments without recorded times (written by Go) by their own timestamp.
        starts = [s.offset for s, _ in stretch]

        def segment_at(offset: int) -> WALSegmentInfo:
            return stretch[max(bisect.bisect_left(starts, offset) - 1, 0)][0]

        def where(s: WALSegmentInfo) -> str:
            return f"{self.generation}/{s.index:08x}_{s.offset:08x}"

        if seg.index != self.index:
            self.index, self.offset, self.header = seg.index, 0, None
            self.pending.clear()
            self.tail = (0, memoryview(b""))
        if seg.offset > self.offset:
            raise RestoreGapError(
                f"cannot restore generation {self.generation}: {_missing(self.generation, seg.index, self.offset)} "
                f"(the next one, {where(seg)}, starts at offset {seg.offset})"
            )
        base = seg.offset  # where ``data`` starts in the WAL index
        view = memoryview(data)
        if seg.offset < self.offset:
            # A compaction's merged segment is listed with the ones it replaces
            # until it deletes them: the range applied already is skipped (if
            # it was just applied, it must hold the same bytes), and what lies
            # beyond it must continue the checksum chain.
            if seg.offset + len(data) <= self.offset:
                start = seg.offset - self.tail[0]
                if start >= 0 and self.tail[1][start : start + len(data)] != view:
                    raise self._overlap(where(seg), seg.offset)
                return
            view, base = view[self.offset - seg.offset :], self.offset
        pos = 0
        if self.header is None:
            try:
                self.header = WALHeader.parse(bytes(view[:WAL_HEADER_SIZE]))
            except WALFormatError as exc:
                raise WALFormatError(f"cannot apply wal segment {where(seg)}: {exc}") from exc
            self.checksum = (self.header.checksum1, self.header.checksum2)
            pos = WAL_HEADER_SIZE
        header = self.header
        page_size = header.page_size
        frame_size = WAL_FRAME_HEADER_SIZE + page_size
        if (len(view) - pos) % frame_size:
            last = stretch[-1][0]
            raise WALFormatError(f"cannot apply wal segment {where(last)}: it does not end on a frame boundary")
        check = check_frames(view[pos:], header, self.checksum)
        if check.problem and base != seg.offset and len(check.sums) == 0:
            raise self._overlap(where(seg), seg.offset)
        s0, s1 = self.checksum
        for (pgno, commit_size), (s0, s1) in zip(check.fields[:, :2].tolist(), check.sums.tolist()):
            self.pending[pgno] = bytes(view[pos + WAL_FRAME_HEADER_SIZE : pos + frame_size])
            pos += frame_size
            if commit_size:
                end = base + pos
                if self.cutoff_ns is not None:
                    captured = times.get(end)
                    if captured is None:
                        captured = int(segment_at(end).created_at.timestamp() * 1e9)
                    if captured > self.cutoff_ns:
                        self.pending.clear()
                        self.done = True
                        return
                self._commit(commit_size, page_size)
                self.last_commit = Pos(self.generation, seg.index, end)
                if self.end is not None and self.last_commit >= self.end:
                    self.done = True
                    return
        if check.problem:
            # Frames before it were applied: a target reached there still restores.
            bad = base + pos
            raise WALFormatError(
                f"cannot apply wal segment {where(segment_at(bad + 1))}: {check.problem} at offset {bad}"
            )
        self.checksum = (s0, s1)
        self.offset = base + len(view)
        self.tail = (base, view)

    def _overlap(self, where: str, offset: int) -> RestoreGapError:
        # Only two writers shipping one replica make segments overlap otherwise.
        return RestoreGapError(
            f"cannot restore generation {self.generation}: wal segment {where} starts at {offset}, inside the "
            f"previous one (which ended at {self.offset}): were two lsr processes shipping to this replica?"
        )

    def _commit(self, db_pages: int, page_size: int) -> None:
        self.page_size = page_size
        size = db_pages * page_size
        if size < self.size:
            # The database shrank: pages past its new end are gone, written or not.
            self.dirty = {pgno: page for pgno, page in self.dirty.items() if pgno <= db_pages}
            os.ftruncate(self.fd, size)
        self.size = size
        for pgno, page in self.pending.items():
            if pgno <= db_pages:
                self.dirty[pgno] = page
        self.pending.clear()
        self.transactions += 1
        if len(self.dirty) * page_size >= self.DIRTY_PAGE_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the waiting pages, a run of consecutive page numbers per pwritev, and set the size."""
        run: list[bytes] = []
        first = 0
        for pgno in sorted(self.dirty):
            if run and pgno != first + len(run):
                _write_at(self.fd, run, (first - 1) * self.page_size)
                run = []
            if not run:
                first = pgno
            run.append(self.dirty[pgno])
        if run:
            _write_at(self.fd, run, (first - 1) * self.page_size)
        self.dirty.clear()
        if os.fstat(self.fd).st_size != self.size:
            os.ftruncate(self.fd, self.size)  # grown pages SQLite never wrote read as zeros


def _write_at(fd: int, buffers: list[bytes], offset: int) -> None:
    """Write ``buffers`` back to back at ``offset``: pwritev, IOV_MAX at a time, finishing short writes."""
    for i in range(0, len(buffers), _IOV_MAX):
        chunk = buffers[i : i + _IOV_MAX]
        size = sum(map(len, chunk))
        written = os.pwritev(fd, chunk, offset)
        if written < size:
            rest = memoryview(b"".join(chunk))[written:]
            while rest:
                n = os.pwrite(fd, rest, offset + written)
                written += n
                rest = rest[n:]
        offset += size


Segment = tuple[bytes, list[tuple[int, int]]]


def _download(client: ReplicaReader, seg: WALSegmentInfo) -> Segment:
    where = f"wal segment {seg.generation}/{seg.index:08x}_{seg.offset:08x}"
    return codec.decode_segment(client.read_wal_segment(seg.pos), where)


class _Prefetch:
    """Segments downloaded in parallel, handed out strictly in order, with bounded read-ahead.

    Downloads start on construction and run ahead while the snapshot is
    restored, up to PREFETCH_BYTES of decoded WAL waiting to be applied.
    """

    def __init__(self, client: ReplicaReader, segments: list[WALSegmentInfo], parallelism: int) -> None:
        self._client = client
        self._workers = max(parallelism, 1)
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="lsr-restore")
        self._lock = threading.Lock()
        self._queue: deque[_Download] = deque()
        self._todo = iter(segments)
        self._running = 0  # downloads not finished yet
        self._held = 0  # decoded bytes downloaded and not taken yet
        self._closed = False
        with self._lock:
            self._fill()

    def _fill(self) -> None:
        """Start downloads while a worker is free and the read-ahead has room (lock held)."""
        while not self._closed and self._running < self._workers and self._held < PREFETCH_BYTES:
            seg = next(self._todo, None)
            if seg is None:
                return
            d = _Download(seg)
            d.future = self._pool.submit(self._fetch, d)
            self._queue.append(d)
            self._running += 1

    def _fetch(self, d: _Download) -> Segment:
        size = 0
        try:
            segment = _download(self._client, d.seg)
            size = len(segment[0])
            return segment
        finally:
            with self._lock:
                self._running -= 1
                d.size = size
                self._held += size
                self._fill()

    def __iter__(self) -> Iterator[list[tuple[WALSegmentInfo, Segment]]]:
        """Runs of segments: the next one, and those after it already downloaded.

        A run is verified in one pass (numpy's per-call cost dwarfs a small
        segment's). A failed download ends a run, so segments before it still apply.
        """
        while self._queue:
            run = [self._take()]
            size = len(run[0][1][0])
            while self._queue and size < MAX_RUN_BYTES:
                fut = self._queue[0].future
                if not fut.done() or fut.exception() is not None:
                    break
                run.append(self._take())
                size += len(run[-1][1][0])
            yield run

    def _take(self) -> tuple[WALSegmentInfo, Segment]:
        d = self._queue.popleft()
        segment = d.future.result()
        with self._lock:
            self._held -= d.size
            self._fill()
        return d.seg, segment

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._queue.clear()


class _Download:
    def __init__(self, seg: WALSegmentInfo) -> None:
        self.seg = seg
        self.future: Future[Segment]
        self.size = 0  # decoded bytes, once downloaded


class _WriteBehind:
    """Writes the snapshot and has its pages written back to disk as it goes.

    An fdatasync runs on another thread every WRITE_BEHIND_BYTES, so the disk
    works while decompression goes on, and the final fsync finds little left
    to write. Each sync's result is checked in ``wait()``: a write-back error
    is reported to one sync only, and must not be lost.
    """

    def __init__(self, f: BinaryIO, syncer: ThreadPoolExecutor) -> None:
        self._f = f
        self._syncer = syncer
        self._syncs: list[Future[None]] = []
        self._unsynced = 0

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        self._unsynced += len(data)
        if self._unsynced >= WRITE_BEHIND_BYTES and (not self._syncs or self._syncs[-1].done()):
            self.sync()
        return n

    def sync(self) -> None:
        """Start writing back what was written so far."""
        self._f.flush()
        self._syncs.append(self._syncer.submit(os.fdatasync, self._f.fileno()))
        self._unsynced = 0

    def wait(self) -> None:
        for done in self._syncs:
            done.result()


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
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(output) + ".", suffix=".lsr-restore.tmp", dir=directory)
    cutoff = int(opts.timestamp.timestamp() * 1e9) if opts.timestamp is not None else None
    if plan.segments:
        import_numpy_in_background()  # the frame checks need it; the snapshot hides its import
    try:
        with (
            os.fdopen(fd, "r+b") as f,
            closing(_Prefetch(client, plan.segments, opts.parallelism)) as segments,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsr-restore-sync") as syncer,
        ):
            write_behind = _WriteBehind(f, syncer)
            with client.open_snapshot(generation, plan.snapshot.index) as src:
                codec.decompress_stream(src, write_behind, f"snapshot {generation}/{plan.snapshot.index:08x}")
            write_behind.sync()
            applier = _WALApplier(f, generation, cutoff, opts.pos)
            total, done = len(plan.segments), 0
            for run in segments:
                applier.feed(run)
                done += len(run)
                if opts.progress:
                    opts.progress(done, total)
                if applier.done:
                    break
            if opts.pos is not None and applier.last_commit < opts.pos and opts.pos.offset > WAL_HEADER_SIZE:
                raise RestoreGapError(f"cannot restore through {opts.pos}: the replica ends at {applier.last_commit}")
            applier.flush()
            write_behind.wait()
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
        extra={"db": output, "generation": generation, "pos": str(pos)},
    )
    return RestoreResult(output, generation, plan.snapshot.index, pos, applier.transactions)
