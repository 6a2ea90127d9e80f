"""lsr's own S3 read path: SigV4 signing, listings, GETs, and read-only clients that never load botocore.

nanio checks every signature, so a request it answers was signed right.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from support.procs import stop_process
from support.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, make_s3_client
from litestream_py.clients.s3 import FIRST_RANGE, S3ReplicaClient, S3Settings
from litestream_py.clients.s3.routes import standalone_route
from litestream_py.clients.s3.signed import S3HTTP, Credentials, sign
from litestream_py.errors import NotFoundError, StorageError
from litestream_py.pos import Pos

GEN = "0123456789abcdef"
# The example credentials and request of AWS's "Signature Calculations for the
# Authorization Header" (Amazon S3 API reference), with the signatures printed there.
AWS_EXAMPLE_CREDENTIALS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
AWS_EXAMPLE_TIME = datetime(2013, 5, 24, tzinfo=timezone.utc)


def _signature(headers: dict[str, str]) -> str:
    return headers["authorization"].rpartition("Signature=")[2]


def test_signature_of_aws_get_object_example() -> None:
    headers = sign("GET", "examplebucket.s3.amazonaws.com", "/test.txt", [], {"Range": "bytes=0-9"},
                   AWS_EXAMPLE_CREDENTIALS, "us-east-1", AWS_EXAMPLE_TIME)
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date," in headers["authorization"]
    assert _signature(headers) == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


def test_signature_of_aws_list_objects_example() -> None:
    headers = sign("GET", "examplebucket.s3.amazonaws.com", "/", [("prefix", "J"), ("max-keys", "2")], {},
                   AWS_EXAMPLE_CREDENTIALS, "us-east-1", AWS_EXAMPLE_TIME)
    assert _signature(headers) == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"


def test_session_token_is_sent_and_signed() -> None:
    credentials = Credentials("AKIAIOSFODNN7EXAMPLE", "secret", token="the-session-token")
    headers = sign("GET", "h", "/k", [], {}, credentials, "us-east-1", AWS_EXAMPLE_TIME)
    assert headers["x-amz-security-token"] == "the-session-token"
    assert "x-amz-security-token" in headers["authorization"].partition("SignedHeaders=")[2].split(",")[0]
    assert "secret" not in repr(credentials) and "the-session-token" not in repr(credentials)


def _direct(server: S3Server, bucket: str) -> S3HTTP:
    return S3HTTP(f"{server.endpoint}/{bucket}", "us-east-1", lambda: Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY),
                  verify=False, connect_timeout=5, read_timeout=5)


def test_listing_pages_and_odd_keys(s3_server: S3Server, s3_bucket: str) -> None:
    """Keys with spaces, plus, equals and ampersand signs (and on moto, percent signs
    and non-ASCII, which nanio does not take) come back as written, across
    continuation pages (two keys a page here)."""
    raw = s3_server.raw_client()
    odd = ["a b/3%41", "a b/ü/4"] if s3_server.name == "moto" else ["a b/3=x&y", "a b/(4)/4"]
    keys = ["a b/1", "a b/2+x", *odd, "a b/5", "other/6"]
    for key in keys:
        raw.put_object(Bucket=s3_bucket, Key=key, Body=key.encode())
    direct = _direct(s3_server, s3_bucket)
    listed = direct.list_objects("a b/", None, max_keys=2)
    assert listed is not None
    objects, prefixes = listed
    assert sorted(o.key for o in objects) == sorted(keys[:-1])
    assert all(o.size == len(o.key.encode()) for o in objects)
    assert all(o.last_modified.tzinfo is not None for o in objects)
    assert prefixes == []
    listed = direct.list_objects("a b/", "/", max_keys=2)
    assert listed is not None
    objects, prefixes = listed
    assert sorted(o.key for o in objects) == sorted(k for k in keys[:-1] if k.count("/") == 1)
    assert set(prefixes) == {odd[1].rpartition("/")[0] + "/"}  # nanio repeats it on each page


def test_get_range_and_missing_object(s3_servers: dict[str, S3Server]) -> None:
    """A range, a missing object, and a range past the end (nanio answers 400): the
    last two are left to botocore, and neither turns the direct path off."""
    server = s3_servers["nanio"]
    bucket = server.create_bucket()
    server.raw_client().put_object(Bucket=bucket, Key="k y", Body=b"0123456789", Metadata={"crc32c": "abc"})
    direct = _direct(server, bucket)
    reply = direct.get("k y", {"Range": "bytes=2-5"})
    assert reply is not None and reply.status == 206 and reply.body == b"2345"
    assert reply.headers["x-amz-meta-crc32c"] == "abc"
    assert direct.get("missing", {}) is None
    assert direct.get("k y", {"Range": "bytes=20-30"}) is None
    assert direct.usable


def test_wrong_secret_turns_the_direct_path_off(s3_servers: dict[str, S3Server]) -> None:
    server = s3_servers["nanio"]
    bucket = server.create_bucket()
    server.raw_client().put_object(Bucket=bucket, Key="k", Body=b"v")
    direct = S3HTTP(f"{server.endpoint}/{bucket}", "us-east-1", lambda: Credentials(ACCESS_KEY_ID, "wrong"),
                    verify=False, connect_timeout=5, read_timeout=5)
    assert direct.get("k", {}) is None
    assert not direct.usable
    assert direct.list_objects("", None) is None


def test_a_dead_kept_alive_connection_is_replaced(s3_servers: dict[str, S3Server]) -> None:
    """A pooled connection the other end has dropped (here: shut down under the pool)
    fails before any answer; the GET is sent again on a new connection."""
    server = s3_servers["nanio"]
    bucket = server.create_bucket()
    server.raw_client().put_object(Bucket=bucket, Key="k", Body=b"value")
    direct = _direct(server, bucket)
    reply = direct.get("k", {})
    assert reply is not None and reply.body == b"value"
    [conn] = direct._idle
    assert conn.sock is not None
    conn.sock.shutdown(socket.SHUT_RDWR)
    reply = direct.get("k", {})
    assert reply is not None and reply.body == b"value"
    assert direct.usable and len(direct._idle) == 1 and direct._idle[0] is not conn


SETTINGS = S3Settings(bucket="b", path="db", region="us-east-1", endpoint="http://127.0.0.1:9", force_path_style=True)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_CREDENTIAL_EXPIRATION", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "http_proxy", "HTTP_PROXY",
                 "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    return monkeypatch


def test_standalone_route_credentials(clean_env: pytest.MonkeyPatch) -> None:
    route = standalone_route(SETTINGS, "AK", "SK")
    assert route is not None and route.base_url == "http://127.0.0.1:9/b" and route.credentials() == Credentials("AK", "SK")
    assert standalone_route(SETTINGS, "AK", "") is None  # botocore reports the missing half
    assert standalone_route(SETTINGS, "", "") is None  # botocore's chain: profiles, roles...
    clean_env.setenv("AWS_ACCESS_KEY_ID", "EK")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "ES")
    clean_env.setenv("AWS_SESSION_TOKEN", "ET")
    route = standalone_route(SETTINGS, "", "")
    assert route is not None and route.credentials() == Credentials("EK", "ES", "ET")
    clean_env.setenv("AWS_CREDENTIAL_EXPIRATION", "2030-01-01T00:00:00Z")
    assert standalone_route(SETTINGS, "", "") is None


def test_standalone_route_declines_what_botocore_decides(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert standalone_route(S3Settings(bucket="b", region="us-east-1"), "AK", "SK") is None  # AWS itself
    virtual = S3Settings(bucket="b", endpoint="http://127.0.0.1:9", force_path_style=False)
    assert standalone_route(virtual, "AK", "SK") is None
    clean_env.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert standalone_route(SETTINGS, "AK", "SK") is None
    clean_env.delenv("HTTPS_PROXY")
    https = S3Settings(bucket="b", endpoint="https://s3.example", force_path_style=True)
    clean_env.setenv("AWS_CA_BUNDLE", "/some/bundle.pem")
    route = standalone_route(https, "AK", "SK")
    assert route is not None and route.verify == "/some/bundle.pem" and route.base_url == "https://s3.example/b"
    clean_env.delenv("AWS_CA_BUNDLE")
    (tmp_path / "aws-config").write_text("[default]\nca_bundle = /other.pem\n")
    assert standalone_route(https, "AK", "SK") is None
    skip = S3Settings(bucket="b", endpoint="https://s3.example", force_path_style=True, skip_verify=True)
    route = standalone_route(skip, "AK", "SK")
    assert route is not None and route.verify is False


def test_read_only_client_reads_without_botocore(s3_servers: dict[str, S3Server]) -> None:
    """A read-only client builds botocore's client only when a read needs it: here,
    to name a missing object."""
    server = s3_servers["nanio"]
    writer = make_s3_client(server, server.create_bucket())
    writer.write_wal_segment(Pos(GEN, 1, 0), b"segment")
    snapshot = os.urandom(FIRST_RANGE + 100)  # nanio refuses a first range past the end (botocore takes over)
    writer.write_snapshot(GEN, 1, io.BytesIO(snapshot))
    reader = make_s3_client(server, writer.bucket, read_only=True)
    assert reader._sdk is None
    assert reader.generations() == [GEN]
    assert [s.index for s in reader.snapshots(GEN)] == [1]
    assert reader.read_wal_segment(Pos(GEN, 1, 0)) == b"segment"
    with reader.open_snapshot(GEN, 1) as f:
        assert f.read() == snapshot
    assert reader._sdk is None
    with pytest.raises(NotFoundError, match="00000002_00000000.wal.lz4"):
        reader.read_wal_segment(Pos(GEN, 2, 0))
    assert reader._sdk is not None
    assert make_s3_client(server, writer.bucket)._sdk is not None  # a client that writes builds it at once


RESTORE_SCRIPT = """
import json, sys
from litestream_py.cmd.main import cli
code = 0
try:
    cli(sys.argv[1:], prog_name="lsr")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "botocore": any(m.split(".")[0] in ("botocore", "urllib3") for m in sys.modules)}))
