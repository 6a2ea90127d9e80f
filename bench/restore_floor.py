"""Where a restore's time goes, against what this machine allows.

The *floor* of restoring a database is decoding its snapshot (LZ4) and writing
its bytes to disk: ``floor`` measures that with nothing else, on the database
the restore scenario uses, compressed the way lsr compresses a snapshot (4 MiB
blocks, content checksum), decoded in 4 MiB pieces on one thread, written with
``os.write`` to a fresh file, then ``fsync``. ``startup`` times what a restore
command pays before it reads anything: the interpreter (``python -c pass``),
``lsr version`` (the interpreter and lsr's command layer), and Go's
``litestream version``. ``in_process`` restores lsr's file replica inside this
process, the start-up left out. All figures are medians of ``repeats``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import lz4.frame

from tools import Tool

__all__ = ["floor", "in_process", "startup"]

PIECE = 4 << 20  # compressed bytes fed, and decoded bytes taken, per call: one LZ4 block


def _median(fn: Callable[[], float], repeats: int) -> float:
    return float(statistics.median(fn() for _ in range(repeats)))


def _decode(blob: bytes, sink: Callable[[bytes], object]) -> None:
    d = lz4.frame.LZ4FrameDecompressor()
    pos = 0
    while not d.eof:
        chunk = b""
        if d.needs_input:
            chunk, pos = blob[pos : pos + PIECE], pos + PIECE
        sink(d.decompress(chunk, max_length=PIECE))


def floor(db: Path, work: Path, repeats: int) -> dict[str, Any]:
    """LZ4 decode, + write, + fsync of ``db``'s bytes, in seconds."""
    from litestream_py import codec

    data = db.read_bytes()
    blob = codec.compress(data)
    del data
    out = work / "floor.db"

    def decode() -> float:
        t0 = time.perf_counter()
        _decode(blob, lambda b: None)
        return time.perf_counter() - t0

    def write(sync: bool) -> float:
        os.sync()  # earlier writes are not this one's to flush
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            t0 = time.perf_counter()
            _decode(blob, lambda b: os.write(fd, b))
            if sync:
                os.fsync(fd)
            return time.perf_counter() - t0
        finally:
            os.close(fd)
            out.unlink()

    return {
        "db_mib": db.stat().st_size / (1 << 20), "compressed_mib": len(blob) / (1 << 20),
        "decode": _median(decode, repeats), "decode_write": _median(lambda: write(False), repeats),
        "decode_write_fsync": _median(lambda: write(True), repeats),
    }


def startup(tools: list[Tool], repeats: int) -> dict[str, float]:
    """Seconds from exec to exit of each tool's ``version``, and of a bare interpreter."""

    def run(args: list[str]) -> Callable[[], float]:
        def once() -> float:
            t0 = time.perf_counter()
            subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            return time.perf_counter() - t0
        return once

    out: dict[str, float] = {}
    for t in tools:
        out[f"{t.name} version"] = _median(run([t.exe, "version"]), repeats)
        if t.name == "lsr":
            python = Path(t.exe).read_text(errors="replace").splitlines()[0].removeprefix("#!").strip()
            if os.access(python, os.X_OK):
                out["python -c pass"] = _median(run([python, "-c", "pass"]), repeats)
    return out


def in_process(replica_root: Path, work: Path, repeats: int) -> float:
    """Seconds of lsr's restore of a file replica, run in this process (no start-up)."""
    from litestream_py.clients.file import FileReplicaClient
    from litestream_py.restore import RestoreOptions, restore

    out = work / "in-process.db"

    def once() -> float:
        os.sync()
        t0 = time.perf_counter()
        restore(FileReplicaClient(str(replica_root)), RestoreOptions(output_path=str(out)))
        seconds = time.perf_counter() - t0
        out.unlink()
        return seconds

    once()  # the imports and numpy's, paid once
    return _median(once, repeats)
