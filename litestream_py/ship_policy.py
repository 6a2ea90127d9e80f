"""When a replica ships: one policy, built from what its storage costs.

A local directory costs nothing per write: it ships each commit at once and
looks that it was not wiped before every shipment. An object store bills per
request: it ships at most once per ``sync-interval`` (Litestream's second),
in larger segments, and lists itself now and then to see that it still holds
its snapshot. Left at its default interval, it also ships early: full segments
as soon as they exist, and the rest once the writer pauses (QUIET_FLUSH).
The replicator, the replica and the factory ask this object; none holds a
piece of the policy of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

__all__ = [
    "ShipPolicy",
    "DEFAULT_SYNC_INTERVAL",
    "MIN_SYNC_SPACING",
    "MIN_SHIP_SPACING",
    "QUIET_FLUSH",
]

DEFAULT_SYNC_INTERVAL = timedelta(seconds=1)
# Shortest time between two syncs of one DB. Short enough that a steady writer's
# commit reaches a file replica in about the time a shipment takes (a few ms:
# three fsyncs), not a spacing later; a writer that commits faster than that has
# its commits go out in batches, as does a busy one (BUSY_SPACING_FACTOR), so the
# per-sync and per-segment costs are paid per batch, not per commit (docs/bench.md).
MIN_SYNC_SPACING = 0.005
# Shortest time between two shipments of a replica without a sync-interval.
# The syncs that feed it already come at most every MIN_SYNC_SPACING; spaced
# alike, the shipper's start would wander out of step with them (each spacing
# counts from its own start) and ship a sync's commits up to a whole spacing late.
MIN_SHIP_SPACING = MIN_SYNC_SPACING / 2
# Ship at most this much shadow WAL in one segment so a long backlog (after an
# outage) goes out in bounded pieces. Small enough that a file sidecar's
# buffers (the reused read buffer, the compressed segment, the one being
# written meanwhile) keep its peak RSS low and a burst's last segment ships
# fast; object stores get larger segments: fewer round trips (and billed PUTs)
# for a burst's backlog.
MAX_SEGMENT_SIZE = 2 << 20
OBJECT_STORE_MAX_SEGMENT_SIZE = 8 << 20
# A replica that ships early (an object store whose sync-interval the user left
# unset) ships before its interval is up in two cases. The pieces every
# shipment would cut anyway (a full segment, the rest of a finished WAL index)
# go out as soon as they exist: no requests of their own, and a burst's backlog
# never grows past about one segment. And once the writer has paused this long,
# the rest goes out too, so the last commits need not wait out the second: at
# most once per interval on average, twice in a row (scheduler.QUIET_RUN_BURST),
# so that one stall of the writer late in a burst does not hold back the
# burst's end. "Paused" is read from the WAL itself (DB.unwritten_for): a busy
# writer's syncs, up to 100 ms apart, are never taken for a pause.
QUIET_FLUSH = timedelta(milliseconds=50)
# How often an object store replica is listed to see that it still holds the
# generation's snapshot (check_intact): one LIST request each time. A file
# replica is looked at before every shipment, which costs a directory read.
OBJECT_STORE_INTACT_CHECK_INTERVAL = timedelta(minutes=5)


@dataclass(frozen=True)
class ShipPolicy:
    """When one replica ships, and how much at a time."""

    sync_interval: timedelta = DEFAULT_SYNC_INTERVAL  # at most one shipment of everything per interval
    ships_early: bool = False  # see QUIET_FLUSH
    max_segment_size: int = MAX_SEGMENT_SIZE
    # 0: check_intact() before every sync; else the replicator calls it this
    # often (None: only before retention and validation).
    intact_check_interval: timedelta | None = None

    @classmethod
    def for_storage(cls, *, local: bool, sync_interval: timedelta | None) -> ShipPolicy:
        """The policy for a local directory (``local``) or an object store; ``sync_interval`` as configured."""
        if local:
            # Looking costs a directory read: see that it was not wiped before each shipment.
            return cls(sync_interval=timedelta(0) if sync_interval is None else sync_interval,
                       intact_check_interval=timedelta(0))
        # Object stores bill per PUT: Litestream's one second, plus one early
        # shipment when the writer pauses.
        return cls(sync_interval=DEFAULT_SYNC_INTERVAL if sync_interval is None else sync_interval,
                   ships_early=sync_interval is None, max_segment_size=OBJECT_STORE_MAX_SEGMENT_SIZE,
                   intact_check_interval=OBJECT_STORE_INTACT_CHECK_INTERVAL)

    @property
    def spacing(self) -> float:
        """Seconds between two shipments: sync-interval bounds the request rate (object stores bill per PUT)."""
        interval = self.sync_interval.total_seconds()
        return max(interval, MIN_SYNC_SPACING) if interval > 0 else MIN_SHIP_SPACING

    @property
    def quiet_run_after(self) -> float:
        """Seconds the writer must have paused before an early replica ships everything (0: never early)."""
        return QUIET_FLUSH.total_seconds() if self.ships_early else 0.0

    @property
    def full_segments_while_growing(self) -> bool:
        """Whether a shipment whose shadow WAL grew while it shipped leaves the
        last, partial segment to the next shipment (which that growth wakes).

        For a replica that ships each commit at once (no sync-interval): a
        writer faster than its shipments then gets full segments
        (max_segment_size), and a segment's own costs (a file created, its
        fsyncs, the shipper's bookkeeping) are paid per segment size, not per
        shipment. A shipment of a WAL that stopped growing ships all of it, so
        an idle-to-busy commit and a burst's last ones go at once.
        """
        return self.sync_interval == timedelta(0)

    @property
    def checks_intact_each_sync(self) -> bool:
        return self.intact_check_interval == timedelta(0)

    @property
    def intact_check_period(self) -> timedelta | None:
        """How often the replicator checks the replica is intact (None: never on a timer)."""
        return self.intact_check_interval or None

    def is_urgent(self, new_generation: bool, has_full_segment: Callable[[], bool]) -> bool:
        """Whether new shadow WAL wakes the shipper past its spacing: a new
        generation's snapshot always, and full segments of a replica that ships early."""
        return new_generation or (self.ships_early and has_full_segment())

    def ships_everything(self, flush_requested: bool, interval_due: Callable[[], bool],
                         quiet: Callable[[], bool]) -> bool:
        """Whether a shipment includes the current index's partial segment.

        An early run (full segments pending, the interval not yet up) ships
        only those; once per interval (``interval_due`` claims it), after a
        pause, or when a barrier asked for it, everything goes.
        """
        return not self.ships_early or flush_requested or interval_due() or quiet()
