"""A replica's lag and health, computed in one place (health.py) with the clock as a parameter."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from support.workload import WriterProcess

from litestream_py import health
from litestream_py.config import ReplicaConfig, parse_config
from litestream_py.db import DB
from litestream_py.errors import ConfigError
from litestream_py.factory import replica_from_config
from litestream_py.pos import Pos


def test_lag_is_the_age_of_the_oldest_commit_the_replica_lacks(tmp_path: Path, writer: WriterProcess) -> None:
    db = DB(str(tmp_path / "app.db"))
    replica = replica_from_config(ReplicaConfig(path=str(tmp_path / "replica")), db)
    db.replicas.append(replica)
    try:
        db.sync()
        replica.sync()
        assert health.lag(replica, now=1e12) == 0.0  # caught up: no age, whatever the time
        shipped_to = replica.pos()

        writer.insert(1)
        db.sync()
        first = db.shadow.commit_log.between(shipped_to.generation, shipped_to.index, shipped_to.offset, 2**62)
        writer.insert(2)
        db.sync()
        [(_, t1)] = first
        now = t1 / 1e9 + 42.5
        assert health.lag(replica, now) == pytest.approx(42.5)  # the older of the two pending commits
        assert health.healthy([replica], now) is False  # past the file replica's 10 s
        assert health.healthy([replica], t1 / 1e9 + 9.0) is True

        replica.sync()
        assert health.lag(replica, now) == 0.0 and replica.stats.last_commit_ns is not None
        assert replica.stats.last_commit_ns > t1
    finally:
        db.close()


def test_holds_compares_positions_within_and_across_generations() -> None:
    target = Pos("a" * 16, 3, 4152)
    assert health.holds(Pos("a" * 16, 3, 4152), target, "a" * 16)
    assert health.holds(Pos("a" * 16, 4, 0), target, "a" * 16)  # the index was finished
    assert not health.holds(Pos("a" * 16, 3, 32), target, "a" * 16)
    assert not health.holds(Pos(), target, "a" * 16)
    # A newer generation starts with a snapshot of everything.
    assert health.holds(Pos("b" * 16, 0, 0), target, "b" * 16)
    assert not health.holds(Pos("c" * 16, 9, 0), target, "b" * 16)
    assert health.holds(Pos(), Pos(), "")


def test_max_lag_defaults_to_ten_sync_intervals_and_at_least_ten_seconds(tmp_path: Path) -> None:
    cfg = parse_config(
        "dbs:\n  - path: /tmp/x.db\n    replicas:\n"
        f"      - path: {tmp_path}/a\n"
        f"      - path: {tmp_path}/b\n        sync-interval: 3s\n"
        f"      - path: {tmp_path}/c\n        max-lag: 2m30s\n"
    )
    assert cfg.warnings == []
    db = DB(cfg.dbs[0].path)
    a, b, c = (replica_from_config(rc, db) for rc in cfg.dbs[0].replicas)
    assert health.max_lag(a) == 10.0  # a file replica ships at once: the floor
    assert health.max_lag(b) == 30.0
    assert health.max_lag(c) == 150.0
    assert c.max_lag == timedelta(seconds=150)


def test_monitoring_keys_are_read_and_checked() -> None:
    cfg = parse_config("addr: ':9090'\nsocket: /run/lsr/x.sock\nheartbeat-url: http://h/p\nheartbeat-interval: 30s\n")
    assert (cfg.addr, cfg.socket, cfg.heartbeat_url) == (":9090", "/run/lsr/x.sock", "http://h/p")
    assert cfg.heartbeat_interval == timedelta(seconds=30) and cfg.warnings == []
    assert parse_config("").heartbeat_interval == timedelta(minutes=5)
    with pytest.raises(ConfigError, match="cannot read config: heartbeat-interval must be positive"):
        parse_config("heartbeat-interval: 0s\n")
    with pytest.raises(ConfigError, match="heartbeat-url must be an http"):
        parse_config("heartbeat-url: hc-ping.com/secret-uuid\n")
