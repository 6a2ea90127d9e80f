"""S3-specific behaviour: URL and config resolution (as Go Litestream 0.3.13), credentials, checksums."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import crc32c
import pytest

from support.faultproxy import FAULTS, FaultProxy
from support.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, make_s3_client
from litestream_py.clients import new_client
from litestream_py.clients.s3 import (
    CHECKSUM_METADATA_KEY,
    S3ReplicaClient,
    S3Settings,
    parse_host,
    settings_from_config,
)
from litestream_py.clients.s3.signed import S3HTTP, Credentials
from litestream_py.config import ReplicaConfig, parse_config
from litestream_py import codec
from litestream_py.errors import ChecksumMismatchError, ConfigError, NotFoundError
from litestream_py.pos import Pos

GEN = "0123456789abcdef"
MiB = 1 << 20


@pytest.mark.parametrize(
    "host, expected",
    [
        ("mybucket", ("mybucket", "", "", False)),
        ("my.bucket.example", ("my.bucket.example", "", "", False)),
        ("mybucket.localhost:9000", ("mybucket", "us-east-1", "http://localhost:9000", True)),
        ("localhost:9000", ("", "us-east-1", "http://localhost:9000", True)),
        ("mybucket.s3.us-west-002.backblazeb2.com",
         ("mybucket", "us-west-002", "https://s3.us-west-002.backblazeb2.com", True)),
        ("mybucket.s3.filebase.com", ("mybucket", "", "https://s3.filebase.com", True)),
        ("mybucket.nyc3.digitaloceanspaces.com", ("mybucket", "nyc3", "https://nyc3.digitaloceanspaces.com", True)),
        ("mybucket.s3.fr-par.scw.cloud", ("mybucket", "fr-par", "https://s3.fr-par.scw.cloud", True)),
        ("mybucket.us-east-1.linodeobjects.com",
         ("mybucket", "us-east-1", "https://us-east-1.linodeobjects.com", True)),
    ],
)
def test_parse_host_like_go(host: str, expected: tuple[str, str, str, bool]) -> None:
    assert parse_host(host) == expected


def test_aws_url() -> None:
    s = settings_from_config(ReplicaConfig(url="s3://mybucket/path/to/db"))
    assert s == S3Settings(bucket="mybucket", path="path/to/db", region="", endpoint="", force_path_style=False)


def test_local_url_like_go() -> None:
    s = settings_from_config(ReplicaConfig(url="s3://mybucket.localhost:9000/db"))
    assert (s.bucket, s.path, s.endpoint, s.region, s.force_path_style) == (
        "mybucket", "db", "http://localhost:9000", "us-east-1", True)


def test_url_query_extension() -> None:
    s = settings_from_config(ReplicaConfig(url="s3://mybucket/db?endpoint=http://127.0.0.1:9000&skip-verify=true"))
    assert (s.bucket, s.path, s.endpoint, s.region, s.force_path_style, s.skip_verify) == (
        "mybucket", "db", "http://127.0.0.1:9000", "us-east-1", True, True)
    s = settings_from_config(
        ReplicaConfig(url="s3://b/db?endpoint=https://x.example&region=eu-west-1&forcePathStyle=false"))
    assert (s.region, s.force_path_style) == ("eu-west-1", False)
    with pytest.raises(ConfigError, match="not a boolean"):
        settings_from_config(ReplicaConfig(url="s3://b/db?force-path-style=maybe"))


def test_endpoint_implies_path_style_and_default_region() -> None:
    s = settings_from_config(ReplicaConfig(type="s3", bucket="b", path="/db/", endpoint="http://127.0.0.1:9000"))
    assert (s.path, s.force_path_style, s.region) == ("db", True, "us-east-1")
    s = settings_from_config(ReplicaConfig(type="s3", bucket="b", endpoint="minio:9000", force_path_style=False))
    assert (s.endpoint, s.force_path_style) == ("https://minio:9000", False)


def test_config_keys_override_url() -> None:
    rc = ReplicaConfig(url="s3://mybucket.localhost:9000/db", region="eu-central-1", endpoint="http://other:1")
    s = settings_from_config(rc)
    assert (s.region, s.endpoint, s.bucket) == ("eu-central-1", "http://other:1", "mybucket")


@pytest.mark.parametrize(
    "rc, message",
    [
        (ReplicaConfig(url="s3://b/db", path="db"), "url or path"),
        (ReplicaConfig(url="s3://b/db", bucket="b"), "url or bucket"),
        (ReplicaConfig(type="s3", path="db"), "bucket required"),
    ],
)
def test_invalid_configs(rc: ReplicaConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_config(rc)


def test_yaml_config_builds_client_through_registry() -> None:
    cfg = parse_config(
        "access-key-id: AKGLOBAL\nsecret-access-key: top-secret-value\n"
        "dbs:\n  - path: /tmp/x.db\n    replicas:\n"
        "      - type: s3\n        bucket: b\n        path: db\n        endpoint: http://127.0.0.1:1\n"
    )
    client = new_client(cfg.dbs[0].replicas[0])
    assert isinstance(client, S3ReplicaClient)
    assert client.describe() == "s3://b/db (endpoint http://127.0.0.1:1)"
    assert "top-secret-value" not in repr(client) and "top-secret-value" not in repr(cfg.dbs[0].replicas[0])
    assert "AKGLOBAL" not in repr(client)


def test_litestream_env_credentials(s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]) -> None:
    """No keys in the config: LITESTREAM_ACCESS_KEY_ID / _SECRET_ACCESS_KEY are used (nanio checks them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LITESTREAM_ACCESS_KEY_ID", ACCESS_KEY_ID)
        mp.setenv("LITESTREAM_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        client = S3ReplicaClient.from_config(ReplicaConfig(url=f"s3://{s3_bucket}/db?endpoint={s3_server.endpoint}"))
        client.write_wal_segment(Pos(GEN, 1, 0), b"data")
        assert client.read_wal_segment(Pos(GEN, 1, 0)) == b"data"


def test_objects_carry_crc32c(s3_server: S3Server, s3_client: S3ReplicaClient) -> None:
    s3_client.write_wal_segment(Pos(GEN, 1, 0), b"segment bytes")
    s3_client.write_snapshot(GEN, 1, io.BytesIO(b"snapshot bytes"))
    raw = s3_server.raw_client()
    for key, data in ((f"db/generations/{GEN}/wal/00000001_00000000.wal.lz4", b"segment bytes"),
                      (f"db/generations/{GEN}/snapshots/00000001.snapshot.lz4", b"snapshot bytes")):
        meta = raw.head_object(Bucket=s3_client.bucket, Key=key)["Metadata"]
        assert meta[CHECKSUM_METADATA_KEY] == f"{crc32c.crc32c(data):08x}"


def test_crc32c_extension_loads_without_the_package_init() -> None:
    """The S3 client's CRC32C is the package's own extension, loaded without the
    package's ``__init__`` and its ``importlib.metadata`` scan, and gives the same
    values (a fresh interpreter: this one has imported the package already)."""
    probe = ("import sys, litestream_py.clients.s3 as s3, litestream_py.clients.s3.checksum as c;"
             "print(c.loaded_alone, 'importlib.metadata' in sys.modules, 'crc32c' in sys.modules,"
             " c.crc32c(b'123456789'), c.crc32c(b'6789', c.crc32c(b'12345')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False", str(0xE3069283), str(0xE3069283)]
    from litestream_py.clients.s3.checksum import crc32c as ours

    data = os.urandom(100_000)
    assert ours(data) == crc32c.crc32c(data)


def test_corrupt_snapshot_fails_before_its_last_byte_is_returned(s3_server: S3Server, s3_client: S3ReplicaClient) -> None:
    """The CRC32C is checked as the last range arrives: the caller never gets the whole object."""
    s3_client.write_snapshot(GEN, 1, io.BytesIO(b"snapshot bytes"))
    key = f"db/generations/{GEN}/snapshots/00000001.snapshot.lz4"
    raw = s3_server.raw_client()
    meta = raw.head_object(Bucket=s3_client.bucket, Key=key)["Metadata"]
    raw.put_object(Bucket=s3_client.bucket, Key=key, Body=b"snapshot bytez", Metadata=meta)
    with pytest.raises(ChecksumMismatchError, match=f"s3://{s3_client.bucket}/{key}: crc32c mismatch"):
        s3_client.open_snapshot(GEN, 1)  # one range holds it all


def test_snapshot_streams_in_ranges(s3_server: S3Server, s3_bucket: str) -> None:
    """A snapshot of many ranges reads back whole, whatever the read sizes, and a
    corrupted byte near its end fails the read that reaches the end."""
    client = make_s3_client(s3_server, s3_bucket, multipart_chunksize=100_000, multipart_concurrency=3)
    data = os.urandom(3 * MiB + 12345)
    client.write_snapshot(GEN, 1, io.BytesIO(data))
    with client.open_snapshot(GEN, 1) as f:
        assert f.read(10) == data[:10]
        got = [data[:10]]
        sizes = iter([1, 70_000, 250_000, 3, MiB] * 100)
        while chunk := f.read(next(sizes)):
            got.append(chunk)
    assert b"".join(got) == data

    key = f"db/generations/{GEN}/snapshots/00000001.snapshot.lz4"
    raw = s3_server.raw_client()
    meta = raw.head_object(Bucket=s3_bucket, Key=key)["Metadata"]
    raw.put_object(Bucket=s3_bucket, Key=key, Body=data[:-5] + b"xxxxx", Metadata=meta)
    returned = 0
    with client.open_snapshot(GEN, 1) as f, pytest.raises(ChecksumMismatchError, match="crc32c mismatch"):
        while chunk := f.read(MiB):
            returned += len(chunk)
    assert returned < len(data)


def test_reading_the_snapshot_header_downloads_one_range(s3_server: S3Server, s3_bucket: str,
                                                         fault_proxy: Callable[..., FaultProxy]) -> None:
    """A restore to a timestamp reads only the capture time at the start of a snapshot."""
    data = codec.snapshot_header(123) + os.urandom(5 * MiB)
    proxy = fault_proxy(s3_server.port)
    client = make_s3_client(s3_server, s3_bucket, endpoint=proxy.endpoint)
    client.write_snapshot(GEN, 1, io.BytesIO(data))
    before = proxy.stats["forwarded"]
    with client.open_snapshot(GEN, 1) as f:
        assert codec.read_snapshot_header(f) == 123
    assert proxy.stats["forwarded"] - before == 1
    with client.open_snapshot(GEN, 1) as f:
        assert f.read() == data
    assert proxy.stats["forwarded"] - before == 1 + 2  # the first 1 MiB, then the rest in one 8 MiB range


def test_snapshot_replaced_while_read_is_not_found(s3_server: S3Server, s3_bucket: str) -> None:
    """Later ranges are pinned to the first one's ETag: a snapshot rewritten under
    the same index midway fails (NotFoundError makes a restore start over) instead
    of mixing two versions. nanio ignores If-Match: there the CRC32C catches the mix."""
    client = make_s3_client(s3_server, s3_bucket, multipart_chunksize=MiB)
    client.write_snapshot(GEN, 1, io.BytesIO(os.urandom(3 * MiB)))
    expected = {"moto": (NotFoundError, "replaced while it was being read"),
                "nanio": (ChecksumMismatchError, "crc32c mismatch")}[s3_server.name]
    with client.open_snapshot(GEN, 1) as f:
        client.write_snapshot(GEN, 1, io.BytesIO(os.urandom(3 * MiB)))
        with pytest.raises(expected[0], match=expected[1]):
            f.read()


def _count_botocore_calls(client: S3ReplicaClient) -> Counter[str]:
    """botocore operations the client sends from now on, by name."""
    calls: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        calls[event_name.rsplit(".", 1)[-1]] += 1

    client._s3.meta.events.register("before-send.s3", count)
    return calls


def test_object_reads_skip_botocore(s3_server: S3Server, s3_bucket: str) -> None:
    """WAL segments and snapshot ranges come through lsr's own signed GETs (nanio
    checks every signature); a missing object still raises NotFoundError, through
    botocore, and does not turn the direct reads off."""
    client = make_s3_client(s3_server, s3_bucket, multipart_chunksize=MiB)
    segments = {Pos(GEN, 1, i * 4096): os.urandom(1000 + i) for i in range(5)}
    for pos, data in segments.items():
        client.write_wal_segment(pos, data)
    snapshot = os.urandom(3 * MiB + 5)
    client.write_snapshot(GEN, 1, io.BytesIO(snapshot))
    calls = _count_botocore_calls(client)
    assert [client.read_wal_segment(pos) for pos in segments] == list(segments.values())
    with client.open_snapshot(GEN, 1) as f:
        assert f.read() == snapshot
    assert calls["GetObject"] == 0, calls
    with pytest.raises(NotFoundError, match="00000009_00000000.wal.lz4"):
        client.read_wal_segment(Pos(GEN, 9, 0))
    assert calls["GetObject"] == 1
    assert client.read_wal_segment(Pos(GEN, 1, 0)) == segments[Pos(GEN, 1, 0)]
    assert calls["GetObject"] == 1


class _Refuser(BaseHTTPRequestHandler):
    """Answers every request 403, as S3 does to a request signed for the wrong region."""

    def do_GET(self) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuser)
    server.requests = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_refused_direct_read_falls_back_to_botocore_for_good(
    s3_server: S3Server, s3_client: S3ReplicaClient, refusing_server: ThreadingHTTPServer
) -> None:
    """A 403 to a direct GET costs one request: that read and all later ones go
    through botocore (which follows region redirects and retries). No S3 server
    here refuses a correctly signed request, so a stand-in server on 127.0.0.1
    takes the direct GETs' address: the one fault a real part cannot be made to give."""
    s3_client.write_wal_segment(Pos(GEN, 1, 0), b"first")
    s3_client.write_wal_segment(Pos(GEN, 1, 64), b"second")
    assert s3_client.read_wal_segment(Pos(GEN, 1, 0)) == b"first"
    assert s3_client._http is not None and s3_client._http.usable
    direct = S3HTTP(f"http://127.0.0.1:{refusing_server.server_address[1]}/{s3_client.bucket}", "us-east-1",
                    lambda: Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY), verify=False,
                    connect_timeout=5, read_timeout=5)
    s3_client.__dict__["_http"] = direct  # the direct path's address, taken over by the stand-in
    calls = _count_botocore_calls(s3_client)
    assert s3_client.read_wal_segment(Pos(GEN, 1, 0)) == b"first"
    assert s3_client.read_wal_segment(Pos(GEN, 1, 64)) == b"second"
    assert refusing_server.requests == 1  # type: ignore[attr-defined]
    assert calls["GetObject"] == 2
    assert not direct.usable


