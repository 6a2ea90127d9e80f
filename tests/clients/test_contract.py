"""One contract for every ReplicaClient, run unchanged against each backend.

Backends: the file client, and the S3 client against moto and against nanio
(real HTTP servers on 127.0.0.1). The S3 client here uses 5 MiB multipart parts
so that the large-snapshot test goes through a multipart upload and a ranged,
multi-part download.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest

from support.s3 import S3Server, make_s3_client
from litestream_py import paths
from litestream_py.clients.file import FileReplicaClient
from litestream_py.errors import NotFoundError
from litestream_py.pos import Pos
from litestream_py.replica_client import ReplicaClient

GEN_A = "0123456789abcdef"
GEN_B = "fedcba9876543210"
MiB = 1 << 20


@dataclass
class Backend:
    name: str
    client: ReplicaClient
    # Stores bytes at a path relative to the replica root, bypassing the client
    # (to plant objects the client did not write).
    put_raw: Callable[[str, bytes], None]
    # Whether the server honours If-None-Match / If-Match on PUT (nanio 0.1.7 ignores both).
    conditional_writes: bool = True


def _file_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "replica"

    def put_raw(rel: str, data: bytes) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    return Backend("file", FileReplicaClient(str(root)), put_raw)


def _s3_backend(server: S3Server) -> Backend:
    bucket = server.create_bucket()
    client = make_s3_client(server, bucket, "replicas/app.db", multipart_threshold=5 * MiB,
                            multipart_chunksize=5 * MiB)
    raw = server.raw_client()

    def put_raw(rel: str, data: bytes) -> None:
        raw.put_object(Bucket=bucket, Key=f"replicas/app.db/{rel}", Body=data)

    return Backend(f"s3-{server.name}", client, put_raw, conditional_writes=server.name != "nanio")


@pytest.fixture(params=["file", "s3-moto", "s3-nanio"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        return _file_backend(tmp_path)
    servers = request.getfixturevalue("s3_servers")
    return _s3_backend(servers[request.param.removeprefix("s3-")])


def _snapshot(client: ReplicaClient, generation: str, index: int, data: bytes) -> None:
    client.write_snapshot(generation, index, io.BytesIO(data), datetime.now(timezone.utc))


def _near_now(t: datetime) -> bool:
    return t.tzinfo is not None and abs(datetime.now(timezone.utc) - t) < timedelta(minutes=5)


def test_implements_the_protocol(backend: Backend) -> None:
    assert isinstance(backend.client, ReplicaClient)
    assert backend.client.type == backend.name.split("-")[0]
    assert backend.client.describe()


def test_empty_replica_lists_nothing(backend: Backend) -> None:
    c = backend.client
    assert c.generations() == []
    assert c.snapshots(GEN_A) == []
    assert c.wal_segments(GEN_A) == []


def test_snapshot_round_trip(backend: Backend) -> None:
    c = backend.client
    data = os.urandom(4096)
    info = c.write_snapshot(GEN_A, 7, io.BytesIO(data), datetime.now(timezone.utc))
    assert (info.generation, info.index, info.size) == (GEN_A, 7, len(data))
    with c.open_snapshot(GEN_A, 7) as f:
        assert f.read() == data
    [listed] = c.snapshots(GEN_A)
    assert (listed.generation, listed.index, listed.size) == (GEN_A, 7, len(data))
    assert _near_now(listed.created_at)
    assert c.generations() == [GEN_A]


def test_snapshots_sorted_by_index(backend: Backend) -> None:
    c = backend.client
    for index in (0x20, 0x3, 0x100, 0x1):
        _snapshot(c, GEN_A, index, b"s%d" % index)
    assert [s.index for s in c.snapshots(GEN_A)] == [0x1, 0x3, 0x20, 0x100]


def test_snapshot_overwrite_replaces(backend: Backend) -> None:
    c = backend.client
    _snapshot(c, GEN_A, 1, b"old")
    _snapshot(c, GEN_A, 1, b"newer")
    with c.open_snapshot(GEN_A, 1) as f:
        assert f.read() == b"newer"
    assert [s.size for s in c.snapshots(GEN_A)] == [5]


def test_large_snapshot_round_trip(backend: Backend) -> None:
    """11 MiB: a multipart upload and a ranged download on S3."""
    c = backend.client
    data = os.urandom(11 * MiB)
    c.write_snapshot(GEN_A, 1, io.BytesIO(data))
    with c.open_snapshot(GEN_A, 1) as f:
        assert f.read() == data
    assert c.snapshots(GEN_A)[0].size == len(data)


def test_missing_snapshot_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFoundError):
        backend.client.open_snapshot(GEN_A, 1)
    _snapshot(backend.client, GEN_A, 1, b"x")
    with pytest.raises(NotFoundError):
        backend.client.open_snapshot(GEN_A, 2)


def test_wal_segment_round_trip(backend: Backend) -> None:
    c = backend.client
    data = os.urandom(1000)
    info = c.write_wal_segment(Pos(GEN_A, 3, 4152), data, datetime.now(timezone.utc))
    assert (info.generation, info.index, info.offset, info.size) == (GEN_A, 3, 4152, len(data))
    assert c.read_wal_segment(Pos(GEN_A, 3, 4152)) == data
    [listed] = c.wal_segments(GEN_A)
    assert (listed.index, listed.offset, listed.size) == (3, 4152, len(data))
    assert listed.pos == Pos(GEN_A, 3, 4152)
    assert _near_now(listed.created_at)


def test_wal_segment_from_a_view_of_a_larger_buffer(backend: Backend) -> None:
    """The shipper hands a segment over as a view of its reused encoding buffer:
    the view's bytes are stored, nothing before or after them."""
    buf = bytearray(os.urandom(3000))
    with memoryview(buf)[100:1100] as view:
        info = backend.client.write_wal_segment(Pos(GEN_A, 3, 0), view)
    assert info.size == 1000
    assert backend.client.read_wal_segment(Pos(GEN_A, 3, 0)) == bytes(buf[100:1100])