"""


def test_restore_from_an_endpoint_never_loads_botocore(tmp_path: Path, s3_servers: dict[str, S3Server],
                                                       s3_env: dict[str, str]) -> None:
    """``lsr restore`` and ``lsr generations`` of a replica at an explicit endpoint: no
    botocore import at all (~0.35 s of every start), and the restored bytes are right."""
    import sqlite3

    server = s3_servers["nanio"]
    bucket = server.create_bucket()
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE t (x)")
        # Incompressible rows: the snapshot is over the first range's 1 MiB.
        conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(20_000),) for _ in range(100)])
    conn.close()
    writer = make_s3_client(server, bucket)
    from litestream_py import codec

    writer.write_snapshot(GEN, 0, io.BytesIO(codec.compress(db.read_bytes())))
    url = f"s3://{bucket}/db?endpoint={server.endpoint}"
    env = dict(os.environ, **s3_env)
    out = tmp_path / "restored.db"
    for args in (["generations", url], ["restore", "-o", str(out), url]):
        proc = subprocess.run([sys.executable, "-c", RESTORE_SCRIPT, *args], env=env, capture_output=True,
                              text=True, timeout=60)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result == {"code": 0, "botocore": False}, proc.stderr
    conn = sqlite3.connect(out)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (100,)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_route_from_botocore_when_only_botocore_knows_the_keys(
    s3_servers: dict[str, S3Server], clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Keys in a shared credentials file: botocore finds them, and direct reads follow
    the route of botocore's client (its address, region and keys); nanio checks the
    signatures, and botocore makes no GetObject or ListObjectsV2 call."""
    server = s3_servers["nanio"]
    for name in ("LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY"):
        clean_env.delenv(name, raising=False)
    credentials_file = tmp_path / "aws-credentials"
    credentials_file.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY_ID}\n"
                                f"aws_secret_access_key = {SECRET_ACCESS_KEY}\n")
    clean_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials_file))
    clean_env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = make_s3_client(server, server.create_bucket(), access_key_id="", secret_access_key="", read_only=True)
    assert client._route is None and client._sdk is not None
    calls: list[str] = []
    client._s3.meta.events.register("before-send.s3", lambda **kw: calls.append(kw["request"].url))
    client.write_wal_segment(Pos(GEN, 1, 0), b"segment")
    calls.clear()
    assert client.generations() == [GEN]
    assert client.read_wal_segment(Pos(GEN, 1, 0)) == b"segment"
    assert client._http is not None and client._http.usable
    assert calls == []


