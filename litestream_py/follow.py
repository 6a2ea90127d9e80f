"""Follow a replica into a warm standby: restore once, then apply each new WAL segment.

The follower restores the newest generation's latest snapshot, then applies
the generation's WAL segments in order, each frame's salt and checksum
verified, whole transactions only, through ``standby.Standby`` (readers of
STANDBY only ever see committed states). Its position is kept durably beside
STANDBY, so a restarted follower resumes where it stopped.

What it listens for: on a file replica, inotify on the generation's
directories (plus a poll every interval); on an object store, one LIST per
interval at most: the current generation's WAL, and while nothing new comes,
every GENERATION_CHECK_EVERY-th interval the generations instead, each LIST
timed to land just after the primary's sidecar ships (see ``_Pacer``); after
a poll that applied something, an object store still waits its interval.
Nothing is downloaded while nothing is new.

What it does when the replica misbehaves: a missing segment (gap) or a corrupt
one is retried GAP_RETRIES times, then logged as an error (``status().error``)
and STANDBY stays at its last commit until a newer snapshot of the generation
lets it skip past; a new generation is restored from its snapshot into a
temporary file and swapped in as one transaction.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING

from . import codec
from .errors import LitestreamError, NotFoundError, SegmentError, StorageError, WALFormatError
from .fsutil import atomic_write, fsync_dir
from .pos import Pos, WALSegmentInfo
from .replica_client import ReplicaReader
from .restore import RestoreOptions, restore
from .restore_target import calc_restore_target
from .standby import STATE_SUFFIX, FollowState, Standby, read_database_pages
from .wal import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WALHeader, check_frames

if TYPE_CHECKING:
    from .watch import DirectoryWatcher

__all__ = ["DEFAULT_FOLLOW_INTERVAL", "Follower", "FollowStatus", "STATUS_SUFFIX", "read_status"]

log = logging.getLogger(__name__)

DEFAULT_FOLLOW_INTERVAL = timedelta(seconds=1)
# Polls that see the same gap before it is reported as an error: a segment
# is written before the next one, so a gap that lasts is a lost segment.
GAP_RETRIES = 3
# An idle object-store follower lists generations instead of WAL this often
# (one LIST per interval in all); a new generation only begins once the
# current one has gone quiet.
GENERATION_CHECK_EVERY = 3
# Decoded WAL applied in one transaction of STANDBY: bounds the memory and the
# time readers wait for a catch-up's apply.
MAX_APPLY_BYTES = 32 << 20
# How soon an idle follower notices SIGTERM.
STOP_CHECK_INTERVAL = 0.1
# Beside STANDBY: what ``lsr status STANDBY`` shows of its follower (a process
# with no control socket). Written when the error changes, at start and stop, and
# otherwise at most this often: applies can come every few milliseconds.
STATUS_SUFFIX = "-lsr-follow-status.json"
STATUS_WRITE_INTERVAL = 5.0


def read_status(standby: str) -> dict[str, object] | None:
    """The follower status left beside ``standby``, or None if it was never followed."""
    try:
        with open(os.path.abspath(standby) + STATUS_SUFFIX, encoding="utf-8") as f:
            status: dict[str, object] = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return status


@dataclass
class FollowStatus:
    """What ``lsr status`` and metrics report about a follower."""

    position: Pos
    applied_segments: int = 0
    error: str = ""  # the gap or corrupt segment the follower is stuck at


class Follower:
    """Keeps STANDBY (``output``) current with ``client`` until ``stop`` is set."""

    def __init__(
        self,
        client: ReplicaReader,
        output: str,
        stop: threading.Event,
        *,
        replica: str = "",
        interval: timedelta = DEFAULT_FOLLOW_INTERVAL,
        watch_dir: str = "",
    ) -> None:
        self.client = client
        self.output = os.path.abspath(output)
        self.stop = stop
        self.replica = replica
        self.interval = interval
        self.watch_dir = watch_dir  # a file replica's root: wake on inotify events under it
        self.standby = Standby(self.output, stop)
        self.state: FollowState | None = None
        self._status = FollowStatus(Pos())
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._gap = ""
        self._gap_seen = 0
        self._idle = 0  # polls in a row that found nothing new
        self._slots = 0  # polls spent on generations or snapshots instead of the WAL
        self._wake = threading.Event()
        self._pacer = _Pacer(interval.total_seconds())
        self._status_written = -math.inf

    def status(self) -> FollowStatus:
        with self._lock:
            return replace(self._status)

    def _set_state(self, state: FollowState, applied: int = 0, error: str | None = None) -> None:
        self.state = state
        with self._lock:
            self._status.position = Pos(state.generation, state.applied_index, state.applied)
            self._status.applied_segments += applied
            changed = error is not None and error != self._status.error
            if error is not None:
                self._status.error = error
        if changed or time.monotonic() - self._status_written >= STATUS_WRITE_INTERVAL:
            self._write_status(following=True)

    def _write_status(self, following: bool) -> None:
        status = self.status()
        record = {
            "standby": self.output, "replica": self.replica, "pid": os.getpid(), "following": following,
            "position": str(status.position) if status.position.generation else None,
            "applied_segments": status.applied_segments, "error": status.error or None,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            with atomic_write(self.output + STATUS_SUFFIX) as f:
                f.write(json.dumps(record).encode())
        except OSError as exc:  # status only: never stop following for it
            log.debug("cannot write follow status: %s", exc)
        self._status_written = time.monotonic()

    # -- the loop --------------------------------------------------------------
    def run(self) -> FollowState | None:
        """Restore or resume, then follow until stopped; STANDBY is left promotable."""
        if not self.start():
            return None
        watcher = self._start_watch()
        failing = ""
        try:
            while not self.stop.is_set():
                polled_at = time.time()
                try:
                    progressed = self.step()
                except StorageError as exc:
                    # An unreachable store, or an object retention removed mid-read: try again,
                    # warning once per outage (its cause may change as a connection times out).
                    if not failing:
                        log.warning("follow: %s (retrying every %s)", exc, self.interval)
                    elif str(exc) != failing:
                        log.info("follow: still failing: %s", exc)
                    failing = str(exc)
                    progressed = False
                else:
                    if failing:
                        log.info("follow: the replica is readable again")
                        failing = ""
                if self.watch_dir:
                    if not progressed:  # a file replica is listed again at once while it moves
                        self._sleep(self.interval.total_seconds())
                else:
                    self._sleep(self._pacer.delay(polled_at, time.time()))
        finally:
            if watcher is not None:
                watcher.stop()
            self.close()
        return self.state

    def start(self) -> bool:
        """Restore STANDBY, or resume it from its saved position; False if stopped while waiting."""
        if os.path.lexists(self.output):
            state = self.standby.open()
            log.info("resuming %s from %s/%08x:%d", self.output, state.generation, state.applied_index, state.applied)
        else:
            if not self._restore_fresh():
                return False
            state = self.standby.open()
        self._set_state(state)
        self._known = set(self.client.generations())
        return True

    def close(self) -> None:
        """Leave STANDBY complete up to the last applied commit, in WAL mode."""
        self.standby.close(self.state)
        if self.state is not None:
            self._write_status(following=False)
        log.info("stopped following; %s is at %s", self.output, self._status.position)

    def _sleep(self, seconds: float) -> None:
        """Until woken, stopped, or ``seconds`` are up (``stop`` cannot wake an Event wait)."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.wait(min(left, STOP_CHECK_INTERVAL)):
                break
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def _start_watch(self) -> DirectoryWatcher | None:
        if not self.watch_dir:
            return None
        from .watch import DirectoryWatcher  # inotify only where it is used

        watcher = DirectoryWatcher(self.wake)
        watcher.start(self.watch_dir)
        return watcher

    def step(self) -> bool:
        """One poll: apply what is new, else check for a new generation. True if anything moved."""
        state = self.state
        assert state is not None
        if self._idle and (self.watch_dir or self._idle % GENERATION_CHECK_EVERY == 0):
            # An object store spends this interval's one LIST here instead of on the WAL.
            self._slots += 1
            stuck = self._gap_seen >= GAP_RETRIES
            moved = self._resync_past_gap() if stuck and self._slots % 2 else self._check_generations()
            if moved or not self.watch_dir:
                self._idle = 0 if moved else self._idle + 1
                return moved
        listed = self.client.wal_segments(state.generation)
        segments = [s for s in listed if (s.index, s.offset) >= (state.index, state.offset)]
        if not segments:
            self._idle += 1
            return False
        if (segments[0].index, segments[0].offset) != (state.index, state.offset):
            # Compaction may have merged the segment that started here into one
            # that starts before: read on from inside it (see _apply).
            covering = [s for s in listed if s.index == state.index and s.offset < state.offset]
            segments[:0] = covering[-1:]
        try:
            moved = self._apply(segments)
        except SegmentError as exc:
            self._on_gap(str(exc))
            return False
        if moved:
            self._idle = 0
            if self._gap:
                log.info("follow: recovered from %s", self._gap)
                self._gap, self._gap_seen = "", 0
                self._set_state(self.state or state, error="")
        else:
            self._idle += 1
        return moved

    def _on_gap(self, problem: str) -> None:
        if problem != self._gap:
            self._gap, self._gap_seen = problem, 0
        self._gap_seen += 1
        self._idle += 1
        if self._gap_seen == GAP_RETRIES:
            state = self.state
            assert state is not None
            log.error("%s; %s stays at %s until a newer snapshot arrives", problem, self.output, self._status.position)
            self._set_state(state, error=problem)

    # -- generations and snapshots ---------------------------------------------
    def _check_generations(self) -> bool:
        """Switch to a generation that appeared since the follower started, once it has a snapshot."""
        assert self.state is not None
        new = [g for g in self.client.generations() if g not in self._known and g != self.state.generation]
        for generation in new:
            if not self.client.snapshots(generation):
                continue  # its snapshot is still being written
            log.warning("follow: new generation %s on the replica (was %s): restoring it", generation,
                        self.state.generation)
            self._known.update(new)
            self._install(generation)
            return True
        return False

    def _resync_past_gap(self) -> bool:
        """Skip a lasting gap (or corrupt segment) from a newer snapshot of the generation, if there is one."""
        state = self.state
        assert state is not None
        if not any(s.index > state.index for s in self.client.snapshots(state.generation)):
            return False
        log.warning("follow: skipping past the gap from a newer snapshot of generation %s", state.generation)
        self._install(state.generation)
        self._gap, self._gap_seen = "", 0
        self._set_state(self.state or state, error="")
        return True

    def _restore_snapshot(self, generation: str, output: str) -> FollowState:
        """Restore ``generation``'s latest snapshot (no WAL) into ``output``."""
        snapshots = self.client.snapshots(generation)
        if not snapshots:
            raise LitestreamError(f"cannot follow generation {generation}: it has no snapshot")
        index = snapshots[-1].index
        restore(self.client, RestoreOptions(output_path=output, generation=generation, pos=Pos(generation, index, 0)))
        return FollowState(self.replica, generation, index, 0, (0, 0), "", index, 0)

    def _restore_fresh(self) -> bool:
        """Restore STANDBY from scratch (False if stopped first); its follow state exists before STANDBY does.

        A replica without a generation yet (the primary's sidecar is starting) is waited for.
        """
        generation, _ = calc_restore_target(self.client)
        if not generation:
            log.info("waiting for a generation on %s", self.replica or "the replica")
        while not generation:
            self._sleep(self.interval.total_seconds())
            if self.stop.is_set():
                return False
            generation, _ = calc_restore_target(self.client)
        tmp = f"{self.output}.{os.getpid()}.lsr-follow.tmp"
        for leftover in (tmp, tmp + STATE_SUFFIX):
            if os.path.lexists(leftover):
                os.unlink(leftover)
        state = self._restore_snapshot(generation, tmp)
        try:
            Standby.prepare(tmp, state)
            os.replace(tmp + STATE_SUFFIX, self.output + STATE_SUFFIX)
            os.link(tmp, self.output)  # never replaces a file that appeared meanwhile
        finally:
            os.unlink(tmp)
        fsync_dir(os.path.dirname(self.output))
        log.info("restored %s from generation %s snapshot %08x; following", self.output, generation, state.index)
        return True

    def _install(self, generation: str) -> None:
        """Swap STANDBY to ``generation``'s latest snapshot in one transaction."""
        before = self.state
        assert before is not None
        tmp = f"{self.output}.{os.getpid()}.lsr-follow-swap.tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        try:
            after = self._restore_snapshot(generation, tmp)
            pages, count = read_database_pages(tmp)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        self.standby.apply(pages, count, before, after)
        self._set_state(after)
        self._idle = 0

    # -- WAL segments ----------------------------------------------------------
    def _apply(self, segments: list[WALSegmentInfo]) -> bool:
        """Verify and apply the contiguous run of ``segments`` from the state's position.

        Raises SegmentError at a gap or a corrupt segment, after applying what came before it.
        """
        start = self.state
        assert start is not None
        cur = _Cursor(start)
        clean = start
        pages: dict[int, bytes] = {}
        db_pages: int | None = None
        batch, applied_count = 0, 0
        problem = ""
        for seg in segments:
            where = f"wal segment {seg.generation}/{seg.index:08x}_{seg.offset:08x}"
            if seg.index == cur.index + 1 and seg.offset == 0 and cur.offset > 0:
                cur.next_index()
            inside = seg.index == cur.index and seg.offset < cur.offset
            if not inside and (seg.index, seg.offset) != (cur.index, cur.offset):
                problem = f"cannot follow generation {seg.generation}: missing wal segment at {cur.index:08x}_{cur.offset:08x} (next is {seg.index:08x}_{seg.offset:08x})"
                break
            try:
                data, commits = codec.decode_segment(self.client.read_wal_segment(seg.pos), where)
                if inside:  # a merged segment holding the position: only what lies past it is new
                    if seg.offset + len(data) <= cur.offset:
                        continue
                    data = data[cur.offset - seg.offset :]
                if commits:
                    self._pacer.saw_segment(commits[-1][1] / 1e9)
                committed = cur.feed(data, where)
            except NotFoundError as exc:
                problem = f"cannot follow generation {seg.generation}: {exc}"
                break
            except StorageError:
                raise  # the store, not the segment: run() retries, reading again what was not applied
            except LitestreamError as exc:  # WALFormatError, ChecksumMismatchError: a corrupt segment
                problem = f"cannot apply {where}: {exc}"
                break
            applied_count += 1
            for pgno_pages, size in committed:
                pages = {p: v for p, v in pages.items() if p <= size}
                pages.update(pgno_pages)
                db_pages = size
            if not cur.pending:
                clean = cur.state(self.replica, seg.generation)
            batch += len(data)
            if batch >= MAX_APPLY_BYTES:
                self._commit(pages, db_pages, cur.applied_state(clean), applied_count)
                pages, db_pages, batch, applied_count = {}, None, 0, 0
        after = cur.applied_state(clean)
        if after != self.state:
            self._commit(pages, db_pages, after, applied_count)
        if problem:
            raise SegmentError(problem)
        return after != start

    def _commit(self, pages: dict[int, bytes], db_pages: int | None, after: FollowState, count: int) -> None:
        before = self.state
        assert before is not None
        if db_pages is None:
            db_pages = os.path.getsize(self.output) // self.standby.page_size()
        self.standby.apply(pages, db_pages, before, after)
        self._set_state(after, applied=count)
        log.debug("follow: applied through %s/%08x:%d", after.generation, after.applied_index, after.applied)


