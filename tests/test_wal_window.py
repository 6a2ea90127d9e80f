"""The copy window over a file: what a read, a consume and the next read leave in it."""

from __future__ import annotations

import os
from pathlib import Path

from litestream_py.fsutil import ReadBuffers
from litestream_py.wal_window import FileWindow


def test_a_window_keeps_the_bytes_past_what_it_consumed_and_reads_on_behind_them(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    path = tmp_path / "wal"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    window = FileWindow(100, (0, 0), ReadBuffers())
    window.fd = fd
    try:
        start = 100
        # Consumed less than is left (the move overlaps itself), more, all of it, nothing.
        for piece, consumed in ((1 << 20, 300_000), (700_000, 1_200_000), (50_000, 250_000), (10, 0)):
            got, _ = window.extend(piece)
            assert got == piece
            with window.view(0, window.have) as view:
                assert bytes(view) == data[start : start + window.have]
            window.verified = window.have
            window.consume(consumed)
            start += consumed
            assert window.offset == start
            with window.view(0, window.have) as view:
                assert bytes(view) == data[start : start + window.have]
        got, _ = window.extend(len(data))  # to the end of the file
        assert start + window.have == len(data)
        with window.view(0, window.have) as view:
            assert bytes(view) == data[start:]
    finally:
        window.close()
        os.close(fd)