def test_credentials_that_fail_leave_the_read_to_botocore(s3_servers: dict[str, S3Server]) -> None:
    """Refreshable credentials whose refresh fails (botocore's own error) do not escape the direct path."""
    server = s3_servers["nanio"]

    def failing() -> Credentials:
        raise RuntimeError("refresh failed")

    direct = S3HTTP(f"{server.endpoint}/{server.create_bucket()}", "us-east-1", failing, verify=False,
                    connect_timeout=5, read_timeout=5)
    assert direct.get("k", {}) is None
    assert direct.list_objects("", None) is None


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no default bundle trusts, and its key."""
    import ipaddress
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lsr test")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """moto behind TLS with a self-signed certificate: its https endpoint and the certificate."""
    import ssl
    import time
    import urllib.request

    from support.procs import BIN_DIR
    from support.s3 import free_port

    work = tmp_path_factory.mktemp("tls-moto")
    cert, key = _self_signed_certificate(work)
    port = free_port()
    with open(work / "moto.log", "wb") as log:
        proc = subprocess.Popen([str(BIN_DIR / "moto_server"), "-H", "127.0.0.1", "-p", str(port), "-c", str(cert),
                                 "-k", str(key)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"https://127.0.0.1:{port}"
    try:
        context = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/data.json", timeout=1, context=context).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto did not start with TLS: {(work / 'moto.log').read_text()[-1000:]}")
                time.sleep(0.1)
        yield endpoint, cert
    finally:
        stop_process(proc, timeout=30)


def test_https_endpoint_trusts_the_configured_ca_bundle(
    tls_moto: tuple[str, Path], clean_env: pytest.MonkeyPatch
) -> None:
    """Over https, direct reads trust what botocore trusts: AWS_CA_BUNDLE here, or
    nothing extra with skip-verify; without either, a self-signed server fails
    with the TLS message, through botocore, and no read succeeds."""
    endpoint, cert = tls_moto
    clean_env.setenv("AWS_CA_BUNDLE", str(cert))
    settings = S3Settings(bucket="tls", path="db", region="us-east-1", endpoint=endpoint, force_path_style=True)
    writer = S3ReplicaClient(settings, ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    writer._s3.create_bucket(Bucket="tls")
    writer.write_wal_segment(Pos(GEN, 1, 0), b"over tls")
    reader = S3ReplicaClient(settings, ACCESS_KEY_ID, SECRET_ACCESS_KEY, read_only=True)
    assert reader.read_wal_segment(Pos(GEN, 1, 0)) == b"over tls"
    assert reader.generations() == [GEN] and reader._sdk is None
    clean_env.delenv("AWS_CA_BUNDLE")
    skipping = S3ReplicaClient(replace(settings, skip_verify=True), ACCESS_KEY_ID, SECRET_ACCESS_KEY, read_only=True)
    assert skipping.read_wal_segment(Pos(GEN, 1, 0)) == b"over tls" and skipping._sdk is None
    strict = S3ReplicaClient(settings, ACCESS_KEY_ID, SECRET_ACCESS_KEY, read_only=True, max_attempts=1)
    with pytest.raises(StorageError, match="TLS handshake failed"):
        strict.read_wal_segment(Pos(GEN, 1, 0))
    assert strict._http is not None and not strict._http.usable
