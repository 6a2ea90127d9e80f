"""ReadBuffers: the reusable buffers behind the shipper's reads of the shadow WAL."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from litestream_py.fsutil import ReadBuffers

MiB = 1 << 20


@pytest.fixture
def data_fd(tmp_path: Path):  # type: ignore[no-untyped-def]
    data = os.urandom(3 * MiB + 123)
    path = tmp_path / "data"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


def test_reads_exact_bytes_and_fewer_at_the_end(data_fd: tuple[int, bytes]) -> None:
    fd, data = data_fd
    buffers = ReadBuffers()
    with buffers.pread(fd, MiB, 5) as view:
        assert bytes(view) == data[5 : 5 + MiB]
    with buffers.pread(fd, 2 * MiB, len(data) - 100) as view:
        assert bytes(view) == data[-100:]
    with buffers.pread(fd, 10, len(data)) as view:
        assert len(view) == 0


def test_one_buffer_serves_consecutive_reads(data_fd: tuple[int, bytes]) -> None:
    """The point of the pool: no fresh multi-MiB allocation (and page faults) per read."""
    fd, data = data_fd
    buffers = ReadBuffers()
    seen = set()
    for offset in (0, MiB, 7, 2 * MiB):
        with buffers.pread(fd, MiB, offset) as view:
            assert bytes(view) == data[offset : offset + MiB]
            seen.add(id(view.obj))
    assert len(seen) == 1


def test_concurrent_reads_get_their_own_buffers(data_fd: tuple[int, bytes]) -> None:
    fd, data = data_fd
    buffers = ReadBuffers()
    inside = threading.Barrier(2)
    errors: list[BaseException] = []

    def read(offset: int) -> None:
        try:
            with buffers.pread(fd, MiB, offset) as view:
                inside.wait(timeout=10)  # both hold a buffer at once
                assert bytes(view) == data[offset : offset + MiB]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(off,)) for off in (0, 2 * MiB)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_views_die_with_the_block_and_huge_buffers_are_not_kept(data_fd: tuple[int, bytes]) -> None:
    fd, _ = data_fd
    buffers = ReadBuffers(max_kept=MiB)
    with buffers.pread(fd, 2 * MiB, 0) as view:
        big = view.obj
    with pytest.raises(ValueError):
        bytes(view)  # released: the buffer may already hold another read
    with buffers.pread(fd, 2 * MiB, 0) as view:
        assert view.obj is not big


def test_a_buffer_still_in_use_is_not_reused(data_fd: tuple[int, bytes]) -> None:
    """An export that outlives the block (here a numpy view, as a traceback could keep
    one) does not mask the block's own error, and its buffer is never handed out again."""
    import numpy as np

    fd, data = data_fd
    buffers = ReadBuffers()
    with pytest.raises(KeyError):
        with buffers.pread(fd, MiB, 0) as view:
            kept = np.frombuffer(view, dtype=np.uint8)
            raise KeyError("the block's own error")
    with buffers.pread(fd, MiB, 2 * MiB) as view:
        assert view.obj is not kept.base.obj
    assert bytes(kept) == data[:MiB]


def test_two_kept_buffers_serve_a_write_in_flight_and_the_next_segment() -> None:
    """The shipper's segment buffers: one is written on the put thread while the
    next segment is encoded into the other; neither is allocated anew after the first round."""
    buffers = ReadBuffers(kept=2)
    first, second = buffers.take(MiB), buffers.take(MiB)
    buffers.give(first)
    buffers.give(second)
    again = {id(buffers.take(MiB)), id(buffers.take(MiB))}
    assert again == {id(first), id(second)}
    buffers.give(bytearray(MiB))
    buffers.give(bytearray(2 * MiB))
    buffers.give(bytearray(3 * MiB))
    assert sorted(len(buffers.take(1)) for _ in range(3)) == [1, 2 * MiB, 3 * MiB]  # the two largest kept
