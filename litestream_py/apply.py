"""The restore pipeline: prefetch -> apply -> write-behind.

``restore`` plans (which snapshot, which segments); this module carries a plan
out into an open file. While one thread decompresses the snapshot into the
file, segments are fetched ahead on others, and verified and applied strictly
in (index, offset) order, one whole transaction at a time: every frame's salt
and cumulative checksum is checked before its page is kept. Committed pages
wait in memory until the snapshot is in the file, then go out in page order,
each page once, a run of neighbours per pwritev; the snapshot's pages are
written back to disk while it decompresses, so the final fsync finds little
left to do.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from typing import BinaryIO, Callable, Iterator

from . import codec, paths
from .errors import RestoreGapError, WALFormatError
from .pos import Pos, WALSegmentInfo
from .replica_client import ReplicaReader
from .wal import (
    C_CHECKS,
    WAL_FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    FrameTerms,
    WALHeader,
    check_frames,
    check_frames_c,
    check_frames_py,
    import_numpy_in_background,
)

__all__ = [
    "MAX_RUN_BYTES",
    "PREFETCH_BYTES",
    "PURE_PYTHON_WAL_BYTES",
    "READ_AHEAD_BYTES",
    "ProgressCallback",
    "WRITE_BEHIND_BYTES",
    "LOCAL_READERS",
    "Segment",
    "WALApplier",
    "apply_plan",
    "frame_check",
    "missing_segment",
    "reads_are_local",
]

# Decoded WAL that may wait in memory, downloaded but not applied yet. Enough
# that downloads run on through the snapshot's restore instead of idling.
PREFETCH_BYTES = 64 << 20
# Snapshot bytes written between two write-back syncs.
WRITE_BEHIND_BYTES = 16 << 20
# WAL checked and applied in one pass (unless the plan ends sooner): the
# applier waits for downloads to make up this much, as a pass has a fixed
# cost (~1-2 ms in pure Python, whatever its size).
MAX_RUN_BYTES = 16 << 20
# Where _walcheck was not built: compressed WAL in a plan up to which frames
# are checked without numpy: importing it costs ~0.1 s of CPU (more on a busy
# machine), and a large snapshot's decompression no longer leaves a core idle
# to hide it (its blocks decode on every core); the pure-Python check costs
# ~6-9 ms per MiB of WAL (~3 MiB of WAL per MiB compressed): below this, not
# importing numpy is the cheaper of the two (docs/bench.md, Restore).
PURE_PYTHON_WAL_BYTES = 4 << 20
# Decoded WAL from which a segment's frames are read ahead by the downloading
# thread: a read costs ~1 ms whatever its size (it walks every word of a
# frame), so small segments are left to the applier, which reads a run of
# them at once.
READ_AHEAD_BYTES = 1 << 20
# Readers of a local replica: a read there is CPU (a page-cache copy and the
# LZ4 decode), not a wait, so more threads than one only compete with the
# snapshot's decompression for the cores; one reader still runs ahead of it.
LOCAL_READERS = 1
try:
    _IOV_MAX = max(os.sysconf("SC_IOV_MAX"), 16)  # buffers per pwritev call (1024 on Linux)
except (ValueError, OSError):
    _IOV_MAX = 16  # the POSIX minimum

ProgressCallback = Callable[[int, int], None]
Segment = tuple[bytes, list[tuple[int, int]]]
# Frames read ahead by the downloading thread, by the (index, offset) of their segment.
ReadAhead = dict[tuple[int, int], FrameTerms]


def missing_segment(generation: str, index: int, offset: int) -> str:
    """The replica object a gap lacks, as the replica names it."""
    return f"wal segment {paths.wal_segment_path('', generation, index, offset)} is missing"


def frame_check(segments: list[WALSegmentInfo]) -> str:
    """How a plan's frames are checked (salts and checksum chain): "c" where
    _walcheck was built (no numpy to import, no Python work per word); else
    "numpy" for a large plan, "python" for a small one."""
    if C_CHECKS:
        return "c"
    return "numpy" if sum(s.size for s in segments) > PURE_PYTHON_WAL_BYTES else "python"


def reads_are_local(reader: object) -> bool:
    """Whether ``reader`` (or the client it wraps: a listing cache, a decrypting
    reader) reads a replica on a local file system."""
    seen = 0
    while reader is not None and seen < 8:
        if getattr(reader, "type", None) == "file":
            return True
        reader, seen = getattr(reader, "client", None), seen + 1
    return False


def apply_plan(
    client: ReplicaReader,
    generation: str,
    snapshot_index: int,
    segments: list[WALSegmentInfo],
    f: BinaryIO,
    *,
    cutoff_ns: int | None = None,
    end: Pos | None = None,
    parallelism: int = 1,
    progress: ProgressCallback | None = None,
) -> WALApplier:
    """Write the snapshot into ``f`` (empty), apply ``segments`` on top, and fsync ``f``.

    Stops at the first commit captured after ``cutoff_ns``, or after the commit
    ending exactly at ``end``; fails if ``end`` lies past the replica's last
    commit. Returns the applier, which says how far it got.
    """
    check = frame_check(segments)
    if check == "numpy":
        import_numpy_in_background()  # the frame checks need it; the snapshot hides its import
    workers = min(parallelism, LOCAL_READERS) if reads_are_local(client) else parallelism
    with (
        closing(_Prefetch(client, segments, workers, read_frames=check == "python")) as runs,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsr-restore-sync") as syncer,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsr-restore-snapshot") as writer,
    ):
        write_behind = _WriteBehind(f, syncer)
        what = f"snapshot {generation}/{snapshot_index:08x}"
        # The snapshot is written on its own thread (decompression leaves the
        # interpreter to others) while this one checks the WAL: the applier
        # keeps its pages in memory until the snapshot is in the file.
        snapshot = writer.submit(_write_snapshot, client, generation, snapshot_index, write_behind, what)
        applier = WALApplier(f, generation, cutoff_ns, end, check=check, ready=snapshot.result)
        try:
            total, done = len(segments), 0
            for run in runs:
                applier.feed(run, runs.read_ahead)
                done += len(run)
                if progress:
                    progress(done, total)
                if applier.done or (snapshot.done() and snapshot.exception() is not None):
                    break
            snapshot.result()
            if end is not None and applier.last_commit < end and end.offset > WAL_HEADER_SIZE:
                raise RestoreGapError(f"cannot restore through {end}: the replica ends at {applier.last_commit}")
            applier.flush()
        except BaseException:
            write_behind.cancel()  # the snapshot's thread stops at its next write
            raise
        write_behind.wait()
        os.fsync(f.fileno())
    return applier


def _write_snapshot(
    client: ReplicaReader, generation: str, index: int, write_behind: _WriteBehind, what: str
) -> None:
    with client.open_snapshot(generation, index) as src:
        codec.decompress_stream(src, write_behind, what)
    write_behind.sync()


class WALApplier:
    """Applies verified WAL frames to a database file, one whole transaction at a time.

    Committed pages wait in memory (up to DIRTY_PAGE_BYTES) and go out in page
    order on ``flush()``: a page that many transactions rewrite is written once,
    and neighbouring pages share one pwritev.
    """

    DIRTY_PAGE_BYTES = 64 << 20

    def __init__(
        self, f: BinaryIO, generation: str, cutoff_ns: int | None = None, end: Pos | None = None,
        check: str = "c" if C_CHECKS else "numpy", ready: Callable[[], object] | None = None,
    ) -> None:
        """``check`` is how frames are checked (see ``frame_check``). ``ready``
        returns once ``f`` holds the snapshot (raising if it cannot): until then
        the applier only checks frames and keeps pages in memory. By default
        ``f`` already holds it."""
        if check not in ("c", "numpy", "python") or (check == "c" and not C_CHECKS):
            raise ValueError(f"cannot check wal frames with {check!r}")
        self.check = check
        self.fd = f.fileno()
        self._ready = ready or f.flush  # after it, pages go straight to the descriptor
        self.size: int | None = None  # the database's size as of the last commit
        self.low: int | None = None  # the smallest size a commit set since the last flush
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

    def feed(self, run: list[tuple[WALSegmentInfo, Segment]], read_ahead: ReadAhead | None = None) -> None:
        """Apply segments in order; each stretch of byte-contiguous ones is checked in one pass.

        ``read_ahead`` holds frames of these segments already read (without
        numpy): only their chain from this applier's checksum is left to check.
        """
        stretch: list[tuple[WALSegmentInfo, Segment]] = []
        for seg, segment in run:
            if stretch:
                last, (last_data, _) = stretch[-1]
                if seg.index != last.index or seg.offset != last.offset + len(last_data):
                    self._feed_stretch(stretch, read_ahead or {})
                    stretch = []
            stretch.append((seg, segment))
        if stretch:
            self._feed_stretch(stretch, read_ahead or {})

    def _feed_stretch(self, stretch: list[tuple[WALSegmentInfo, Segment]], read_ahead: ReadAhead) -> None:
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
            missing = missing_segment(self.generation, seg.index, self.offset)
            raise RestoreGapError(
                f"cannot restore generation {self.generation}: {missing} "
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
        fields, chain, problem = self._check(stretch, read_ahead, view, pos, base)
        if problem and base != seg.offset and not fields:
            raise self._overlap(where(seg), seg.offset)
        for pgno, commit_size in fields:
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
        if problem:
            # Frames before it were applied: a target reached there still restores.
            bad = base + pos
            raise WALFormatError(f"cannot apply wal segment {where(segment_at(bad + 1))}: {problem} at offset {bad}")
        self.checksum = chain
        self.offset = base + len(view)
        self.tail = (base, view)

    def _check(
        self, stretch: list[tuple[WALSegmentInfo, Segment]], read_ahead: ReadAhead, view: memoryview, pos: int,
        base: int,
    ) -> tuple[list[tuple[int, int]], tuple[int, int], str]:
        """The frames of ``view[pos:]`` that continue this WAL's checksum chain, as
        (page number, commit size); the chain after them; what is wrong with the next one."""
        assert self.header is not None
        if self.check == "c":
            return check_frames_c(view[pos:], self.header, self.checksum)
        if self.check == "numpy":
            check = check_frames(view[pos:], self.header, self.checksum)
            chain = (int(check.sums[-1, 0]), int(check.sums[-1, 1])) if check.valid else self.checksum
            return check.fields[:, :2].tolist(), chain, check.problem
        frames = _read_ahead(stretch, read_ahead, view, pos, self.header) if base == stretch[0][0].offset else None
        if frames is not None:
            fields, sums, problem = frames.check(self.header, self.checksum)
        else:
            fields, sums, problem = check_frames_py(view[pos:], self.header, self.checksum)
        return fields, sums[-1] if sums else self.checksum, problem

    def _overlap(self, where: str, offset: int) -> RestoreGapError:
        # Only two writers shipping one replica make segments overlap otherwise.
        return RestoreGapError(
            f"cannot restore generation {self.generation}: wal segment {where} starts at {offset}, inside the "
            f"previous one (which ended at {self.offset}): were two lsr processes shipping to this replica?"
        )

    def _commit(self, db_pages: int, page_size: int) -> None:
        self.page_size = page_size
        size = db_pages * page_size
        if self.size is not None and size < self.size:
            # The database shrank: pages past its new end are gone, written or not.
            self.dirty = {pgno: page for pgno, page in self.dirty.items() if pgno <= db_pages}
        self.low = size if self.low is None else min(self.low, size)
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
        self._ready()
        if self.low is not None and self.low < os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, self.low)  # what a shrink cut off reads as zeros if the file grows again
        self.low = None
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
        if self.size is not None and os.fstat(self.fd).st_size != self.size:
            os.ftruncate(self.fd, self.size)  # grown pages SQLite never wrote read as zeros


def _read_ahead(
    stretch: list[tuple[WALSegmentInfo, Segment]], read_ahead: ReadAhead, view: memoryview, pos: int, header: WALHeader,
) -> FrameTerms | None:
    """The frames of ``stretch`` (``view[pos:]``, which starts where its first segment
    does): those read ahead, and the others read now, each gap between them at once
    (a read has a fixed cost of its own). None if they do not split into whole frames."""
    frame_size = WAL_FRAME_HEADER_SIZE + header.page_size
    base = stretch[0][0].offset
    runs: list[FrameTerms] = []
    gap = pos  # where the frames not read yet start in ``view``
    for seg, (data, _) in stretch:
        start, end = max(seg.offset - base, pos), seg.offset - base + len(data)
        frames = read_ahead.pop((seg.index, seg.offset), None)
        if frames is None or (frames.page_size, frames.big_endian) != (header.page_size, header.big_endian):
            continue
        if (start - gap) % frame_size or (end - start) != len(frames.fields) * frame_size:
            return None
        if start > gap:
            runs.append(FrameTerms.read(view[gap:start], header.page_size, header.big_endian))
        runs.append(frames)
        gap = end
    if not runs or (len(view) - gap) % frame_size:
        return None
    if len(view) > gap:
        runs.append(FrameTerms.read(view[gap:], header.page_size, header.big_endian))
    return FrameTerms.join(runs)


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


def _download(client: ReplicaReader, seg: WALSegmentInfo) -> Segment:
    where = f"wal segment {seg.generation}/{seg.index:08x}_{seg.offset:08x}"
    return codec.decode_segment(client.read_wal_segment(seg.pos), where)


class _Prefetch:
    """Segments downloaded in parallel, handed out strictly in order, with bounded read-ahead.

    Downloads start on construction and run ahead while the snapshot is
    restored, up to PREFETCH_BYTES of decoded WAL waiting to be applied. With
    ``read_frames``, the downloading thread also reads each segment's frames
    for the applier's check (``FrameTerms``): that work then runs beside the
    snapshot's decompression, which leaves the interpreter to it.
    """

    def __init__(
        self, client: ReplicaReader, segments: list[WALSegmentInfo], parallelism: int, read_frames: bool = False
    ) -> None:
        self._client = client
        self._read_frames = read_frames
        self._layouts: dict[int, tuple[int, bool]] = {}  # WAL index -> (page size, big-endian), from its header
        self.read_ahead: ReadAhead = {}  # frames of the segments taken, for the applier
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
            if self._read_frames:
                d.frames = self._read(d.seg, segment[0])
            return segment
        finally:
            with self._lock:
                self._running -= 1
                d.size = size
                self._held += size
                self._fill()

    def _read(self, seg: WALSegmentInfo, data: bytes) -> FrameTerms | None:
        """The segment's frames, when its WAL header has been seen (None: the applier reads them)."""
        view = memoryview(data)
        if seg.offset == 0:
            try:
                header = WALHeader.parse(data[:WAL_HEADER_SIZE])
            except WALFormatError:
                return None  # the applier reports it
            with self._lock:
                self._layouts[seg.index] = (header.page_size, header.big_endian)
            view = view[WAL_HEADER_SIZE:]
        with self._lock:
            layout = self._layouts.get(seg.index)
        if layout is None or len(view) < READ_AHEAD_BYTES or len(view) % (WAL_FRAME_HEADER_SIZE + layout[0]):
            return None
        return FrameTerms.read(view, *layout)

    def __iter__(self) -> Iterator[list[tuple[WALSegmentInfo, Segment]]]:
        """Runs of segments, each the next ones up to MAX_RUN_BYTES, waiting for their downloads.

        A run is verified in one pass (a pass's fixed cost dwarfs a small
        segment's). A failed download ends a run, so segments before it still apply.
        """
        while self._queue:
            run = [self._take()]
            size = len(run[0][1][0])
            while self._queue and size < MAX_RUN_BYTES:
                if self._queue[0].future.exception() is not None:
                    break
                run.append(self._take())
                size += len(run[-1][1][0])
            yield run

    def _take(self) -> tuple[WALSegmentInfo, Segment]:
        d = self._queue.popleft()
        segment = d.future.result()
        if d.frames is not None:
            self.read_ahead[(d.seg.index, d.seg.offset)] = d.frames
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
        self.frames: FrameTerms | None = None  # read ahead (``_Prefetch._read``)


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
        self._cancelled = False

    def cancel(self) -> None:
        """Make the next write fail: the restore failed elsewhere."""
        self._cancelled = True

    def write(self, data: bytes | memoryview) -> int:
        if self._cancelled:
            raise _Cancelled()
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


class _Cancelled(Exception):
    """The snapshot's writing stopped because the restore failed elsewhere."""

