"""When does each WAL segment appear on the replica, and which commits does it carry?

A watcher runs on its own thread while the sidecar replicates and stamps every
WAL segment with ``time.monotonic()`` (one clock for all processes on Linux)
the moment it first sees it:

- file replicas: inotify on ``generations/``, each ``<gen>/`` and ``<gen>/wal/``.
  Both tools write a temporary file and rename it into place; the rename (or
  the close of a file written in place) is the moment the segment exists. The
  error is the watcher thread's wake-up latency: microseconds on an idle core,
  a scheduler slice under load.
- S3 replicas (moto, nanio): a ListObjectsV2 poll every ``interval`` seconds, starting
  after the last key seen. The error is at most one poll period plus one
  request; ``poll_periods()`` reports the periods actually achieved. The poll
  loads moto, so it is kept slower than a file watch.

``segment_marker`` then reads a segment's largest commit marker (see
``workload``): every commit up to it is on the replica from that moment.
"""

from __future__ import annotations

import ctypes
import glob
import http.client
import os
import re
import select
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import lz4.frame

from workload import MARKER_PATTERN

SEGMENT_NAME_RE = re.compile(r"^[0-9a-f]{8}_[0-9a-f]{8}\.wal\.lz4$")
GENERATION_RE = re.compile(r"^[0-9a-f]{16}$")
_MARKER_RE = re.compile(MARKER_PATTERN)
LZ4_SKIPPABLE_MAGIC = 0x184D2A50  # 0x184D2A50..0x184D2A5F


@dataclass(frozen=True)
class Arrival:
    key: str  # "<generation>/wal/<index>_<offset>.wal.lz4"
    t: float  # time.monotonic() when first seen


def lz4_decompress_all(blob: bytes) -> bytes:
    """Every LZ4 frame of ``blob`` decompressed and joined; skippable frames skipped, as LZ4 readers do.

    (lsr puts a skippable frame of commit capture times before a segment's data.)
    """
    out, off = [], 0
    while off + 8 <= len(blob):
        magic, size = struct.unpack_from("<II", blob, off)
        if magic & 0xFFFFFFF0 == LZ4_SKIPPABLE_MAGIC:
            off += 8 + size
            continue
        data, used = lz4.frame.decompress(blob[off:], return_bytes_read=True)
        out.append(data)
        off += used
    return b"".join(out)


AGE_MAGIC = b"age-encryption.org/v1"


def segment_marker(compressed: bytes, identities: list[Any] | None = None) -> tuple[int, int]:
    """(largest commit marker in the segment or 0, its WAL bytes); an age-encrypted
    segment (a replica written with --age) is decrypted with ``identities`` first."""
    if compressed.startswith(AGE_MAGIC):
        import pyrage

        compressed = pyrage.decrypt(compressed, identities or [])
    data = lz4_decompress_all(compressed)
    markers = _MARKER_RE.findall(data)
    return (max(int(m) for m in markers) if markers else 0), len(data)


class Watcher:
    """Arrivals in the order seen; subclasses fill them from their own thread."""

    def __init__(self) -> None:
        self._arrivals: list[Arrival] = []
        self.identities: list[Any] = []  # age identities, for encrypted replicas
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise RuntimeError(f"watcher failed: {self.error}") from self.error

    def stopped(self) -> bool:
        return self._stop.is_set()

    def arrivals(self, since: int = 0) -> list[Arrival]:
        with self._lock:
            return self._arrivals[since:]

    def generations(self) -> set[str]:
        with self._lock:
            return {a.key.split("/", 1)[0] for a in self._arrivals}

    def _record(self, generation: str, name: str, t: float) -> None:
        key = f"{generation}/wal/{name}"
        with self._lock:
            if key not in self._seen:
                self._seen.add(key)
                self._arrivals.append(Arrival(key, t))

    def _run(self) -> None:
        try:
            self.watch()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def watch(self) -> None:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def has_snapshot(self) -> bool:
        """Whether any generation has a snapshot yet (the sidecar's first sync is done)."""
        raise NotImplementedError


# -- file replicas: inotify ------------------------------------------------------------

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_ISDIR = 0x40000000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


