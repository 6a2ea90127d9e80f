"""One test per mapping of an S3 / botocore error to lsr's errors.

Real servers produce every error they can (missing key, missing bucket, bad
credentials, denied writes, bad requests); the fault proxy, a real HTTP hop in
front of a real server, produces what a local server does not (throttling,
5xx, outages, broken transfers). A mock is used only where noted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import boto3
import pytest
from botocore.exceptions import FlexibleChecksumError

from support.faultproxy import FaultProxy
from support.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, make_s3_client, new_bucket_name, start_moto
from litestream_py.clients.s3 import S3ReplicaClient, S3Settings, translate_error
from litestream_py.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ChecksumMismatchError,
    NotFoundError,
    StorageError,
    ThrottledError,
)
from litestream_py.pos import Pos

GEN = "0123456789abcdef"
WRONG_SECRET = "wrong-secret-NEVER-PRINT-0d1e2f"
WRONG_KEY_ID = "AKIAWRONGKEYNEVERPRINT"


def assert_no_credentials(text: str) -> None:
    for secret in (SECRET_ACCESS_KEY, ACCESS_KEY_ID, WRONG_SECRET, WRONG_KEY_ID):
        assert secret not in text


@pytest.fixture(scope="module")
def auth_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, str, dict[str, str]]]:
    """A moto server that checks credentials (after 4 unauthenticated set-up actions).

    Yields the server, a bucket, and the keys of an IAM user allowed only to
    list and read.
    """
    server = start_moto(tmp_path_factory.mktemp("auth-moto"), {"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        bucket = server.create_bucket()  # action 1
        iam_client = boto3.client(
            "iam", endpoint_url=server.endpoint, region_name="us-east-1",
            aws_access_key_id="setup", aws_secret_access_key="setup",
        )
        iam_client.create_user(UserName="reader")  # action 2
        key = iam_client.create_access_key(UserName="reader")["AccessKey"]  # action 3
        # AWS authorizes a ListObjectsV2 by s3:ListBucket; moto 5.2.6 checks
        # the operation's own name, s3:ListObjectsV2 (AWS has no such action,
        # so granting it changes nothing there). Neither grants a write.
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:ListObjectsV2", "s3:GetObject"], "Resource": "*"}]}
        iam_client.put_user_policy(UserName="reader", PolicyName="read-only",
                                   PolicyDocument=json.dumps(policy))  # action 4
        yield server, bucket, {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        server.stop()


@pytest.fixture
def proxy(s3_server: S3Server, fault_proxy: Callable[..., FaultProxy]) -> FaultProxy:
    return fault_proxy(s3_server.port, seed=7)


def _proxied(server: S3Server, proxy: FaultProxy, bucket: str, **kwargs: object) -> S3ReplicaClient:
    return make_s3_client(server, bucket, endpoint=proxy.endpoint, max_attempts=2, **kwargs)  # type: ignore[arg-type]


# -- missing objects and buckets -------------------------------------------------

def test_missing_object_is_not_found(s3_client: S3ReplicaClient) -> None:
    with pytest.raises(NotFoundError) as exc:
        s3_client.read_wal_segment(Pos(GEN, 1, 0))
    assert "00000001_00000000.wal.lz4" in str(exc.value)
    with pytest.raises(NotFoundError, match="00000002.snapshot.lz4"):
        s3_client.open_snapshot(GEN, 2)


def test_missing_bucket_is_bucket_not_found(s3_server: S3Server) -> None:
    client = make_s3_client(s3_server, new_bucket_name())
    with pytest.raises(BucketNotFoundError, match="bucket does not exist"):
        client.generations()
    with pytest.raises(BucketNotFoundError):
        client.snapshots(GEN)
    # Last: nanio answers a PUT to a missing bucket without reading its body,
    # which leaves that keep-alive connection unusable.
    with pytest.raises(BucketNotFoundError):
        client.write_wal_segment(Pos(GEN, 1, 0), b"data")


def test_bad_request_is_storage_error(s3_servers: dict[str, S3Server]) -> None:
    """nanio rejects a two-letter bucket name: a 4xx with no special meaning."""
    client = make_s3_client(s3_servers["nanio"], "ab")
    with pytest.raises(StorageError, match="InvalidBucketName") as exc:
        client.generations()
    assert type(exc.value) is StorageError


# -- credentials ------------------------------------------------------------------

def test_unknown_access_key_is_access_denied_nanio(s3_servers: dict[str, S3Server]) -> None:
    server = s3_servers["nanio"]
    client = make_s3_client(server, server.create_bucket(), access_key_id=WRONG_KEY_ID, secret_access_key=WRONG_SECRET)
    with pytest.raises(AccessDeniedError, match="InvalidAccessKeyId") as exc:
        client.write_wal_segment(Pos(GEN, 1, 0), b"data")
    assert_no_credentials(str(exc.value))
    assert_no_credentials(repr(client))


def test_unknown_access_key_is_access_denied_moto(auth_moto: tuple[S3Server, str, dict[str, str]]) -> None:
    server, bucket, _ = auth_moto
    client = make_s3_client(server, bucket, access_key_id=WRONG_KEY_ID, secret_access_key=WRONG_SECRET)
    with pytest.raises(AccessDeniedError, match="InvalidAccessKeyId") as exc:
        client.generations()
    assert_no_credentials(str(exc.value))


def test_wrong_secret_is_access_denied(s3_servers: dict[str, S3Server]) -> None:
    server = s3_servers["nanio"]
    client = make_s3_client(server, server.create_bucket(), secret_access_key=WRONG_SECRET)
    with pytest.raises(AccessDeniedError, match="SignatureDoesNotMatch") as exc:
        client.generations()
    assert_no_credentials(str(exc.value))


def test_wrong_secret_is_access_denied_moto(auth_moto: tuple[S3Server, str, dict[str, str]]) -> None:
    server, bucket, keys = auth_moto
    client = make_s3_client(server, bucket, access_key_id=keys["id"], secret_access_key=WRONG_SECRET)
    with pytest.raises(AccessDeniedError, match="SignatureDoesNotMatch") as exc:
        client.write_wal_segment(Pos(GEN, 1, 0), b"data")
    assert keys["secret"] not in str(exc.value) and keys["id"] not in str(exc.value)


def test_denied_write_is_access_denied(auth_moto: tuple[S3Server, str, dict[str, str]]) -> None:
    """A read-only IAM user may list but not write: S3's AccessDenied."""
    server, bucket, keys = auth_moto
    client = make_s3_client(server, bucket, access_key_id=keys["id"], secret_access_key=keys["secret"])
    assert client.generations() == []
    with pytest.raises(AccessDeniedError, match="AccessDenied") as exc:
        client.write_wal_segment(Pos(GEN, 1, 0), b"data")
    assert keys["secret"] not in str(exc.value)


