"""The shadow WAL: lsr's copy of every committed WAL frame, kept next to the database.

One object owns it on disk: its layout (``generations/<gen>/wal/<index>.wal``
beside a ``.commits`` file, the ``generation`` pointer, each generation's
``replicas`` record), the appends that copy verified frames from the real WAL,
the cut of a frame a crash left torn, durability (fsync before shipping), and
the reads that turn a stretch of it into a segment. The DB writes it; replicas
and verify only read it, through here.

Shadow index N holds one lifetime of the real WAL: its header and its frames
from the first on (see db.py for the invariant that keeps it continuous).
"""

from __future__ import annotations

import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from . import paths
from .commits import COMMITS_EXT, CommitLog
from .errors import DatabaseError, LitestreamError
from .fsutil import ReadBuffers, atomic_write, fsync_dir, read_buffers, read_pieces
from .pos import Pos
from .ship_policy import MAX_SEGMENT_SIZE
from .wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WALHeader, frame_align, salted_frames, scan_frames
from .wal_window import FileWindow, HeldWindow, WALWindow, commit_time

__all__ = ["ShadowWAL", "WALTail", "COPY_CHUNK_SIZE", "COPY_PROGRESS_BYTES", "MAX_WAL_TAIL"]

# Copy the WAL in bounded pieces so a WAL that grew while lsr was down does not
# have to fit in memory at once.
COPY_CHUNK_SIZE = 256 << 10
# ... doubled, up to this, while a transaction goes on (fewer calls; the window
# holds the transaction and one piece, so larger pieces only cost memory).
MAX_COPY_CHUNK_SIZE = 4 * COPY_CHUNK_SIZE
# The most WAL a checkpoint reads into memory under the write lock (read_wal_tail):
# a bound on lsr's memory, as the application rarely commits more while lsr waits for the lock.
MAX_WAL_TAIL = 4 << 20
# A long copy (a burst's backlog) reports what it has copied every file
# replica's segment, so that replicas ship a full segment while the rest is
# still copied.
COPY_PROGRESS_BYTES = MAX_SEGMENT_SIZE


# Shared by every database's copies: one buffer, as large as the largest
# transaction so far (a burst's) and a piece, waits for reuse. A fresh bytes
# per read would be a new mapping whose pages fault in as the read fills it.
_copy_buffers = ReadBuffers(max_kept=2 * MAX_WAL_TAIL)


@dataclass
class WALTail:
    """WAL bytes from ``offset`` on, read at ``captured`` (time_ns) under the write lock."""

    offset: int
    data: bytes
    captured: int


