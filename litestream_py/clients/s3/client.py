"""S3ReplicaClient: snapshots and WAL segments as objects under ``s3://bucket/path``."""

from __future__ import annotations

import io
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from functools import cached_property
from typing import Any, BinaryIO, Iterable, Iterator, cast

from ... import paths
from ...config import ReplicaConfig
from ...errors import (
    ChecksumMismatchError,
    ConfigError,
    LitestreamError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
)
from ...pos import LeaseObject, Pos, SnapshotInfo, WALSegmentInfo
from ...stats import OperationStats
from .checksum import crc32c
from .errors import RANGE_CODES, RangeRefused, body_errors, redact, translate_error
from .routes import sdk_route, standalone_route
from .settings import DEFAULT_REGION, S3Settings, env_credentials, settings_from_config
from .signed import S3HTTP, ListedObject
from .stream import FIRST_RANGE, ObjectReply, ObjectStream

__all__ = ["S3ReplicaClient", "CHECKSUM_METADATA_KEY"]

log = logging.getLogger(__name__)

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

# The conditions a GET may carry, by HTTP header name, as botocore's parameters.
_SDK_PARAMS = {"Range": "Range", "If-Match": "IfMatch"}


def _format_crc(data: bytes | memoryview) -> str:
    return f"{crc32c(data):08x}"


