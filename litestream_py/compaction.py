"""Compaction: behind the live edge, a WAL index's many small segments become a few large ones.

The live edge ships small segments for low lag; once they are older than the
replica's ``compaction-interval`` nobody needs them small any more, and every
object costs a PUT when written, a LIST entry, and a GET per restore. This
module owns when segments are merged (the policy) and the merge itself.

A merged segment keeps Litestream 0.3.13's layout: it is named by the offset
it starts at (the first of the segments it replaces) and holds their WAL
bytes back to back. Go 0.3.13's restore concatenates an index's segments in
offset order, checking only that offsets rise and the first is 0, so it reads
the merged object as it read the originals. Every commit keeps its capture
time (codec's skippable frame), so restores to a timestamp stay exact.

Order of writes: the merged object first, which replaces the first segment's
object in place (a rename on a file replica, a PUT on S3: both atomic), then
the others are deleted. A reader in between sees the merged object and
leftovers it covers: restore skips ranges it has applied (apply.WALApplier),
and one that finds a leftover gone starts over from a fresh listing, as it does
when retention deletes. A crash in between leaves covered leftovers: the next
pass deletes them before merging anything. Retention and compaction both
delete segments, so both hold the replica's ``prune_lock``.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import BinaryIO, Callable, Iterator

from . import codec
from .errors import NotFoundError
from .pos import Pos, WALSegmentInfo
from .encryption import is_age
from .errors import EncryptedReplicaError
from .replica_client import ReplicaClient, ReplicaReader
from .wal import WAL_HEADER_SIZE, WALHeader, commit_frame_ends

__all__ = [
    "DEFAULT_COMPACTION_INTERVAL",
    "MAX_COMPACTED_SEGMENT_SIZE",
    "BusyGate",
    "CompactionStats",
    "Compactor",
    "segment_extent",
]

log = logging.getLogger(__name__)

# How old a segment must be before it is merged, and how often a replica is
# looked at for such segments. Short, so replicas stay small; long enough that
# a follower tailing the live edge reads each small segment before it goes.
DEFAULT_COMPACTION_INTERVAL = timedelta(seconds=10)
# WAL bytes in one merged segment at most. Restores download segments in
# parallel and check up to apply.MAX_RUN_BYTES in one pass: segments much
# larger would serialize the download of a long chain.
MAX_COMPACTED_SEGMENT_SIZE = 16 << 20
# The most WAL one pass rewrites, so that a first pass over a large replica
# (after a restart) does not hold the prune lock, and retention, for long.
MAX_PASS_BYTES = 256 << 20

Commits = list[tuple[int, int]]

# Compaction waits while the replica ships WAL faster than BUSY_WAL_RATE
# (bytes a second, measured over BUSY_WINDOW seconds just before a pass): a
# burst of writes then keeps the CPU and the disk for itself, and the pass
# runs once it ends. A replica busy for longer is compacted anyway after
# MAX_BUSY_WAIT seconds, and until its backlog is done.
BUSY_WAL_RATE = 8 << 20
BUSY_WINDOW = 1.0
MAX_BUSY_WAIT = 60.0


class BusyGate:
    """When a compaction pass may run, from a replica's count of WAL bytes shipped.

    ``wait()`` is asked before each pass: 0.0 to run it now, or the seconds to
    wait before asking again. ``done()`` after a pass that left nothing to do.
    """

    def __init__(self, shipped: Callable[[], int], clock: Callable[[], float] = time.monotonic, *,
                 rate: float = BUSY_WAL_RATE, window: float = BUSY_WINDOW,
                 max_wait: float = MAX_BUSY_WAIT) -> None:
        self.shipped = shipped
        self.clock = clock
        self.rate = rate
        self.window = window
        self.max_wait = max_wait
        self._sample = (clock(), shipped())  # (when, bytes shipped by then)
        self._busy_since: float | None = None

    def wait(self) -> float:
        now, shipped = self.clock(), self.shipped()
        before, self._sample = self._sample, (now, shipped)
        if shipped == before[1]:
            return 0.0  # nothing shipped since the last look (an idle replica is not woken again)
        if self._busy_since is not None and now - self._busy_since >= self.max_wait:
            return 0.0  # busy for too long: compact anyway, and until done() (see MAX_BUSY_WAIT)
        elapsed = now - before[0]
        if elapsed > 2 * self.window:
            return self.window  # measure the rate afresh, over the next window
        if elapsed <= 0 or (shipped - before[1]) / elapsed < self.rate:
            return 0.0
        if self._busy_since is None:
            self._busy_since = before[0]
        return self.window

    def done(self) -> None:
        self._busy_since = None


@dataclass
class CompactionStats:
    """What compaction did to one replica since the process started (for status and logs)."""

    passes: int = 0
    merged: int = 0  # small segments replaced by merged ones
    written: int = 0  # merged segments written
    leftovers: int = 0  # covered segments of an interrupted pass, deleted
    bytes: int = 0  # WAL bytes rewritten
    last_pass: datetime | None = None

    def describe(self) -> str:
        return (f"{self.passes} passes, {self.merged} segments merged into {self.written}, "
                f"{self.leftovers} leftovers deleted, {self.bytes} WAL bytes rewritten")


@dataclass
class _Member:
    """A segment of a group to merge; its WAL bytes are not held (see _flush)."""

    seg: WALSegmentInfo
    length: int  # WAL bytes
    commits: Commits | None = None  # its commits' times, once read
    merged: int = 1  # shipped segments it holds (known once read)


class _Replaced(Exception):
    """A member's bytes changed between the two reads of a pass (see _flush)."""


