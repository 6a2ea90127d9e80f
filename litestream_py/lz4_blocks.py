"""An LZ4 frame of independent blocks, decoded on several threads (a restore's snapshot),
or in memory on one (a WAL segment: ``decode_frame_bytes``).

python-lz4's frame decompressor decodes a frame on one thread, block after
block. A frame whose blocks are independent (lsr's snapshots, and Go
Litestream's) can be decoded block by block on every core: liblz4's block
decoder and its XXH32 (``liblz4``) run without the interpreter's lock. Every
check of the frame decoder stays: the header's checksum, each block's bound
(and its checksum if the frame has them), the content size if given, and the
content checksum over every byte, in order, before the frame is reported whole.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Callable

from . import liblz4
from .errors import ChecksumMismatchError

__all__ = ["DECODERS", "FRAME_HEADER_MAX", "decode_frame", "decode_frame_bytes", "parallel_frame"]

FRAME_MAGIC = 0x184D2204
# Magic, FLG, BD, content size, dictionary id, header checksum.
FRAME_HEADER_MAX = 4 + 2 + 8 + 4 + 1
_FLG_VERSION, _FLG_INDEPENDENT, _FLG_BLOCK_CHECKSUM = 0xC0, 0x20, 0x10
_FLG_CONTENT_SIZE, _FLG_CONTENT_CHECKSUM, _FLG_DICT_ID = 0x08, 0x04, 0x01
_BLOCK_MAX = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}
_UNCOMPRESSED = 0x80000000
# Decoding threads: a core each, as a restore's snapshot is all CPU once read.
DECODERS = max(1, min(os.cpu_count() or 1, 4))


_lib = liblz4.LIB
_xxh32 = liblz4.XXH32_STREAM  # the content checksum's state and updates (the block checks use _lib's XXH32)


class _Frame:
    """What a frame's header says."""

    def __init__(self, header_size: int, block_max: int, block_checksum: bool, content_size: int | None,
                 content_checksum: bool) -> None:
        self.header_size = header_size
        self.block_max = block_max
        self.block_checksum = block_checksum
        self.content_size = content_size
        self.content_checksum = content_checksum


def parallel_frame(head: bytes) -> bool:
    """Whether the frame starting with ``head`` (at least FRAME_HEADER_MAX bytes,
    or the whole object) is one ``decode_frame`` decodes: independent blocks, no
    dictionary, and liblz4 at hand. Its header is checked by ``decode_frame``."""
    return _lib is not None and _parse(head) is not None


def _parse(head: bytes) -> _Frame | None:
    if len(head) < 7 or struct.unpack_from("<I", head)[0] != FRAME_MAGIC:
        return None
    flg, bd = head[4], head[5]
    if flg & _FLG_VERSION != 0x40 or not flg & _FLG_INDEPENDENT or flg & _FLG_DICT_ID or flg & 0x02 or bd & 0x8F:
        return None
    block_max = _BLOCK_MAX.get(bd >> 4)
    size = 6 + (8 if flg & _FLG_CONTENT_SIZE else 0)
    if block_max is None or len(head) < size + 1:
        return None
    content_size = struct.unpack_from("<Q", head, 6)[0] if flg & _FLG_CONTENT_SIZE else None
    return _Frame(size + 1, block_max, bool(flg & _FLG_BLOCK_CHECKSUM), content_size,
                  bool(flg & _FLG_CONTENT_CHECKSUM))


def _read_exact(src: BinaryIO, n: int) -> bytes:
    """``n`` bytes of ``src``, fewer only at its end (a stream may return short reads)."""
    data = src.read(n)
    if len(data) == n or not data:
        return data
    parts, got = [data], len(data)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _checked_header(head: bytes, what: str) -> _Frame:
    """The header at the start of ``head``, its checksum verified."""
    assert _lib is not None
    frame = _parse(head)
    if frame is None:
        raise ChecksumMismatchError(f"cannot decompress {what}: not an lz4 frame of independent blocks")
    descriptor = head[4 : frame.header_size - 1]
    if (_lib.XXH32(descriptor, len(descriptor), 0) >> 8) & 0xFF != head[frame.header_size - 1]:
        raise ChecksumMismatchError(f"cannot decompress {what}: lz4 frame header checksum mismatch")
    return frame


def _truncated(what: str) -> ChecksumMismatchError:
    return ChecksumMismatchError(f"cannot decompress {what}: truncated lz4 frame")


def _check_end(frame: _Frame, word: bytes, digest: Callable[[], int], written: int, what: str) -> None:
    """A decoded frame's end: the content checksum stored after its end mark
    (``word``, where the frame has one) against ``digest()``, and its content size."""
    if frame.content_checksum:
        if len(word) < 4:
            raise _truncated(what)
        if digest() != struct.unpack("<I", word[:4])[0]:
            raise ChecksumMismatchError(f"cannot decompress {what}: lz4 content checksum mismatch")
    if frame.content_size is not None and frame.content_size != written:
        raise ChecksumMismatchError(
            f"cannot decompress {what}: lz4 frame holds {written} bytes, its header says {frame.content_size}"
        )