def _file_crc(f: BinaryIO) -> str:
    f.seek(0)
    value = 0
    while chunk := f.read(1 << 20):
        value = crc32c(chunk, value)
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
        self.operations = OperationStats()
        self._max_attempts = max_attempts
        self._multipart_threshold = multipart_threshold
        self._multipart_chunksize = multipart_chunksize
        self._multipart_concurrency = multipart_concurrency
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        if not access_key_id and not secret_access_key:
            access_key_id, secret_access_key = env_credentials()
        self._access_key_id, self._secret_access_key = access_key_id, secret_access_key
        # Kept only to scrub them from any text that reaches a message.
        self._secrets = tuple(s for s in (secret_access_key, access_key_id) if s)
        self._sdk_lock = threading.Lock()
        self._sdk: Any = None
        self._sdk_credentials: Any = None
        self._sdk_verify: bool | str = False
        self._route = standalone_route(settings, access_key_id, secret_access_key)
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
        # What botocore would trust by itself (AWS_CA_BUNDLE or ca_bundle, then
        # REQUESTS_CA_BUNDLE, then its default bundle), as Go's SDK does; worked
        # out here so that direct reads trust exactly the same (routes.sdk_route).
        from botocore.httpsession import get_cert_path

        self._sdk_verify = False if settings.skip_verify else str(get_cert_path(
            session.get_config_variable("ca_bundle") or os.environ.get("REQUESTS_CA_BUNDLE") or True))
        try:
            client = session.create_client(
                "s3",
                endpoint_url=settings.endpoint or None,
                verify=self._sdk_verify,
                config=config,
            )
        except (BotoCoreError, ValueError) as exc:
            detail = redact(str(exc), self._secrets)
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
        except Exception as exc:  # the one boundary where botocore's and urllib3's errors are mapped
            raise translate_error(exc, what, self.endpoint, self._secrets) from exc

    def _list(self, prefix: str, delimiter: str | None = "/") -> tuple[list[ListedObject], list[str]]:
        """Every object and common prefix under ``prefix``, across all pages.

        A prefix is listed once even where a server repeats it on several pages (nanio does).
        """
        self.operations.add("LIST")
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
                objects.extend(ListedObject(o["Key"], int(o["Size"]), o["LastModified"])
                               for o in page.get("Contents") or [])
                prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes") or [])
        return objects, list(dict.fromkeys(prefixes))

    def _delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), MAX_KEYS_PER_DELETE):
            batch = keys[i : i + MAX_KEYS_PER_DELETE]
            self.operations.add("DELETE")
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
        self.operations.add("PUT", size)
        log.debug("wrote %s (%d bytes, crc32c %s)", self._url(key), size, crc)

    def _get_object(self, key: str, what: str, byte_range: str | None = None,
                    if_match: str | None = None) -> ObjectReply:
        """One GET (of ``byte_range``, "bytes=A-B", when given) and its whole body.

        Tried first through ``signed``; botocore then does what that did not:
        retries (a body cut off mid-read is retried here), redirects, errors.
        """
        headers = {}  # as HTTP names them; botocore's parameters are _SDK_PARAMS of them
        if byte_range:
            headers["Range"] = byte_range
        if if_match:
            headers["If-Match"] = if_match
        reply = self._direct_get(key, headers)
        if reply is None:
            reply = self._sdk_get(key, what, headers)
        self.operations.add("GET", len(reply.body))
        return reply

    def _sdk_get(self, key: str, what: str, headers: dict[str, str]) -> ObjectReply:
        """The GET through botocore, which retries (and here, a body cut off mid-read)."""
        from botocore.exceptions import ClientError

        extra = {_SDK_PARAMS[name]: value for name, value in headers.items()}
        with self._errors(f"read {what} {self._url(key)}"):
            for attempt in range(1, self._max_attempts + 1):
                try:
                    response = self._s3.get_object(Bucket=self.bucket, Key=key, **extra)
                except ClientError as exc:
                    if "Range" in headers and (exc.response.get("Error") or {}).get("Code") in RANGE_CODES:
                        raise RangeRefused(f"cannot read {what} {self._url(key)}: range refused") from exc
                    raise
                try:
                    with response["Body"] as body:
                        data: bytes = body.read()
                    break
                except body_errors():
                    if attempt == self._max_attempts:
                        raise
                    log.debug("read of %s cut off (attempt %d), retrying", self._url(key), attempt)
        if len(data) != int(response["ContentLength"]):
            raise StorageError(f"cannot read {what} {self._url(key)}: short read ({len(data)} bytes)")
        metadata = {k.lower(): v for k, v in (response.get("Metadata") or {}).items()}
        return ObjectReply(data, response.get("ETag"), response.get("ContentRange"), metadata)

    def _direct_get(self, key: str, headers: dict[str, str]) -> ObjectReply | None:
        """The object (or the range in ``headers``) through ``signed``; None to leave the GET to botocore."""
        if self._http is None:
            return None
        reply = self._http.get(key, headers)
        if reply is None:
            return None
        metadata = {k[len("x-amz-meta-"):].lower(): v for k, v in reply.headers.items()
                    if k.lower().startswith("x-amz-meta-")}
        return ObjectReply(reply.body, reply.headers.get("ETag"), reply.headers.get("Content-Range"), metadata)

    @cached_property
    def _http(self) -> S3HTTP | None:
        """The direct read path, set up on the first read; None where only botocore can go."""
        route = self._route
        if route is None:
            s3 = self._s3  # builds botocore's client, and with it _sdk_credentials
            route = sdk_route(s3, self._sdk_credentials, self._sdk_verify, self.bucket, self.path)
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
        reply = self._get_object(key, what)
        self._check_crc(key, what, reply.metadata, _format_crc(reply.body))
        return reply.body

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
        self._delete_keys([o.key for o in objects])

    # -- snapshots --------------------------------------------------------------
    def snapshots(self, generation: str) -> list[SnapshotInfo]:
        objects, _ = self._list(paths.snapshots_dir(self.path, generation) + "/")
        infos = []
        for o in objects:
            try:
                index = paths.parse_snapshot_path(o.key)
            except LitestreamError:
                continue
            infos.append(SnapshotInfo(generation, index, o.size, _utc(o.last_modified)))
        return sorted(infos, key=lambda i: i.index)

    def write_snapshot(
        self, generation: str, index: int, data: BinaryIO, created_at: datetime | None = None
    ) -> SnapshotInfo:
        key = paths.snapshot_path(self.path, generation, index)
        size = self._upload_file(key, "snapshot", data)
        return SnapshotInfo(generation, index, size, created_at or _now())

    def _upload_file(self, key: str, what: str, data: BinaryIO) -> int:
        """Upload a seekable file from 0; returns its size."""
        crc = _file_crc(data)
        data.seek(0, io.SEEK_END)
        size = data.tell()
        data.seek(0)
        self._upload(key, what, data, size, crc)
        return size

    def open_snapshot(self, generation: str, index: int) -> BinaryIO:
        """The snapshot as a stream, downloaded while it is read (see ``ObjectStream``)."""
        key = paths.snapshot_path(self.path, generation, index)
        stream = ObjectStream(self, key, "snapshot", self._multipart_chunksize, self._multipart_concurrency)
        return cast(BinaryIO, stream)

    def delete_snapshot(self, generation: str, index: int) -> None:
        self._delete_keys([paths.snapshot_path(self.path, generation, index)])

    # -- wal segments -----------------------------------------------------------
    def wal_segments(self, generation: str) -> list[WALSegmentInfo]:
        objects, _ = self._list(paths.wal_dir(self.path, generation) + "/")
        infos = []
        for o in objects:
            try:
                index, offset = paths.parse_wal_segment_path(o.key)
            except LitestreamError:
                continue
            infos.append(WALSegmentInfo(generation, index, offset, o.size, _utc(o.last_modified)))
        return sorted(infos, key=lambda i: (i.index, i.offset))

    def write_wal_segment(self, pos: Pos, data: bytes | memoryview | BinaryIO,
                          created_at: datetime | None = None) -> WALSegmentInfo:
        key = paths.wal_segment_path(self.path, pos.generation, pos.index, pos.offset)
        if isinstance(data, (bytes, memoryview)):
            self._upload(key, "wal segment", io.BytesIO(data), len(data), _format_crc(data))
            size = len(data)
        else:
            size = self._upload_file(key, "wal segment", data)
        return WALSegmentInfo(pos.generation, pos.index, pos.offset, size, created_at or _now())

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
            reply = self._get_object(key, "lease")
        except NotFoundError:
            return None
        return LeaseObject(reply.body, reply.etag or "")

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
        self.operations.add("PUT", len(data))
        return str(out.get("ETag", ""))

    def renew_lease(self, data: bytes, expect: str, renewed_at: float) -> str:
        """A conditional PUT of the renewed lease (an object's time cannot be set apart from
        its content), read before and after: a server that ignores If-Match would let a stale
        holder overwrite the new one, or the new one overwrite this renewal."""
        current = self.read_lease()
        if current is not None and current.version == expect:
            version = self.write_lease(data, expect)
            current = self.read_lease()
            if current is not None and current.version == version:
                return version
        raise PreconditionFailedError(f"cannot renew lease {self._url(paths.lease_path(self.path))}: it changed")

    def delete_lease(self, expect: str) -> None:
        current = self.read_lease()
        if current is not None and current.version == expect:
            key = paths.lease_path(self.path)
            with self._errors(f"delete lease {self._url(key)}"):
                self._s3.delete_object(Bucket=self.bucket, Key=key)
            self.operations.add("DELETE")
