"""A dead-man's switch: a GET to ``heartbeat-url`` every ``heartbeat-interval`` while all is well.

A monitoring service (healthchecks.io and the like) raises the alarm when the
pings stop, which covers what no probe of the sidecar can: the host or the
sidecar gone. No ping goes out while any replica is unhealthy (``health``).
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
import urllib.request
from datetime import timedelta
from typing import Callable

__all__ = ["Heartbeat", "HEARTBEAT_TIMEOUT"]

log = logging.getLogger(__name__)

# A ping that takes longer is abandoned; the next interval tries again.
HEARTBEAT_TIMEOUT = 10.0


class Heartbeat:
    """Pings ``url`` on a thread of its own until ``stop()``."""

    def __init__(self, url: str, interval: timedelta, healthy: Callable[[], bool]) -> None:
        self.url = url
        self.interval = interval.total_seconds()
        self.healthy = healthy
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lsr-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.healthy():
                log.debug("heartbeat withheld: a replica is unhealthy")
                continue
            self.beat()

    def beat(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=HEARTBEAT_TIMEOUT) as reply:
                reply.read()
            self.sent += 1
        except OSError as exc:
            # The URL may hold the service's key: name the host only.
            host = urllib.parse.urlparse(self.url).hostname
            log.warning("heartbeat to %s failed: %s", host, getattr(exc, "reason", exc))
