"""LZ4 frames, the encoding of every snapshot and WAL segment on a replica."""

from __future__ import annotations

import ctypes
import struct
from typing import BinaryIO, Iterable, Iterator, Protocol

import lz4.frame

from . import liblz4, lz4_blocks
from .commits import COMMIT_ENTRY
from .errors import ChecksumMismatchError

__all__ = [
    "compress",
    "decompress",
    "compress_chunks",
    "compress_iter",
    "compress_stream",
    "decompress_stream",
    "encode_segment",
    "encode_segment_into",
    "segment_bound",
    "write_segment",
    "decode_segment",
    "merged_count",
    "snapshot_header",
    "read_snapshot_header",
    "Writer",
]


class Writer(Protocol):
    """Where ``decompress_stream`` puts its output: a file, or anything with ``write``."""

    def write(self, data: bytes | memoryview, /) -> int: ...


STREAM_CHUNK = 1 << 20
# Compressed bytes fed to the decompressor at a time, and the most it may
# return per call: one LZ4 block, so a piece stays in the CPU's caches while
# it is written (with a restore's malloc tuning, process.configure_process_for_restore,
# its buffer is reused rather than faulted in anew).
DECOMPRESS_CHUNK = 4 << 20
DECOMPRESS_OUTPUT = 4 << 20


# Independent 4 MiB blocks with a content checksum: a standard LZ4 frame that
# Go Litestream's reader accepts, and that catches corruption on read.
_FRAME = {"block_size": lz4.frame.BLOCKSIZE_MAX4MB, "block_linked": False, "content_checksum": True}


def _compressor() -> lz4.frame.LZ4FrameCompressor:
    return lz4.frame.LZ4FrameCompressor(**_FRAME)


# WAL segments are compressed as they ship, a busy writer's every byte: LZ4's
# acceleration 3 (level -2) costs a little size for a fifth or so of its CPU
# (docs/bench.md). Same frame format: every LZ4 reader, Go's included, reads it.
SEGMENT_LEVEL = -2


def compress(data: bytes | memoryview) -> bytes:
    """A WAL segment's LZ4 frame (see SEGMENT_LEVEL)."""
    # One call, not a streaming compressor: that one zero-fills a 4 MiB buffer
    # on every begin(), which dominated the sidecar's CPU.
    out: bytes = lz4.frame.compress(data, store_size=False, compression_level=SEGMENT_LEVEL, **_FRAME)
    return out


# Frames at least this large (compressed) are decoded by lz4_blocks, smaller
# ones by python-lz4, which costs less per call (docs/bench.md).
DIRECT_DECODE_MIN = 64 << 10


def decompress(data: bytes | memoryview, what: str = "object") -> bytes:
    """A whole LZ4 frame's bytes (a WAL segment's)."""
    if len(data) >= DIRECT_DECODE_MIN and lz4_blocks.parallel_frame(bytes(data[: lz4_blocks.FRAME_HEADER_MAX])):
        return lz4_blocks.decode_frame_bytes(data, what)
    try:
        return lz4.frame.decompress(data)  # type: ignore[no-any-return]
    except RuntimeError as exc:
        raise ChecksumMismatchError(f"cannot decompress {what}: {exc}") from exc


