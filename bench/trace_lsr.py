"""lsr with timed spans, for the benchmark only: ``python bench/trace_lsr.py TRACE.jsonl replicate ...``.

Where a commit's milliseconds go on their way to the replica (issue 28, point 1),
and how long lsr holds SQLite's write lock (point 2), without a line of timing
code in lsr itself: this launcher wraps lsr's functions by name before running
its command line, and writes each span ``[label, start, end]`` (time.monotonic,
the clock the writer and the replica watcher stamp with) to TRACE.jsonl at
exit. Spans, outermost first:

- ``sync``: a DB sync (DB.sync), and in it ``copy`` (DB._copy_to_shadow: read
  the WAL, verify its checksums, append to the shadow WAL), of which ``verify``
  (wal.scan_frames); ``checkpoint`` (DB._checkpoint), and in it ``backfill``
  (each PRAGMA wal_checkpoint) and ``write_lock`` (each hold of SQLite's write
  lock: what the application waits for), in which ``tail`` (DB._read_wal_tail).
- ``ship``: one segment shipped (Replica._ship_next), and in it ``durable``
  (the shadow WAL's fsync), ``compress`` (codec.encode_segment) and ``put``
  (the replica client's write), of which ``fsync`` (the segment's), ``rename``
  and ``dirsync``. What ``ship`` holds beyond them is the shadow read, the salt
  check and bookkeeping. In a backlog, a segment's ``put`` runs on the
  replica's put thread, beside the next segment's ``ship``.

The wrappers cost a few microseconds a span; a traced run's CPU figures are
not the untraced ones, so the benchmark traces a run of its own.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
import threading
import time
from typing import Any, Callable, Iterator

SPANS: list[tuple[str, float, float]] = []
_lock = threading.Lock()


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            t1 = time.monotonic()
            with _lock:
                SPANS.append((label, t0, t1))

    return wrapper


def _patch(owner: Any, name: str, label: str) -> None:
    wrapped = _timed(label, getattr(owner, name))
    static = isinstance(inspect.getattr_static(owner, name), staticmethod)
    setattr(owner, name, staticmethod(wrapped) if static else wrapped)


def install() -> None:
    from litestream_py import codec, db, fsutil, replica, shadow
    from litestream_py.clients import file as file_client

    _patch(db.DB, "sync", "sync")
    _patch(db.DB, "_copy_to_shadow", "copy")
    _patch(shadow, "scan_frames", "verify")
    _patch(db.DB, "_checkpoint", "checkpoint")
    _patch(db.DB, "_read_wal_tail", "tail")
    _patch(db.DB, "_run_checkpoint", "backfill")
    _patch(shadow.ShadowWAL, "make_durable", "durable")
    _patch(replica.Replica, "_ship_next", "ship")
    _patch(codec, "encode_segment", "compress")
    _patch(file_client.FileReplicaClient, "write_wal_segment", "put")
    _patch(fsutil, "fsync_dir", "dirsync")
    _patch(fsutil.os, "replace", "rename")
    _patch(fsutil.os, "fsync", "fsync")
    hold = db.hold_write_lock  # db.py's own name for it: DB._write_lock looks it up there

    @contextlib.contextmanager
    def timed_hold(conn: Any) -> Iterator[None]:
        with hold(conn):
            t0 = time.monotonic()
            try:
                yield
            finally:
                with _lock:
                    SPANS.append(("write_lock", t0, time.monotonic()))

    db.hold_write_lock = timed_hold  # type: ignore[assignment]


def _dump(path: str) -> None:
    with _lock, open(path, "w") as f:
        for span in SPANS:
            f.write(json.dumps(span) + "\n")


def main() -> None:
    path = sys.argv.pop(1)
    install()
    # The command group itself: lsr's entry point would end the process with
    # os._exit once the command succeeds, before the spans are written.
    from litestream_py.cmd.main import cli

    sys.argv[0] = "lsr"
    try:
        cli(prog_name="lsr")
    finally:
        _dump(path)


if __name__ == "__main__":
    main()
