"""SQLite's WAL file format: headers, frames and the cumulative checksum.

A WAL file is a 32-byte header followed by frames of a 24-byte frame header and
one page. Every frame carries the running checksum of the header and of all
frames before it (seeded from the header's checksum), and the salts of the
header; a frame whose salt or checksum does not match is not part of the WAL.
A frame whose "db size after commit" field is non-zero ends a transaction.
"""

from __future__ import annotations

import functools
import importlib
import os
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import WALFormatError

try:
    from . import _walcheck
except ImportError:  # installed where no C compiler was found: numpy checks the frames
    _walcheck = None  # type: ignore[assignment]
C_CHECKS = _walcheck is not None  # whether check_frames_c can run

# numpy is imported where it is used, not here: its import costs ~0.15 s, which
# a restore hides behind the snapshot download (see import_numpy_in_background).
if TYPE_CHECKING:
    import numpy as np

# numpy's bundled OpenBLAS starts a worker per core at import, and they spin
# while waiting for work. lsr never calls BLAS (its matmuls are on integers),
# so one thread, the caller's, is all it needs; a user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__all__ = [
    "WAL_HEADER_SIZE",
    "WAL_FRAME_HEADER_SIZE",
    "WAL_MAGIC_LE",
    "WAL_MAGIC_BE",
    "WALHeader",
    "FrameHeader",
    "checksum",
    "checksum_reference",
    "frame_align",
    "wal_size",
    "scan_frames",
    "salted_frames",
    "commit_frame_ends",
    "check_frames",
    "FrameCheck",
    "checksum_chain",
    "checksum_chain_py",
    "check_frames_py",
    "check_frames_c",
    "C_CHECKS",
    "FrameTerms",
    "frame_headers",
    "ScanResult",
    "import_numpy_in_background",
]

WAL_HEADER_SIZE = 32
WAL_FRAME_HEADER_SIZE = 24
WAL_HEADER_CHECKSUM_OFFSET = 24
WAL_FRAME_CHECKSUM_OFFSET = 16
# The checksum's byte order is named by the magic number's low bit.
WAL_MAGIC_LE = 0x377F0682
WAL_MAGIC_BE = 0x377F0683
MAX_PAGE_SIZE = 65536


def import_numpy_in_background() -> threading.Thread:
    """Start importing numpy on another thread; later imports wait for it to finish."""
    thread = threading.Thread(target=importlib.import_module, args=("numpy",), name="lsr-import-numpy")
    thread.start()
    return thread


_MASK32 = 0xFFFFFFFF
_COMMIT_SIZE = struct.Struct(">I")  # a frame header's second field
_MATRIX_POWERS: np.ndarray | None = None


def _matrix_powers() -> np.ndarray:
    """Powers of the checksum's step matrix, mod 2**32, lowest power last.

    One checksum step over words (a, b) is s0' = s0 + a + s1, s1' = s1 + b + s0',
    i.e. s' = M s + (a, a + b) with M = [[1, 1], [1, 2]]. After n steps
    s_n = M^n s_0 + sum_k M^(n-k) u_k, which numpy evaluates in one pass.
    """
    import numpy as np

    global _MATRIX_POWERS
    if _MATRIX_POWERS is None:
        n = (MAX_PAGE_SIZE + WAL_FRAME_HEADER_SIZE) // 8 + 2
        powers = np.empty((n, 2, 2), dtype=np.uint64)
        powers[0] = ((1, 0), (0, 1))
        powers[1] = ((1, 1), (1, 2))
        # Doubling: M^(k+j) = M^j M^k for j < k, a whole block per round
        # (uint64 products wrap mod 2**64, which keeps them right mod 2**32).
        k = 2
        while k < n:
            count = min(k, n - k)
            mk = [[int(v) for v in row] for row in _mat_mul(powers[k - 1], powers[1])]
            lower = powers[:count]
            block = powers[k : k + count]
            block[:, 0, 0] = lower[:, 0, 0] * np.uint64(mk[0][0]) + lower[:, 0, 1] * np.uint64(mk[1][0])
            block[:, 0, 1] = lower[:, 0, 0] * np.uint64(mk[0][1]) + lower[:, 0, 1] * np.uint64(mk[1][1])
            block[:, 1, 0] = lower[:, 1, 0] * np.uint64(mk[0][0]) + lower[:, 1, 1] * np.uint64(mk[1][0])
            block[:, 1, 1] = lower[:, 1, 0] * np.uint64(mk[0][1]) + lower[:, 1, 1] * np.uint64(mk[1][1])
            block &= _MASK32
            k += count
        _MATRIX_POWERS = powers
    return _MATRIX_POWERS


