"""A replica joins a DB to a storage client: it ships snapshots and WAL segments."""

from __future__ import annotations

import itertools
import logging
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Callable

from . import codec
from .encryption import AgeKeys, AgeReader
from .errors import LitestreamError, StorageError
from .fsutil import ReadBuffers
from .compaction import CompactionStats, Compactor
from .pos import Pos, SnapshotInfo
from .replica_client import ReplicaClient, ReplicaReader
from .ship_policy import DEFAULT_SYNC_INTERVAL, MAX_SEGMENT_SIZE, ShipPolicy
from .stats import ReplicaStats

if TYPE_CHECKING:
    from .db import DB
    from .lease import Lease

__all__ = [
    "Replica",
    "DEFAULT_RETENTION",
    "DEFAULT_RETENTION_CHECK_INTERVAL",
]

log = logging.getLogger(__name__)

DEFAULT_RETENTION = timedelta(hours=24)
DEFAULT_RETENTION_CHECK_INTERVAL = timedelta(hours=1)


def _now() -> datetime:
    return datetime.now(timezone.utc)


# Segments are encoded into these: one being written (_Puts) while the next is encoded.
# Up to a file replica's segment size: an object store's larger segments are
# encoded into a bytes of their own, which its upload shares instead of copying
# (reused buffers and the upload's copies of them raised an S3 sidecar's peak
# RSS from 90 to 104-106 MiB in the replication scenario).
MAX_REUSED_SEGMENT_BUFFER = 2 * MAX_SEGMENT_SIZE
_segment_buffers = ReadBuffers(max_kept=MAX_REUSED_SEGMENT_BUFFER, kept=2)


def _give_back(buf: bytearray, segment: bytes | memoryview) -> None:
    """Hand ``buf`` on to the next segment once ``segment``, a view of it, is read."""
    if isinstance(segment, memoryview):
        try:
            segment.release()
        except BufferError:
            return  # something holds on to it: the buffer is not reused
    _segment_buffers.give(buf)


class _Puts:
    """At most one segment write in flight on a thread of its own, while the
    shipper reads and compresses the next segment of a backlog (LZ4, fsync and
    the client's I/O release the GIL): the shipment's I/O waits overlap its CPU.

    ``cursor`` is where the segment in flight ends (None: none is). The thread
    starts with the first write handed over, so a shipment of one segment runs
    on the caller's thread alone; leaving the block waits for the last write.
    """

    def __init__(self) -> None:
        self.cursor: Pos | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def __enter__(self) -> _Puts:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()

    def submit(self, put: Callable[[], None], end: Pos) -> None:
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsr-put")
        self._pending = self._pool.submit(put)
        self.cursor = end

    def wait(self) -> None:
        """Until the write in flight is done (its error raised here)."""
        pending, self._pending = self._pending, None
        self.cursor = None
        if pending is not None:
            pending.result()