def test_forbidden_head_is_access_denied(s3_servers: dict[str, S3Server]) -> None:
    """A HEAD has no error body: a bare 403 still means access denied. (Snapshots
    are sized by a HEAD on servers that refuse a range past an object's end.)"""
    server = s3_servers["nanio"]
    client = make_s3_client(server, server.create_bucket(), secret_access_key=WRONG_SECRET)
    with pytest.raises(AccessDeniedError, match="403"):
        client._size(f"db/generations/{GEN}/snapshots/00000001.snapshot.lz4", "snapshot")


def test_no_credentials_is_access_denied(s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No keys anywhere: botocore refuses to sign, before any request is sent."""
    monkeypatch.delenv("LITESTREAM_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("LITESTREAM_SECRET_ACCESS_KEY", raising=False)
    settings = S3Settings(bucket=s3_bucket, path="db", region="us-east-1", endpoint=s3_server.endpoint,
                          force_path_style=True)
    client = S3ReplicaClient(settings)
    with pytest.raises(AccessDeniedError, match="no usable s3 credentials"):
        client.generations()


# -- faults the servers cannot produce: through the fault proxy ------------------------

def test_slowdown_is_throttled(s3_server: S3Server, s3_bucket: str, proxy: FaultProxy) -> None:
    """Every request answered 503 SlowDown (by the proxy) until retries run out."""
    proxy.configure(ratio=1.0, faults=["slowdown_503"])
    client = _proxied(s3_server, proxy, s3_bucket)
    with pytest.raises(ThrottledError, match="SlowDown"):
        client.write_wal_segment(Pos(GEN, 1, 0), b"data")
    with pytest.raises(ThrottledError):
        client.generations()
    assert proxy.stats["slowdown_503"] >= 4  # two attempts each


def test_internal_error_is_storage_error(s3_server: S3Server, s3_bucket: str, proxy: FaultProxy) -> None:
    proxy.configure(ratio=1.0, faults=["error_500"])
    client = _proxied(s3_server, proxy, s3_bucket)
    with pytest.raises(StorageError, match="InternalError") as exc:
        client.generations()
    assert type(exc.value) is StorageError


def test_refused_connection_has_one_stable_message(s3_server: S3Server, s3_bucket: str, proxy: FaultProxy) -> None:
    """Whatever the operation, an unreachable endpoint reads the same: logged once."""
    client = _proxied(s3_server, proxy, s3_bucket)
    proxy.outage("refuse")
    messages = set()
    for op in (client.generations, lambda: client.write_wal_segment(Pos(GEN, 1, 0), b"x"),
               lambda: client.read_wal_segment(Pos(GEN, 2, 0)), lambda: client.snapshots(GEN)):
        with pytest.raises(StorageError) as exc:
            op()
        messages.add(str(exc.value))
    assert messages == {f"cannot reach s3 endpoint {proxy.endpoint}: connection failed"}
    proxy.recover()
    assert client.generations() == []


def test_dropped_connection_is_storage_error(s3_server: S3Server, s3_bucket: str, proxy: FaultProxy) -> None:
    client = _proxied(s3_server, proxy, s3_bucket)
    proxy.outage("drop")
    with pytest.raises(StorageError, match=f"cannot reach s3 endpoint {proxy.endpoint}"):
        client.generations()
    proxy.recover()
    assert client.generations() == []


def test_read_timeout_is_storage_error(s3_server: S3Server, s3_bucket: str, proxy: FaultProxy) -> None:
    from datetime import timedelta

    proxy.configure(latency=1.5)
    client = _proxied(s3_server, proxy, s3_bucket, read_timeout=timedelta(seconds=0.3))
    with pytest.raises(StorageError, match="connection lost or timed out"):
        client.generations()


def test_download_broken_every_time_is_storage_error(s3_server: S3Server, s3_bucket: str, proxy: FaultProxy) -> None:
    """Every GET is cut off midway: lsr retries the broken body, then gives up."""
    client = _proxied(s3_server, proxy, s3_bucket)
    client.write_wal_segment(Pos(GEN, 1, 0), os.urandom(2000))
    proxy.configure(ratio=1.0, faults=["reset_download"])
    with pytest.raises(StorageError, match="connection lost or timed out"):
        client.read_wal_segment(Pos(GEN, 1, 0))
    assert proxy.stats["reset_download"] >= 2


def test_tls_to_plain_http_is_storage_error(s3_server: S3Server, s3_bucket: str) -> None:
    """An https:// endpoint that speaks plain HTTP: the TLS handshake fails."""
    client = make_s3_client(s3_server, s3_bucket, endpoint=f"https://127.0.0.1:{s3_server.port}", max_attempts=1)
    with pytest.raises(StorageError, match="TLS handshake failed"):
        client.generations()


def test_response_checksum_error_is_checksum_mismatch() -> None:
    """MOCK: botocore's own response checksum check failing needs a server that
    corrupts data in flight while sending a correct x-amz-checksum header, which
    neither moto nor nanio does; the exception is constructed here."""
    err = translate_error(FlexibleChecksumError(error_msg="Expected checksum X did not match calculated Y"),
                          "read wal segment s3://b/k", "http://127.0.0.1:1")
    assert isinstance(err, ChecksumMismatchError)
    assert "s3://b/k" in str(err)


def test_crc32c_mismatch_names_the_key(s3_server: S3Server, s3_client: S3ReplicaClient, tmp_path: Path) -> None:
    """An object whose bytes no longer match the CRC32C lsr stored with it."""
    s3_client.write_wal_segment(Pos(GEN, 1, 0), b"original bytes")
    key = f"db/generations/{GEN}/wal/00000001_00000000.wal.lz4"
    raw = s3_server.raw_client()
    metadata = raw.head_object(Bucket=s3_client.bucket, Key=key)["Metadata"]
    raw.put_object(Bucket=s3_client.bucket, Key=key, Body=b"tampered bytes", Metadata=metadata)
    with pytest.raises(ChecksumMismatchError, match=f"s3://{s3_client.bucket}/{key}: crc32c mismatch"):
        s3_client.read_wal_segment(Pos(GEN, 1, 0))
