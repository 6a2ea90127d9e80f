"""LZ4 frames decoded block by block on several threads (a restore's snapshot), or
in memory on one (a WAL segment): the same bytes as python-lz4's decoder, and
every corruption it catches caught."""

from __future__ import annotations

import io
import random
import struct

import lz4.frame
import pytest

from litestream_py import codec, liblz4, lz4_blocks
from litestream_py.errors import ChecksumMismatchError

# lsr's snapshot frame, and others a reader may meet (Go's, or another writer's).
FRAMES = {
    "lsr": {"block_size": lz4.frame.BLOCKSIZE_MAX4MB, "block_linked": False, "content_checksum": True},
    "64k-block-checksums-size": {"block_size": lz4.frame.BLOCKSIZE_MAX64KB, "block_linked": False,
                                 "content_checksum": False, "block_checksum": True, "store_size": True},
    "1m-fast-no-checksum": {"block_size": lz4.frame.BLOCKSIZE_MAX1MB, "block_linked": False,
                            "content_checksum": False, "store_size": False, "compression_level": -5},
}


def _database_like(size: int, seed: int = 1) -> bytes:
    """Pages of random bytes and zeros: blocks that compress and blocks stored as they are."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(rng.randrange(100, 70000)) + bytes(rng.randrange(0, 9000))
    return bytes(out[:size])


def _decode(frame: bytes, decoders: int = 2) -> bytes:
    out = io.BytesIO()
    n = lz4_blocks.decode_frame(io.BufferedReader(io.BytesIO(frame)), out.write, "snapshot x", decoders)
    assert n == len(out.getvalue())
    return out.getvalue()


def _decode_bytes(frame: bytes) -> bytes:
    return lz4_blocks.decode_frame_bytes(frame, "snapshot x")


BOTH = [_decode, _decode_bytes]


def test_the_pinned_python_lz4_exports_the_block_decoder() -> None:
    """Else every snapshot decodes on one thread (correct, and slower)."""
    assert lz4_blocks.parallel_frame(lz4.frame.compress(b"x", **FRAMES["lsr"]))


@pytest.mark.parametrize("kind", sorted(FRAMES))
@pytest.mark.parametrize("size", [0, 1, 65536, (4 << 20) + 1, 9_000_000])
def test_same_bytes_as_python_lz4(kind: str, size: int) -> None:
    data = _database_like(size)
    frame = lz4.frame.compress(data, **FRAMES[kind])
    assert lz4_blocks.parallel_frame(frame[: lz4_blocks.FRAME_HEADER_MAX])
    assert _decode(frame) == data
    assert _decode(frame, decoders=1) == data
    assert _decode_bytes(frame) == data == codec.decompress(frame)


def test_stored_blocks_and_a_short_reading_stream() -> None:
    """Incompressible blocks are stored as they are; a stream may return fewer bytes than asked."""
    data = random.Random(2).randbytes(3 << 20)
    frame = lz4.frame.compress(data, **FRAMES["64k-block-checksums-size"])

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self.src = io.BytesIO(frame)

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            chunk = self.src.read(min(len(b), 1000))
            b[: len(chunk)] = chunk
            return len(chunk)

    out = io.BytesIO()
    lz4_blocks.decode_frame(Trickle(), out.write, "snapshot x")  # type: ignore[arg-type]
    assert out.getvalue() == data


@pytest.mark.parametrize("kind", sorted(FRAMES))
def test_every_corruption_fails(kind: str) -> None:
    data = _database_like(6 << 20, seed=3)
    frame = lz4.frame.compress(data, **FRAMES[kind])
    checked = FRAMES[kind].get("content_checksum") or FRAMES[kind].get("block_checksum")
    # A flipped bit in the header, in a block, in the content checksum; a cut anywhere.
    flips = [4, 5, 6, len(frame) // 3, len(frame) // 2, len(frame) - 1] if checked else [4, 6]
    for decode in BOTH:
        for at in flips:
            bad = bytearray(frame)
            bad[at] ^= 0x10
            with pytest.raises(ChecksumMismatchError, match="cannot decompress snapshot x"):
                decode(bytes(bad))
        for cut in [3, 7, 11, len(frame) // 2, len(frame) - 4, len(frame) - 1]:
            with pytest.raises(ChecksumMismatchError, match="cannot decompress snapshot x"):
                decode(frame[:cut])


@pytest.mark.parametrize("stream", ["XXH32_STREAM", "python-lz4's"])
def test_the_content_checksum_holds_whichever_xxh32_streams_it(stream: str, monkeypatch) -> None:
    """The content checksum is streamed by the system's libxxhash where it is installed
    (liblz4.XXH32_STREAM), else by python-lz4's copy of XXH32: either passes the
    frame python-lz4 wrote and fails one flipped bit of its content."""
    if stream != "XXH32_STREAM":
        monkeypatch.setattr(lz4_blocks, "_xxh32", liblz4.LIB)
    data = _database_like((9 << 20) + 7, seed=7)
    frame = lz4.frame.compress(data, **FRAMES["lsr"])
    assert _decode(frame) == data
    bad = bytearray(frame)
    bad[len(frame) // 2] ^= 0x01  # in the second block's compressed bytes: decodes, to other content
    for decode in BOTH:
        with pytest.raises(ChecksumMismatchError, match="cannot decompress snapshot x: lz4 content checksum mismatch"):
            decode(bytes(bad))


def test_a_block_claiming_more_than_the_frame_allows_fails() -> None:
    frame = bytearray(lz4.frame.compress(b"abc" * 1000, **FRAMES["64k-block-checksums-size"]))
    header = 4 + 2 + 8 + 1
    struct.pack_into("<I", frame, header, (64 << 10) + 1)
    for decode in BOTH:
        with pytest.raises(ChecksumMismatchError, match="larger than the frame's"):
            decode(bytes(frame))


def test_linked_blocks_and_dictionaries_go_to_python_lz4() -> None:
    """Blocks that refer to earlier blocks cannot be decoded apart: the frame
    decoder takes them, and decompress_stream still restores them."""
    data = _database_like(5 << 20, seed=4)
    linked = lz4.frame.compress(data, block_linked=True, block_size=lz4.frame.BLOCKSIZE_MAX64KB)
    assert not lz4_blocks.parallel_frame(linked[: lz4_blocks.FRAME_HEADER_MAX])
    out = io.BytesIO()
    assert codec.decompress_stream(io.BufferedReader(io.BytesIO(linked)), out) == len(data)
    assert out.getvalue() == data
    assert codec.decompress(linked) == data


def test_decompress_stream_passes_the_snapshot_header_then_decodes_blocks() -> None:
    data = _database_like(5 << 20, seed=5)
    blob = codec.snapshot_header(123) + lz4.frame.compress(data, **FRAMES["lsr"]) + b"trailing bytes ignored"
    out = io.BytesIO()
    assert codec.decompress_stream(io.BufferedReader(io.BytesIO(blob)), out) == len(data)
    assert out.getvalue() == data


def test_a_failing_writer_stops_the_decode() -> None:
    frame = lz4.frame.compress(_database_like(20 << 20, seed=6), **FRAMES["lsr"])
    seen = []

    def write(view: memoryview) -> None:
        seen.append(len(view))
        if len(seen) == 2:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        lz4_blocks.decode_frame(io.BytesIO(frame), write, "snapshot x")
    assert len(seen) == 2


def test_segments_decode_in_memory_from_the_size_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    """codec.decompress takes lz4_blocks' in-memory decoder for frames of DIRECT_DECODE_MIN
    compressed bytes or more, python-lz4's below: the same bytes either way."""
    calls: list[int] = []
    decode = lz4_blocks.decode_frame_bytes
    monkeypatch.setattr(lz4_blocks, "decode_frame_bytes", lambda blob, what: calls.append(len(blob)) or decode(blob, what))
    small, large = _database_like(20_000, seed=5), random.Random(6).randbytes(300_000)
    for data in (small, large):
        assert codec.decompress(codec.compress(data)) == data
    assert calls == [len(codec.compress(large))] and calls[0] >= codec.DIRECT_DECODE_MIN > len(codec.compress(small))