class FileWatcher(Watcher):
    """Watches ``<root>/generations/*/wal/`` with inotify (Linux)."""

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = root
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = -1
        self._dirs: dict[int, tuple[str, str, str]] = {}  # watch descriptor -> (kind, generation, path)

    def read(self, key: str) -> bytes:
        with open(os.path.join(self.root, "generations", key), "rb") as f:
            return f.read()

    def has_snapshot(self) -> bool:
        return bool(glob.glob(os.path.join(glob.escape(self.root), "generations", "*", "snapshots", "*.snapshot.lz4")))

    def _add(self, path: str, kind: str, generation: str = "") -> None:
        """Watch a directory, then scan it: whatever appeared before the watch is stamped now."""
        mask = IN_CREATE | IN_MOVED_TO | (IN_CLOSE_WRITE if kind == "wal" else 0)
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if not os.path.isdir(path):
                return  # created and removed again; nothing to watch
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        self._dirs[wd] = (kind, generation, path)
        t = time.monotonic()
        for name in sorted(os.listdir(path)):
            self._entry(kind, generation, path, name, t)

    def _entry(self, kind: str, generation: str, path: str, name: str, t: float) -> None:
        child = os.path.join(path, name)
        if kind == "root" and name == "generations":
            self._add(child, "gens")
        elif kind == "gens" and GENERATION_RE.match(name):
            self._add(child, "gen", name)
        elif kind == "gen" and name == "wal":
            self._add(child, "wal", generation)
        elif kind == "wal" and SEGMENT_NAME_RE.match(name):
            self._record(generation, name, t)

    def watch(self) -> None:
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        try:
            self._add(self.root, "root")
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                data = os.read(self._fd, 1 << 16)
                t = time.monotonic()
                off = 0
                while off < len(data):
                    wd, mask, _cookie, size = _EVENT.unpack_from(data, off)
                    name = data[off + _EVENT.size: off + _EVENT.size + size].rstrip(b"\0").decode()
                    off += _EVENT.size + size
                    if mask & IN_Q_OVERFLOW:
                        raise RuntimeError("inotify queue overflowed: arrival times lost")
                    if wd in self._dirs and not (mask & IN_ISDIR and self._dirs[wd][0] == "wal"):
                        kind, generation, path = self._dirs[wd]
                        self._entry(kind, generation, path, name, t)
        finally:
            os.close(self._fd)


# -- S3 replicas: polling a local S3 server -----------------------------------------------

_KEY_RE = re.compile(r"<Key>([^<]+)</Key>")
_PREFIX_RE = re.compile(r"<Prefix>([^<]+)</Prefix>")
GENERATION_RESCAN = 1.0  # seconds between looks for a new generation


def sigv4_headers(method: str, url: str, credentials: tuple[str, str]) -> dict[str, str]:
    """Headers that sign a bodiless request for a server that checks signatures (nanio)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=url)
    S3SigV4Auth(Credentials(*credentials), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


class S3Watcher(Watcher):
    """Polls ``<path>/generations/<gen>/wal/`` on a local S3 server; lists are signed when
    ``signed`` (nanio checks every request; moto lists for anyone)."""

    def __init__(self, endpoint: str, bucket: str, path: str, interval: float, credentials: tuple[str, str],
                 signed: bool = False) -> None:
        super().__init__()
        self.endpoint, self.host = endpoint, urllib.parse.urlsplit(endpoint).netloc
        self.bucket, self.prefix, self.interval = bucket, f"{path}/generations/", interval
        self.credentials, self.signed = credentials, signed
        self._polls: list[float] = []
        self._conn = http.client.HTTPConnection(self.host, timeout=30)
        self._read_conn = http.client.HTTPConnection(self.host, timeout=60)
        self._s3: Any = None

    def poll_periods(self) -> list[float]:
        """Time between the starts of consecutive polls, in seconds."""
        return [b - a for a, b in zip(self._polls, self._polls[1:])]

    def _get(self, conn: http.client.HTTPConnection, path: str) -> bytes:
        headers = sigv4_headers("GET", self.endpoint + path, self.credentials) if self.signed else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status}: {body[:200]!r}")
        return body

    def _list(self, prefix: str, start_after: str = "", delimiter: str = "") -> tuple[list[str], list[str]]:
        keys: list[str] = []
        prefixes: list[str] = []
        while True:
            query = {"list-type": "2", "prefix": prefix, "start-after": start_after or "", "delimiter": delimiter}
            body = self._get(self._conn, f"/{self.bucket}?{urllib.parse.urlencode(query)}").decode()
            page = _KEY_RE.findall(body)
            keys += page
            prefixes += [p for p in _PREFIX_RE.findall(body) if p != prefix]
            if "<IsTruncated>true</IsTruncated>" not in body or not page:
                return keys, prefixes
            start_after = page[-1]

    def read(self, key: str) -> bytes:
        # moto lists for anonymous callers but reads objects only for signed requests.
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            self._s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                    aws_access_key_id=self.credentials[0], aws_secret_access_key=self.credentials[1],
                                    config=Config(s3={"addressing_style": "path"}))
        return bytes(self._s3.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read())

    def has_snapshot(self) -> bool:
        query = urllib.parse.urlencode({"list-type": "2", "prefix": self.prefix})
        body = self._get(self._read_conn, f"/{self.bucket}?{query}").decode()
        return any(k.endswith(".snapshot.lz4") for k in _KEY_RE.findall(body))

    def watch(self) -> None:
        last: dict[str, str] = {}  # generation -> last WAL key seen
        next_rescan = 0.0
        try:
            while not self._stop.is_set():
                t = time.monotonic()
                self._polls.append(t)
                if t >= next_rescan:
                    _, gens = self._list(self.prefix, delimiter="/")
                    for g in gens:
                        last.setdefault(g[len(self.prefix):].rstrip("/"), "")
                    next_rescan = t + GENERATION_RESCAN
                for generation, after in list(last.items()):
                    keys, _ = self._list(f"{self.prefix}{generation}/wal/", after)
                    seen = time.monotonic()
                    for key in keys:
                        name = key.rsplit("/", 1)[-1]
                        if SEGMENT_NAME_RE.match(name):
                            self._record(generation, name, seen)
                    if keys:
                        last[generation] = keys[-1]
                self._stop.wait(max(0.0, t + self.interval - time.monotonic()))
        finally:
            self._conn.close()