class Replica:
    """Ships one DB's shadow WAL to one ReplicaClient."""

    def __init__(
        self,
        db: DB[Replica],
        client: ReplicaClient,
        name: str = "",
        *,
        sync_interval: timedelta = DEFAULT_SYNC_INTERVAL,
        retention: timedelta = DEFAULT_RETENTION,
        retention_check_interval: timedelta = DEFAULT_RETENTION_CHECK_INTERVAL,
        snapshot_interval: timedelta | None = None,
        validation_interval: timedelta | None = None,
        age: AgeKeys | None = None,
    ) -> None:
        self.db = db
        self.client = client
        # What restore, verify and inspection read through: decrypts age objects.
        self.reader: ReplicaReader = AgeReader(client, age)
        # Objects are encrypted to these recipients (Go's rule: encrypt when there are recipients).
        self.age = age if age is not None and age.recipients else None
        self._name = name
        self.ship = ShipPolicy(sync_interval=sync_interval)  # when to ship (factory: from the storage)
        self.retention = retention
        self.retention_check_interval = retention_check_interval
        self.snapshot_interval = snapshot_interval
        self.validation_interval = validation_interval
        self.max_lag: timedelta | None = None  # unhealthy past this lag (health.max_lag)
        self.stats = ReplicaStats()
        self.lease: Lease | None = None  # when set, nothing is written without it (see lease)
        self._pos = Pos()
        self._mu = threading.Lock()
        # Only one sync or snapshot at a time per replica.
        self._sync_lock = threading.Lock()
        # Held by whatever deletes segments (retention, compaction, a wipe's
        # cleanup), so that none of them writes back what another deleted.
        self.prune_lock = threading.Lock()
        self.compaction_interval: timedelta | None = None  # None: never compact
        self._compactor: Compactor | None = None
        self._compaction_skip_logged = False

    @property
    def name(self) -> str:
        return self._name or self.client.type

    def __repr__(self) -> str:
        return f"Replica({self.name!r}, {self.client.describe()})"

    @property
    def encryption(self) -> str:
        """How this replica writes its objects: "plain", or "age" and its recipients' fingerprint."""
        return f"age {self.age.fingerprint}" if self.age is not None else "plain"

    def pos(self) -> Pos:
        with self._mu:
            return self._pos

    def _fields(self, pos: Pos | None = None) -> dict[str, str]:
        """Structured log fields: db, replica, generation and pos where known."""
        fields = {"replica": self.name, "db": self.db.path}
        if pos is not None and pos.generation:
            fields["generation"] = pos.generation
            if not pos.is_zero():
                fields["pos"] = str(pos)
        return fields

    def _set_pos(self, pos: Pos) -> None:
        with self._mu:
            self._pos = pos

    # -- shipping -------------------------------------------------------------
    def sync(self, include_partial: bool = True, full_while_growing: bool = False) -> bool:
        """Ship everything the DB's shadow WAL holds beyond this replica's position
        (``include_partial=False``: only full segments and the ends of finished indexes,
        leaving the current index's last, partial segment for later; ``full_while_growing``:
        that too once a segment has shipped and the shadow WAL has grown meanwhile,
        see ShipPolicy.full_segments_while_growing).

        Returns True when anything was written.
        """
        with self._sync_lock:
            if not self.db.pos().is_zero():  # nothing to write, no lease to take yet
                self._check_lease()
            try:
                if self.ship.checks_intact_each_sync:
                    self._check_intact()
                return self._sync(include_partial, full_while_growing)
            except StorageError:
                # The position advances only after a successful write, so it
                # stays valid: the failed upload is simply retried, without
                # re-listing the replica (requests are billed on object stores).
                raise
            except BaseException:
                # Recompute the position from the replica itself next time.
                self._set_pos(Pos())
                raise

    def _sync(self, include_partial: bool = True, full_while_growing: bool = False) -> bool:
        dpos = self.db.pos()
        if dpos.is_zero():
            return False
        wrote = False
        if self.pos().generation != dpos.generation:
            if not self.client.snapshots(dpos.generation):
                info = self._snapshot()
                wrote = True
                if info.generation != dpos.generation:
                    return wrote  # a new generation began meanwhile; next sync
            self._set_pos(self._calc_pos(dpos.generation))
        # Up to where the shadow WAL was when this sync began: chasing commits made
        # while it ships would put one small segment per commit for as long as a
        # write takes longer than the writer's commit interval (a PUT each, on
        # an object store); those go with the next shipment, which they wake.
        with _Puts() as puts:
            while self._ship_next(dpos, include_partial, puts):
                wrote = True
                if full_while_growing and self.db.pos() != dpos:
                    include_partial = False
        return wrote

    def check_intact(self) -> bool:
        """Whether the replica still holds a snapshot of the generation being shipped.

        If not (the replica was wiped under lsr: an operator cleaning backups,
        a bucket lifecycle rule), the next sync ships that generation again from
        a new snapshot; WAL segments written onto nothing would not restore.
        """
        with self._sync_lock:
            return self._check_intact()

    def _check_intact(self) -> bool:
        pos = self.pos()
        if pos.is_zero() or pos.generation != self.db.pos().generation or self.client.snapshots(pos.generation):
            return True
        log.warning("%s: generation %s has no snapshot on the replica any more (was it deleted?): "
                    "writing it again from a new snapshot", self.name, pos.generation, extra=self._fields(pos))
        # Segments shipped since the wipe lead nowhere without the ones before them.
        with self.prune_lock:
            self.client.delete_generation(pos.generation)
        self._set_pos(Pos())
        return False

    def _calc_pos(self, generation: str) -> Pos:
        """Where this replica ends: after its last WAL segment, or at its last snapshot."""
        snapshots = self.client.snapshots(generation)
        if not snapshots:
            raise LitestreamError(f"cannot resume replica {self.name}: generation {generation} has no snapshot")
        segments = self.client.wal_segments(generation)
        last_snapshot = max(s.index for s in snapshots)
        if not segments or segments[-1].index < last_snapshot:
            return Pos(generation, last_snapshot, 0)
        last = segments[-1]
        if self.age is not None:
            # Where an encrypted segment ends is inside its ciphertext, and the
            # private key need not be here: ship it again from its start, from
            # the shadow WAL (append-only, durable up to every shipped end), as
            # one segment of the same name holding as much or more.
            log.info("%s: resuming at the start of the last wal segment %s (encrypted)", self.name, last.pos)
            return Pos(generation, last.index, last.offset)
        data, _ = codec.decode_segment(self.client.read_wal_segment(last.pos), f"wal segment {last.pos}")
        return Pos(generation, last.index, last.offset + len(data))

    def has_full_segment(self) -> bool:
        """Whether a full segment, or the rest of a finished shadow index, waits to be shipped."""
        pos, dpos = self.pos(), self.db.pos()
        if pos.generation != dpos.generation or pos.is_zero():
            return False
        if pos.index < dpos.index:
            return True
        try:
            return dpos.offset >= self.db.shadow.segment_end(pos, self.ship.max_segment_size)
        except FileNotFoundError:  # the generation moved on meanwhile: the shipper will see
            return False

    def _ship_next(self, dpos: Pos, include_partial: bool = True, puts: _Puts | None = None) -> bool:
        """Write one WAL segment, or move to the next shadow index. False when caught up
        with ``dpos``, a published shadow position
        (``include_partial=False``: when only a partial segment of the current index is left).

        With ``puts``, a segment that more will follow is written on its thread
        while the caller reads and compresses the next one.
        """
        pos = puts.cursor if puts is not None and puts.cursor is not None else self.pos()
        if pos.generation != dpos.generation or pos.is_zero():
            return False
        shadow = self.db.shadow
        end = available = shadow.end(pos.generation, pos.index) if pos.index < dpos.index else dpos.offset
        if end <= pos.offset:
            if puts is not None:
                puts.wait()  # the index's segments are all written before the replica moves on
            if pos.index < dpos.index:
                if end < pos.offset or end == 0:
                    # The shadow index is gone or shorter than what was shipped:
                    # continue from a fresh snapshot of the current index.
                    log.warning("%s: shadow wal %s unavailable, taking a new snapshot", self.name,
                                shadow.wal_path(pos.generation, pos.index), extra=self._fields(pos))
                    self._snapshot()
                    self._set_pos(self._calc_pos(pos.generation))
                    return True
                self._set_pos(Pos(pos.generation, pos.index + 1, 0))
                return True
            return False
        full = shadow.segment_end(pos, self.ship.max_segment_size)
        if not include_partial and pos.index == dpos.index and end < full:
            return False
        end = min(end, full)
        segment: bytes | memoryview
        with shadow.read_segment(pos, end) as (data, commits):
            bound = codec.segment_bound(len(data), len(commits))
            if bound <= MAX_REUSED_SEGMENT_BUFFER:
                buf = _segment_buffers.take(bound)
                segment = memoryview(buf)[: codec.encode_segment_into(buf, data, commits)]
            else:
                buf, segment = bytearray(), codec.encode_segment(data, commits)
        if self.age is not None:
            # Commit times included: nothing readable at rest.
            plain, segment = segment, self.age.encrypt(bytes(segment))
            _give_back(buf, plain)
            buf = bytearray()
        # The segment's timestamp is its last commit's capture time, so even
        # Go Litestream's timestamp rule (file mtime) lands close to exact.
        created_at = datetime.fromtimestamp(commits[-1][1] / 1e9, timezone.utc) if commits else _now()

        def put() -> None:
            try:
                self.client.write_wal_segment(pos, segment, created_at)
            finally:
                _give_back(buf, segment)
            self._set_pos(Pos(pos.generation, pos.index, end))
            self.stats.shipped(end - pos.offset, commits[-1][1] if commits else None)
            log.debug("%s: wal segment written %s (%d bytes)", self.name, pos, end - pos.offset,
                      extra=self._fields(pos))

        if puts is not None and end < available:
            puts.submit(put, Pos(pos.generation, pos.index, end))
        else:
            if puts is not None:
                puts.wait()
            put()
        return True

    # -- snapshots -------------------------------------------------------------
    def snapshot(self) -> SnapshotInfo:
        """Write a snapshot of the database at the start of the current shadow index."""
        with self._sync_lock:
            self._check_lease()
            return self._snapshot()

    def _check_lease(self) -> None:
        if self.lease is not None:
            self.lease.ensure()

    def _snapshot(self) -> SnapshotInfo:
        generation = self.db.pos().generation
        taken = {s.index for s in self.client.snapshots(generation)} if generation else set()
        with tempfile.TemporaryFile(prefix="lsr-snapshot-") as tmp:
            with self.db.snapshot_source(taken) as pos:
                created_at = _now()
                header = codec.snapshot_header(int(created_at.timestamp() * 1e9))
                frames = itertools.chain([header], codec.compress_iter(self.db.file_chunks()))
                if self.age is not None:
                    self.age.encrypt_chunks(frames, tmp)
                else:
                    for piece in frames:
                        tmp.write(piece)
            tmp.seek(0)
            info = self.client.write_snapshot(pos.generation, pos.index, tmp, created_at)
        self.stats.shipped(0, None)
        log.info("%s: snapshot written %s/%08x (%d bytes)", self.name, pos.generation, pos.index, info.size,
                 extra=self._fields(pos))
        return info

    # -- retention -----------------------------------------------------------
    def enforce_retention(self) -> None:
        """Delete snapshots older than the retention period, and the WAL only they needed.

        The newest snapshot is always kept, as is every WAL segment from the
        oldest kept snapshot on.
        """
        self._check_lease()
        cutoff = _now() - self.retention
        generations = self.client.generations()
        snapshots = [s for g in generations for s in self.client.snapshots(g)]
        retained = [s for s in snapshots if s.created_at >= cutoff]
        current = self.db.pos().generation
        if not retained:
            retained = [self.snapshot()]
        with self.prune_lock:
            self._prune(generations, retained, current)

    def _prune(self, generations: list[str], retained: list[SnapshotInfo], current: str) -> None:
        for generation in generations:
            kept = [s for s in retained if s.generation == generation]
            if not kept:
                if generation == current:
                    continue  # never delete the generation being written
                self.client.delete_generation(generation)
                log.info("%s: generation %s deleted by retention", self.name, generation,
                         extra=self._fields(Pos(generation)))
                continue
            oldest = min(s.index for s in kept)
            for s in self.client.snapshots(generation):
                if s.index < oldest:
                    self.client.delete_snapshot(generation, s.index)
            old_segments = [w.pos for w in self.client.wal_segments(generation) if w.index < oldest]
            if old_segments:
                self.client.delete_wal_segments(old_segments)
                log.info("%s: %d wal segments before index %08x deleted by retention", self.name, len(old_segments), oldest,
                         extra=self._fields(Pos(generation)))

    # -- compaction ----------------------------------------------------------
    @property
    def compactor(self) -> Compactor | None:
        """This replica's compactor, or None when compaction is off (or cannot run: see compact)."""
        if self._compactor is None and self.compaction_interval:
            if self.age is not None and not self.age.identities:
                return None
            # An encrypted replica's segments are decrypted to merge, and the
            # merged one encrypted to the same recipients.
            self._compactor = Compactor(self.client, self.name, self.prune_lock, age=self.compaction_interval,
                                        reader=self.reader, seal=self.age.encrypt if self.age is not None else None,
                                        guard=self._check_lease)
        return self._compactor

    def compaction_stats(self) -> CompactionStats | None:
        """What compaction did here so far; None when it is off or cannot run."""
        compactor = self.compactor
        return compactor.stats if compactor is not None else None

    def compact(self) -> bool:
        """Merge the segments behind the live edge (see compaction); True if more is left to do."""
        compactor = self.compactor
        if compactor is None:
            if self.compaction_interval and not self._compaction_skip_logged:
                self._compaction_skip_logged = True
                log.info("%s: compaction skipped: the replica is age-encrypted and only its recipients are "
                         "configured (add age.identities to merge its segments)", self.name, extra=self._fields())
            return False
        # Only the generation being written: see Compactor.compact.
        generation = self.db.pos().generation
        return compactor.compact([generation] if generation else [])