class _Pacer:
    """When an object-store follower lists next: an interval after its last LIST, or a little
    later, just after the primary's sidecar is due to ship again.

    The sidecar and the follower each keep their own one-second clock; out of step, a commit
    waits up to both. lsr stamps each commit with its capture time, and a segment's last
    commit was captured just before the segment was cut and shipped, so segments tell when
    shipments happen (Go's carry no stamps: then the follower simply polls every interval).
    """

    # After the predicted shipment: its upload has to land before the LIST sees it.
    UPLOAD_MARGIN = 0.25

    # Shipment gaps the period is the median of (a pause or a quick second shipment is an outlier).
    GAPS_KEPT = 9

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last_ship: float | None = None  # wall-clock time of the latest shipment seen
        self._gaps: collections.deque[float] = collections.deque(maxlen=self.GAPS_KEPT)

    @property
    def period(self) -> float | None:
        """Seconds between shipments, once a few were seen."""
        if len(self._gaps) < 3:
            return None
        # Never under the interval: polls may not come faster, and a shorter estimate (capture
        # times lag shipments by a sync or so) would make them skip every other shipment.
        return max(statistics.median(self._gaps), self.interval)

    def saw_segment(self, last_commit: float) -> None:
        last = self.last_ship
        if last is not None and last_commit <= last:
            return
        if last is not None and self.interval / 2 <= last_commit - last <= 4 * self.interval:
            self._gaps.append(last_commit - last)
        self.last_ship = last_commit

    def delay(self, polled_at: float, now: float) -> float:
        """Seconds from ``now`` until the next LIST, never sooner than an interval after the last."""
        earliest = polled_at + self.interval
        period = self.period
        if self.last_ship is None or period is None:
            return max(earliest - now, 0.0)
        # The first shipment whose upload lands no more than half a period before the earliest
        # allowed LIST: one that lands a little too early is caught a little late, not skipped.
        n = max(math.ceil((earliest - period / 2 - self.UPLOAD_MARGIN - self.last_ship) / period), 1)
        return max(self.last_ship + n * period + self.UPLOAD_MARGIN, earliest) - now


