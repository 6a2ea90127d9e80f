"""Where a restore's time goes, against what this machine allows.

The *floor* of restoring a database is decoding its snapshot (LZ4) and writing
its bytes to disk: ``floor`` measures that with nothing else, on the database
the restore scenario uses, compressed the way lsr compresses a snapshot (4 MiB
blocks, content checksum), decoded in 4 MiB pieces on one thread, written with
``os.write`` to a fresh file, then ``fsync``. ``startup`` times what a restore
command pays before it reads anything: the interpreter (``python -c pass``),
``lsr version`` (the interpreter and lsr's command layer), and Go's
``litestream version``. ``in_process`` restores lsr's file replica inside this
process, the start-up left out. ``bare_gets`` is the floor an S3 server sets:
every object of a replica fetched whole, once, by one botocore client on a
restore's parallelism of threads, nothing decoded or written; the server's CPU
for it is what any client's restore of that replica costs the server. ``phases`` splits the restore *command*'s
time into its steps, in fresh processes, by wrapping lsr's functions by name
(no timing code in lsr). All figures are medians of ``repeats``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import lz4.frame

import measure
from tools import S3Server, Tool

__all__ = ["PHASES", "bare_gets", "floor", "in_process", "phases", "startup"]

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


# Each step of ``lsr restore``, as ``phases`` reports it: (key, what it covers).
PHASES = [
    ("interpreter", "exec -> the first line of lsr's entry point (the interpreter and site-packages)"),
    ("imports", "the command group and the restore command's imports"),
    ("plan", "the config, the replica's listings and the plan"),
    ("snapshot", "the snapshot decompressed and written (segments download, are checked and applied meanwhile)"),
    ("wal", "what is left of the WAL segments' check and apply once the snapshot is written"),
    ("flush", "the pages the WAL changed written"),
    ("writeback", "waiting for the snapshot's write-back (fdatasync) to end"),
    ("fsync", "the database's fsync"),
    ("rest", "link into place, the directory's fsync, exit"),
]

# Run in the lsr's interpreter: marks the restore command's steps (time.monotonic), prints them as JSON at exit.
_TRACER = r"""
import json, os, sys, time
marks = {"start": time.monotonic()}
import litestream_py.cmd.main as main
import litestream_py.cmd.restore as command
marks["imported"] = time.monotonic()
apply = sys.modules["litestream_py.apply"]
restore = sys.modules["litestream_py.restore"]
codec = sys.modules["litestream_py.codec"]

def after(module, name, key, first=False):
    fn = getattr(module, name)
    def timed(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            if not (first and key in marks):
                marks[key] = time.monotonic()
    setattr(module, name, timed)

def before(module, name, key):
    fn = getattr(module, name)
    def timed(*args, **kwargs):
        marks.setdefault(key, time.monotonic())
        return fn(*args, **kwargs)
    setattr(module, name, timed)

before(codec, "decompress_stream", "planned")
after(codec, "decompress_stream", "snapshot")
after(apply.WALApplier, "flush", "flushed")
before(apply.WALApplier, "flush", "applied")
after(apply._WriteBehind, "wait", "written_back")
fsync = os.fsync
def timed_fsync(fd):
    fsync(fd)
    marks.setdefault("synced", time.monotonic())
os.fsync = timed_fsync

def report():
    marks["end"] = time.monotonic()
    print(json.dumps(marks), file=sys.stderr, flush=True)
import atexit
atexit.register(report)
_exit = os._exit
def reporting_exit(code):  # lsr's entry point skips the interpreter's teardown, and atexit with it
    report()
    _exit(code)
os._exit = reporting_exit
sys.argv = ["lsr", *sys.argv[1:]]
main.main()
"""


def _python_of(exe: str) -> str:
    """The interpreter a console script runs with (its #! line)."""
    return Path(exe).read_text(errors="replace").splitlines()[0].removeprefix("#!").strip()


def phases(lsr: Tool, config: Path, db: Path, work: Path, repeats: int) -> dict[str, float]:
    """Seconds of each of ``PHASES`` in ``lsr restore -config CONFIG -o OUT DB``, medians over fresh processes."""
    python = _python_of(lsr.exe)
    out = work / "phases.db"
    steps = [("interpreter", "exec", "start"), ("imports", "start", "imported"), ("plan", "imported", "planned"),
             ("snapshot", "planned", "snapshot"), ("wal", "snapshot", "applied"), ("flush", "applied", "flushed"),
             ("writeback", "flushed", "written_back"), ("fsync", "written_back", "synced"), ("rest", "synced", "exit")]
    runs: list[dict[str, float]] = []
    for _ in range(repeats):
        os.sync()
        t0 = time.monotonic()
        done = subprocess.run([python, "-c", _TRACER, "restore", "-config", str(config), "-o", str(out), str(db)],
                              capture_output=True, text=True, check=True)
        marks = {"exec": t0, **json.loads(done.stderr.strip().splitlines()[-1]), "exit": time.monotonic()}
        # Each step from where the steps before it ended: one that ended sooner
        # (the WAL is applied beside the snapshot) took no time of its own.
        run: dict[str, float] = {}
        reached = marks["exec"]
        for key, _, b in steps:
            if b in marks:
                run[key] = max(marks[b] - reached, 0.0)
                reached = max(reached, marks[b])
        runs.append(run)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{out}{suffix}").unlink(missing_ok=True)
    result = {key: float(statistics.median(r[key] for r in runs)) for key, _, _ in steps if all(key in r for r in runs)}
    result["total"] = float(statistics.median(sum(r.values()) for r in runs))
    return result


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
            python = _python_of(t.exe)
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


def bare_gets(config: Path, server: S3Server, parallelism: int, repeats: int) -> dict[str, Any]:
    """Seconds to GET every object of the S3 replica in ``config`` (its first database's
    first replica), whole, with one botocore client on ``parallelism`` threads, and the
    server's CPU seconds meanwhile: medians of ``repeats``."""
    from concurrent.futures import ThreadPoolExecutor

    import botocore.session
    import yaml
    from botocore.config import Config

    replica = yaml.safe_load(config.read_text())["dbs"][0]["replicas"][0]
    bucket, prefix = str(replica["bucket"]), f"{replica['path']}/"
    s3 = botocore.session.get_session().create_client(
        "s3", endpoint_url=str(replica["endpoint"]), region_name="us-east-1",
        aws_access_key_id=str(replica["access-key-id"]), aws_secret_access_key=str(replica["secret-access-key"]),
        config=Config(max_pool_connections=parallelism, s3={"addressing_style": "path"}))
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents") or []]

    def get(key: str) -> int:
        with s3.get_object(Bucket=bucket, Key=key)["Body"] as body:
            return len(body.read())

    def once() -> tuple[float, float, int]:
        cpu = measure.cpu_seconds(server.proc.pid)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=parallelism) as pool:
            size = sum(pool.map(get, keys))
        return time.perf_counter() - t0, measure.cpu_seconds(server.proc.pid) - cpu, size

    once()  # connections and the client's first-call costs
    runs = [once() for _ in range(repeats)]
    return {"objects": len(keys), "mib": runs[0][2] / (1 << 20),
            "seconds": float(statistics.median(r[0] for r in runs)),
            "server_cpu": float(statistics.median(r[1] for r in runs))}