def _mat_mul(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """2x2 product mod 2**32, in Python integers."""
    x = [[int(v) for v in row] for row in a]
    y = [[int(v) for v in row] for row in b]
    return [
        [(x[i][0] * y[0][j] + x[i][1] * y[1][j]) & _MASK32 for j in range(2)]
        for i in range(2)
    ]


def checksum(big_endian: bool, s0: int, s1: int, data: bytes | memoryview) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes), continuing from (s0, s1)."""
    if len(data) % 8:
        raise WALFormatError("cannot checksum wal data: length is not a multiple of 8")
    if len(data) <= 64:  # headers: a few Python steps beat numpy's setup
        return checksum_reference(big_endian, s0, s1, bytes(data))
    import numpy as np

    words = np.frombuffer(data, dtype=">u4" if big_endian else "<u4").astype(np.uint64)
    a, b = words[0::2], words[1::2]
    n = len(a)
    if n == 0:
        return s0, s1
    powers = _matrix_powers()
    if n + 1 > len(powers):
        # Longer than one frame: fold in frame-sized chunks.
        step = (len(powers) - 2) * 8
        for start in range(0, len(data), step):
            s0, s1 = checksum(big_endian, s0, s1, data[start : start + step])
        return s0, s1
    u0 = a
    u1 = (a + b) & _MASK32
    # M^(n-k) for k = 1..n is powers[n-1] .. powers[0].
    p = powers[:n][::-1]
    r0 = int((p[:, 0, 0] * u0 + p[:, 0, 1] * u1).sum() & _MASK32)
    r1 = int((p[:, 1, 0] * u0 + p[:, 1, 1] * u1).sum() & _MASK32)
    pn = powers[n]
    t0 = (int(pn[0, 0]) * s0 + int(pn[0, 1]) * s1 + r0) & _MASK32
    t1 = (int(pn[1, 0]) * s0 + int(pn[1, 1]) * s1 + r1) & _MASK32
    return t0, t1


def checksum_reference(big_endian: bool, s0: int, s1: int, data: bytes) -> tuple[int, int]:
    """The word-by-word loop from SQLite's documentation (kept for tests)."""
    fmt = ">II" if big_endian else "<II"
    for i in range(0, len(data), 8):
        a, b = struct.unpack_from(fmt, data, i)
        s0 = (s0 + a + s1) & _MASK32
        s1 = (s1 + b + s0) & _MASK32
    return s0, s1