class _Cursor:
    """Walks WAL frames from a follow state: verifies them, yields committed pages."""

    def __init__(self, state: FollowState) -> None:
        self.index = state.index
        self.offset = state.offset
        self.checksum = state.checksum
        self.header = WALHeader.parse(bytes.fromhex(state.header)) if state.header else None
        self.applied = (state.applied_index, state.applied)
        self.pending: dict[int, bytes] = {}

    def next_index(self) -> None:
        """The current WAL index is complete; frames of a transaction it left open never committed."""
        self.index, self.offset, self.header, self.checksum = self.index + 1, 0, None, (0, 0)
        self.pending = {}

    def feed(self, data: bytes, where: str) -> list[tuple[dict[int, bytes], int]]:
        """Check one segment's frames; the transactions it completes as (pages, database size)."""
        view = memoryview(data)
        pos = 0
        if self.header is None:
            self.header = WALHeader.parse(bytes(view[:WAL_HEADER_SIZE]))
            self.checksum = (self.header.checksum1, self.header.checksum2)
            pos = WAL_HEADER_SIZE
        frame_size = WAL_FRAME_HEADER_SIZE + self.header.page_size
        if (len(data) - pos) % frame_size:
            raise WALFormatError(f"cannot apply {where}: it does not end on a frame boundary")
        check = check_frames(view[pos:], self.header, self.checksum)
        if check.problem:
            raise WALFormatError(f"cannot apply {where}: {check.problem} at frame {check.valid}")
        done: list[tuple[dict[int, bytes], int]] = []
        sums = check.sums.tolist()
        for (pgno, commit_size), frame_sum in zip(check.fields[:, :2].tolist(), sums):
            self.pending[pgno] = bytes(view[pos + WAL_FRAME_HEADER_SIZE : pos + frame_size])
            pos += frame_size
            if commit_size:
                end = (self.index, self.offset + pos)
                if end > self.applied:  # commits re-read after a resume are not applied twice
                    done.append(({p: v for p, v in self.pending.items() if p <= commit_size}, commit_size))
                    self.applied = end
                self.pending = {}
        if sums:
            self.checksum = (int(sums[-1][0]), int(sums[-1][1]))
        self.offset += len(data)
        return done

    def applied_state(self, clean: FollowState) -> FollowState:
        """Resume from ``clean`` (no transaction open there), skipping what was applied since."""
        return replace(clean, applied_index=self.applied[0], applied=self.applied[1])

    def state(self, replica: str, generation: str) -> FollowState:
        assert self.header is not None
        return FollowState(
            replica, generation, self.index, self.offset, self.checksum, self.header.raw.hex(), *self.applied
        )