def decode_frame_bytes(blob: bytes | memoryview, what: str) -> bytes:
    """The LZ4 frame that is all of ``blob``, decoded on this thread (a WAL segment).

    python-lz4's one-call decoder, not told the content's size, grows its
    output as it goes and checksums it through liblz4's streaming XXH32: here
    each block is decoded once into a buffer of the frame's block size (only
    the pages it fills are touched) and the content checksummed in one call,
    with the same checks as ``decode_frame``. Call only where
    ``parallel_frame`` said yes.
    """
    assert _lib is not None
    lib = _lib
    view = memoryview(blob)
    frame = _checked_header(bytes(view[:FRAME_HEADER_MAX]), what)
    pos, parts = frame.header_size, []
    while True:
        if pos + 4 > len(view):
            raise _truncated(what)
        (size,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if size == 0:
            break
        stored, size = bool(size & _UNCOMPRESSED), size & ~_UNCOMPRESSED
        if size > frame.block_max:
            raise ChecksumMismatchError(f"cannot decompress {what}: lz4 block larger than the frame's")
        end = pos + size + (4 if frame.block_checksum else 0)
        if end > len(view):
            raise _truncated(what)
        data = bytes(view[pos : pos + size])
        if frame.block_checksum and lib.XXH32(data, size, 0) != struct.unpack_from("<I", view, pos + size)[0]:
            raise ChecksumMismatchError(f"cannot decompress {what}: lz4 block checksum mismatch")
        pos = end
        if stored:
            parts.append(data)
            continue
        # malloc'd: a restore's heap reuses it; a sidecar maps and unmaps it
        # (process.py), as it would python-lz4's growing buffer.
        out = ctypes.create_string_buffer(frame.block_max)
        n = lib.LZ4_decompress_safe(data, out, size, frame.block_max)
        if n < 0:
            raise ChecksumMismatchError(f"cannot decompress {what}: corrupt lz4 block")
        parts.append(ctypes.string_at(out, n))
    content = parts[0] if len(parts) == 1 else b"".join(parts)
    _check_end(frame, bytes(view[pos : pos + 4]), lambda: int(lib.XXH32(content, len(content), 0)), len(content),
               what)
    return content


class _Block:
    """A decoded block's buffer, reused once its bytes are written."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self._export = (ctypes.c_char * size).from_buffer(self.buf)  # pins the buffer where it is
        self.address = ctypes.addressof(self._export)


def decode_frame(src: BinaryIO, write: Callable[[memoryview], object], what: str, decoders: int = DECODERS) -> int:
    """Decode the LZ4 frame at ``src``'s position, passing its bytes to ``write`` in
    order (each view is valid during the call only); returns how many.

    Blocks are read in order on this thread and decoded on ``decoders``
    threads, each of which then folds its block into the content checksum in
    turn (XXH32 runs front to back); this thread writes them in order, so the
    write, the slowest step (a page-cache copy), is all it does meanwhile.
    Call only where ``parallel_frame`` said yes.
    """
    assert _lib is not None and _xxh32 is not None
    lib, xxh32 = _lib, _xxh32
    head = _read_exact(src, FRAME_HEADER_MAX)
    frame = _checked_header(head, what)
    leftover = head[frame.header_size :]  # the first block's bytes, read with the header
    state = xxh32.XXH32_createState()
    xxh32.XXH32_reset(state, 0)
    free: list[_Block] = []
    pending: deque[Future[tuple[_Block | bytes, int]]] = deque()
    hashed = threading.Event()  # the block before the next one submitted is in the checksum
    hashed.set()
    written = 0

    def read(n: int) -> bytes:
        nonlocal leftover
        if leftover:
            data, leftover = leftover[:n], leftover[n:]
            return data + _read_exact(src, n - len(data)) if len(data) < n else data
        return _read_exact(src, n)

    def decode(data: bytes, block: _Block | None, before: threading.Event, mine: threading.Event,
               ) -> tuple[_Block | bytes, int]:
        # Blocks are submitted in order to a FIFO pool: whenever this one runs,
        # the one before it has started, so ``before`` is set or will be.
        try:
            if block is None:  # a block stored uncompressed
                out: _Block | bytes = data
                n = len(data)
                address: int | bytes = data
            else:
                out, address = block, block.address
                n = lib.LZ4_decompress_safe(data, block.address, len(data), frame.block_max)
                if n < 0:
                    raise ChecksumMismatchError(f"cannot decompress {what}: corrupt lz4 block")
            before.wait()
            xxh32.XXH32_update(state, address, n)
            return out, n
        finally:
            mine.set()

    def write_one() -> None:
        nonlocal written
        out, n = pending.popleft().result()
        view = memoryview(out.buf if isinstance(out, _Block) else out)[:n]
        write(view)
        view.release()
        written += n
        if isinstance(out, _Block):
            free.append(out)

    try:
        with ThreadPoolExecutor(max_workers=decoders, thread_name_prefix="lsr-lz4") as pool:
            try:
                while True:
                    word = read(4)
                    if len(word) < 4:
                        raise _truncated(what)
                    (size,) = struct.unpack("<I", word)
                    if size == 0:
                        break
                    stored, size = bool(size & _UNCOMPRESSED), size & ~_UNCOMPRESSED
                    if size > frame.block_max:
                        raise ChecksumMismatchError(f"cannot decompress {what}: lz4 block larger than the frame's")
                    data = read(size + (4 if frame.block_checksum else 0))
                    if len(data) < size + (4 if frame.block_checksum else 0):
                        raise _truncated(what)
                    if frame.block_checksum:
                        data, (expected,) = data[:size], struct.unpack("<I", data[size:])
                        if lib.XXH32(data, size, 0) != expected:
                            raise ChecksumMismatchError(f"cannot decompress {what}: lz4 block checksum mismatch")
                    while len(pending) > decoders:
                        write_one()
                    block = None if stored else free.pop() if free else _Block(frame.block_max)
                    before, hashed = hashed, threading.Event()
                    pending.append(pool.submit(decode, data, block, before, hashed))
                while pending:
                    write_one()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        _check_end(frame, read(4) if frame.content_checksum else b"", lambda: int(xxh32.XXH32_digest(state)),
                   written, what)
    finally:
        xxh32.XXH32_freeState(state)
    return written
