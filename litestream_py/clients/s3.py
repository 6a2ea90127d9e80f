"""Replica client for Amazon S3 and S3-compatible object stores (MinIO, B2, R2, ...).

Keys follow Litestream 0.3.13 exactly (``<path>/generations/<gen>/snapshots/...``),
so Go Litestream and lsr can read each other's replicas. This is the only module
that imports boto3/botocore, and only when a request needs it: every SDK error
is translated into the engine's errors by one function, ``translate_error``.

Integrity: every object lsr writes carries the CRC32C of its bytes in the user
metadata ``x-amz-meta-crc32c``; reads verify it and raise ChecksumMismatchError
naming the key. Objects without it (written by Go Litestream) are accepted as
they are; their LZ4 frame checksum still guards them.

Resilience comes mostly from the SDK: botocore's ``standard`` retry mode
(backoff, throttling, 5xx, connection errors) and s3transfer's multipart
uploads. A GET whose body breaks off midway is retried here. Reads (GETs and
listings) go first through ``s3_http``, signed and sent without botocore's
per-call pipeline; a read-only client that can reach its bucket that way
(``read_only=True``, an explicit endpoint) never loads botocore at all. Snapshots are
read as a stream of ranged GETs fetched ahead of the reader (``_ObjectStream``),
so a restore decompresses while it downloads and spools nothing to disk.
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO, Callable, Iterable, Iterator, cast
from urllib.parse import parse_qs, urlparse, urlsplit

import crc32c

from .. import paths
from ..config import ReplicaConfig, parse_replica_url
from ..errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ChecksumMismatchError,
    ConfigError,
    LitestreamError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    ThrottledError,
)
from ..pos import LeaseObject, Pos, SnapshotInfo, WALSegmentInfo
from .s3_http import S3HTTP, Credentials, quote_key

__all__ = [
    "S3ReplicaClient",
    "S3Settings",
    "parse_host",
    "settings_from_config",
    "translate_error",
    "DEFAULT_REGION",
    "CHECKSUM_METADATA_KEY",
]

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
# Stored as the user metadata header x-amz-meta-crc32c: 8 lowercase hex digits
# of the CRC32C (Castagnoli) of the object's bytes as stored (LZ4-compressed).
CHECKSUM_METADATA_KEY = "crc32c"
# S3 accepts at most this many keys per DeleteObjects request.
MAX_KEYS_PER_DELETE = 1000
# botocore's standard retry mode: exponential backoff with jitter, retries on
# throttling, 5xx, 408/RequestTimeout and connection errors.
RETRY_MODE = "standard"
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT = timedelta(seconds=5)
# Per socket read, not per request: a slow but live transfer is not cut off.
READ_TIMEOUT = timedelta(seconds=60)
# Enough for a restore's parallel downloads plus multipart concurrency.
MAX_POOL_CONNECTIONS = 32
# Objects at least this large go up (and down) in parts; S3 parts must be >= 5 MiB.
MULTIPART_THRESHOLD = 16 << 20
MULTIPART_CHUNKSIZE = 8 << 20
MULTIPART_CONCURRENCY = 4
# A snapshot is read in ranges of MULTIPART_CHUNKSIZE, up to MULTIPART_CONCURRENCY
# of them fetched ahead of the reader. The first GET is smaller: a caller that
# reads only lsr's snapshot header (to date it) downloads no more than this.
FIRST_RANGE = 1 << 20
# Reads that stay within this many bytes from the start fetch nothing ahead.
PEEK_BYTES = 4096

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
_ACCESS_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AccountProblem", "InvalidClientTokenId",
})
_THROTTLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequests", "TooManyRequestsException", "429",
})

# Hosts of S3-compatible services that Go Litestream 0.3.13 recognises in a URL.
_LOCALHOST_RE = re.compile(r"^(?:(.+)\.)?localhost$")
_BACKBLAZE_RE = re.compile(r"^(?:(.+)\.)?s3.([^.]+)\.backblazeb2.com$")
_FILEBASE_RE = re.compile(r"^(?:(.+)\.)?s3.filebase.com$")
_DIGITALOCEAN_RE = re.compile(r"^(?:(.+)\.)?([^.]+)\.digitaloceanspaces.com$")
_SCALEWAY_RE = re.compile(r"^(?:(.+)\.)?s3.([^.]+)\.scw\.cloud$")
_LINODE_RE = re.compile(r"^(?:(.+)\.)?([^.]+)\.linodeobjects.com$")

# A Range the server will not serve: any range of an empty object (416), and on
# some servers a range that runs past the object's end (400).
_RANGE_CODES = frozenset({"InvalidRange", "InvalidArgument"})

_TRUE = {"1", "t", "true", "yes", "on"}
_FALSE = {"0", "f", "false", "no", "off"}


@dataclass(frozen=True)
class S3Settings:
    """Where a replica lives. Credentials are deliberately not part of it."""

    bucket: str
    path: str = ""
    region: str = ""
    endpoint: str = ""
    force_path_style: bool = False
    skip_verify: bool = False


def _split_host_port(s: str) -> tuple[str, str]:
    if s.startswith("["):  # [ipv6]:port
        host, _, rest = s[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if s.count(":") == 1:
        host, port = s.split(":")
        return host, port
    return s, ""


def parse_host(s: str) -> tuple[str, str, str, bool]:
    """Bucket, region, endpoint and path-style from a URL host, as Go's ``s3.ParseHost``.

    ``bucket.localhost:9000`` means a local server at http://localhost:9000;
    hosts of a few S3-compatible services carry their region; any other host is
    the bucket name on AWS itself (virtual-hosted addressing).
    """
    host, port = _split_host_port(s)
    force_path_style = True
    scheme = "https"
    bucket = region = endpoint = ""
    if m := _LOCALHOST_RE.match(host):
        bucket, region = m.group(1) or "", DEFAULT_REGION
        scheme, endpoint = "http", "localhost"
    elif m := _BACKBLAZE_RE.match(host):
        bucket, region = m.group(1) or "", m.group(2)
        endpoint = f"s3.{region}.backblazeb2.com"
    elif m := _FILEBASE_RE.match(host):
        bucket, endpoint = m.group(1) or "", "s3.filebase.com"
    elif m := _DIGITALOCEAN_RE.match(host):
        bucket, region = m.group(1) or "", m.group(2)
        endpoint = f"{region}.digitaloceanspaces.com"
    elif m := _SCALEWAY_RE.match(host):
        bucket, region = m.group(1) or "", m.group(2)
        endpoint = f"s3.{region}.scw.cloud"
    elif m := _LINODE_RE.match(host):
        bucket, region = m.group(1) or "", m.group(2)
        endpoint = f"{region}.linodeobjects.com"
    else:
        bucket, force_path_style = host, False
    if endpoint and port:
        endpoint = f"{endpoint}:{port}"
    if endpoint:
        endpoint = f"{scheme}://{endpoint}"
    return bucket, region, endpoint, force_path_style


def _query_bool(query: dict[str, list[str]], *names: str) -> bool | None:
    for name in names:
        if name in query:
            value = query[name][-1].strip().lower()
            if value in _TRUE or value == "":
                return True
            if value in _FALSE:
                return False
            raise ConfigError(f"cannot parse s3 replica url: {name}={query[name][-1]!r} is not a boolean")
    return None


def settings_from_config(rc: ReplicaConfig) -> S3Settings:
    """Resolve a replica's S3 settings like Go Litestream 0.3.13's config loader.

    Explicit config keys win over what the URL implies. As an lsr extension a URL
    may carry ``?endpoint=URL&region=R&force-path-style=true&skip-verify=true``
    (Go 0.3.13 ignores a query; it only knows ``s3://bucket.localhost:PORT/path``
    for a local server).
    """
    if rc.url and rc.path:
        raise ConfigError("cannot create s3 replica: specify url or path, not both")
    if rc.url and rc.bucket:
        raise ConfigError("cannot create s3 replica: specify url or bucket, not both")
    bucket, path = rc.bucket, rc.path
    region, endpoint = rc.region, rc.endpoint
    # Path-style addressing when an endpoint is set: only AWS itself, which
    # needs no endpoint, prefers virtual-hosted buckets.
    force_path_style = endpoint != ""
    if rc.force_path_style is not None:
        force_path_style = rc.force_path_style
    skip_verify = rc.skip_verify
    if rc.url:
        _, host, upath = parse_replica_url(rc.url)
        ubucket, uregion, uendpoint, uforce = parse_host(host)
        query = parse_qs(urlparse(rc.url).query, keep_blank_values=True)
        if "endpoint" in query:
            uendpoint, uforce = query["endpoint"][-1], True
            uregion = uregion or DEFAULT_REGION
        if "region" in query:
            uregion = query["region"][-1]
        qforce = _query_bool(query, "force-path-style", "forcePathStyle")
        if qforce is not None:
            uforce = qforce
        qskip = _query_bool(query, "skip-verify", "skipVerify")
        skip_verify = skip_verify or bool(qskip)
        path = path or upath
        bucket = bucket or ubucket
        region = region or uregion
        endpoint = endpoint or uendpoint
        if rc.force_path_style is None and not force_path_style:
            force_path_style = uforce
    if not bucket:
        raise ConfigError("cannot create s3 replica: bucket required")
    if endpoint and "://" not in endpoint:
        endpoint = "https://" + endpoint  # as aws-sdk-go does for a bare host
    if not region and endpoint:
        region = DEFAULT_REGION  # the usual default of non-AWS object stores
    return S3Settings(
        bucket=bucket,
        path=path.strip("/"),
        region=region,
        endpoint=endpoint.rstrip("/"),
        force_path_style=force_path_style,
        skip_verify=skip_verify,
    )


def _env_credentials() -> tuple[str, str]:
    """LITESTREAM_ACCESS_KEY_ID / LITESTREAM_SECRET_ACCESS_KEY, unless AWS_* are set.

    Go's applyLitestreamEnv copies them to AWS_* only when those are unset; when
    AWS_* are set, botocore's own chain reads them (with AWS_SESSION_TOKEN).
    """
    if "AWS_ACCESS_KEY_ID" in os.environ or "AWS_SECRET_ACCESS_KEY" in os.environ:
        return "", ""
    return os.environ.get("LITESTREAM_ACCESS_KEY_ID", ""), os.environ.get("LITESTREAM_SECRET_ACCESS_KEY", "")


def _body_errors() -> tuple[type[BaseException], ...]:
    """A response body that breaks off while being read (the request itself succeeded)."""
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import ProtocolError, ReadTimeoutError as Urllib3ReadTimeoutError

    return (ProtocolError, Urllib3ReadTimeoutError, ResponseStreamingError, IncompleteReadError, ReadTimeoutError,
            ConnectionError)


def _format_crc(data: bytes | memoryview) -> str:
    return f"{crc32c.crc32c(data):08x}"


def _file_crc(f: BinaryIO) -> str:
    f.seek(0)
    value = 0
    while chunk := f.read(1 << 20):
        value = crc32c.crc32c(chunk, value)
    f.seek(0)
    return f"{value:08x}"


def _utc(t: datetime) -> datetime:
    return t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _parse_timestamp(value: str) -> datetime:
    """Listing and header times, parsed without dateutil (botocore's default).

    S3 sends ISO 8601 in listings and HTTP dates in headers; dateutil's general
    parser took 5-10 % of a restore's CPU per WAL segment (one LIST entry and
    one Last-Modified header each).
    """
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        pass
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        from botocore.utils import parse_timestamp

        return parse_timestamp(value)  # type: ignore[no-any-return]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def translate_error(exc: BaseException, what: str, endpoint: str, secrets: Iterable[str] = ()) -> LitestreamError:
    """The one place where SDK errors become the engine's errors.

    ``what`` names the operation and object ("write wal segment s3://b/k").
    Network failures get a message that names only the endpoint, so that an
    outage reads the same whatever was being transferred and the replicator
    logs it once. No credential ever reaches a message.
    """
    if isinstance(exc, LitestreamError):
        return exc
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        CredentialRetrievalError,
        EndpointConnectionError,
        FlexibleChecksumError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
        ProxyConnectionError,
        SSLError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        meta = exc.response.get("ResponseMetadata", {}) or {}
        code = str(err.get("Code") or meta.get("HTTPStatusCode") or "unknown")
        status = meta.get("HTTPStatusCode")
        message = _redact(str(err.get("Message") or "").strip(), secrets)
        detail = f"{code}: {message}" if message and message != code else code
        if code in _NOT_FOUND_CODES:
            return NotFoundError(f"cannot {what}: not found")
        if code == "PreconditionFailed" or status == 412:
            # If-Match failed: the object was replaced while being read in ranges.
            return NotFoundError(f"cannot {what}: the object was replaced while it was being read")
        if code in _NO_BUCKET_CODES:
            return BucketNotFoundError(f"cannot {what}: bucket does not exist ({code})")
        if code in _ACCESS_CODES or status == 403:
            return AccessDeniedError(
                f"cannot {what}: access denied ({detail}); check the credentials and bucket policy"
            )
        if code in _THROTTLE_CODES or status == 429:
            return ThrottledError(f"cannot {what}: s3 kept throttling requests ({code}) through every retry")
        suffix = f" (HTTP {status})" if status else ""
        return StorageError(f"cannot {what}: {detail}{suffix}")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return AccessDeniedError(
            f"cannot {what}: no usable s3 credentials (set access-key-id and secret-access-key, "
            "or LITESTREAM_ACCESS_KEY_ID and LITESTREAM_SECRET_ACCESS_KEY)"
        )
    if isinstance(exc, FlexibleChecksumError):
        return ChecksumMismatchError(f"cannot {what}: s3 response checksum mismatch")
    if isinstance(exc, SSLError):
        return StorageError(f"cannot reach s3 endpoint {endpoint}: TLS handshake failed (see skip-verify)")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError)):
        return StorageError(f"cannot reach s3 endpoint {endpoint}: connection failed")
    if isinstance(exc, (HTTPClientError, BotoConnectionError, ConnectionError, TimeoutError, *_body_errors())):
        return StorageError(f"cannot reach s3 endpoint {endpoint}: connection lost or timed out")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"cannot {what}: {_redact(str(exc), secrets)}")
    return StorageError(f"cannot {what}: {_redact(str(exc) or type(exc).__name__, secrets)}")


class S3ReplicaClient:
    """Snapshots and WAL segments as objects under ``s3://bucket/path``."""

    type = "s3"

    def __init__(
        self,
        settings: S3Settings,
        access_key_id: str = "",
        secret_access_key: str = "",
        *,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunksize: int = MULTIPART_CHUNKSIZE,
        multipart_concurrency: int = MULTIPART_CONCURRENCY,
        max_attempts: int = MAX_ATTEMPTS,
        connect_timeout: timedelta = CONNECT_TIMEOUT,
        read_timeout: timedelta = READ_TIMEOUT,
        read_only: bool = False,
    ) -> None:
        """``read_only``: the caller only lists and reads, so botocore is loaded only
        if a read needs it (see ``_standalone_route``)."""
        if not settings.bucket:
            raise ConfigError("cannot create s3 replica: bucket required")
        self.settings = settings
        self.bucket = settings.bucket
        self.path = settings.path
        self._max_attempts = max_attempts
        self._multipart_threshold = multipart_threshold
        self._multipart_chunksize = multipart_chunksize
        self._multipart_concurrency = multipart_concurrency
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        if not access_key_id and not secret_access_key:
            access_key_id, secret_access_key = _env_credentials()
        self._access_key_id, self._secret_access_key = access_key_id, secret_access_key
        # Kept only to scrub them from any text that reaches a message.
        self._secrets = tuple(s for s in (secret_access_key, access_key_id) if s)
        self._sdk_lock = threading.Lock()
        self._sdk: Any = None
        self._sdk_credentials: Any = None
        self._route = _standalone_route(settings, access_key_id, secret_access_key)
        if self._route is None or not read_only:
            self._sdk = self._create_sdk()
        self.endpoint = settings.endpoint if self._sdk is None else str(self._sdk.meta.endpoint_url)

    @classmethod
    def from_config(cls, rc: ReplicaConfig, *, read_only: bool = False) -> S3ReplicaClient:
        return cls(settings_from_config(rc), rc.access_key_id, rc.secret_access_key, read_only=read_only)

    def _create_sdk(self) -> Any:
        """botocore's client for this replica (~0.35 s with the import, the first time)."""
        # botocore's own session, not boto3's: importing boto3 imports s3transfer
        # too (~0.15 s at every start), which only a multipart upload needs.
        import botocore.session
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        settings = self.settings
        session = botocore.session.Session()
        session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
        if self._access_key_id or self._secret_access_key:
            session.set_credentials(self._access_key_id or None, self._secret_access_key or None)
        region = settings.region or session.get_config_variable("region") or DEFAULT_REGION
        config = Config(
            region_name=region,
            retries={"mode": RETRY_MODE, "total_max_attempts": self._max_attempts},
            connect_timeout=self._connect_timeout.total_seconds(),
            read_timeout=self._read_timeout.total_seconds(),
            max_pool_connections=MAX_POOL_CONNECTIONS,
            s3={"addressing_style": "path" if settings.force_path_style else "auto"},
        )
        try:
            client = session.create_client(
                "s3",
                endpoint_url=settings.endpoint or None,
                # None, not True: botocore then trusts the CA bundle configured by
                # AWS_CA_BUNDLE, ca_bundle or REQUESTS_CA_BUNDLE, as Go's SDK does.
                verify=False if settings.skip_verify else None,
                config=config,
            )
        except (BotoCoreError, ValueError) as exc:
            detail = _redact(str(exc), self._secrets)
            raise ConfigError(f"cannot create s3 replica {self.describe()}: {detail}") from exc
        self._sdk_credentials = session.get_credentials()
        return client

    @property
    def _s3(self) -> Any:
        """botocore's client, built here on first use when the constructor could do without it."""
        if self._sdk is not None:
            return self._sdk  # the usual case, on every write: no lock
        with self._sdk_lock:
            if self._sdk is None:
                self._sdk = self._create_sdk()
            return self._sdk

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.path}".rstrip("/")
        if self.settings.endpoint:
            where += f" (endpoint {self.settings.endpoint})"
        return where

    def __repr__(self) -> str:
        return f"S3ReplicaClient({self.describe()!r})"

    # -- helpers -------------------------------------------------------------
    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except LitestreamError:
            raise
        except Exception as exc:
            raise translate_error(exc, what, self.endpoint, self._secrets) from exc

    def _list(self, prefix: str, delimiter: str | None = "/") -> tuple[list[dict[str, Any]], list[str]]:
        """Every object and common prefix under ``prefix``, across all pages.

        A prefix is listed once even where a server repeats it on several pages (nanio does).
        """
        listed = self._http.list_objects(prefix, delimiter) if self._http is not None else None
        if listed is not None:
            objects, prefixes = listed
            return objects, list(dict.fromkeys(prefixes))
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        objects = []
        prefixes = []
        with self._errors(f"list {self._url(prefix)}"):
            for page in self._s3.get_paginator("list_objects_v2").paginate(**kwargs):
                objects.extend(page.get("Contents") or [])
                prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes") or [])
        return objects, list(dict.fromkeys(prefixes))

    def _delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), MAX_KEYS_PER_DELETE):
            batch = keys[i : i + MAX_KEYS_PER_DELETE]
            with self._errors(f"delete {self._url(batch[0])} and {len(batch) - 1} more"):
                out = self._s3.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            errors = out.get("Errors") or []
            if errors:
                first = errors[0]
                more = f" (and {len(errors) - 1} others)" if len(errors) > 1 else ""
                raise StorageError(
                    f"cannot delete {self._url(first.get('Key', '?'))}: "
                    f"{first.get('Code', '?')}: {first.get('Message', '')}{more}"
                )

    def _upload(self, key: str, what: str, f: BinaryIO, size: int, crc: str) -> None:
        """One PUT for a small object, a multipart upload from the threshold on."""
        metadata = {CHECKSUM_METADATA_KEY: crc}
        with self._errors(f"write {what} {self._url(key)}"):
            if size < self._multipart_threshold:
                # The body is seekable, so botocore rewinds it for each retry.
                self._s3.put_object(Bucket=self.bucket, Key=key, Body=f, Metadata=metadata)
            else:
                from boto3.s3.transfer import TransferConfig, create_transfer_manager

                config = TransferConfig(multipart_threshold=self._multipart_threshold,
                                        multipart_chunksize=self._multipart_chunksize,
                                        max_concurrency=self._multipart_concurrency)
                with create_transfer_manager(self._s3, config) as manager:
                    manager.upload(f, self.bucket, key, extra_args={"Metadata": metadata}).result()
        log.debug("wrote %s (%d bytes, crc32c %s)", self._url(key), size, crc)

    def _get_object(self, key: str, what: str, **extra: str) -> tuple[bytes, dict[str, Any]]:
        """One GET (of a range, when ``extra`` has one) and its whole body.

        Tried first through ``s3_http``; botocore then does what that did not:
        retries (a body cut off mid-read is retried here), redirects, errors.
        """
        found = self._direct_get(key, extra)
        if found is not None:
            return found
        from botocore.exceptions import ClientError

        with self._errors(f"read {what} {self._url(key)}"):
            for attempt in range(1, self._max_attempts + 1):
                try:
                    response = self._s3.get_object(Bucket=self.bucket, Key=key, **extra)
                except ClientError as exc:
                    if "Range" in extra and (exc.response.get("Error") or {}).get("Code") in _RANGE_CODES:
                        raise _RangeRefused(f"cannot read {what} {self._url(key)}: range refused") from exc
                    raise
                try:
                    with response["Body"] as body:
                        data: bytes = body.read()
                    break
                except _body_errors():
                    if attempt == self._max_attempts:
                        raise
                    log.debug("read of %s cut off (attempt %d), retrying", self._url(key), attempt)
        if len(data) != int(response["ContentLength"]):
            raise StorageError(f"cannot read {what} {self._url(key)}: short read ({len(data)} bytes)")
        return data, response

    def _direct_get(self, key: str, extra: dict[str, str]) -> tuple[bytes, dict[str, Any]] | None:
        """The object (or the range in ``extra``) through ``s3_http``, with its headers
        named as botocore names them; None to leave the GET to botocore."""
        if self._http is None or not extra.keys() <= _DIRECT_HEADERS.keys():
            return None  # a parameter only botocore knows how to send
        reply = self._http.get(key, {_DIRECT_HEADERS[k]: v for k, v in extra.items()})
        if reply is None:
            return None
        headers = reply.headers
        response: dict[str, Any] = {
            "ContentLength": len(reply.body),
            "Metadata": {k[len("x-amz-meta-"):].lower(): v for k, v in headers.items()
                         if k.lower().startswith("x-amz-meta-")},
        }
        for name, header in (("ETag", "ETag"), ("ContentRange", "Content-Range")):
            if header in headers:
                response[name] = headers[header]
        return reply.body, response

    @cached_property
    def _http(self) -> S3HTTP | None:
        """The direct read path, set up on the first read; None where only botocore can go."""
        route = self._route
        if route is None:
            s3 = self._s3  # builds botocore's client, and with it _sdk_credentials
            route = _sdk_route(s3, self._sdk_credentials, self.bucket, self.path)
        if route is None:
            return None
        return S3HTTP(route.base_url, route.region, route.credentials, verify=route.verify,
                      connect_timeout=self._connect_timeout.total_seconds(),
                      read_timeout=self._read_timeout.total_seconds())

    def _size(self, key: str, what: str) -> int:
        with self._errors(f"read {what} {self._url(key)}"):
            return int(self._s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def _get(self, key: str, what: str) -> bytes:
        """A small object in one GET, CRC32C verified."""
        data, response = self._get_object(key, what)
        self._check_crc(key, what, response.get("Metadata"), _format_crc(data))
        return data

    def _check_crc(self, key: str, what: str, metadata: dict[str, str] | None, actual: str) -> None:
        expected = (metadata or {}).get(CHECKSUM_METADATA_KEY)
        if expected is None:
            return  # written by Go Litestream: no checksum to compare
        if actual != expected.strip().lower():
            raise ChecksumMismatchError(
                f"cannot read {what} {self._url(key)}: crc32c mismatch "
                f"(object metadata says {expected}, downloaded bytes have {actual})"
            )

    # -- generations ------------------------------------------------------------
    def generations(self) -> list[str]:
        _, prefixes = self._list(paths.generations_dir(self.path) + "/")
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in prefixes)
        return sorted(n for n in names if paths.is_generation_name(n))

    def delete_generation(self, generation: str) -> None:
        objects, _ = self._list(paths.generation_dir(self.path, generation) + "/", delimiter=None)
        self._delete_keys([o["Key"] for o in objects])

    # -- snapshots --------------------------------------------------------------
    def snapshots(self, generation: str) -> list[SnapshotInfo]:
        objects, _ = self._list(paths.snapshots_dir(self.path, generation) + "/")
        infos = []
        for o in objects:
            try:
                index = paths.parse_snapshot_path(o["Key"])
            except LitestreamError:
                continue
            infos.append(SnapshotInfo(generation, index, int(o["Size"]), _utc(o["LastModified"])))
        return sorted(infos, key=lambda i: i.index)

    def write_snapshot(
        self, generation: str, index: int, data: BinaryIO, created_at: datetime | None = None
    ) -> SnapshotInfo:
        key = paths.snapshot_path(self.path, generation, index)
        crc = _file_crc(data)
        data.seek(0, io.SEEK_END)
        size = data.tell()
        data.seek(0)
        self._upload(key, "snapshot", data, size, crc)
        return SnapshotInfo(generation, index, size, created_at or _now())

    def open_snapshot(self, generation: str, index: int) -> BinaryIO:
        """The snapshot as a stream, downloaded while it is read (see ``_ObjectStream``)."""
        key = paths.snapshot_path(self.path, generation, index)
        stream = _ObjectStream(self, key, "snapshot", self._multipart_chunksize, self._multipart_concurrency)
        return cast(BinaryIO, stream)

    def delete_snapshot(self, generation: str, index: int) -> None:
        self._delete_keys([paths.snapshot_path(self.path, generation, index)])

    # -- wal segments -----------------------------------------------------------
    def wal_segments(self, generation: str) -> list[WALSegmentInfo]:
        objects, _ = self._list(paths.wal_dir(self.path, generation) + "/")
        infos = []
        for o in objects:
            try:
                index, offset = paths.parse_wal_segment_path(o["Key"])
            except LitestreamError:
                continue
            infos.append(WALSegmentInfo(generation, index, offset, int(o["Size"]), _utc(o["LastModified"])))
        return sorted(infos, key=lambda i: (i.index, i.offset))

    def write_wal_segment(self, pos: Pos, data: bytes, created_at: datetime | None = None) -> WALSegmentInfo:
        key = paths.wal_segment_path(self.path, pos.generation, pos.index, pos.offset)
        self._upload(key, "wal segment", io.BytesIO(data), len(data), _format_crc(data))
        return WALSegmentInfo(pos.generation, pos.index, pos.offset, len(data), created_at or _now())

    def read_wal_segment(self, pos: Pos) -> bytes:
        # Segments are at most a few MiB: one GET each (restores fetch hundreds).
        return self._get(paths.wal_segment_path(self.path, pos.generation, pos.index, pos.offset), "wal segment")

    def delete_wal_segments(self, positions: Iterable[Pos]) -> None:
        keys = [paths.wal_segment_path(self.path, p.generation, p.index, p.offset) for p in positions]
        if keys:
            self._delete_keys(keys)

    # -- the lease ------------------------------------------------------------
    def read_lease(self) -> LeaseObject | None:
        key = paths.lease_path(self.path)
        try:
            data, response = self._get_object(key, "lease")
        except NotFoundError:
            return None
        return LeaseObject(data, str(response.get("ETag", "")))

    def write_lease(self, data: bytes, expect: str | None) -> str:
        """One conditional PUT: If-None-Match: * to create, If-Match: ETag to replace.

        A server that ignores both writes anyway; ``lease.Lease`` reads the
        object back after each write to notice that it lost a race there.
        """
        from botocore.exceptions import ClientError

        key = paths.lease_path(self.path)
        condition = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
        with self._errors(f"write lease {self._url(key)}"):
            try:
                out = self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, **condition)
            except ClientError as exc:
                status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
                code = (exc.response.get("Error") or {}).get("Code")
                if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise PreconditionFailedError(
                        f"cannot write lease {self._url(key)}: another writer changed it first"
                    ) from exc
                raise
        return str(out.get("ETag", ""))

    def delete_lease(self, expect: str) -> None:
        current = self.read_lease()
        if current is not None and current.version == expect:
            key = paths.lease_path(self.path)
            with self._errors(f"delete lease {self._url(key)}"):
                self._s3.delete_object(Bucket=self.bucket, Key=key)