@dataclass(frozen=True)
class WALHeader:
    magic: int
    version: int
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum1: int
    checksum2: int
    raw: bytes

    @property
    def big_endian(self) -> bool:
        return self.magic == WAL_MAGIC_BE

    @property
    def salt(self) -> bytes:
        return self.raw[16:24]

    @classmethod
    def parse(cls, data: bytes, verify: bool = True) -> WALHeader:
        if len(data) < WAL_HEADER_SIZE:
            raise WALFormatError(f"cannot parse wal header: {len(data)} bytes, need {WAL_HEADER_SIZE}")
        raw = bytes(data[:WAL_HEADER_SIZE])
        magic, version, page_size, seq, salt1, salt2, c1, c2 = struct.unpack(">8I", raw)
        if magic not in (WAL_MAGIC_LE, WAL_MAGIC_BE):
            raise WALFormatError(f"cannot parse wal header: bad magic {magic:#x}")
        # SQLite stores a 65536-byte page size as 1.
        if page_size == 1:
            page_size = 65536
        if page_size < 512 or page_size > MAX_PAGE_SIZE or page_size & (page_size - 1):
            raise WALFormatError(f"cannot parse wal header: bad page size {page_size}")
        hdr = cls(magic, version, page_size, seq, salt1, salt2, c1, c2, raw)
        if verify and checksum(hdr.big_endian, 0, 0, raw[:24]) != (c1, c2):
            raise WALFormatError("cannot parse wal header: header checksum mismatch")
        return hdr


@dataclass(frozen=True)
class FrameHeader:
    pgno: int
    commit_size: int  # database size in pages after a commit frame; 0 otherwise
    salt1: int
    salt2: int
    checksum1: int
    checksum2: int

    @classmethod
    def parse(cls, data: bytes | memoryview) -> FrameHeader:
        return cls(*struct.unpack_from(">6I", data, 0))