@dataclass
class _Pass:
    generation: str
    budget: int = MAX_PASS_BYTES
    covered: list[WALSegmentInfo] = field(default_factory=list)  # leftovers to delete


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Compactor:
    """Merges one replica's segments older than ``age`` into segments of up to ``max_size`` WAL bytes."""

    def __init__(
        self,
        client: ReplicaClient,
        name: str,
        prune_lock: threading.Lock,
        *,
        age: timedelta = DEFAULT_COMPACTION_INTERVAL,
        max_size: int = MAX_COMPACTED_SEGMENT_SIZE,
        now: Callable[[], datetime] = _now,
        reader: ReplicaReader | None = None,
        seal: Callable[[bytes], bytes] | None = None,
        guard: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        # Reads go through ``reader`` (an encryption.AgeReader decrypts); a
        # merged segment is written through ``seal`` (encrypts), if given.
        self.reader: ReplicaReader = reader if reader is not None else client
        self.seal = seal
        # Called before every write and delete: raises when this sidecar may no
        # longer write to the replica (its lease was taken: see lease).
        self.guard = guard
        self.name = name
        self.prune_lock = prune_lock
        self.age = age
        self.max_size = max_size
        self.now = now
        self.stats = CompactionStats()
        # WAL bytes of segments already read, by (position, object size): a
        # merged segment is not downloaded again just to learn its length.
        self._lengths: dict[tuple[Pos, int], int] = {}
        self._page_sizes: dict[tuple[str, int], int] = {}

    def compact(self, generations: list[str] | None = None) -> bool:
        """One pass over ``generations`` (default: all). Returns True when a budget ran out (more to do).

        A sidecar passes only the generation it writes: an object store dates
        a merged segment by its upload, and a restore (lsr's, and Go's) takes
        the generation with the latest date for the newest one.
        """
        cutoff = self.now() - self.age
        more = False
        for generation in self.client.generations() if generations is None else generations:
            with self.prune_lock:
                try:
                    more = self._compact_generation(_Pass(generation), cutoff) or more
                except NotFoundError as exc:
                    # Retention or a wipe took a segment while this pass read: next pass.
                    log.info("%s: compaction of generation %s stopped: %s", self.name, generation, exc,
                             extra={"replica": self.name, "generation": generation})
        self.stats.passes += 1
        self.stats.last_pass = self.now()
        return more

    def _compact_generation(self, p: _Pass, cutoff: datetime) -> bool:
        segments = self.client.wal_segments(p.generation)
        by_index: dict[int, list[WALSegmentInfo]] = {}
        for seg in segments:
            by_index.setdefault(seg.index, []).append(seg)
        last = segments[-1] if segments else None
        for index, segs in sorted(by_index.items()):
            # The live edge and what follows it stay as shipped, and so does
            # the generation's last segment: a restarted shipper resumes from it
            # (an encrypted replica re-ships it whole: see Replica._calc_pos).
            old = []
            for seg in segs:
                if seg.created_at > cutoff or seg is last:
                    break
                old.append(seg)
            if len(old) > 1:
                self._compact_index(p, old)
            if p.budget <= 0:
                break
        if p.covered:
            self.guard()
            self.client.delete_wal_segments([s.pos for s in p.covered])
            self.stats.leftovers += len(p.covered)
        return p.budget <= 0

    def _compact_index(self, p: _Pass, segs: list[WALSegmentInfo]) -> None:
        group: list[_Member] = []
        end = -1  # where the last segment seen ends
        for seg in segs:
            known = self._lengths.get((seg.pos, seg.size))
            member = self._read(seg)[0] if known is None else _Member(seg, known)
            if end >= 0 and seg.offset < end:
                if seg.offset + member.length <= end:
                    p.covered.append(seg)  # left by an interrupted pass: merged already
                    continue
                log.warning("%s: wal segment %s overlaps the one before it; not compacting index %08x",
                            self.name, seg.pos, seg.index, extra={"replica": self.name})
                return
            if end >= 0 and seg.offset > end:  # a gap: merged objects must be contiguous
                self._flush(p, group)
                group = []
            elif group and sum(m.length for m in group) + member.length > self.max_size:
                self._flush(p, group)
                group = []
            group.append(member)
            end = seg.offset + member.length
            if p.budget <= 0:
                return
        self._flush(p, group)

    def _read(self, seg: WALSegmentInfo) -> tuple[_Member, bytes]:
        """A segment as a member of a group, with its WAL bytes."""
        raw = self.reader.read_wal_segment(seg.pos)
        if self.seal is None and is_age(raw):
            # Merged in plaintext, it would undo the encryption.
            raise EncryptedReplicaError(f"cannot compact wal segment {seg.pos}: it is age-encrypted and the replica "
                                        "has no age recipients to encrypt the merged segment to")
        data, commits = codec.decode_segment(raw, f"wal segment {seg.pos}")
        self._lengths[(seg.pos, seg.size)] = len(data)
        if seg.offset == 0 and len(data) >= WAL_HEADER_SIZE:
            self._page_sizes[(seg.generation, seg.index)] = WALHeader.parse(data[:WAL_HEADER_SIZE], verify=False).page_size
        member = _Member(seg, len(data), commits or self._go_commit_times(seg, data), codec.merged_count(raw))
        return member, data

    def _flush(self, p: _Pass, group: list[_Member]) -> None:
        """Merge ``group`` into one segment, streamed: each member is read again as
        it is compressed, so a pass holds one member's bytes at a time, not the
        group's (up to max_size) and its merged copies."""
        if len(group) < 2:
            return
        for i, listed in enumerate(group):
            if listed.commits is None:  # its length was known, not its commits
                group[i] = self._read(listed.seg)[0]
                if group[i].length != listed.length:
                    return  # replaced since it was listed: a later pass sees the new one
        commits = [c for m in group for c in m.commits or []]
        merged = sum(m.merged for m in group)
        length = sum(m.length for m in group)
        first, last = group[0].seg, group[-1].seg
        with tempfile.TemporaryFile(prefix="lsr-compact-") as tmp:
            try:
                codec.write_segment(tmp, self._members_bytes(group), commits, merged)
            except _Replaced:
                return
            tmp.seek(0)
            # The last part's time: listings keep dating the merged object like the
            # newest of what it replaces (Go's -timestamp reads listing times).
            blob: bytes | BinaryIO = tmp if self.seal is None else self.seal(tmp.read())
            self.guard()
            info = self.client.write_wal_segment(first.pos, blob, last.created_at)
        self._lengths[(info.pos, info.size)] = length
        self.guard()
        self.client.delete_wal_segments([m.seg.pos for m in group[1:]])
        self.stats.merged += len(group)
        self.stats.written += 1
        self.stats.bytes += length
        p.budget -= length
        log.info("%s: compacted %d wal segments into %s (%d bytes)", self.name, len(group), first.pos, length,
                 extra={"replica": self.name, "generation": first.generation, "pos": str(first.pos)})

    def _members_bytes(self, group: list[_Member]) -> Iterator[bytes]:
        """Each member's WAL bytes, read anew; raises _Replaced if one changed meanwhile."""
        for m in group:
            again, data = self._read(m.seg)
            if again.length != m.length or again.commits != m.commits:
                raise _Replaced(str(m.seg.pos))
            yield data
            del data  # before the next member is read

    def _go_commit_times(self, seg: WALSegmentInfo, data: bytes) -> Commits:
        """Commits of a segment without recorded times (written by Go, or by lsr
        holding no commit), dated by the segment's own timestamp as a restore
        would date them: merged, they keep that date."""
        page_size = self._page_size(seg.generation, seg.index)
        start = WAL_HEADER_SIZE if seg.offset == 0 else 0
        ns = int(seg.created_at.timestamp() * 1e9)
        return [(seg.offset + start + end, ns) for end in commit_frame_ends(memoryview(data)[start:], page_size)]

    def _page_size(self, generation: str, index: int) -> int:
        size = self._page_sizes.get((generation, index))
        if size is None:
            head, _ = codec.decode_segment(self.reader.read_wal_segment(Pos(generation, index, 0)))
            size = self._page_sizes[(generation, index)] = WALHeader.parse(head[:WAL_HEADER_SIZE], verify=False).page_size
        return size


def segment_extent(client: ReplicaReader, seg: WALSegmentInfo) -> tuple[int, int]:
    """A segment's WAL bytes and how many shipped segments it holds (more than 1: merged)."""
    raw = client.read_wal_segment(seg.pos)
    data, _ = codec.decode_segment(raw, f"wal segment {seg.pos}")
    return len(data), codec.merged_count(raw)