class _RangeRefused(StorageError):
    pass


# Request parameters that a direct GET sends, as the headers that carry them.
_DIRECT_HEADERS = {"Range": "Range", "IfMatch": "If-Match"}
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


@dataclass(frozen=True)
class _Route:
    """How direct reads (``s3_http``) reach the bucket."""

    base_url: str
    region: str
    credentials: Callable[[], Credentials]
    verify: bool | str  # False, or the CA bundle trusted for https


def _proxy_configured() -> bool:
    """Whether botocore would send requests through a proxy: then only botocore does."""
    return any(os.environ.get(name) or os.environ.get(name.upper()) for name in _PROXY_VARIABLES)


def _standalone_route(settings: S3Settings, access_key_id: str, secret_access_key: str) -> _Route | None:
    """The route that needs nothing from botocore, or None.

    It exists for a path-style bucket at an explicit endpoint, with credentials
    from the config or the environment, and no proxy: there, botocore would
    send exactly these requests. Anything else (AWS's own endpoints, profiles,
    instance roles) is worked out by botocore.
    """
    endpoint = urlsplit(settings.endpoint)
    if not settings.force_path_style or endpoint.scheme not in ("http", "https") or not endpoint.hostname:
        return None
    if _proxy_configured():
        return None
    if access_key_id or secret_access_key:
        if not (access_key_id and secret_access_key):
            return None  # botocore reports the half that is missing
        credentials = Credentials(access_key_id, secret_access_key)
    else:
        # The first link of botocore's credential chain: the AWS_* variables.
        env = os.environ
        if not env.get("AWS_ACCESS_KEY_ID") or not env.get("AWS_SECRET_ACCESS_KEY"):
            return None
        if env.get("AWS_CREDENTIAL_EXPIRATION"):
            return None  # credentials botocore re-reads when they expire
        token = env.get("AWS_SECURITY_TOKEN") or env.get("AWS_SESSION_TOKEN") or ""
        credentials = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], token)
    verify: bool | str = False
    if endpoint.scheme == "https" and not settings.skip_verify:
        bundle = _configured_ca_bundle()
        if bundle is None:
            return None
        verify = bundle
    base_url = f"{settings.endpoint.rstrip('/')}/{quote_key(settings.bucket)}"
    return _Route(base_url, settings.region or DEFAULT_REGION, lambda: credentials, verify)


