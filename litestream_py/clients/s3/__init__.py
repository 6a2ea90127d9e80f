"""Replica client for Amazon S3 and S3-compatible object stores (MinIO, B2, R2, ...).

Keys follow Litestream 0.3.13 exactly (``<path>/generations/<gen>/snapshots/...``),
so Go Litestream and lsr can read each other's replicas. This is the only package
that imports boto3/botocore, and only when a request needs it: every SDK error
is translated into the engine's errors by one function, ``errors.translate_error``.

Integrity: every object lsr writes carries the CRC32C of its bytes in the user
metadata ``x-amz-meta-crc32c``; reads verify it and raise ChecksumMismatchError
naming the key. Objects without it (written by Go Litestream) are accepted as
they are; their LZ4 frame checksum still guards them.

Resilience comes mostly from the SDK: botocore's ``standard`` retry mode
(backoff, throttling, 5xx, connection errors) and s3transfer's multipart
uploads. A GET whose body breaks off midway is retried here. Reads (GETs and
listings) go first through ``signed``, signed and sent without botocore's
per-call pipeline; a read-only client that can reach its bucket that way
(``read_only=True``, an explicit endpoint) never loads botocore at all. Snapshots are
read as a stream of ranged GETs fetched ahead of the reader (``stream``),
so a restore decompresses while it downloads and spools nothing to disk.

The modules: ``settings`` (bucket, path, region, endpoint from a config or a
URL), ``client`` (S3ReplicaClient), ``errors`` (botocore's errors mapped),
``signed`` (SigV4 and direct HTTP reads), ``routes`` (how direct reads reach
the bucket), ``stream`` (ranged snapshot reads).
"""

from __future__ import annotations

from .client import CHECKSUM_METADATA_KEY, S3ReplicaClient
from .errors import translate_error
from .settings import DEFAULT_REGION, S3Settings, parse_host, settings_from_config
from .stream import FIRST_RANGE

__all__ = [
    "S3ReplicaClient",
    "S3Settings",
    "parse_host",
    "settings_from_config",
    "translate_error",
    "DEFAULT_REGION",
    "CHECKSUM_METADATA_KEY",
    "FIRST_RANGE",
]