def test_wal_segment_from_a_file(backend: Backend) -> None:
    # Compaction hands a merged segment over as a temporary file, not as bytes.
    c = backend.client
    data = os.urandom(3 * MiB + 17)
    when = datetime.now(timezone.utc) - timedelta(minutes=5)
    info = c.write_wal_segment(Pos(GEN_A, 2, 32), io.BytesIO(data), when)
    assert (info.generation, info.index, info.offset, info.size) == (GEN_A, 2, 32, len(data))
    assert c.read_wal_segment(Pos(GEN_A, 2, 32)) == data
    [listed] = c.wal_segments(GEN_A)
    assert (listed.pos, listed.size) == (Pos(GEN_A, 2, 32), len(data))


def test_wal_segments_sorted_by_index_then_offset(backend: Backend) -> None:
    c = backend.client
    order = [(2, 0), (1, 8192), (1, 0), (0x10, 0), (1, 4096), (2, 32)]
    for index, offset in order:
        c.write_wal_segment(Pos(GEN_A, index, offset), b"w")
    assert [(w.index, w.offset) for w in c.wal_segments(GEN_A)] == sorted(order)


def test_missing_wal_segment_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFoundError):
        backend.client.read_wal_segment(Pos(GEN_A, 1, 0))


def test_generations_sorted_and_separate(backend: Backend) -> None:
    c = backend.client
    _snapshot(c, GEN_B, 1, b"b")
    _snapshot(c, GEN_A, 1, b"a")
    c.write_wal_segment(Pos(GEN_B, 1, 0), b"wb")
    assert c.generations() == [GEN_A, GEN_B]
    assert c.wal_segments(GEN_A) == []
    assert [w.generation for w in c.wal_segments(GEN_B)] == [GEN_B]


def test_foreign_names_are_ignored(backend: Backend) -> None:
    """Objects that are not Litestream's (other tools, temp files) never show up."""
    c = backend.client
    _snapshot(c, GEN_A, 1, b"a")
    backend.put_raw("generations/not-a-generation/snapshots/00000001.snapshot.lz4", b"x")
    backend.put_raw(f"generations/{GEN_A}/snapshots/README", b"x")
    backend.put_raw(f"generations/{GEN_A}/wal/00000001.wal", b"x")
    backend.put_raw(f"generations/{GEN_A}/wal/00000001_00000000.wal.lz4.tmp", b"x")
    assert c.generations() == [GEN_A]
    assert [s.index for s in c.snapshots(GEN_A)] == [1]
    assert c.wal_segments(GEN_A) == []


def test_reads_objects_it_did_not_write(backend: Backend) -> None:
    """Objects planted by another writer (Go Litestream) are readable as they are."""
    c = backend.client
    backend.put_raw(paths.snapshot_path("", GEN_A, 2), b"snapshot bytes")
    backend.put_raw(paths.wal_segment_path("", GEN_A, 2, 0), b"wal bytes")
    with c.open_snapshot(GEN_A, 2) as f:
        assert f.read() == b"snapshot bytes"
    assert c.read_wal_segment(Pos(GEN_A, 2, 0)) == b"wal bytes"


def test_delete_snapshot(backend: Backend) -> None:
    c = backend.client
    _snapshot(c, GEN_A, 1, b"1")
    _snapshot(c, GEN_A, 2, b"2")
    c.delete_snapshot(GEN_A, 1)
    assert [s.index for s in c.snapshots(GEN_A)] == [2]
    c.delete_snapshot(GEN_A, 1)  # deleting what is gone is not an error
    with pytest.raises(NotFoundError):
        c.open_snapshot(GEN_A, 1)