def _configured_ca_bundle() -> str | None:
    """The CA bundle botocore would trust, when that is knowable without botocore.

    botocore takes AWS_CA_BUNDLE, then ca_bundle from the shared config file,
    then REQUESTS_CA_BUNDLE, then certifi's bundle (or its own copy).
    """
    if os.environ.get("AWS_CA_BUNDLE"):
        return os.environ["AWS_CA_BUNDLE"]
    config_file = os.path.expanduser(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    try:
        with open(config_file, encoding="utf-8", errors="replace") as f:
            if "ca_bundle" in f.read():
                return None  # for botocore to read, with the right profile
    except OSError:
        pass
    if os.environ.get("REQUESTS_CA_BUNDLE"):
        return os.environ["REQUESTS_CA_BUNDLE"]
    try:
        import certifi

        return str(certifi.where())
    except ImportError:
        return None


def _sdk_route(s3: Any, sdk_credentials: Any, bucket: str, path: str) -> _Route | None:
    """The route botocore's client takes: its address (read from one presigned
    URL), region, credentials and CA bundle; None when it cannot be followed."""
    http = getattr(getattr(s3, "_endpoint", None), "http_session", None)
    verify = getattr(http, "_verify", None)
    if sdk_credentials is None or verify is None or _proxy_configured():
        return None  # unsigned access, a botocore that keeps its session elsewhere, or a proxy
    probe = paths.generations_dir(path) + "/probe"
    try:
        url = urlparse(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": probe}))
    except Exception:
        return None
    suffix = "/" + quote_key(probe)
    if not url.path.endswith(suffix):
        return None  # an address that is not base + key
    if verify is True:
        from botocore.httpsession import get_cert_path

        verify = get_cert_path(True)

    def credentials() -> Credentials:
        frozen = sdk_credentials.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token or "")

    base_url = f"{url.scheme}://{url.netloc}{url.path[: -len(suffix)]}"
    return _Route(base_url, s3.meta.region_name, credentials, verify)


class _ObjectStream(io.RawIOBase):
    """An object read front to back through ranged GETs fetched ahead of the reader.

    The first range is fetched on open, so a missing object fails there. The
    rest are fetched only once the caller reads past PEEK_BYTES, at most
    ``ahead`` ranges at a time, each pinned to the first one's ETag (If-Match):
    an object replaced midway fails rather than mixing two versions. The
    CRC32C that lsr stored with the object is checked as the last range
    arrives: the read that would return the object's final bytes raises instead.
    """

    def __init__(self, client: S3ReplicaClient, key: str, what: str, range_size: int, ahead: int) -> None:
        super().__init__()
        self._client, self._key, self._what = client, key, what
        self._range_size, self._ahead = range_size, max(ahead, 1)
        data, response = self._first_range()
        content_range = response.get("ContentRange") or ""
        # "bytes 0-1048575/39374538"; no Content-Range means the whole object came back.
        self._size = int(content_range.rpartition("/")[2]) if "/" in content_range else len(data)
        self._etag: str | None = response.get("ETag")
        self._metadata: dict[str, str] | None = response.get("Metadata")
        self._crc = 0
        self._taken = 0  # bytes of the object taken into _buf so far
        self._requested = len(data)  # the first byte no range has asked for yet
        self._reading_ahead = False
        self._pending: deque[Future[bytes]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._buf = memoryview(b"")
        self._pos = 0  # bytes handed to the caller
        self._take(data)

    def _first_range(self) -> tuple[bytes, dict[str, Any]]:
        client, key, what = self._client, self._key, self._what
        try:
            return client._get_object(key, what, Range=f"bytes=0-{FIRST_RANGE - 1}")
        except _RangeRefused:
            size = client._size(key, what)  # one extra request, on strict servers only
            if size == 0:
                return client._get_object(key, what)
            return client._get_object(key, what, Range=f"bytes=0-{min(FIRST_RANGE, size) - 1}")

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
        extra = {"Range": f"bytes={start}-{end - 1}"}
        if self._etag:
            extra["IfMatch"] = self._etag
        data, _ = self._client._get_object(self._key, self._what, **extra)
        if len(data) != end - start:
            raise StorageError(
                f"cannot read {self._what} {self._client._url(self._key)}: bytes {start}-{end - 1} came back "
                f"as {len(data)} bytes"
            )
        return data

    def _take(self, data: bytes) -> None:
        self._crc = crc32c.crc32c(data, self._crc)
        self._taken += len(data)
        if self._taken >= self._size:
            self._client._check_crc(self._key, self._what, self._metadata, f"{self._crc:08x}")
        self._buf = memoryview(data)

