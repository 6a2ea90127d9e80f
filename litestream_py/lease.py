"""Writer fencing: one ``lsr replicate`` at a time writes to a replica path.

Each replica holds a small lease object beside ``generations/``
(``paths.LEASE_NAME``, which Go Litestream 0.3.13 never reads) naming its
holder: host, pid, database, start time, and when it was last renewed. A
sidecar checks it at start-up (refusing to start where another holds it),
takes it with its first write to the replica, renews it every TTL /
RENEW_FRACTION, and releases it when it stops. Every change is a conditional
write against the version it read (an O_EXCL-style create or compare under a
lock on a file replica; If-None-Match / If-Match on S3), so of two sidecars
racing for it exactly one wins.

Another sidecar starts only if the lease is absent, expired (not renewed for
its TTL: the holder is gone), held by a process of the same host that no
longer exists (a crashed sidecar restarting), or with ``-takeover``. A holder whose renewal
finds the lease taken marks it lost; ``Replica`` checks ``Lease.check()``
before every write, so it stops writing there at once and for good. A
takeover of a lease that has not expired waits one renewal interval before
writing, by which time a live holder has noticed.

A renewal is the client's ``renew_lease``: a file replica's sets the lease's
mtime under its lock (the content stays), an S3 replica's rewrites it.

A replica of a dormant database (dormancy.py) writes nothing, and its lease is
renewed less often, with a TTL to match recorded in the lease (RESTING_RENEWALS_PER_SECOND):
another sidecar still finds it held and refuses to start. Before its next
write, a replica whose lease was last renewed more than one ordinary renewal
interval ago renews it first (``ensure``), conditionally as always: after a
takeover meanwhile it finds the lease lost and writes nothing. The keeper puts
the lease of a database that woke back on the ordinary TTL at its next round.

A server that ignores conditional headers accepts every write: the lease is
then read back after each one (the S3 client does so for its renewals), and
the loser of a race finds the other's token at its next renewal at the latest.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Callable

from .errors import LeaseHeldError, LeaseLostError, LitestreamError, PreconditionFailedError
from .pos import LeaseObject
from .replica_client import ReplicaClient


__all__ = ["DEFAULT_LEASE_TTL", "Lease", "LeaseInfo", "LeaseKeeper", "RENEW_FRACTION", "RESTING_RENEWALS_PER_SECOND"]

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = timedelta(seconds=30)
# Renewals per TTL: two may fail (a slow or briefly unreachable store) before the lease expires.
RENEW_FRACTION = 3
# Renewals per second, in all, of the leases of dormant databases: each costs
# ~50 us of CPU, and ten thousand on the ordinary TTL would take ~5 % of a core.
# Past this, their renewal interval (and TTL) stretches with their number.
RESTING_RENEWALS_PER_SECOND = 20.0

Clock = Callable[[], float]


@dataclass(frozen=True)
class LeaseInfo:
    """What the lease object says (JSON)."""

    token: str
    host: str
    pid: int
    db: str
    started_at: float
    renewed_at: float
    ttl: float

    def to_bytes(self) -> bytes:
        return json.dumps(vars(self), sort_keys=True).encode()  # flat: asdict's deep copy is not needed

    @classmethod
    def from_object(cls, current: LeaseObject) -> LeaseInfo:
        """The lease as stored, renewed when its store last marked it so (``LeaseObject.renewed_at``)."""
        info = cls.from_bytes(current.data)
        if current.renewed_at is not None and current.renewed_at > info.renewed_at:
            info = replace(info, renewed_at=current.renewed_at)
        return info

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseInfo:
        try:
            d = json.loads(data)
            return cls(str(d["token"]), str(d["host"]), int(d["pid"]), str(d["db"]),
                       float(d["started_at"]), float(d["renewed_at"]), float(d["ttl"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise LitestreamError(f"cannot read lease: not an lsr lease ({exc})") from exc

    def expired(self, now: float) -> bool:
        return now > self.renewed_at + self.ttl

    def gone(self, now: float) -> bool:
        """Expired, or held by a process of this host that no longer exists (a crashed sidecar restarting)."""
        if self.expired(now):
            return True
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # alive, another user's
        return False

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started_at, timezone.utc).isoformat(timespec="seconds")
        return f"host {self.host} pid {self.pid} (database {self.db}, since {since})"


class Lease:
    """This sidecar's lease on one replica."""

    def __init__(
        self,
        client: ReplicaClient,
        db_path: str,
        ttl: timedelta = DEFAULT_LEASE_TTL,
        *,
        takeover: bool = False,
        clock: Clock = time.time,
        resting: Callable[[], bool] = lambda: False,
    ) -> None:
        self.client = client
        self.resting = resting  # its database is dormant: renew on the resting schedule (LeaseKeeper)
        self.resting_ttl = ttl.total_seconds()  # the TTL of that schedule (set by LeaseKeeper)
        self.ttl = ttl
        self.takeover = takeover
        self._clock = clock
        now = clock()
        self.info = LeaseInfo(os.urandom(8).hex(), socket.gethostname(), os.getpid(), db_path, now, now,
                              ttl.total_seconds())
        self._version: str | None = None
        self._lost = ""  # who took it, once lost
        self._lock = threading.Lock()
        self._acquire_lock = threading.Lock()
        # Renewals one at a time: two with the same version, one would fail and call the lease lost.
        self._renew_lock = threading.Lock()
        # When the next renewal is due, awake and resting: the keeper checks
        # ten thousand leases every few seconds, so it only compares these.
        self._due_awake = self._due_resting = 0.0
        self._set_dues(self.info)

    @property
    def renew_interval(self) -> float:
        return self.ttl.total_seconds() / RENEW_FRACTION

    @property
    def held(self) -> bool:
        with self._lock:
            return self._version is not None and not self._lost

    @property
    def lost(self) -> str:
        """Empty while held; else who took the lease (for logs, metrics and status)."""
        with self._lock:
            return self._lost

    def check_available(self) -> bool:
        """At start-up, before anything is written: raise LeaseHeldError naming a live holder.

        True when a live lease will be taken over (``-takeover``): the caller
        waits one renewal interval before writing. Reads only, so a sidecar
        that never gets to write (its database never appears) leaves no trace.
        """
        try:
            current = self.client.read_lease()
        except LitestreamError as exc:
            # Unreadable (unreachable store, a file in the replica's place): the first
            # write takes the lease conditionally, and reports the problem if it lasts.
            log.debug("%s: cannot check the lease yet: %s", self.client.describe(), exc)
            return False
        holder = self._live_holder(current)
        if holder is None:
            return False
        if not self.takeover:
            raise self._held_by(holder)
        return True

    def _live_holder(self, current: LeaseObject | None) -> LeaseInfo | None:
        """Who holds the lease, unless nobody does (absent, expired, gone, or not an lsr lease)."""
        if current is None:
            return None
        try:
            holder = LeaseInfo.from_object(current)
        except LitestreamError as exc:
            log.warning("%s: %s; it will be replaced", self.client.describe(), exc)
            return None
        return None if holder.gone(self._clock()) else holder

    def _held_by(self, holder: LeaseInfo) -> LeaseHeldError:
        return LeaseHeldError(
            f"cannot replicate to {self.client.describe()}: its lease is held by {holder.describe()}; "
            "stop that sidecar, wait for its lease to expire, or pass -takeover"
        )

    def _who(self, current: LeaseObject | None) -> str:
        if current is None:
            return "nobody (deleted)"
        try:
            return LeaseInfo.from_bytes(current.data).describe()
        except LitestreamError:
            return "an unreadable lease"

    def ensure(self) -> None:
        """Before a write: hold the lease (taking it on the first write), else raise LeaseLostError."""
        self.check()
        if self.held:
            if self._clock() - self.info.renewed_at > self.renew_interval:
                # Renewed on the resting schedule (or late): prove it is still ours first.
                # Its TTL stays: an idle wake of a dormant database's shipper checks here
                # too, and two rewrites (here and back by the keeper) cost ~0.8 ms each time.
                self.renew()
                self.check()
            return
        with self._acquire_lock:
            if self.held:
                return
            try:
                self.acquire()
            except LeaseHeldError as exc:
                with self._lock:
                    self._lost = str(exc).split(": ", 1)[-1]
                log.error("%s; stopped writing to this replica", exc)
                raise LeaseLostError(f"cannot write to {self.client.describe()}: {exc}") from exc

    def acquire(self) -> None:
        """Take the lease with a conditional write, or raise LeaseHeldError naming its holder."""
        where = self.client.describe()
        current = self.client.read_lease()
        expect: str | None = None
        if current is not None:
            holder = self._live_holder(current)
            if holder is not None:
                if not self.takeover:
                    raise self._held_by(holder)
                log.warning("%s: taking over the lease held by %s", where, holder.describe())
            else:
                log.info("%s: the lease of %s expired or its holder is gone; taking it", where, self._who(current))
            expect = current.version
        data = self.info.to_bytes()
        try:
            version = self.client.write_lease(data, expect)
        except PreconditionFailedError as exc:
            raise LeaseHeldError(f"cannot replicate to {where}: another sidecar took its lease first") from exc
        self._confirm(where, version)
        with self._lock:
            self._version = version
        self._set_dues(self.info)

    def _confirm(self, where: str, written: str) -> None:
        """Read the lease back: on a server without conditional writes a racer may have overwritten it."""
        current = self.client.read_lease()
        if current is None or current.version != written:
            raise LeaseHeldError(f"cannot replicate to {where}: its lease was taken by {self._who(current)}")

    def renew(self, ttl: float | None = None) -> bool:
        """Extend the lease (recording ``ttl`` seconds as its TTL, if given); False
        (and the lease marked lost) if someone else has it."""
        with self._renew_lock:
            return self._renew(ttl)

    def _renew(self, ttl: float | None) -> bool:
        with self._lock:
            version = self._version
        if version is None or self.lost:
            return False
        info = replace(self.info, renewed_at=self._clock(), ttl=self.info.ttl if ttl is None else ttl)
        try:
            if info.ttl != self.info.ttl:
                # A file replica's renewal keeps the content, and the TTL is in it.
                new_version = self.client.write_lease(info.to_bytes(), version)
            else:
                new_version = self.client.renew_lease(info.to_bytes(), version, info.renewed_at)
        except PreconditionFailedError:
            who = self._who(self.client.read_lease())
            with self._lock:
                self._lost = who
            log.error("%s: lease lost to %s; stopped writing to this replica", self.client.describe(), who)
            return False
        with self._lock:
            self.info, self._version = info, new_version
        self._set_dues(info)
        return True

    def set_resting_ttl(self, ttl: float) -> None:
        """The TTL of the resting schedule, in seconds (LeaseKeeper's choice)."""
        self.resting_ttl = ttl
        self._set_dues(self.info)

    def _set_dues(self, info: LeaseInfo) -> None:
        # The sooner of the wanted TTL's and the recorded one's: a change of schedule is due at once.
        self._due_awake = info.renewed_at + min(self.ttl.total_seconds(), info.ttl) / RENEW_FRACTION
        self._due_resting = info.renewed_at + min(self.resting_ttl, info.ttl) / RENEW_FRACTION

    def renewal_due(self, slack: float) -> float | None:
        """The TTL to renew with if a renewal is due within ``slack`` seconds, else None."""
        if self.resting():
            due, ttl = self._due_resting, self.resting_ttl
        else:
            due, ttl = self._due_awake, self.ttl.total_seconds()
        return ttl if due <= self._clock() + slack else None

    def check(self) -> None:
        """Raise LeaseLostError unless this sidecar may write to the replica."""
        lost = self.lost
        if lost:
            raise LeaseLostError(f"cannot write to {self.client.describe()}: its lease was taken by {lost}")

    def release(self) -> None:
        with self._lock:
            version, self._version = self._version, None
        if version is not None and not self._lost:
            self.client.delete_lease(version)