class ShadowWAL:
    """The shadow WAL under one database's meta directory."""

    def __init__(self, meta_path: str) -> None:
        self.meta_path = meta_path
        self.commit_log = CommitLog(self.commits_path)
        # (generation, index, size): shadow bytes known to be on disk (see make_durable).
        self._durable = ("", -1, 0)
        self._durable_lock = threading.Lock()
        # A shadow's header never changes: read once per index (shippers ask on every segment).
        self._headers: dict[tuple[str, int], WALHeader] = {}
        # A transaction's first frames, read and verified by the last copy (see wal_window).
        self._kept: tuple[str, int, FileWindow] | None = None

    # -- layout ------------------------------------------------------------
    # Plain formatting, not os.path.join: several of these are built per sync
    # (meta_path is absolute and normalized).
    @property
    def generation_name_path(self) -> str:
        return f"{self.meta_path}/generation"

    def generation_path(self, generation: str) -> str:
        return f"{self.meta_path}/generations/{generation}"

    def wal_dir(self, generation: str) -> str:
        return f"{self.meta_path}/generations/{generation}/wal"

    def wal_path(self, generation: str, index: int) -> str:
        return f"{self.meta_path}/generations/{generation}/wal/{paths.format_shadow_wal_path(index)}"

    def replica_formats_path(self, generation: str) -> str:
        """How each replica writes this generation (see format_change)."""
        return f"{self.meta_path}/generations/{generation}/replicas"

    def commits_path(self, generation: str, index: int) -> str:
        """Capture times of the commits in one shadow WAL index (see commits.CommitLog)."""
        return f"{self.meta_path}/generations/{generation}/wal/{index:08x}{COMMITS_EXT}"

    # -- state -------------------------------------------------------------
    def current_generation(self) -> str:
        try:
            with open(self.generation_name_path) as f:
                name = f.read().strip()
        except FileNotFoundError:
            return ""
        return name if paths.is_generation_name(name) else ""

    def indexes(self, generation: str) -> list[int]:
        try:
            names = os.listdir(self.wal_dir(generation))
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            try:
                out.append(paths.parse_shadow_wal_path(n))
            except LitestreamError:
                continue  # not a shadow WAL file (a temp file, the commits file)
        return sorted(out)

    def current_index(self, generation: str) -> int:
        indexes = self.indexes(generation)
        return indexes[-1] if indexes else 0

    def size(self, generation: str, index: int, page_size: int) -> int:
        """Frame-aligned size of a shadow WAL file (raw with ``page_size`` 0); 0 if it does not exist."""
        try:
            size = os.path.getsize(self.wal_path(generation, index))
        except FileNotFoundError:
            return 0
        return frame_align(size, page_size) if page_size else size

    def header(self, generation: str, index: int) -> WALHeader:
        """A shadow index's header (raises FileNotFoundError when the index is gone)."""
        key = (generation, index)
        header = self._headers.get(key)
        if header is None:
            with open(self.wal_path(generation, index), "rb") as f:
                header = self._headers[key] = WALHeader.parse(f.read(WAL_HEADER_SIZE), verify=False)
        return header

    def end(self, generation: str, index: int) -> int:
        """Where a shadow index's last whole frame ends; 0 if the index is gone."""
        try:
            size = os.path.getsize(self.wal_path(generation, index))
            return frame_align(size, self.header(generation, index).page_size)
        except FileNotFoundError:
            return 0

    def segment_end(self, pos: Pos, max_size: int) -> int:
        """Where a segment starting at ``pos`` ends once it is full: at most
        ``max_size`` bytes of whole frames (at least one)."""
        page_size = self.header(pos.generation, pos.index).page_size
        frame = WAL_FRAME_HEADER_SIZE + page_size
        return frame_align(pos.offset + max(max_size // frame, 1) * frame, page_size)

    # -- writes ------------------------------------------------------------
    def create_generation(self, replica_formats: list[tuple[str, str]]) -> str:
        """A new generation's directory and its record of how each replica
        (name, encryption) writes it; not current until set_current."""
        generation = paths.new_generation_name()
        os.makedirs(self.wal_dir(generation), mode=0o700, exist_ok=True)
        with atomic_write(self.replica_formats_path(generation)) as f:
            f.write("".join(f"{name}\t{encryption}\n" for name, encryption in replica_formats).encode())
        return generation

    def format_change(self, generation: str, replica_formats: list[tuple[str, str]]) -> str:
        """Why ``generation`` cannot go on with the replicas (name, encryption) as configured now, or "".

        An encrypted generation never continues a plaintext one, nor one
        encrypted to other recipients (nor the reverse): a generation's objects
        are all written one way. A generation without a record (written by Go,
        or by an lsr older than encryption) counts as plaintext: an encrypted
        replica then starts a new generation rather than guess.
        """
        try:
            with open(self.replica_formats_path(generation), encoding="utf-8") as f:
                recorded = dict(line.split("\t", 1) for line in f.read().splitlines() if "\t" in line)
        except FileNotFoundError:
            recorded = {}
        for name, now in replica_formats:
            before = recorded.get(name, "plain")
            if before == now:
                continue
            if before == "plain":
                return f"replica {name} is now age-encrypted; its plaintext generation is not continued"
            if now == "plain":
                return f"replica {name} is no longer encrypted; its encrypted generation is not continued"
            return f"replica {name} has new age recipients; a generation is encrypted to one set"
        return ""

    def set_current(self, generation: str) -> None:
        with atomic_write(self.generation_name_path) as f:
            f.write(generation.encode() + b"\n")

    def init_index(self, generation: str, index: int, header: WALHeader) -> None:
        """Start shadow index ``index`` with the real WAL's header."""
        path = self.wal_path(generation, index)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with atomic_write(path) as f:
            f.write(header.raw)
        self._headers[(generation, index)] = header

    def truncate_torn_tail(self) -> None:
        """Drop a torn frame left at the end of the current shadow index by a crash."""
        generation = self.current_generation()
        if not generation:
            return
        path = self.wal_path(generation, self.current_index(generation))
        try:
            size = os.path.getsize(path)
            header = WALHeader.parse(read_pieces(path, (0, WAL_HEADER_SIZE))[0])
        except (FileNotFoundError, Exception):
            return
        aligned = frame_align(size, header.page_size)
        if aligned != size:
            with open(path, "r+b") as f:
                f.truncate(aligned)
                os.fsync(f.fileno())

    def read_wal_tail(self, generation: str, index: int, page_size: int, wal_path: str, wal_end: int) -> WALTail | None:
        """The WAL's bytes from the shadow's end up to ``wal_end``, read in one go
        (None when too many to hold: see MAX_WAL_TAIL)."""
        offset = frame_align(os.path.getsize(self.wal_path(generation, index)), page_size)
        if wal_end - offset > MAX_WAL_TAIL:
            return None  # too much to hold in memory at once: copy it the usual way
        with open(wal_path, "rb") as wal:
            data = os.pread(wal.fileno(), wal_end - offset, offset) if wal_end > offset else b""
            captured = commit_time(wal.fileno())
        return WALTail(offset, data, captured)

    def append(self, generation: str, index: int, wal_path: str, tail: WALTail | None = None,
               progress: Callable[[int], None] | None = None, committed_end: int | None = None) -> tuple[int, int]:
        """Append the WAL's newly committed, checksum-verified frames to shadow index
        ``index``; returns its (old, new) size. ``progress`` is called with the
        size so far every COPY_PROGRESS_BYTES, the commits' times recorded first.
        ``committed_end``: where the WAL's last commit ends, from the wal-index
        (None: unknown); the frames the last copy kept are read again if it
        falls among them (see _window).

        Reads only the bytes past the shadow's end, or takes them from ``tail``
        (see read_wal_tail). Not fsynced here: a replica makes what it ships
        durable first (``make_durable``), so a busy WAL costs one fsync per
        shipment, not one per sync, and none while the write lock is held.
        """
        path = self.wal_path(generation, index)
        with open(path, "r+b") as shadow:
            header = WALHeader.parse(shadow.read(WAL_HEADER_SIZE))
            page_size = header.page_size
            frame_size = WAL_FRAME_HEADER_SIZE + page_size
            size = start = reported = frame_align(os.fstat(shadow.fileno()).st_size, page_size)
            if size > WAL_HEADER_SIZE:
                shadow.seek(size - frame_size + 16)
                raw = shadow.read(8)
                s0, s1 = int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:], "big")
            else:
                s0, s1 = header.checksum1, header.checksum2
            commits: list[tuple[int, int]] = []
            if tail is not None and tail.offset != size:
                raise DatabaseError(f"shadow wal {path} changed while lsr held the wal's tail")
            with open(wal_path, "rb") as wal:
                window = self._window(generation, index, size, (s0, s1), tail, committed_end)
                resumed = window.verified > 0
                try:
                    # Start small: past the live end of a restarted WAL lie stale
                    # frames that every sync would otherwise read again. (Bounded
                    # pieces of a held tail too: scanning makes copies of each.)
                    chunk = max(COPY_CHUNK_SIZE // frame_size, 1) * frame_size
                    while True:
                        if isinstance(window, FileWindow):
                            window.fd = wal.fileno()
                        got, captured = window.extend(chunk)
                        scanned = window.verified
                        unverified = window.have - scanned
                        if unverified < frame_size:
                            break
                        with window.view(scanned, window.have) as data:
                            result = scan_frames(data, header, window.checksum)
                        if resumed and not result.frames:
                            # What follows the frames kept from the last copy does
                            # not continue them: they were rewritten since (see
                            # wal_window). Read from the shadow's end again.
                            window.close()
                            window, resumed = FileWindow(size, (s0, s1), _copy_buffers), False
                            continue
                        resumed = False
                        window.verified = scanned + result.frames * frame_size
                        window.checksum = result.frames_checksum
                        if result.committed:
                            written = scanned + result.committed
                            shadow.seek(size)
                            with window.view(0, written) as data:
                                shadow.write(data)
                            commits += [(size + scanned + end, captured) for end in result.commits]
                            window.consume(written)
                            size += written
                            s0, s1 = result.checksum
                            if progress is not None and size - reported >= COPY_PROGRESS_BYTES:
                                self.commit_log.record(generation, index, commits)
                                commits, reported = [], size
                                progress(size)
                        if got < chunk or result.frames < unverified // frame_size:
                            break  # reached the end of the file (or tail) or of the valid frames
                        if not result.committed and chunk < MAX_COPY_CHUNK_SIZE:
                            chunk *= 2  # one transaction larger than the pieces so far: fewer, larger reads
                except BaseException:
                    window.close()
                    raise
                self._set_aside(window, generation, index)
        if commits:
            self.commit_log.record(generation, index, commits)
        return start, size

    def _window(self, generation: str, index: int, size: int, checksum: tuple[int, int],
                tail: WALTail | None, committed_end: int | None) -> WALWindow:
        """Where a copy from ``size`` (the shadow's end, ``checksum`` its last frame's)
        reads: ``tail``, or the WAL, starting with the frames the last copy kept.

        Those held no commit. A commit that ends among them now was written over
        them (their transaction rolled back, the next one shorter): the chain
        check of what follows them would not notice, so they are read anew.
        """
        kept, self._kept = self._kept, None
        if kept is not None:
            window = kept[2]
            if (tail is None and kept[:2] == (generation, index) and window.offset == size
                    and committed_end is not None and not size < committed_end <= size + window.verified):
                return window
            window.close()
        if tail is not None:
            return HeldWindow(tail.data, checksum, tail.captured)
        return FileWindow(size, checksum, _copy_buffers)

    def _set_aside(self, window: WALWindow, generation: str, index: int) -> None:
        """Keep the verified frames of a transaction still being written for the next copy."""
        if isinstance(window, FileWindow) and window.verified:
            window.keep_verified()
            self._kept = (generation, index, window)
        else:
            window.close()

    def make_durable(self, generation: str, index: int, end: int) -> None:
        """fsync shadow index ``index`` if its first ``end`` bytes may not be on disk yet.

        Called before they are shipped: a replica must never hold frames that a
        power loss could take from the shadow, or lsr would resume behind it.
        """
        with self._durable_lock:
            g, i, size = self._durable
            if (g, i) == (generation, index) and end <= size:
                return
            path = self.wal_path(generation, index)
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    size = os.fstat(fd).st_size  # all of it: what a sync appends meanwhile waits
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise DatabaseError(f"cannot sync shadow wal {path}: {exc.strerror}") from exc
            self._durable = (generation, index, size)

    def remove_other_generations(self, keep: str) -> None:
        generations_dir = os.path.join(self.meta_path, "generations")
        try:
            names = os.listdir(generations_dir)
        except FileNotFoundError:
            names = []
        for name in names:
            if name != keep:
                shutil.rmtree(os.path.join(generations_dir, name), ignore_errors=True)
        self._headers = {k: v for k, v in self._headers.items() if k[0] == keep}

    def remove_before(self, generation: str, keep_from: int) -> None:
        """Remove the shadow indexes (and their commit times) before ``keep_from``."""
        removed = False
        for index in self.indexes(generation):
            if index < keep_from:
                for path in (self.wal_path(generation, index), self.commits_path(generation, index)):
                    try:
                        os.unlink(path)
                        removed = True
                    except FileNotFoundError:
                        pass
                self.commit_log.forget(generation, index)
                self._headers.pop((generation, index), None)
        if removed:
            fsync_dir(self.wal_dir(generation))

    # -- reads for shipping --------------------------------------------------
    @contextmanager
    def read_segment(self, pos: Pos, end: int) -> Iterator[tuple[memoryview, list[tuple[int, int]]]]:
        """The frames from ``pos`` to ``end`` of one index, made durable and
        salt-checked, with the (offset, capture ns) of the commits among them.

        The bytes live in a reused buffer (fsutil.read_buffers), valid only
        inside the ``with``: a file sidecar's peak memory stays low.
        """
        path = self.wal_path(pos.generation, pos.index)
        self.make_durable(pos.generation, pos.index, end)
        commits = self.commit_log.between(pos.generation, pos.index, pos.offset, end)
        fd = os.open(path, os.O_RDONLY)
        try:
            with read_buffers.pread(fd, end - pos.offset, pos.offset) as data:
                if len(data) != end - pos.offset:
                    raise LitestreamError(f"cannot read shadow wal {path}: short read at {pos.offset}")
                self._check_salt(pos, data)
                yield data, commits
        finally:
            os.close(fd)

    def _check_salt(self, pos: Pos, data: memoryview) -> None:
        """Refuse to ship frames whose salt differs from their WAL header's."""
        header = self.header(pos.generation, pos.index)
        start = WAL_HEADER_SIZE if pos.offset == 0 else 0
        frame_size = WAL_FRAME_HEADER_SIZE + header.page_size
        salted = salted_frames(data[start:], header)
        if salted < (len(data) - start) // frame_size:
            at = pos.offset + start + salted * frame_size
            path = self.wal_path(pos.generation, pos.index)
            raise LitestreamError(f"cannot ship {path}: salt mismatch at offset {at}")