def frame_align(offset: int, page_size: int) -> int:
    """The largest frame boundary at or below ``offset`` (0 below a whole header)."""
    if offset < WAL_HEADER_SIZE:
        return 0
    frame_size = WAL_FRAME_HEADER_SIZE + page_size
    return WAL_HEADER_SIZE + ((offset - WAL_HEADER_SIZE) // frame_size) * frame_size


def wal_size(page_size: int, frame_count: int) -> int:
    return WAL_HEADER_SIZE + (WAL_FRAME_HEADER_SIZE + page_size) * frame_count


@dataclass
class ScanResult:
    """What a scan over frames found valid.

    ``committed`` counts the bytes through the last commit frame; ``commits`` lists
    the end offset (relative to the scan start) of every commit frame. ``frames``
    counts the valid frames, and ``frames_checksum`` is the checksum after the
    last of them: a later scan continues from there (a transaction read in pieces).
    """

    committed: int
    checksum: tuple[int, int]
    commits: list[int]
    frames: int
    frames_checksum: tuple[int, int]


_FRAME_WEIGHTS: dict[int, np.ndarray] = {}


def _frame_weights(page_size: int) -> np.ndarray:
    """Per-word uint32 weights W such that (frame words @ W) mod 2**32 is a frame's contribution r.

    A frame's checksum covers words 0-1 of its header and its page (words 6 on);
    step j reads words (a_j, b_j) and adds M^(n-j) (a_j, a_j + b_j), i.e.
    a_j (M00+M01, M10+M11) + b_j (M01, M11) with M = M^(n-j).
    """
    import numpy as np

    weights = _FRAME_WEIGHTS.get(page_size)
    if weights is None:
        steps = (8 + page_size) // 8
        powers = _matrix_powers()[:steps][::-1]  # M^(n-j) for j = 1..n
        covered = np.empty((2 * steps, 2), dtype=np.uint64)
        covered[0::2, 0] = (powers[:, 0, 0] + powers[:, 0, 1]) & _MASK32
        covered[0::2, 1] = (powers[:, 1, 0] + powers[:, 1, 1]) & _MASK32
        covered[1::2, 0] = powers[:, 0, 1]
        covered[1::2, 1] = powers[:, 1, 1]
        weights = np.zeros(((WAL_FRAME_HEADER_SIZE + page_size) // 4, 2), dtype=np.uint32)
        weights[0:2] = covered[0:2]
        weights[WAL_FRAME_HEADER_SIZE // 4 :] = covered[2:]
        _FRAME_WEIGHTS[page_size] = weights
    return weights


def checksum_chain(data: bytes | memoryview, header: WALHeader, start_checksum: tuple[int, int]) -> np.ndarray:
    """The cumulative checksum after each whole frame in ``data``, as a (frames, 2) uint32 array.

    Frame k moves the checksum state by s -> A s + r_k with A = M^n fixed and
    r_k depending on frame k alone: one matrix product gives every r_k, and a
    log-step prefix scan folds them (no per-frame Python). All of it is done
    in uint32, whose wrap-around is the checksum's own mod 2**32: no wider
    copy of the frames is made.
    """
    import numpy as np

    page_size = header.page_size
    frame_size = WAL_FRAME_HEADER_SIZE + page_size
    count = len(data) // frame_size
    dtype = ">u4" if header.big_endian else "<u4"
    words = np.frombuffer(data, dtype=dtype, count=count * frame_size // 4).reshape(count, frame_size // 4)
    if not words.dtype.isnative:
        words = words.astype(np.uint32)
    sums: np.ndarray = np.matmul(words, _frame_weights(page_size))
    _prefix_fold(sums, _matrix_powers()[(8 + page_size) // 8], start_checksum)
    return sums


def _prefix_fold(sums: np.ndarray, step_matrix: np.ndarray, state: tuple[int, int]) -> None:
    """In place: sums[k] := A sums[k-1] + sums[k] (mod 2**32), sums[-1] being ``state``.

    Hillis-Steele scan: after the round with distance d, row k holds the fold of
    rows k-2d+1..k, so log2(rows) vector rounds replace a per-row loop. ``sums``
    is uint32, so every product and sum wraps mod 2**32 as it should.
    """
    import numpy as np

    if not len(sums):
        return
    a = [[int(v) for v in row] for row in step_matrix]
    s0, s1 = state
    sums[0, 0] = (int(sums[0, 0]) + a[0][0] * s0 + a[0][1] * s1) & _MASK32
    sums[0, 1] = (int(sums[0, 1]) + a[1][0] * s0 + a[1][1] * s1) & _MASK32
    p, d = a, 1
    while d < len(sums):
        prev0, prev1 = sums[:-d, 0], sums[:-d, 1]
        add0 = prev0 * np.uint32(p[0][0]) + prev1 * np.uint32(p[0][1])
        add1 = prev0 * np.uint32(p[1][0]) + prev1 * np.uint32(p[1][1])
        sums[d:, 0] += add0
        sums[d:, 1] += add1
        p = [
            [(p[0][0] * p[0][0] + p[0][1] * p[1][0]) & _MASK32, (p[0][0] * p[0][1] + p[0][1] * p[1][1]) & _MASK32],
            [(p[1][0] * p[0][0] + p[1][1] * p[1][0]) & _MASK32, (p[1][0] * p[0][1] + p[1][1] * p[1][1]) & _MASK32],
        ]
        d *= 2


def frame_headers(data: bytes | memoryview, page_size: int) -> np.ndarray:
    """The six header fields of each whole frame in ``data`` as a (frames, 6) view.

    Frame headers are big-endian whatever the checksum byte order.
    """
    import numpy as np

    frame_size = WAL_FRAME_HEADER_SIZE + page_size
    count = len(data) // frame_size
    words = np.frombuffer(data, dtype=">u4", count=count * frame_size // 4).reshape(count, frame_size // 4)
    return words[:, : WAL_FRAME_HEADER_SIZE // 4]


@dataclass
class FrameCheck:
    """Frames of ``data`` up to the first one whose salt or checksum is wrong.

    ``fields`` are the valid frames' header words (see ``frame_headers``),
    ``sums`` the cumulative checksum after each of them; ``problem`` names what
    is wrong with the frame right after them ("" when every frame is valid).
    """

    fields: np.ndarray
    sums: np.ndarray
    problem: str

    @property
    def valid(self) -> int:
        return len(self.fields)


def check_frames(data: bytes | memoryview, header: WALHeader, start_checksum: tuple[int, int]) -> FrameCheck:
    """Verify salts and the checksum chain of every whole frame in ``data``.

    Salts are checked first, so stale frames left past the end of a restarted
    WAL cost no checksum work.
    """
    frame_size = WAL_FRAME_HEADER_SIZE + header.page_size
    fields = frame_headers(data, header.page_size)
    salt_ok = (fields[:, 2] == header.salt1) & (fields[:, 3] == header.salt2)
    valid = len(fields) if salt_ok.all() else int(salt_ok.argmin())
    problem = "salt mismatch" if valid < len(fields) else ""
    sums = checksum_chain(memoryview(data)[: valid * frame_size], header, start_checksum)
    bad = (sums[:, 0] != fields[:valid, 4]) | (sums[:, 1] != fields[:valid, 5])
    if bad.any():
        valid, problem = int(bad.argmax()), "checksum mismatch"
    return FrameCheck(fields[:valid], sums[:valid], problem)


_PROBLEMS = ("", "salt mismatch", "checksum mismatch")  # _walcheck.scan's problem codes


def scan_frames(
    data: bytes | memoryview,
    header: WALHeader,
    start_checksum: tuple[int, int],
    *,
    strict: bool = False,
) -> ScanResult:
    """Walk frames in ``data`` while salt and checksum chain hold.

    Stops at the first invalid frame (the end of the live WAL) unless ``strict``,
    where an invalid frame raises. Only bytes through the last commit frame count.
    In C (_walcheck.c): the sidecar's shadow copy runs it on every WAL byte, and
    without numpy, which it then never imports.
    """
    if _walcheck is None:
        return _scan_frames_numpy(data, header, start_checksum, strict=strict)
    frames, problem, frames_checksum, commits, commit_checksum = _walcheck.scan(
        data, header.page_size, header.big_endian, header.salt1, header.salt2, *start_checksum)
    if problem and strict:
        at = frames * (WAL_FRAME_HEADER_SIZE + header.page_size)
        raise WALFormatError(f"cannot verify wal frame at +{at}: {_PROBLEMS[problem]}")
    return ScanResult(commits[-1] if commits else 0, commit_checksum, commits, frames, frames_checksum)


def salted_frames(data: bytes | memoryview, header: WALHeader) -> int:
    """How many whole frames of ``data``, from the first, carry ``header``'s salts."""
    if _walcheck is None:
        fields = frame_headers(data, header.page_size)
        wrong = (fields[:, 2] != header.salt1) | (fields[:, 3] != header.salt2)
        return int(wrong.argmax()) if wrong.any() else len(fields)
    return _walcheck.salted(data, header.page_size, header.salt1, header.salt2)


def _scan_frames_numpy(data: bytes | memoryview, header: WALHeader, start_checksum: tuple[int, int], *,
                       strict: bool) -> ScanResult:
    """scan_frames where _walcheck was not built."""
    import numpy as np

    frame_size = WAL_FRAME_HEADER_SIZE + header.page_size
    check = check_frames(data, header, start_checksum)
    if check.problem and strict:
        raise WALFormatError(f"cannot verify wal frame at +{check.valid * frame_size}: {check.problem}")
    valid = check.valid
    frames_checksum = (int(check.sums[-1, 0]), int(check.sums[-1, 1])) if valid else start_checksum
    commit_frames = np.flatnonzero(check.fields[:, 1])
    if len(commit_frames) == 0:
        return ScanResult(0, start_checksum, [], valid, frames_checksum)
    last = int(commit_frames[-1])
    commits = ((commit_frames + 1) * frame_size).tolist()
    return ScanResult(commits[-1], (int(check.sums[last, 0]), int(check.sums[last, 1])), commits, valid,
                      frames_checksum)


def commit_frame_ends(data: bytes | memoryview, page_size: int) -> list[int]:
    """The end offset in ``data`` of each of its whole frames that ends a transaction."""
    frame_size = WAL_FRAME_HEADER_SIZE + page_size
    view = memoryview(data)
    return [pos + frame_size for pos in range(0, len(view) - frame_size + 1, frame_size)
            if _COMMIT_SIZE.unpack_from(view, pos + 4)[0]]


# Bytes per lane in checksum_chain_py: a lane sums up to 8194 products of two
# 32-bit numbers (a 64 KiB page), under 2**77.
_LANE = 10
_FRAME_FIELDS = struct.Struct(">6I")


@functools.lru_cache(maxsize=8)  # one entry per page size in use; callers only read it
def _py_frame_weights(page_size: int) -> tuple[list[int], list[int], tuple[int, int, int, int]]:
    """``_frame_weights`` without numpy: per-word weights of a frame's two
    checksum words, and M^n (row-major) for n, the checksum steps per frame."""
    n = (8 + page_size) // 8
    powers = [(1, 0, 0, 1)]  # M^k, k = 0..n, with M = [[1, 1], [1, 2]]
    for _ in range(n):
        a, b, c, d = powers[-1]
        powers.append(((a + b) & _MASK32, (a + 2 * b) & _MASK32, (c + d) & _MASK32, (c + 2 * d) & _MASK32))
    words = (WAL_FRAME_HEADER_SIZE + page_size) // 4
    w0, w1 = [0] * words, [0] * words
    for step in range(1, n + 1):
        # Step 1 reads the header's first two words, the others the page's.
        first = 0 if step == 1 else WAL_FRAME_HEADER_SIZE // 4 + 2 * (step - 2)
        a, b, c, d = powers[n - step]
        w0[first], w1[first] = (a + b) & _MASK32, (c + d) & _MASK32
        w0[first + 1], w1[first + 1] = b, d
    return w0, w1, powers[n]


def checksum_chain_py(
    data: bytes | memoryview, header: WALHeader, start_checksum: tuple[int, int]
) -> list[tuple[int, int]]:
    """``checksum_chain`` without numpy (whose import costs more than a few MiB of frames)."""
    return _fold(_frame_terms_py(data, header.page_size, header.big_endian), header.page_size, start_checksum)


def _frame_terms_py(data: bytes | memoryview, page_size: int, big_endian: bool) -> list[tuple[int, int]]:
    """Each whole frame's own term u in the checksum step s' = M^n s + u: what
    its bytes add, whatever the checksum before it (so frames can be read ahead
    of the chain).

    The algebra is vectorised across frames in Python integers: word j of every
    frame is packed into one integer of ``_LANE``-byte lanes, so each weight
    multiplies all frames at once (~6 ms a MiB).
    """
    frame_size = WAL_FRAME_HEADER_SIZE + page_size
    count = len(data) // frame_size
    frames = bytes(data[: count * frame_size])
    w0, w1, _ = _py_frame_weights(page_size)
    lanes = bytearray(count * _LANE)
    order = (3, 2, 1, 0) if big_endian else (0, 1, 2, 3)
    acc0 = acc1 = 0
    for j in range(frame_size // 4):
        if w0[j] or w1[j]:
            for byte, lane_byte in enumerate(order):
                lanes[lane_byte::_LANE] = frames[4 * j + byte :: frame_size]
            v = int.from_bytes(lanes, "little")
            acc0 += w0[j] * v
            acc1 += w1[j] * v
    r0 = acc0.to_bytes(count * _LANE + 16, "little")
    r1 = acc1.to_bytes(count * _LANE + 16, "little")
    return [(int.from_bytes(r0[k : k + 4], "little"), int.from_bytes(r1[k : k + 4], "little"))
            for k in range(0, count * _LANE, _LANE)]


def _fold(terms: list[tuple[int, int]], page_size: int, start_checksum: tuple[int, int]) -> list[tuple[int, int]]:
    """The cumulative checksum after each frame, from ``start_checksum`` and the frames' terms."""
    a, b, c, d = _py_frame_weights(page_size)[2]
    s0, s1 = start_checksum
    sums = []
    for u0, u1 in terms:
        s0, s1 = (a * s0 + b * s1 + u0) & _MASK32, (c * s0 + d * s1 + u1) & _MASK32
        sums.append((s0, s1))
    return sums


@dataclass(frozen=True)
class FrameTerms:
    """What ``check_frames_py`` reads from a run of whole frames before it knows
    the checksum they continue: each frame's header fields and checksum term.
    Runs of one WAL (same page size and byte order) concatenate (``join``)."""

    page_size: int
    big_endian: bool
    fields: list[tuple[int, ...]]  # (page number, commit size, salt1, salt2, checksum1, checksum2)
    terms: list[tuple[int, int]]

    @classmethod
    def read(cls, data: bytes | memoryview, page_size: int, big_endian: bool) -> FrameTerms:
        frame_size = WAL_FRAME_HEADER_SIZE + page_size
        view = memoryview(data)
        fields = [_FRAME_FIELDS.unpack_from(view, pos) for pos in range(0, len(view) - frame_size + 1, frame_size)]
        return cls(page_size, big_endian, fields, _frame_terms_py(view, page_size, big_endian))

    @classmethod
    def join(cls, runs: list[FrameTerms]) -> FrameTerms:
        """Consecutive runs of one WAL as one run."""
        first = runs[0]
        if any((r.page_size, r.big_endian) != (first.page_size, first.big_endian) for r in runs):
            raise ValueError("cannot join frames of two page sizes or byte orders")
        return cls(first.page_size, first.big_endian, [f for r in runs for f in r.fields],
                   [t for r in runs for t in r.terms])

    def check(
        self, header: WALHeader, start_checksum: tuple[int, int]
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], str]:
        """``check_frames_py`` of these frames (read with ``header``'s page size and byte order)."""
        if (self.page_size, self.big_endian) != (header.page_size, header.big_endian):
            raise ValueError("cannot check frames read with another page size or byte order")
        fields = self.fields
        valid = next((i for i, f in enumerate(fields) if (f[2], f[3]) != (header.salt1, header.salt2)), len(fields))
        problem = "salt mismatch" if valid < len(fields) else ""
        sums = _fold(self.terms[:valid], self.page_size, start_checksum)
        bad = next((i for i, (f, s) in enumerate(zip(fields, sums)) if (f[4], f[5]) != s), None)
        if bad is not None:
            valid, problem = bad, "checksum mismatch"
        return [(f[0], f[1]) for f in fields[:valid]], sums[:valid], problem


def check_frames_py(
    data: bytes | memoryview, header: WALHeader, start_checksum: tuple[int, int]
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], str]:
    """``check_frames`` without numpy: each valid frame's (page number, commit
    size), the cumulative checksum after it, and what is wrong with the next."""
    return FrameTerms.read(data, header.page_size, header.big_endian).check(header, start_checksum)


_PAGE_AND_COMMIT = struct.Struct(">II")  # a frame header's first two fields


def check_frames_c(
    data: bytes | memoryview, header: WALHeader, start_checksum: tuple[int, int]
) -> tuple[list[tuple[int, int]], tuple[int, int], str]:
    """``check_frames`` in C (_walcheck, where it was built; see C_CHECKS): each
    valid frame's (page number, commit size), the cumulative checksum after the
    last of them, and what is wrong with the next frame ("" if nothing)."""
    assert _walcheck is not None
    valid, problem, chain, _, _ = _walcheck.scan(
        data, header.page_size, header.big_endian, header.salt1, header.salt2, *start_checksum)
    frame_size = WAL_FRAME_HEADER_SIZE + header.page_size
    fields = [_PAGE_AND_COMMIT.unpack_from(data, k * frame_size) for k in range(valid)]
    return fields, chain, _PROBLEMS[problem]
