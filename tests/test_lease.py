"""Writer fencing: the lease on each replica, against the file client, moto and nanio."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from support.s3 import make_s3_client
from litestream_py.clients.file import FileReplicaClient
from litestream_py.errors import LeaseHeldError, LeaseLostError
from litestream_py.lease import Lease, LeaseInfo
from litestream_py.replica_client import ReplicaClient

TTL = timedelta(seconds=30)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["file", "moto", "nanio"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> ReplicaClient:
    if request.param == "file":
        return FileReplicaClient(str(tmp_path / "replica"))
    server = request.getfixturevalue("s3_servers")[request.param]
    return make_s3_client(server, server.create_bucket(), "db")


def test_second_writer_is_refused_naming_the_holder(client: ReplicaClient) -> None:
    first = Lease(client, "/srv/a.db", TTL)
    assert first.check_available() is False
    first.acquire()
    with pytest.raises(LeaseHeldError) as err:
        Lease(client, "/srv/b.db", TTL).acquire()
    message = str(err.value)
    assert message.startswith(f"cannot replicate to {client.describe()}: its lease is held by host ")
    assert f"pid {os.getpid()} (database /srv/a.db" in message and "-takeover" in message
    assert first.renew() and first.held


def test_takeover_fences_the_old_holder(client: ReplicaClient) -> None:
    old = Lease(client, "/srv/a.db", TTL)
    old.acquire()
    new = Lease(client, "/srv/b.db", TTL, takeover=True)
    assert new.check_available() is True  # a live lease: the caller waits one renewal
    new.ensure()
    assert old.renew() is False
    assert "database /srv/b.db" in old.lost
    with pytest.raises(LeaseLostError, match="its lease was taken by host .*database /srv/b.db"):
        old.check()
    assert old.renew() is False  # lost for good, even if the new holder goes away
    assert new.renew() and new.held
    new.check()
    current = client.read_lease()
    assert current is not None and LeaseInfo.from_bytes(current.data).db == "/srv/b.db"


def test_expired_lease_is_taken_without_takeover(client: ReplicaClient) -> None:
    clock = FakeClock()
    gone = Lease(client, "/srv/a.db", TTL, clock=clock)
    gone.acquire()
    clock.now += TTL.total_seconds() - 1
    with pytest.raises(LeaseHeldError):
        Lease(client, "/srv/b.db", TTL, clock=clock).acquire()
    clock.now += 2  # the holder has not renewed for longer than its TTL
    successor = Lease(client, "/srv/b.db", TTL, clock=clock)
    assert successor.check_available() is False
    successor.ensure()
    assert successor.held
    assert gone.renew() is False and gone.lost


def test_a_renewal_keeps_the_lease_past_its_first_ttl(client: ReplicaClient) -> None:
    """However a store records the renewal (a file's mtime, a rewritten S3 object), others see it."""
    clock = FakeClock()
    holder = Lease(client, "/srv/a.db", TTL, clock=clock)
    holder.acquire()
    for _ in range(3):
        clock.now += TTL.total_seconds() - 1
        assert holder.renew()
    clock.now += 2  # past the TTL of the acquisition and of each renewal but the last
    with pytest.raises(LeaseHeldError, match="database /srv/a.db"):
        Lease(client, "/srv/b.db", TTL, clock=clock).acquire()
    clock.now += TTL.total_seconds()
    Lease(client, "/srv/b.db", TTL, clock=clock).acquire()
    assert holder.renew() is False and "database /srv/b.db" in holder.lost


def test_release_lets_the_next_writer_in(client: ReplicaClient) -> None:
    first = Lease(client, "/srv/a.db", TTL)
    first.acquire()
    first.release()
    assert client.read_lease() is None
    Lease(client, "/srv/b.db", TTL).acquire()


def test_a_refused_first_write_stops_the_replica_for_good(client: ReplicaClient) -> None:
    """Two sidecars passed the start-up check of an empty replica; the second to write loses."""
    first, second = Lease(client, "/srv/a.db", TTL), Lease(client, "/srv/b.db", TTL)
    assert first.check_available() is False and second.check_available() is False
    first.ensure()
    with pytest.raises(LeaseLostError, match="its lease is held by host .*database /srv/a.db"):
        second.ensure()
    first.release()
    with pytest.raises(LeaseLostError):
        second.ensure()  # never writes there again, even once the replica is free
    assert client.read_lease() is None


def test_a_crashed_holder_on_this_host_is_gone(client: ReplicaClient, tmp_path: Path) -> None:
    """A sidecar restarting after a crash takes over its own dead predecessor's lease at once."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease = Lease(client, "/srv/a.db", TTL)
    lease.info = LeaseInfo(**{**lease.info.__dict__, "pid": int(dead.stdout)})
    lease.acquire()
    successor = Lease(client, "/srv/a.db", TTL)
    assert successor.check_available() is False
    successor.ensure()
    assert successor.held and lease.renew() is False


def test_an_unreadable_lease_is_replaced(client: ReplicaClient) -> None:
    """Not an lsr lease (hand-edited, truncated): nobody holds it; it is replaced conditionally."""
    client.write_lease(b"not json", None)
    lease = Lease(client, "/srv/a.db", TTL)
    assert lease.check_available() is False
    lease.ensure()
    assert lease.held and lease.renew()
    current = client.read_lease()
    assert current is not None and LeaseInfo.from_bytes(current.data).db == "/srv/a.db"


def test_a_resting_lease_records_its_longer_ttl_and_still_refuses_others(client: ReplicaClient) -> None:
    """A dormant database's lease is renewed rarely, with a TTL to match: it does not expire in between."""
    clock = FakeClock()
    holder = Lease(client, "/srv/a.db", TTL, clock=clock)
    holder.ensure()
    resting = 10 * TTL.total_seconds()
    assert holder.renew(resting)
    current = client.read_lease()
    assert current is not None and LeaseInfo.from_object(current).ttl == resting
    clock.now += resting - 1  # long past the ordinary TTL
    with pytest.raises(LeaseHeldError, match="database /srv/a.db"):
        Lease(client, "/srv/b.db", TTL, clock=clock).acquire()
    clock.now += 2
    Lease(client, "/srv/b.db", TTL, clock=clock).acquire()  # the resting TTL ends too


def test_a_write_after_a_rest_renews_first_and_a_takeover_meanwhile_fences_it(client: ReplicaClient) -> None:
    clock = FakeClock()
    holder = Lease(client, "/srv/a.db", TTL, clock=clock)
    holder.ensure()
    assert holder.renew(10 * TTL.total_seconds())
    clock.now += 2 * TTL.total_seconds()
    holder.ensure()  # still its own: renewed first (the keeper restores the ordinary TTL)
    current = client.read_lease()
    assert current is not None and LeaseInfo.from_object(current).renewed_at == pytest.approx(clock.now, abs=1)
    assert holder.info.renewed_at == clock.now
    clock.now += 2 * TTL.total_seconds()
    Lease(client, "/srv/b.db", TTL, clock=clock, takeover=True).ensure()
    with pytest.raises(LeaseLostError, match="database /srv/b.db"):
        holder.ensure()  # the renewal before its write finds the lease taken


def test_the_keeper_renews_a_resting_lease_on_its_longer_schedule(client: ReplicaClient) -> None:
    clock = FakeClock()
    dormant = [False]
    busy = Lease(client, "/srv/a.db", TTL, clock=clock, resting=lambda: dormant[0])
    busy.ensure()
    busy.set_resting_ttl(10 * TTL.total_seconds())
    assert busy.renewal_due(slack=0) is None  # just acquired
    clock.now += TTL.total_seconds() / 3
    assert busy.renewal_due(slack=0) == TTL.total_seconds()
    dormant[0] = True  # its database went dormant: renewed with the resting TTL, then rarely
    assert busy.renewal_due(slack=0) == 10 * TTL.total_seconds()
    assert busy.renew(10 * TTL.total_seconds())
    clock.now += TTL.total_seconds()
    assert busy.renewal_due(slack=0) is None
    clock.now += 10 * TTL.total_seconds() / 3
    assert busy.renewal_due(slack=0) == 10 * TTL.total_seconds()
    dormant[0] = False  # awake again: on the ordinary schedule at once
    assert busy.renewal_due(slack=0) == TTL.total_seconds()
    assert busy.renew(TTL.total_seconds())
    assert busy.renewal_due(slack=0) is None
    clock.now += TTL.total_seconds() / 3
    assert busy.renewal_due(slack=0) == TTL.total_seconds()
