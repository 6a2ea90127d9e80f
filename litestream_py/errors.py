"""The exception tree of lsr. Every error the engine raises is a LitestreamError.

Messages read ``cannot <verb> <object>: <detail>`` so that the command layer can
print them as one line.
"""

from __future__ import annotations

__all__ = [
    "LitestreamError",
    "ConfigError",
    "DatabaseError",
    "DatabaseBusyError",
    "WALFormatError",
    "ChecksumMismatchError",
    "NoGenerationError",
    "NoSnapshotError",
    "RestoreGapError",
    "OutputExistsError",
    "InUseError",
    "StorageError",
    "NotFoundError",
    "AccessDeniedError",
    "BucketNotFoundError",
    "ThrottledError",
    "TimestampOutOfRangeError",
    "EncryptedReplicaError",
    "ControlError",
    "ReplicationTimeoutError",
    "PreconditionFailedError",
    "LeaseHeldError",
    "LeaseLostError",
    "StandbyError",
    "SegmentError",
]


class LitestreamError(Exception):
    """Root of every error raised by lsr's engine."""


class ConfigError(LitestreamError):
    """The configuration (file, URL or flags) is invalid."""


class DatabaseError(LitestreamError):
    """The SQLite database cannot be replicated as it is (missing, not WAL, ...)."""


class DatabaseBusyError(DatabaseError):
    """The application held a lock past lsr's busy timeout; lsr retries."""


class WALFormatError(LitestreamError):
    """A WAL header or frame is not valid SQLite WAL data."""


class ChecksumMismatchError(LitestreamError):
    """Data read back does not match the checksum it was written with."""


class NoGenerationError(LitestreamError):
    """No generation is available to restore from."""


class NoSnapshotError(LitestreamError):
    """A generation has no snapshot to restore from."""


class RestoreGapError(LitestreamError):
    """The chain of WAL segments needed by a restore is broken."""


class OutputExistsError(LitestreamError):
    """The restore output path already exists."""


class InUseError(LitestreamError):
    """Another lsr process is already replicating the database, or writing the restore output."""


class TimestampOutOfRangeError(LitestreamError):
    """A point-in-time target lies outside what the replica holds."""


class StorageError(LitestreamError):
    """A replica backend failed."""


class NotFoundError(StorageError):
    """An object (snapshot, WAL segment) does not exist on the replica."""


class AccessDeniedError(StorageError):
    """The backend refused the credentials or the operation."""


class BucketNotFoundError(StorageError):
    """The bucket named in the replica configuration does not exist."""


class ThrottledError(StorageError):
    """The backend kept asking to slow down after every retry."""


class EncryptedReplicaError(LitestreamError):
    """A replica object is age-encrypted and no configured identity opens it."""


class ControlError(LitestreamError):
    """The running sidecar cannot be reached through its control socket, or refused a request."""


class ReplicationTimeoutError(LitestreamError):
    """Some replica did not hold a commit within the time a barrier allowed."""


class PreconditionFailedError(StorageError):
    """A conditional write lost: the object was created or replaced by someone else."""


class LeaseHeldError(LitestreamError):
    """Another writer holds the replica's lease."""


class LeaseLostError(LitestreamError):
    """This writer's lease on a replica was taken over: it must not write there again."""


class StandbyError(LitestreamError):
    """A warm standby cannot be followed as it is (see ``standby``)."""


class SegmentError(LitestreamError):
    """A follower cannot apply the next WAL segment: missing, out of order or corrupt."""