def test_delete_wal_segments(backend: Backend) -> None:
    c = backend.client
    positions = [Pos(GEN_A, 1, o) for o in (0, 100, 200)] + [Pos(GEN_A, 2, 0)]
    for p in positions:
        c.write_wal_segment(p, b"w")
    c.delete_wal_segments([positions[0], positions[2], Pos(GEN_A, 9, 0)])
    assert [w.pos for w in c.wal_segments(GEN_A)] == [positions[1], positions[3]]
    c.delete_wal_segments([])
    with pytest.raises(NotFoundError):
        c.read_wal_segment(positions[0])


def test_delete_generation_removes_only_that_generation(backend: Backend) -> None:
    c = backend.client
    for g in (GEN_A, GEN_B):
        _snapshot(c, g, 1, b"s")
        c.write_wal_segment(Pos(g, 1, 0), b"w")
    c.delete_generation(GEN_A)
    assert c.generations() == [GEN_B]
    assert c.snapshots(GEN_A) == [] and c.wal_segments(GEN_A) == []
    assert len(c.wal_segments(GEN_B)) == 1
    c.delete_generation(GEN_A)  # again: nothing to do


def test_parallel_reads(backend: Backend) -> None:
    """Restore downloads segments from several threads through one client."""
    c = backend.client
    blobs = {Pos(GEN_A, 1, i * 100): os.urandom(100 + i) for i in range(24)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: c.write_wal_segment(*kv), blobs.items()))
        got = dict(zip(blobs, pool.map(c.read_wal_segment, blobs)))
    assert got == blobs


def test_more_than_1000_segments(backend: Backend) -> None:
    """Listings and deletes span more than one page / batch (S3 pages hold 1000 keys)."""
    c = backend.client
    count = 1234
    positions = [Pos(GEN_A, i // 500, (i % 500) * 8) for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: c.write_wal_segment(p, b"w"), positions))
    _snapshot(c, GEN_A, 0, b"s")
    listed = c.wal_segments(GEN_A)
    assert [w.pos for w in listed] == positions
    c.delete_wal_segments(positions[:1100])
    assert [w.pos for w in c.wal_segments(GEN_A)] == positions[1100:]
    c.delete_generation(GEN_A)
    assert c.generations() == []


def test_lease_conditional_writes(backend: Backend) -> None:
    """Create only if absent, replace only the version read: of two racers exactly one wins."""
    from litestream_py.errors import PreconditionFailedError

    client = backend.client
    assert client.read_lease() is None
    v1 = client.write_lease(b'{"a": 1}', None)
    if not backend.conditional_writes:
        # Documented in README (Standby and failover): such a server takes every write;
        # lease.Lease reads before and after writing instead. If this fails, the server learnt them.
        v2 = client.write_lease(b'{"b": 1}', None)
        v3 = client.write_lease(b'{"c": 1}', v1)
        current = client.read_lease()
        assert current is not None and current.data == b'{"c": 1}' and current.version == v3 != v2
        return
    with pytest.raises(PreconditionFailedError):
        client.write_lease(b'{"b": 1}', None)  # it exists now
    current = client.read_lease()
    assert current is not None and current.data == b'{"a": 1}' and current.version == v1
    v2 = client.write_lease(b'{"a": 2}', v1)
    assert v2 != v1
    with pytest.raises(PreconditionFailedError):
        client.write_lease(b'{"b": 2}', v1)  # a stale version loses
    assert client.read_lease() == type(current)(b'{"a": 2}', v2)
    # Racers with the same version: exactly one replaces it.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: _try_write_lease(client, i, v2), range(4)))
    assert sum(results) == 1, results
    client.delete_lease(v2)  # stale: nothing happens
    latest = client.read_lease()
    assert latest is not None
    client.delete_lease(latest.version)
    assert client.read_lease() is None
    assert client.generations() == []  # the lease is no generation


def test_lease_renewal(backend: Backend) -> None:
    """A renewal names the version it holds: it keeps the lease readable as written, and a stale one
    is refused, on a server that ignores conditional writes too (the client reads before and after)."""
    from litestream_py.errors import PreconditionFailedError

    client = backend.client
    v1 = client.write_lease(b'{"a": 1}', None)
    v2 = client.renew_lease(b'{"a": 2}', v1, 1_800_000_000.0)
    current = client.read_lease()
    assert current is not None and current.version == v2
    # Either the content was rewritten, or the store keeps the renewal time apart from it.
    assert current.data == b'{"a": 2}' or (current.data == b'{"a": 1}' and current.renewed_at == 1_800_000_000.0)
    v3 = client.write_lease(b'{"b": 1}', v2)  # another sidecar takes over
    with pytest.raises(PreconditionFailedError):
        client.renew_lease(b'{"a": 3}', v2, 1_800_000_010.0)
    current = client.read_lease()
    assert current is not None and current.data == b'{"b": 1}' and current.version == v3


def _try_write_lease(client: ReplicaClient, i: int, version: str) -> bool:
    from litestream_py.errors import PreconditionFailedError

    try:
        client.write_lease(f'{{"racer": {i}}}'.encode(), version)
        return True
    except PreconditionFailedError:
        return False
