"""LZ4 frames, the encoding of every snapshot and WAL segment on a replica."""

from __future__ import annotations

from typing import BinaryIO, Iterable

import lz4.frame

from .errors import ChecksumMismatchError

__all__ = ["compress", "decompress", "compress_chunks", "compress_stream", "decompress_stream"]

STREAM_CHUNK = 1 << 20


def _compressor() -> lz4.frame.LZ4FrameCompressor:
    # Independent 4 MiB blocks with a content checksum: a standard LZ4 frame that
    # Go Litestream's reader accepts, and that catches corruption on read.
    return lz4.frame.LZ4FrameCompressor(
        block_size=lz4.frame.BLOCKSIZE_MAX4MB,
        block_linked=False,
        content_checksum=True,
    )


def compress(data: bytes | memoryview) -> bytes:
    c = _compressor()
    return c.begin() + c.compress(bytes(data)) + c.flush()


def decompress(data: bytes, what: str = "object") -> bytes:
    try:
        return lz4.frame.decompress(data)  # type: ignore[no-any-return]
    except RuntimeError as exc:
        raise ChecksumMismatchError(f"cannot decompress {what}: {exc}") from exc


def compress_chunks(chunks: Iterable[bytes], dst: BinaryIO) -> int:
    """Compress a stream of chunks into one LZ4 frame in ``dst``; returns the input size."""
    c = _compressor()
    dst.write(c.begin())
    n = 0
    for chunk in chunks:
        n += len(chunk)
        dst.write(c.compress(chunk))
    dst.write(c.flush())
    return n


def compress_stream(src: BinaryIO, dst: BinaryIO) -> int:
    """Compress ``src`` into ``dst``; returns the uncompressed byte count."""
    return compress_chunks(iter(lambda: src.read(STREAM_CHUNK), b""), dst)


def decompress_stream(src: BinaryIO, dst: BinaryIO, what: str = "object") -> int:
    """Decompress an LZ4 frame from ``src`` into ``dst``; returns bytes written."""
    n = 0
    try:
        with lz4.frame.open(src, mode="rb") as z:
            while chunk := z.read(STREAM_CHUNK):
                dst.write(chunk)
                n += len(chunk)
    except (RuntimeError, EOFError) as exc:
        raise ChecksumMismatchError(f"cannot decompress {what}: {exc}") from exc
    return n
