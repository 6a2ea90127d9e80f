"""When a DB checkpoints, and in which mode: one policy, from its page counts and interval.

A WAL is checkpointed PASSIVE once it holds ``min_page_count`` pages or once
``interval`` passed with something copied since; RESTART once its shadow index
holds ``max_page_count`` pages (the WAL must start over, readers or not);
TRUNCATE once the WAL *file* passed ``truncate_page_count`` pages (it must
shrink). A PASSIVE checkpoint that gave way to the application is retried a
little later (OPPORTUNISTIC_RETRY_INTERVAL), not at the next sync.
"""

from __future__ import annotations

import time
from datetime import timedelta

from .wal import wal_size

__all__ = [
    "CheckpointPolicy",
    "CHECKPOINT_PASSIVE",
    "CHECKPOINT_RESTART",
    "CHECKPOINT_TRUNCATE",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "DEFAULT_MIN_CHECKPOINT_PAGE_COUNT",
    "DEFAULT_MAX_CHECKPOINT_PAGE_COUNT",
    "DEFAULT_TRUNCATE_PAGE_COUNT",
]

CHECKPOINT_PASSIVE = "PASSIVE"
CHECKPOINT_RESTART = "RESTART"
CHECKPOINT_TRUNCATE = "TRUNCATE"

DEFAULT_CHECKPOINT_INTERVAL = timedelta(minutes=1)
DEFAULT_MIN_CHECKPOINT_PAGE_COUNT = 1000
DEFAULT_MAX_CHECKPOINT_PAGE_COUNT = 10000
DEFAULT_TRUNCATE_PAGE_COUNT = 500_000
# After an opportunistic (PASSIVE) checkpoint gave way to a busy application.
OPPORTUNISTIC_RETRY_INTERVAL = 0.1


class CheckpointPolicy:
    """One DB's checkpoint thresholds, and when it last checkpointed or should try again."""

    def __init__(self, interval: timedelta = DEFAULT_CHECKPOINT_INTERVAL,
                 min_page_count: int = DEFAULT_MIN_CHECKPOINT_PAGE_COUNT,
                 max_page_count: int = DEFAULT_MAX_CHECKPOINT_PAGE_COUNT,
                 truncate_page_count: int = DEFAULT_TRUNCATE_PAGE_COUNT) -> None:
        self.interval = interval
        self.min_page_count = min_page_count
        self.max_page_count = max_page_count
        self.truncate_page_count = truncate_page_count
        self.last = time.monotonic()
        # After an opportunistic checkpoint gave way to the application: when to
        # try again (monotonic; 0 = nothing pending).
        self.retry_at = 0.0

    def due(self, page_size: int, wal_file_size: int, shadow_size: int, copied: int) -> str:
        """The mode of the checkpoint due now, or "" (``copied``: the shadow position published)."""
        if self.truncate_page_count > 0 and wal_file_size >= wal_size(page_size, self.truncate_page_count):
            return CHECKPOINT_TRUNCATE
        if self.max_page_count > 0 and shadow_size >= wal_size(page_size, self.max_page_count):
            return CHECKPOINT_RESTART
        if time.monotonic() < self.retry_at:
            return ""
        self.retry_at = 0.0  # due now, or moot: a restart by the application emptied the shadow
        if shadow_size >= wal_size(page_size, self.min_page_count):
            return CHECKPOINT_PASSIVE
        if self.interval_due(page_size, copied):
            return CHECKPOINT_PASSIVE
        return ""

    def interval_due(self, page_size: int, copied: int) -> bool:
        """The interval passed since the last checkpoint, with frames copied since the WAL began."""
        return self.seconds_until_interval(page_size, copied) == 0

    def seconds_until_interval(self, page_size: int, copied: int) -> float | None:
        """Until ``interval_due``, or None while nothing copied waits for it."""
        interval = self.interval.total_seconds()
        if interval <= 0 or copied <= wal_size(page_size, 1):
            return None
        return max(self.last + interval - time.monotonic(), 0.0)

    def retry_pending(self) -> bool:
        """A retry is due now: a sync must run even if the WAL did not change."""
        return 0 < self.retry_at <= time.monotonic()

    def retry_later(self) -> None:
        self.retry_at = time.monotonic() + OPPORTUNISTIC_RETRY_INTERVAL

    def seconds_until_retry(self) -> float | None:
        """When the monitor should sync again for a deferred checkpoint, even without writes."""
        if not self.retry_at:
            return None
        return max(self.retry_at - time.monotonic(), 0.0)