def test_corrupt_bytes_on_nanio_disk_detected(s3_servers: dict[str, S3Server]) -> None:
    """Bit rot in the server's own storage (nanio keeps objects as plain files)."""
    server = s3_servers["nanio"]
    client = make_s3_client(server, server.create_bucket())
    client.write_wal_segment(Pos(GEN, 1, 0), b"\x00" * 64)
    path = server.object_file(client.bucket, f"db/generations/{GEN}/wal/00000001_00000000.wal.lz4")
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="00000001_00000000.wal.lz4: crc32c mismatch"):
        client.read_wal_segment(Pos(GEN, 1, 0))


def test_transfers_survive_a_flaky_network(s3_server: S3Server, s3_bucket: str,
                                           fault_proxy: Callable[..., FaultProxy]) -> None:
    """20 % of requests fail (resets mid-upload and mid-download, 500, 503, 408, latency):
    botocore's retries and lsr's retries of cut-off bodies absorb all of it. The
    operations are sequential and the proxy seeded, so the fault pattern repeats."""
    MiB = 1 << 20
    proxy = fault_proxy(s3_server.port, seed=3)
    client = make_s3_client(s3_server, s3_bucket, endpoint=proxy.endpoint, multipart_threshold=5 * MiB,
                            multipart_chunksize=5 * MiB, multipart_concurrency=1)
    proxy.configure(ratio=0.2, faults=FAULTS, latency=0.02)
    big = os.urandom(11 * MiB)
    client.write_snapshot(GEN, 1, io.BytesIO(big))
    blobs = {Pos(GEN, 1, i * 64): os.urandom(3000 + i) for i in range(30)}
    for pos, data in blobs.items():
        client.write_wal_segment(pos, data)
    assert [w.pos for w in client.wal_segments(GEN)] == list(blobs)
    for pos, data in blobs.items():
        assert client.read_wal_segment(pos) == data
    with client.open_snapshot(GEN, 1) as f:
        assert f.read() == big
    injected = proxy.injected()
    assert injected.get("reset_download", 0) >= 1 and injected.get("reset_upload", 0) >= 1, injected
