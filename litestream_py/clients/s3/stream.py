"""A snapshot read front to back through ranged GETs fetched ahead of the reader."""

from __future__ import annotations

import io
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from ...errors import StorageError
from .checksum import crc32c
from .errors import RangeRefused

__all__ = ["FIRST_RANGE", "PEEK_BYTES", "ObjectReply", "ObjectSource", "ObjectStream"]

# A snapshot is read in ranges of MULTIPART_CHUNKSIZE, up to MULTIPART_CONCURRENCY
# of them fetched ahead of the reader. The first GET is smaller: a caller that
# reads only lsr's snapshot header (to date it) downloads no more than this.
FIRST_RANGE = 1 << 20
# Reads that stay within this many bytes from the start fetch nothing ahead.
PEEK_BYTES = 4096


@dataclass(frozen=True)
class ObjectReply:
    """One GET's answer, the same whichever path (``signed`` or botocore) fetched it."""

    body: bytes
    etag: str | None
    content_range: str | None  # "bytes 0-1048575/39374538"; None: the whole object came back
    metadata: dict[str, str]  # the x-amz-meta-* headers, by lower-case name without the prefix


class ObjectSource(Protocol):
    """What a stream reads through: its client's GETs (client.S3ReplicaClient)."""

    def _get_object(self, key: str, what: str, byte_range: str | None = None,
                    if_match: str | None = None) -> ObjectReply: ...

    def _size(self, key: str, what: str) -> int: ...

    def _url(self, key: str) -> str: ...

    def _check_crc(self, key: str, what: str, metadata: dict[str, str] | None, actual: str) -> None: ...


class ObjectStream(io.RawIOBase):
    """An object read front to back through ranged GETs fetched ahead of the reader.

    The first range is fetched on open, so a missing object fails there. The
    rest are fetched only once the caller reads past PEEK_BYTES, at most
    ``ahead`` ranges at a time, each pinned to the first one's ETag (If-Match):
    an object replaced midway fails rather than mixing two versions. The
    CRC32C that lsr stored with the object is checked as the last range
    arrives: the read that would return the object's final bytes raises instead.
    """

    def __init__(self, client: ObjectSource, key: str, what: str, range_size: int, ahead: int) -> None:
        super().__init__()
        self._client, self._key, self._what = client, key, what
        self._range_size, self._ahead = range_size, max(ahead, 1)
        first = self._first_range()
        data = first.body
        content_range = first.content_range or ""
        self._size = int(content_range.rpartition("/")[2]) if "/" in content_range else len(data)
        self._etag = first.etag
        self._metadata = first.metadata
        self._crc = 0
        self._taken = 0  # bytes of the object taken into _buf so far
        self._requested = len(data)  # the first byte no range has asked for yet
        self._reading_ahead = False
        self._pending: deque[Future[bytes]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._buf = memoryview(b"")
        self._pos = 0  # bytes handed to the caller
        self._take(data)

    def _first_range(self) -> ObjectReply:
        client, key, what = self._client, self._key, self._what
        try:
            return client._get_object(key, what, f"bytes=0-{FIRST_RANGE - 1}")
        except RangeRefused:
            size = client._size(key, what)  # one extra request, on strict servers only
            if size == 0:
                return client._get_object(key, what)
            return client._get_object(key, what, f"bytes=0-{min(FIRST_RANGE, size) - 1}")

    def readable(self) -> bool:
        return True

    def peek(self, size: int = 0) -> bytes:
        if not self._buf:
            self._advance()
        return self._buf[: max(size, 1)].tobytes()

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        view = self._next_bytes(size)
        return view.tobytes()

    def readall(self) -> bytes:
        parts = []
        while part := self.read(self._range_size):
            parts.append(part)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        view = self._next_bytes(len(out))
        out[: len(view)] = view
        return len(view)

    def close(self) -> None:
        if not self.closed:
            for future in self._pending:
                future.cancel()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()
            self._buf = memoryview(b"")
        super().close()

    def _next_bytes(self, size: int) -> memoryview:
        """Up to ``size`` bytes of the current range, moving on to the next when it is used up."""
        if self.closed:
            raise ValueError("I/O operation on closed snapshot stream")
        if not self._reading_ahead and self._pos + size > PEEK_BYTES:
            self._reading_ahead = True
            self._fill()
        if not self._buf and not self._advance():
            return memoryview(b"")
        view = self._buf[:size]
        self._buf = self._buf[len(view) :]
        self._pos += len(view)
        return view

    def _advance(self) -> bool:
        """Take the next range into _buf; False at the end of the object."""
        if self._taken >= self._size:
            return False
        self._fill()
        data = self._pending.popleft().result()
        self._fill()
        self._take(data)
        return True

    def _fill(self) -> None:
        if self._pool is None and self._requested < self._size:
            self._pool = ThreadPoolExecutor(max_workers=self._ahead, thread_name_prefix="lsr-s3-range")
        while self._pool is not None and len(self._pending) < self._ahead and self._requested < self._size:
            end = min(self._requested + self._range_size, self._size)
            self._pending.append(self._pool.submit(self._fetch, self._requested, end))
            self._requested = end

    def _fetch(self, start: int, end: int) -> bytes:
        data = self._client._get_object(self._key, self._what, f"bytes={start}-{end - 1}", self._etag).body
        if len(data) != end - start:
            raise StorageError(
                f"cannot read {self._what} {self._client._url(self._key)}: bytes {start}-{end - 1} came back "
                f"as {len(data)} bytes"
            )
        return data

    def _take(self, data: bytes) -> None:
        self._crc = crc32c(data, self._crc)
        self._taken += len(data)
        if self._taken >= self._size:
            self._client._check_crc(self._key, self._what, self._metadata, f"{self._crc:08x}")
        self._buf = memoryview(data)
