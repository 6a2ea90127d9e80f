"""Names of generations, snapshots and WAL files, as Litestream 0.3.13 spells them.

Helpers come in ``format_*`` / ``parse_*`` pairs. Replica paths are always
'/'-separated (they double as object-store keys).
"""

from __future__ import annotations

import os
import re

from .errors import LitestreamError

__all__ = [
    "GENERATION_NAME_LEN",
    "SNAPSHOT_EXT",
    "WAL_SEGMENT_EXT",
    "SHADOW_WAL_EXT",
    "META_DIR_SUFFIX",
    "meta_dir",
    "new_generation_name",
    "is_generation_name",
    "format_snapshot_path",
    "parse_snapshot_path",
    "format_wal_segment_path",
    "parse_wal_segment_path",
    "format_shadow_wal_path",
    "parse_shadow_wal_path",
    "generations_dir",
    "generation_dir",
    "snapshots_dir",
    "wal_dir",
    "snapshot_path",
    "wal_segment_path",
    "LEASE_NAME",
    "lease_path",
]

GENERATION_NAME_LEN = 16
SNAPSHOT_EXT = ".snapshot.lz4"
WAL_SEGMENT_EXT = ".wal.lz4"
SHADOW_WAL_EXT = ".wal"
META_DIR_SUFFIX = "-litestream"
# Beside generations/: Go Litestream 0.3.13 lists only generations/ and never sees it.
LEASE_NAME = "lsr-lease.json"


def meta_dir(db_path: str, configured: str | None = None) -> str:
    """Where a database's shadow WAL and lsr's state live: ``configured`` (its
    ``meta-path:``), else beside it, ``.NAME-litestream`` (Go Litestream's place)."""
    if configured:
        return os.path.abspath(configured)
    directory, name = os.path.split(os.path.abspath(db_path))
    return os.path.join(directory, f".{name}{META_DIR_SUFFIX}")


_GENERATION_RE = re.compile(r"^[0-9a-f]{16}$")
_SNAPSHOT_RE = re.compile(r"^([0-9a-f]{8})\.snapshot\.lz4$")
_WAL_SEGMENT_RE = re.compile(r"^([0-9a-f]{8})_([0-9a-f]{8})\.wal\.lz4$")
_SHADOW_WAL_RE = re.compile(r"^([0-9a-f]{8})\.wal$")


def new_generation_name() -> str:
    # Not the secrets module: it imports hashlib, which maps OpenSSL (see digest.py).
    return os.urandom(GENERATION_NAME_LEN // 2).hex()


def is_generation_name(name: str) -> bool:
    return bool(_GENERATION_RE.match(name))


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def format_snapshot_path(index: int) -> str:
    return f"{index:08x}{SNAPSHOT_EXT}"


def parse_snapshot_path(path: str) -> int:
    m = _SNAPSHOT_RE.match(_basename(path))
    if not m:
        raise LitestreamError(f"cannot parse snapshot path: {path!r}")
    return int(m.group(1), 16)


def format_wal_segment_path(index: int, offset: int) -> str:
    return f"{index:08x}_{offset:08x}{WAL_SEGMENT_EXT}"


def parse_wal_segment_path(path: str) -> tuple[int, int]:
    m = _WAL_SEGMENT_RE.match(_basename(path))
    if not m:
        raise LitestreamError(f"cannot parse wal segment path: {path!r}")
    return int(m.group(1), 16), int(m.group(2), 16)


def format_shadow_wal_path(index: int) -> str:
    return f"{index:08x}{SHADOW_WAL_EXT}"


def parse_shadow_wal_path(path: str) -> int:
    m = _SHADOW_WAL_RE.match(_basename(path))
    if not m:
        raise LitestreamError(f"cannot parse shadow wal path: {path!r}")
    return int(m.group(1), 16)


def _join(root: str, *parts: str) -> str:
    root = root.rstrip("/")
    return "/".join(([root] if root else []) + list(parts))


def generations_dir(root: str) -> str:
    return _join(root, "generations")


def generation_dir(root: str, generation: str) -> str:
    if not generation:
        raise LitestreamError("cannot build generation path: generation required")
    return _join(root, "generations", generation)


def snapshots_dir(root: str, generation: str) -> str:
    return _join(generation_dir(root, generation), "snapshots")


def wal_dir(root: str, generation: str) -> str:
    return _join(generation_dir(root, generation), "wal")


def snapshot_path(root: str, generation: str, index: int) -> str:
    return _join(snapshots_dir(root, generation), format_snapshot_path(index))


def wal_segment_path(root: str, generation: str, index: int, offset: int) -> str:
    return _join(wal_dir(root, generation), format_wal_segment_path(index, offset))


def lease_path(root: str) -> str:
    return _join(root, LEASE_NAME)
