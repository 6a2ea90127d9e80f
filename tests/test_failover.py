"""The failover drill, and writer fencing between live sidecars: real processes, SIGKILL, real S3 servers.

The drill: the primary writes events and a follower keeps STANDBY; the primary
host dies (app and sidecar SIGKILLed, its database deleted); STANDBY is stopped
and promoted; ``lsr replicate -takeover`` on it starts a new generation on the
same replica; every event the primary's replica had is there; the old
primary's sidecar, started again, is refused by the lease.
"""

from __future__ import annotations

import json

import shutil
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from support.procs import LSR, Processes, run_lsr, wait_for
from support.sqlite import integrity_ok, rows
from support.eventhistory import create, event_id, payload
from support.workload import meta_dir

HERE = Path(__file__).parent
EVENTHISTORY = str(HERE / "support" / "eventhistory.py")
LEASE_TTL = "3s"  # the takeover of a live lease then waits 1 s


def event_ids(path: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM events")}
    finally:
        conn.close()


@pytest.fixture(params=["file", "s3"])
def replica(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A replica URL and the environment lsr needs for it (S3: moto)."""
    if request.param == "file":
        return f"file://{tmp_path / 'replica'}", {}
    server = request.getfixturevalue("s3_servers")["moto"]
    env = request.getfixturevalue("s3_env")
    return f"s3://{server.create_bucket()}/events?endpoint={server.endpoint}", env


def restored(url: str, out: Path, env: dict[str, str]) -> Path:
    res = run_lsr("restore", "-o", str(out), url, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def test_failover_drill(tmp_path: Path, procs: Processes, replica: tuple[str, dict[str, str]]) -> None:
    url, env = replica
    primary, standby = tmp_path / "primary" / "events.db", tmp_path / "standby" / "events.db"
    primary.parent.mkdir()
    standby.parent.mkdir()
    create(str(primary))
    sidecar = procs.start([LSR, "replicate", "-lease-ttl", LEASE_TTL, str(primary), url], "primary-lsr", env)
    writer = procs.start([sys.executable, EVENTHISTORY, "write", str(primary)], "writer")
    follower = procs.start([LSR, "restore", "-f", "-follow-interval", "200ms", "-o", str(standby), url],
                           "follower", env)
    wait_for(lambda: standby.exists() and len(event_ids(standby)) > 100, timeout=60, what="events on the standby")

    # The primary host dies.
    procs.stop(writer, signal.SIGKILL)
    procs.stop(sidecar, signal.SIGKILL)
    for suffix in ("", "-wal", "-shm"):
        Path(str(primary) + suffix).unlink(missing_ok=True)
    shutil.rmtree(meta_dir(primary))

    # What the primary's replica holds is what the standby must end up with.
    on_replica = event_ids(restored(url, tmp_path / "probe.db", env))
    assert len(on_replica) > 100
    wait_for(lambda: event_ids(standby) == on_replica, timeout=60, what="the standby to apply the replica's end")
    assert procs.stop(follower, signal.SIGTERM) == 0, Processes.output(follower)

    # Promote: write on STANDBY and replicate it to the same replica, taking the lease over.
    promoted = procs.start([LSR, "replicate", "-takeover", "-lease-ttl", LEASE_TTL, str(standby), url],
                           "promoted-lsr", env)
    conn = sqlite3.connect(str(standby), isolation_level=None, timeout=30)
    last = max(int(i.removeprefix("evt-")) for i in on_replica)
    for n in range(last + 1, last + 21):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events VALUES (?, 'FailedOver', ?, 0)", (event_id(n), payload(n)))
        conn.execute("UPDATE counters SET n = ? WHERE name = 'events'", (n,))
        conn.execute("COMMIT")
    conn.close()
    wait_for(lambda: "new generation" in Processes.output(promoted) or "snapshot written" in Processes.output(promoted),
             timeout=60, what="the promoted sidecar's first snapshot")

    # The old primary's sidecar comes back: refused, naming the new holder.
    again = run_lsr("replicate", "-lease-ttl", LEASE_TTL, str(primary), url, env=env, timeout=60)
    assert again.returncode != 0
    err = (again.stderr + again.stdout).strip().splitlines()
    assert any("its lease is held by host" in line and f"database {standby}" in line and "-takeover" in line
               for line in err), err

    # Every event the primary's replica had, and the new ones, restore from the replica.
    after = tmp_path / "after.db"

    def all_there() -> bool:
        after.unlink(missing_ok=True)
        res = run_lsr("restore", "-o", str(after), url, env=env)
        return res.returncode == 0 and len(event_ids(after)) == len(on_replica) + 20

    wait_for(all_there, timeout=60, interval=0.3, what="the promoted database on the replica")
    assert on_replica <= event_ids(after)
    assert integrity_ok(after)
    gens = run_lsr("generations", url, env=env)
    assert gens.returncode == 0 and len(gens.stdout.strip().splitlines()) == 3, gens.stdout  # header + 2
    assert Processes.stop(promoted) == 0, Processes.output(promoted)


def test_a_sidecar_whose_lease_is_taken_stops_writing(tmp_path: Path, procs: Processes) -> None:
    """Blue/green: a second sidecar takes the replica over with -takeover; the first logs it and
    ships nothing more, although its application keeps committing."""
    url = f"file://{tmp_path / 'replica'}"
    blue, green = tmp_path / "blue.db", tmp_path / "green.db"
    create(str(blue))
    create(str(green))
    first = procs.start([LSR, "replicate", "-lease-ttl", LEASE_TTL, str(blue), url], "blue")
    conn = sqlite3.connect(str(blue), isolation_level=None)
    conn.execute("INSERT INTO events VALUES ('evt-1', 't', x'00', 0)")
    wait_for(lambda: any((tmp_path / "replica").glob("generations/*/wal/*.wal.lz4")), what="blue's first segment")
    (blue_gen,) = [p.name for p in (tmp_path / "replica" / "generations").iterdir()]

    refused = run_lsr("replicate", "-lease-ttl", LEASE_TTL, str(green), url, timeout=60)
    assert refused.returncode != 0 and "its lease is held by host" in refused.stderr + refused.stdout
    second = procs.start([LSR, "replicate", "-takeover", "-lease-ttl", LEASE_TTL, str(green), url], "green")
    wait_for(lambda: "lease lost" in Processes.output(first), timeout=60, what="blue to notice")
    segments = sorted((tmp_path / "replica" / "generations" / blue_gen / "wal").iterdir())

    # Blue's application goes on; blue's sidecar copies its WAL but ships nothing.
    shadow = meta_dir(blue) / "generations"
    size = sum(p.stat().st_size for p in shadow.rglob("*.wal"))
    for i in range(2, 52):
        conn.execute("INSERT INTO events VALUES (?, 't', x'00', 0)", (f"evt-{i}",))
    wait_for(lambda: sum(p.stat().st_size for p in shadow.rglob("*.wal")) > size, what="blue's shadow WAL to grow")
    assert sorted((tmp_path / "replica" / "generations" / blue_gen / "wal").iterdir()) == segments
    assert "lease lost to host" in Processes.output(first) and "database " + str(green) in Processes.output(first)
    # ... and says so in lsr status.
    status = run_lsr("status", "-json", str(blue))
    assert status.returncode == 0, status.stderr
    [replica] = json.loads(status.stdout)["dbs"][0]["replicas"]
    assert replica["lease"]["held"] is False and str(green) in replica["lease"]["lost_to"], replica
    assert replica["healthy"] is False
    conn.close()
    Processes.stop(first)
    assert Processes.stop(second) == 0, Processes.output(second)
    assert rows(blue, "SELECT count(*) FROM events") == [(51,)]
