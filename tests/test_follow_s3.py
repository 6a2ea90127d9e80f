"""``restore -f`` on S3 (moto and nanio): the polling policy, request by request.

The follower runs in-process on a real S3ReplicaClient wrapped in a counter
that only counts and delegates (no request is faked); the test drives its
polls one by one instead of waiting out intervals.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from support.procs import Processes, wait_for
from support.sqlite import integrity_ok
from support.eventhistory import create, event_count, event_id, payload
from support.faultproxy import FaultProxy
from support.s3 import S3Server, make_s3_client
from support.workload import catches_sigterm
from litestream_py.follow import GENERATION_CHECK_EVERY, Follower

LISTS = ("generations", "snapshots", "wal_segments")
GETS = ("read_wal_segment", "open_snapshot")


class Counting:
    """Counts the calls made to a real client, and makes them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.client, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return target(*args, **kwargs)

        return call


def started(p: Any) -> Any:
    wait_for(lambda: catches_sigterm(p.pid) and "replicating" in Processes.output(p), what="lsr to start")
    return p


def write_events(db: Path, first: int, last: int) -> None:
    conn = sqlite3.connect(str(db), isolation_level=None, timeout=30)
    for n in range(first, last + 1):
        conn.execute("INSERT INTO events VALUES (?, 't', ?, 0)", (event_id(n), payload(n)))
        conn.execute("UPDATE counters SET n = ? WHERE name = 'events'", (n,))
    conn.close()


def count(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_polling_makes_one_list_per_interval_and_no_get_while_idle(
    tmp_path: Path, procs: Processes, s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    db, standby = tmp_path / "events.db", tmp_path / "standby.db"
    create(str(db))
    url = f"s3://{s3_bucket}/events?endpoint={s3_server.endpoint}"
    sidecar = started(procs.lsr_replicate(str(db), url, env=s3_env))
    write_events(db, 1, 40)
    assert Processes.stop(sidecar) == 0  # the final sync ships everything

    client = Counting(make_s3_client(s3_server, s3_bucket, "events"))
    follower = Follower(client, str(standby), threading.Event())  # type: ignore[arg-type]
    assert follower.start()
    while follower.step():
        pass
    assert count(standby) == 40

    client.calls.clear()
    idle_polls = 6 * GENERATION_CHECK_EVERY
    for _ in range(idle_polls):
        assert follower.step() is False
    lists = {name: client.calls[name] for name in LISTS}
    assert sum(lists.values()) == idle_polls, client.calls  # one LIST per poll, never two
    assert lists["generations"] == idle_polls // GENERATION_CHECK_EVERY, client.calls
    assert not any(client.calls[name] for name in GETS), client.calls  # nothing new: nothing downloaded

    # New commits: each new segment is downloaded exactly once.
    before = follower.state
    assert before is not None
    sidecar = started(procs.lsr_replicate(str(db), url, env=s3_env))
    write_events(db, 41, 60)
    assert Processes.stop(sidecar) == 0
    client.calls.clear()
    wait_for(lambda: follower.step() or count(standby) == 60, what="the new events on the standby")
    while follower.step():
        pass
    assert count(standby) == 60
    new_segments = [s for s in client.client.wal_segments(before.generation)
                    if (s.index, s.offset) >= (before.index, before.offset)]
    assert new_segments and client.calls["read_wal_segment"] == len(new_segments), client.calls
    assert client.calls["open_snapshot"] == 0
    follower.close()
    assert integrity_ok(standby)


def test_an_outage_is_retried_and_logged_once(tmp_path: Path, procs: Processes, s3_server: S3Server, s3_bucket: str,
                                              s3_env: dict[str, str], caplog: Any,
                                              fault_proxy: Callable[..., FaultProxy]) -> None:
    """The store becomes unreachable while the primary keeps shipping (past the outage, straight
    to the server): the follower warns once, keeps STANDBY as it was, and catches up afterwards."""
    import logging


    db, standby = tmp_path / "events.db", tmp_path / "standby.db"
    create(str(db))
    url = f"s3://{s3_bucket}/events?endpoint={s3_server.endpoint}"
    sidecar = started(procs.lsr_replicate(str(db), url, env=s3_env))
    write_events(db, 1, 10)
    caplog.set_level(logging.INFO, logger="litestream_py")
    proxy = fault_proxy(s3_server.port, seed=27)
    client = make_s3_client(s3_server, s3_bucket, "events", endpoint=proxy.endpoint, max_attempts=1)
    stop = threading.Event()
    follower = Follower(client, str(standby), stop, interval=__import__("datetime").timedelta(milliseconds=50))
    thread = threading.Thread(target=follower.run)
    thread.start()
    try:
        wait_for(lambda: standby.exists() and event_count(standby) == 10, timeout=60, what="the first events")
        proxy.outage()
        write_events(db, 11, 30)
        wait_for(lambda: any("retrying every" in r.getMessage() for r in caplog.records), timeout=60,
                 what="the outage warning")
        assert event_count(standby) == 10
        proxy.recover()
        wait_for(lambda: event_count(standby) == 30, timeout=60, what="the follower to catch up")
    finally:
        stop.set()
        thread.join(timeout=60)
    warnings = [r for r in caplog.records if "retrying every" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert any("readable again" in r.getMessage() for r in caplog.records)
    assert Processes.stop(sidecar) == 0
    assert integrity_ok(standby)


def test_polls_follow_the_primary_s_shipments() -> None:
    """The pacer (fake times): an interval after the last LIST at the soonest, else just after
    the shipment the segments' commit stamps predict; never a whole period late."""
    from litestream_py.follow import _Pacer

    pacer = _Pacer(interval=1.0)
    margin = _Pacer.UPLOAD_MARGIN
    assert pacer.delay(polled_at=100.0, now=100.1) == pytest.approx(0.9)  # no stamps yet (Go's segments): the interval
    for t in (100.05, 101.05, 101.1, 102.05, 103.05):  # shipments every second, one quick second one
        pacer.saw_segment(t)
    assert pacer.period == pytest.approx(1.0)
    # Polled at 103.1: the next shipment lands at 104.05 + margin, after the earliest LIST (104.1).
    assert pacer.delay(polled_at=103.1, now=103.2) == pytest.approx(104.05 + margin - 103.2)
    # Polled late (103.4): that shipment would land 0.05 s before the earliest LIST (104.4):
    # LIST at 104.4, not a period later.
    assert pacer.delay(polled_at=103.4, now=103.5) == pytest.approx(0.9)
    for polled_at in (103.0, 103.3, 103.6, 103.9):
        assert pacer.delay(polled_at, polled_at) >= 1.0 - 1e-9  # one LIST per interval at most
