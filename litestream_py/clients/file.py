"""Replica client for a directory on a local (or mounted) file system."""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import BinaryIO, Iterable, Iterator

from .. import paths
from ..config import ReplicaConfig, expand_path, parse_replica_url
from ..digest import digest_hex
from ..errors import ConfigError, LitestreamError, NotFoundError, PreconditionFailedError, StorageError
from ..fsutil import atomic_write, fsync_dir
from ..pos import LeaseObject, Pos, SnapshotInfo, WALSegmentInfo
from ..stats import OperationStats

__all__ = ["FileReplicaClient"]

log = logging.getLogger(__name__)

# Litestream creates replica files 0600 and directories 0700 unless told otherwise.
FILE_MODE = 0o600
DIR_MODE = 0o700
# Serialises the lease's compare-and-replace; flock is released when its holder dies.
LEASE_LOCK_NAME = ".lsr-lease.lock"


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=timezone.utc)


class FileReplicaClient:
    """Snapshots and WAL segments as files under ``root``."""

    type = "file"

    def __init__(self, root: str) -> None:
        if not root:
            raise StorageError("cannot open file replica: path required")
        self.root = os.path.abspath(root)
        self.operations = OperationStats()

    @classmethod
    def from_config(cls, rc: ReplicaConfig, *, read_only: bool = False) -> FileReplicaClient:
        path = rc.path
        if rc.url:
            path = parse_replica_url(rc.url)[2]
        if not path:
            raise ConfigError("cannot create file replica: path required")
        return cls(expand_path(path))

    def describe(self) -> str:
        return f"file://{self.root}"

    def _listdir(self, path: str) -> list[os.DirEntry[str]]:
        self.operations.add("LIST")
        try:
            with os.scandir(path) as it:
                return list(it)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list replica directory {path}: {exc.strerror}") from exc

    def generations(self) -> list[str]:
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise StorageError(f"cannot read file replica {self.root}: not a directory")
        root = paths.generations_dir(self.root)
        return sorted(e.name for e in self._listdir(root) if paths.is_generation_name(e.name) and e.is_dir())

    def delete_generation(self, generation: str) -> None:
        import shutil  # here, as the other rare ones: a restore's start-up need not import them

        self.operations.add("DELETE")
        shutil.rmtree(paths.generation_dir(self.root, generation), ignore_errors=True)

    def snapshots(self, generation: str) -> list[SnapshotInfo]:
        infos = []
        for e in self._listdir(paths.snapshots_dir(self.root, generation)):
            try:
                index = paths.parse_snapshot_path(e.name)
                st = e.stat()
            except (LitestreamError, FileNotFoundError):  # not a snapshot, or deleted since the listing
                continue
            infos.append(SnapshotInfo(generation, index, st.st_size, _mtime(st)))
        return sorted(infos, key=lambda i: i.index)

    def _write(self, path: str, src: BinaryIO | bytes | memoryview, created_at: datetime | None) -> os.stat_result:
        try:
            # Directories are made when missing, not checked before every write.
            with atomic_write(path, FILE_MODE, dir_mode=DIR_MODE) as f:
                if isinstance(src, (bytes, memoryview)):
                    f.write(src)
                else:
                    import shutil

                    shutil.copyfileobj(src, f, 1 << 20)
                f.flush()
                if created_at is not None:
                    # Before the rename: the file never appears with another time.
                    ts = created_at.timestamp()
                    os.utime(f.fileno(), (ts, ts))
                st = os.fstat(f.fileno())
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
        self.operations.add("PUT", st.st_size)
        return st

    def write_snapshot(
        self, generation: str, index: int, data: BinaryIO, created_at: datetime | None = None
    ) -> SnapshotInfo:
        path = paths.snapshot_path(self.root, generation, index)
        st = self._write(path, data, created_at)
        return SnapshotInfo(generation, index, st.st_size, _mtime(st))

    def open_snapshot(self, generation: str, index: int) -> BinaryIO:
        path = paths.snapshot_path(self.root, generation, index)
        try:
            f = open(path, "rb")
        except FileNotFoundError as exc:
            raise NotFoundError(f"cannot read snapshot {generation}/{index:08x}: not found at {path}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read snapshot {path}: {exc.strerror}") from exc
        self.operations.add("GET", os.fstat(f.fileno()).st_size)
        return f

    def delete_snapshot(self, generation: str, index: int) -> None:
        self.operations.add("DELETE")
        try:
            os.unlink(paths.snapshot_path(self.root, generation, index))
        except FileNotFoundError:
            pass

    def wal_segments(self, generation: str) -> list[WALSegmentInfo]:
        infos = []
        for e in self._listdir(paths.wal_dir(self.root, generation)):
            try:
                index, offset = paths.parse_wal_segment_path(e.name)
                st = e.stat()
            except (LitestreamError, FileNotFoundError):  # not a segment, or deleted since the listing
                continue
            infos.append(WALSegmentInfo(generation, index, offset, st.st_size, _mtime(st)))
        return sorted(infos, key=lambda i: (i.index, i.offset))

    def write_wal_segment(self, pos: Pos, data: bytes | memoryview | BinaryIO,
                          created_at: datetime | None = None) -> WALSegmentInfo:
        path = paths.wal_segment_path(self.root, pos.generation, pos.index, pos.offset)
        st = self._write(path, data, created_at)
        return WALSegmentInfo(pos.generation, pos.index, pos.offset, st.st_size, _mtime(st))

    def read_wal_segment(self, pos: Pos) -> bytes:
        path = paths.wal_segment_path(self.root, pos.generation, pos.index, pos.offset)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError as exc:
            raise NotFoundError(f"cannot read wal segment {pos}: not found at {path}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read wal segment {path}: {exc.strerror}") from exc
        self.operations.add("GET", len(data))
        return data

    def delete_wal_segments(self, positions: Iterable[Pos]) -> None:
        dirs = set()
        for pos in positions:
            path = paths.wal_segment_path(self.root, pos.generation, pos.index, pos.offset)
            self.operations.add("DELETE")
            try:
                os.unlink(path)
                dirs.add(os.path.dirname(path))
            except FileNotFoundError:
                pass
        for d in dirs:
            fsync_dir(d)

    # -- the lease ------------------------------------------------------------
    @contextmanager
    def _lease_lock(self) -> Iterator[None]:
        lock_path = os.path.join(self.root, LEASE_LOCK_NAME)
        try:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            except FileNotFoundError:  # the replica's first write; not checked before every renewal
                os.makedirs(self.root, mode=DIR_MODE, exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise StorageError(f"cannot lock the lease of {self.root}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read_lease(self) -> LeaseObject | None:
        path = paths.lease_path(self.root)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read lease {path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            data = os.read(fd, st.st_size + 1)  # a lease is a few hundred bytes: one read
            renewed_at = st.st_mtime
        except OSError as exc:
            raise StorageError(f"cannot read lease {path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        return LeaseObject(data, digest_hex(data), renewed_at)

    def write_lease(self, data: bytes, expect: str | None) -> str:
        path = paths.lease_path(self.root)
        with self._lease_lock():
            self._expect_lease(path, expect)
            self._write(path, data, None)
        return digest_hex(data)

    def renew_lease(self, data: bytes, expect: str, renewed_at: float) -> str:
        # The mtime is the renewal: rewriting the file by rename costs the kernel a
        # new inode and a writeback, for each replica of an idle sidecar every TTL / 3.
        path = paths.lease_path(self.root)
        with self._lease_lock():
            self._expect_lease(path, expect)
            try:
                os.utime(path, (renewed_at, renewed_at))
            except OSError as exc:
                raise StorageError(f"cannot renew lease {path}: {exc.strerror}") from exc
        return expect

    def _expect_lease(self, path: str, expect: str | None) -> None:
        current = self.read_lease()
        found = current.version if current is not None else None
        if found != expect:
            raise PreconditionFailedError(
                f"cannot write lease {path}: it is at version {found or 'none'}, expected {expect or 'none'}"
            )

    def delete_lease(self, expect: str) -> None:
        with self._lease_lock():
            current = self.read_lease()
            if current is not None and current.version == expect:
                os.unlink(paths.lease_path(self.root))