def compress_iter(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """One LZ4 frame of a stream of chunks, in pieces (to write, or to encrypt on the way)."""
    c = _compressor()
    yield c.begin()
    for chunk in chunks:
        out = c.compress(chunk)
        # Neither is held while the next chunk is made (compaction reads and decodes it).
        del chunk
        yield out
        del out
    yield c.flush()


def compress_chunks(chunks: Iterable[bytes], dst: BinaryIO) -> int:
    """Compress a stream of chunks into one LZ4 frame in ``dst``; returns the input size."""
    n = 0

    def counted() -> Iterator[bytes]:
        nonlocal n
        for chunk in chunks:
            n += len(chunk)
            yield chunk

    for piece in compress_iter(counted()):
        dst.write(piece)
    return n


def compress_stream(src: BinaryIO, dst: BinaryIO) -> int:
    """Compress ``src`` into ``dst``; returns the uncompressed byte count."""
    return compress_chunks(iter(lambda: src.read(STREAM_CHUNK), b""), dst)


def decompress_stream(src: BinaryIO, dst: Writer, what: str = "object") -> int:
    """Decompress an LZ4 frame from ``src`` into ``dst``; returns bytes written.

    A leading skippable frame (lsr's snapshot header) is passed over. A frame
    of independent blocks is decoded on every core (``lz4_blocks``); another
    on this thread. Each piece is written on this thread: a writer thread's
    overlap saved little (writing is a third of decoding), and its hand-offs
    cost more than that whenever the machine's cores are busy.
    """
    read_snapshot_header(src)
    peek = getattr(src, "peek", None)
    if peek is not None and lz4_blocks.parallel_frame(peek(lz4_blocks.FRAME_HEADER_MAX)[: lz4_blocks.FRAME_HEADER_MAX]):
        return lz4_blocks.decode_frame(src, dst.write, what)
    n = 0
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        while not decompressor.eof:
            chunk = b""
            if decompressor.needs_input:
                chunk = src.read(DECOMPRESS_CHUNK)
                if not chunk:
                    break
            # Bounded output: a page of zeros compresses 250-fold.
            out = decompressor.decompress(chunk, max_length=DECOMPRESS_OUTPUT)
            dst.write(out)
            n += len(out)
    except RuntimeError as exc:
        raise ChecksumMismatchError(f"cannot decompress {what}: {exc}") from exc
    if not decompressor.eof:
        raise ChecksumMismatchError(f"cannot decompress {what}: truncated lz4 frame")
    return n


# A WAL segment written by lsr may start with an LZ4 *skippable frame* holding
# the capture time of every commit in it. LZ4 readers (Go Litestream's
# included) skip such frames, so the segment stays a valid Litestream segment.
SKIPPABLE_MAGIC = 0x184D2A5C
COMMIT_TIMES_TAG = b"LSRT\x01"


# A merged segment (compaction) also records how many shipped segments it replaces.
MERGED_TAG = b"LSRM\x01"
_MERGED = struct.Struct("<I")


def _skippable(payload: bytes) -> bytes:
    return struct.pack("<II", SKIPPABLE_MAGIC, len(payload)) + payload


def write_segment(dst: BinaryIO, parts: Iterable[bytes], commits: list[tuple[int, int]], merged: int = 0) -> None:
    """``encode_segment`` of the concatenated ``parts``, streamed into ``dst``:
    neither the WAL bytes nor the compressed segment are held whole (a merged
    segment is many MiB; see compaction)."""
    dst.write(_segment_head(commits, merged))
    for piece in compress_iter(parts):
        dst.write(piece)
        del piece  # see compress_iter


def _segment_head(commits: list[tuple[int, int]], merged: int) -> bytes:
    head = _skippable(MERGED_TAG + _MERGED.pack(merged)) if merged > 1 else b""
    if commits:
        entries = b"".join(COMMIT_ENTRY.pack(o, t) for o, t in commits)
        head += _skippable(COMMIT_TIMES_TAG + struct.pack("<I", len(commits)) + entries)
    return head


def encode_segment(data: bytes | memoryview, commits: list[tuple[int, int]], merged: int = 0) -> bytes:
    """LZ4-compress WAL bytes, prefixed with the commits' capture times (and,
    for a merged segment, the count of shipped segments it replaces)."""
    return _segment_head(commits, merged) + compress(data)


# The shipper's segments are encoded straight into a reused buffer by liblz4's
# one-call frame compressor (python-lz4's extension exports it): lz4.frame.compress
# fills a buffer of its own, copies it into a new bytes, and the head is joined
# on in a third, each a fresh mapping whose pages fault in for every segment.
class _FrameInfo(ctypes.Structure):
    _fields_ = [("block_size_id", ctypes.c_int), ("block_mode", ctypes.c_int),
                ("content_checksum", ctypes.c_int), ("frame_type", ctypes.c_int),
                ("content_size", ctypes.c_ulonglong), ("dict_id", ctypes.c_uint),
                ("block_checksum", ctypes.c_int)]


class _Preferences(ctypes.Structure):  # LZ4F_preferences_t (lz4frame.h, stable since 1.8)
    _fields_ = [("frame_info", _FrameInfo), ("compression_level", ctypes.c_int), ("auto_flush", ctypes.c_uint),
                ("favor_dec_speed", ctypes.c_uint), ("reserved", ctypes.c_uint * 3)]


# _FRAME's settings: 4 MiB independent blocks (LZ4F_max4MB, LZ4F_blockIndependent), content checksum.
_PREFERENCES = _Preferences(_FrameInfo(7, 1, 1, 0, 0, 0, 0), SEGMENT_LEVEL, 1, 0)
# The same without the content checksum, which encode_segment_into adds itself:
# liblz4's streaming XXH32, which LZ4F_compressFrame feeds block by block, runs
# at less than half the speed of its one-call XXH32 in python-lz4's build.
_PREFERENCES_UNCHECKED = _Preferences(_FrameInfo(7, 1, 0, 0, 0, 0, 0), SEGMENT_LEVEL, 1, 0)
# Where those frames' descriptor lies (magic, FLG, BD, header checksum: no content
# size, no dictionary), and FLG's content-checksum bit (LZ4 frame format, section 3).
_FLG_AT, _HC_AT = 4, 6
_FLG_CONTENT_CHECKSUM = 0x04
_CHECKSUM = struct.Struct("<I")


# None where python-lz4's build does not export it: segments are then encoded by lz4.frame.compress.
_lz4f = liblz4.LIB


def segment_bound(size: int, commits: int) -> int:
    """The most bytes ``encode_segment_into`` writes for ``size`` WAL bytes and ``commits`` commits."""
    head = 2 * 8 + len(MERGED_TAG) + _MERGED.size + len(COMMIT_TIMES_TAG) + 4 + commits * COMMIT_ENTRY.size
    if _lz4f is None:  # LZ4_compressBound per 4 MiB block, and the frame's header, block sizes, end and checksum
        return head + size + size // 255 + 24 * (size // (4 << 20) + 1) + 32
    return head + int(_lz4f.LZ4F_compressFrameBound(size, ctypes.byref(_PREFERENCES)))


def encode_segment_into(out: bytearray, data: bytes | memoryview, commits: list[tuple[int, int]]) -> int:
    """``encode_segment``'s bytes, written to the start of ``out`` (at least
    ``segment_bound`` long); returns how many."""
    if _lz4f is None:
        segment = encode_segment(data, commits)
        out[: len(segment)] = segment
        return len(segment)
    head = _segment_head(commits, 0)
    out[: len(head)] = head
    size = len(data)
    view = memoryview(data)
    source: ctypes.c_char | ctypes.c_char_p
    if not view.readonly and size:
        source = ctypes.c_char.from_buffer(view)
        address = ctypes.addressof(source)
    else:  # bytes (tests, a read-only view): a copy whose address ctypes gives
        source = ctypes.c_char_p(bytes(view))
        address = ctypes.cast(source, ctypes.c_void_p).value or 0
    target = ctypes.c_char.from_buffer(out, len(head))
    written = int(_lz4f.LZ4F_compressFrame(ctypes.addressof(target), len(out) - len(head) - _CHECKSUM.size,
                                           address, size, ctypes.byref(_PREFERENCES_UNCHECKED)))
    checksum = int(_lz4f.XXH32(address, size, 0))
    del source, target  # their exports of the buffers end here
    view.release()
    if _lz4f.LZ4F_isError(written):
        raise ValueError(f"cannot compress wal segment: lz4 error {written}")
    # Mark the frame as checksummed, as LZ4F_compressFrame would have: FLG's
    # bit, the descriptor's own checksum over it, and the checksum after the end mark.
    frame = len(head)
    out[frame + _FLG_AT] |= _FLG_CONTENT_CHECKSUM
    descriptor = (ctypes.c_char * (_HC_AT - _FLG_AT)).from_buffer(out, frame + _FLG_AT)
    out[frame + _HC_AT] = (int(_lz4f.XXH32(ctypes.addressof(descriptor), _HC_AT - _FLG_AT, 0)) >> 8) & 0xFF
    del descriptor
    _CHECKSUM.pack_into(out, frame + written, checksum)
    return frame + written + _CHECKSUM.size


def _frames(blob: bytes) -> tuple[list[bytes], int]:
    """The payloads of the skippable frames a segment starts with, and where its LZ4 frame starts."""
    payloads = []
    start = 0
    while len(blob) - start >= 8:
        magic, size = struct.unpack_from("<II", blob, start)
        if magic & 0xFFFFFFF0 != 0x184D2A50:
            break
        payloads.append(blob[start + 8 : start + 8 + size])
        start += 8 + size
    return payloads, start


def decode_segment(blob: bytes, what: str = "wal segment") -> tuple[bytes, list[tuple[int, int]]]:
    """WAL bytes and commit capture times (empty for segments written by Go Litestream)."""
    commits: list[tuple[int, int]] = []
    payloads, start = _frames(blob)
    for payload in payloads:
        if payload.startswith(COMMIT_TIMES_TAG) and len(payload) >= len(COMMIT_TIMES_TAG) + 4:
            (count,) = struct.unpack_from("<I", payload, len(COMMIT_TIMES_TAG))
            base = len(COMMIT_TIMES_TAG) + 4
            if len(payload) < base + count * COMMIT_ENTRY.size:
                raise ChecksumMismatchError(f"cannot decode {what}: truncated commit times")
            commits = [COMMIT_ENTRY.unpack_from(payload, base + i * COMMIT_ENTRY.size) for i in range(count)]
    return decompress(memoryview(blob)[start:], what), commits


def merged_count(blob: bytes) -> int:
    """How many shipped segments a segment holds: 1 unless compaction merged several into it."""
    for payload in _frames(blob)[0]:
        if payload.startswith(MERGED_TAG) and len(payload) >= len(MERGED_TAG) + _MERGED.size:
            return int(_MERGED.unpack_from(payload, len(MERGED_TAG))[0])
    return 1


SNAPSHOT_TIME_TAG = b"LSRS\x01"
_SNAPSHOT_TIME = struct.Struct("<Q")


def snapshot_header(created_ns: int) -> bytes:
    """A skippable frame with the snapshot's capture time, to write before its LZ4 frame.

    Object stores list times to the second and stamp upload completion; this
    is the instant the snapshot's database state was taken.
    """
    return _skippable(SNAPSHOT_TIME_TAG + _SNAPSHOT_TIME.pack(created_ns))


def read_snapshot_header(src: BinaryIO) -> int | None:
    """Consume lsr's snapshot header from ``src`` if present; its capture time (ns) or None.

    Without a header (snapshots written by Go), ``src`` is left where it was.
    """
    size = 8 + len(SNAPSHOT_TIME_TAG) + _SNAPSHOT_TIME.size
    peek = getattr(src, "peek", None)
    head = peek(size)[:size] if peek is not None else None
    if head is None:
        if not src.seekable():
            raise ChecksumMismatchError("cannot read snapshot: stream can neither peek nor seek")
        start = src.tell()
        head = src.read(size)
        src.seek(start)
    magic, length = struct.unpack_from("<II", head, 0) if len(head) >= 8 else (0, 0)
    if magic != SKIPPABLE_MAGIC or not head[8:].startswith(SNAPSHOT_TIME_TAG) or len(head) < size:
        return None
    src.read(8 + length)
    return int(_SNAPSHOT_TIME.unpack_from(head, 8 + len(SNAPSHOT_TIME_TAG))[0])
