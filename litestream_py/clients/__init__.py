"""The registry of replica backends: config ``type:`` / URL scheme -> client class.

Backends are imported on first use, so boto3 loads only for S3 replicas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import ReplicaConfig
    from ..replica_client import ReplicaClient

__all__ = ["CLIENT_TYPES", "new_client"]

# type -> (module, class); each class has ``from_config(ReplicaConfig, read_only=...)``.
CLIENT_TYPES: dict[str, tuple[str, str]] = {
    "file": ("litestream_py.clients.file", "FileReplicaClient"),
    "s3": ("litestream_py.clients.s3", "S3ReplicaClient"),
}


def new_client(rc: ReplicaConfig, *, read_only: bool = False) -> ReplicaClient:
    """The client for a replica's config. ``read_only``: the caller only lists and
    reads, so a backend may skip what only writing needs (S3: loading botocore)."""
    replica_type = rc.replica_type()
    if replica_type not in CLIENT_TYPES:
        supported = ", ".join(sorted(CLIENT_TYPES))
        raise ConfigError(f"cannot create replica: unknown replica type {replica_type!r} (supported: {supported})")
    module, cls = CLIENT_TYPES[replica_type]
    client: ReplicaClient = getattr(importlib.import_module(module), cls).from_config(rc, read_only=read_only)
    return client