class LeaseKeeper:
    """Renews every lease of the process from one thread; ``stop()`` joins it and releases them."""

    def __init__(self, leases: list[Lease]) -> None:
        self.leases = leases
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.leases:
            return
        # A dormant database's lease: renewed every ``resting`` seconds, with a TTL to match.
        interval = min(lease.renew_interval for lease in self.leases)
        resting = max(interval, len(self.leases) / RESTING_RENEWALS_PER_SECOND)
        for lease in self.leases:
            lease.set_resting_ttl(max(lease.ttl.total_seconds(), resting * RENEW_FRACTION))
        self._thread = threading.Thread(target=self._run, name="lsr-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = min(lease.renew_interval for lease in self.leases)
        failing: dict[int, str] = {}  # lease -> the error it keeps failing with
        while not self._stop.wait(interval):
            for i, lease in enumerate(self.leases):
                # Due a little early: a renewal just missed would wait a whole interval.
                ttl = lease.renewal_due(slack=interval / 2)
                if ttl is None:
                    continue
                try:
                    lease.renew(ttl)
                except LitestreamError as exc:
                    # An unreachable store: the replica's own writes fail too and warn about
                    # it; here it is said once. Past its TTL the lease may be taken meanwhile,
                    # which the first renewal after the outage finds out.
                    if failing.get(i) != str(exc):
                        log.info("%s: cannot renew lease: %s (retrying)", lease.client.describe(), exc)
                        failing[i] = str(exc)
                else:
                    if failing.pop(i, None) is not None:
                        log.info("%s: lease renewed again", lease.client.describe())

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if release:
            for lease in self.leases:
                try:
                    lease.release()
                except LitestreamError as exc:
                    log.warning("%s: cannot release lease: %s", lease.client.describe(), exc)
