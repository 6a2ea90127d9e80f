"""Compatibility with the real Go Litestream v0.3.13, both ways.

lsr's replicas must restore with ``litestream restore``; Go's replicas must
restore with ``lsr restore``; both tools must list the same generations,
snapshots and WAL segments; and either tool can take over a database (and
replica) the other one was replicating. The Go binary is required (conftest's ``go``).
"""

from __future__ import annotations

import re
import subprocess
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from support.go import checkpoint_pages, compat_config, compat_workload, go_restore, go_run, start_go, stop_go
from support.procs import Processes
from support.sqlite import integrity_ok, open_app_db, rows
from litestream_py.clients.file import FileReplicaClient
from litestream_py.compaction import Compactor
from litestream_py.encryption import AgeReader
from support.workload import (
    AgeKeyPair,
    OpenWEC,
    assert_encrypted,
    assert_same_data,
    content_hash,
    dump,
    local_generation,
    new_generation_lines,
    replica_generations,
    restore,
    segment_count,
    segment_names,
    stop_lsr,
    wait_ready,
    wait_synced,
    wal_indexes,
)


def compact(replica: Path, age: AgeKeyPair | None = None) -> None:
    """Merge every segment of a file replica, as a sidecar's compaction does once they are old enough
    (decrypted and encrypted again with ``age``'s keys)."""
    (generation,) = replica_generations(replica)
    assert segment_count(replica) > len(wal_indexes(replica, generation))
    client, keys = FileReplicaClient(str(replica)), age.keys() if age else None
    # No size cap: with 64 KiB pages one index may hold more than the default cap's 16 MiB of WAL,
    # and split in two it would make the count below depend on the run's checkpoint timing.
    Compactor(client, "test", threading.Lock(), age=timedelta(0), reader=AgeReader(client, keys),
              seal=keys.encrypt if keys else None, max_size=1 << 40).compact()
    # One segment per index, and the generation's last one (where a restarted lsr resumes) as shipped.
    assert segment_count(replica) - len(wal_indexes(replica, generation)) in (0, 1), sorted(segment_names(replica))


def lsr_restore(replica: Path, out: Path, config: Path | None = None, db: Path | None = None) -> None:
    """lsr restores the replica by URL, or through ``config``'s replica of ``db``."""
    if config:
        restore(str(db), out, "-config", str(config))
    else:
        restore(f"file://{replica}", out)


# Encrypted variants run at one page size: encryption wraps whole objects, page size does not matter to it.
PAGE_SIZES_AND_AGE = [(512, False), (1024, False), (4096, False), (65536, False), (4096, True)]


# -- (a) lsr writes, Go reads -------------------------------------------------------

@pytest.mark.parametrize("page_size,encrypted", PAGE_SIZES_AND_AGE)
def test_go_restores_what_lsr_replicated(tmp_path: Path, procs: Processes, go: str, page_size: int,
                                         encrypted: bool) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db, page_size=page_size)
    app.execute("CREATE TABLE seed (id INTEGER PRIMARY KEY)")
    assert rows(db, "PRAGMA page_size") == [(page_size,)]
    age = AgeKeyPair() if encrypted else None
    cfg = compat_config(tmp_path / "lsr.yml", db, replica, page_count=checkpoint_pages(page_size), age=age)
    p = procs.lsr_replicate("-config", str(cfg))
    wait_ready(p, replica)
    compat_workload(db, page_size, rounds=12, replica=replica)
    out = stop_lsr(p)
    app.close()

    (generation,) = replica_generations(replica)
    assert len(wal_indexes(replica, generation)) >= 3, "no checkpoints: several WAL indexes were wanted"
    by_go, by_lsr = tmp_path / "go.db", tmp_path / "lsr.db"
    via = (cfg, db) if age else (None, None)
    if age:
        assert_encrypted(replica, b"machine-")  # OpenWEC's machine names are in every round
        age.assert_absent(out)
    go_restore(go, replica, by_go, *via)
    lsr_restore(replica, by_lsr, *via)
    assert_same_data(db, by_go)
    assert_same_data(db, by_lsr)
    # Compacted, the replica holds fewer, larger segments under the same names: Go still restores it.
    compact(replica, age)
    if age:
        assert_encrypted(replica, b"machine-")
    go_restore(go, replica, tmp_path / "go-compacted.db", *via)
    assert_same_data(db, tmp_path / "go-compacted.db")


# -- (b) Go writes, lsr reads -------------------------------------------------------

@pytest.mark.parametrize("page_size,encrypted", PAGE_SIZES_AND_AGE)
def test_lsr_restores_what_go_replicated(tmp_path: Path, procs: Processes, go: str, page_size: int,
                                         encrypted: bool) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db, page_size=page_size)
    app.execute("CREATE TABLE seed (id INTEGER PRIMARY KEY)")
    age = AgeKeyPair() if encrypted else None
    cfg = compat_config(tmp_path / "go.yml", db, replica, page_count=checkpoint_pages(page_size), age=age)
    via = (cfg, db) if age else (None, None)
    p = start_go(procs, go, cfg)
    wait_ready(p, replica)
    compat_workload(db, page_size, rounds=12, replica=replica)
    wait_synced(db, replica, config=via[0])  # Go ships everything before its (racy) final sync
    stop_go(p)
    app.close()

    (generation,) = replica_generations(replica)
    assert len(wal_indexes(replica, generation)) >= 2
    if age:
        assert_encrypted(replica, b"machine-")
    by_lsr, by_go = tmp_path / "lsr.db", tmp_path / "go.db"
    lsr_restore(replica, by_lsr, *via)
    go_restore(go, replica, by_go, *via)
    assert_same_data(by_go, by_lsr)
    assert_same_data(db, by_lsr)
    # An lsr taking over compacts Go's segments too, their commits dated by each segment's
    # time (Go's rule): a restore to a time inside the chain gives the same database after.
    segments = FileReplicaClient(str(replica)).wal_segments(generation)
    at = ["-timestamp", segments[len(segments) // 2].created_at.isoformat(), *(["-config", str(cfg)] if age else [])]
    source = str(db) if age else f"file://{replica}"
    restore(source, tmp_path / "at-before.db", *at)
    compact(replica, age)
    restore(source, tmp_path / "at-after.db", *at)
    assert content_hash(tmp_path / "at-after.db") == content_hash(tmp_path / "at-before.db")
    assert content_hash(tmp_path / "at-after.db") != content_hash(db)  # a point inside, not the end
    lsr_restore(replica, tmp_path / "lsr-compacted.db", *via)
    go_restore(go, replica, tmp_path / "go-compacted.db", *via)
    assert_same_data(db, tmp_path / "lsr-compacted.db")
    assert_same_data(db, tmp_path / "go-compacted.db")


# -- (c) both list the same replica the same way ---------------------------------------

def listing(tool: list[str], command: str, replica: Path) -> list[list[str]]:
    res = subprocess.run([*tool, command, f"file://{replica}"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{tool} {command}: {res.stderr}"
    lines = [line.split() for line in res.stdout.strip().splitlines()]
    out = lines[1:]
    if command == "generations":
        out = [[r[0], r[1], r[3], r[4]] for r in out]  # lag depends on when it is asked
    return out


def assert_same_listings(go: str, replica: Path) -> None:
    lsr = [str(Path(go).with_name("lsr"))] if Path(go).with_name("lsr").exists() else ["lsr"]
    for command in ("generations", "snapshots", "wal"):
        theirs, ours = listing([go], command, replica), listing(lsr, command, replica)
        assert ours == theirs, f"{command} differs:\nlitestream: {theirs}\nlsr:        {ours}"
        assert theirs, f"{command}: nothing listed"
    header = subprocess.run([*lsr, "wal", f"file://{replica}"], capture_output=True, text=True).stdout.split("\n")[0]
    go_header = go_run(go, "wal", f"file://{replica}").stdout.split("\n")[0]
    assert header.split() == go_header.split()


@pytest.mark.parametrize("writer,encrypted", [("go", False), ("lsr", False), ("go", True), ("lsr", True)])
def test_listings_match_go(tmp_path: Path, procs: Processes, go: str, writer: str, encrypted: bool) -> None:
    """Listings read names and sizes only: an encrypted replica lists without any key."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("CREATE TABLE seed (id INTEGER PRIMARY KEY)")
    age = AgeKeyPair() if encrypted else None
    cfg = compat_config(tmp_path / "cfg.yml", db, replica, page_count=64, age=age)
    p = start_go(procs, go, cfg) if writer == "go" else procs.lsr_replicate("-config", str(cfg))
    wait_ready(p, replica)
    compat_workload(db, 4096, rounds=8, replica=replica)
    wait_synced(db, replica, config=cfg if age else None)
    stop_go(p) if writer == "go" else stop_lsr(p)
    app.close()
    assert len(wal_indexes(replica, replica_generations(replica)[0])) >= 2
    if age:
        assert_encrypted(replica)
    assert_same_listings(go, replica)
    if writer == "lsr":
        compact(replica, age)
        assert_same_listings(go, replica)


# -- (d) taking over from each other ---------------------------------------------------

def run_tool(procs: Processes, go: str, tool: str, cfg: Path) -> subprocess.Popen[bytes]:
    return start_go(procs, go, cfg) if tool == "go" else procs.lsr_replicate("-config", str(cfg))


@pytest.mark.parametrize("first,second", [("go", "lsr"), ("lsr", "go")])
def test_take_over_replication(tmp_path: Path, procs: Processes, go: str, first: str, second: str) -> None:
    """One tool replicates, stops; the other takes over the same database, metadata and replica."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)  # stays open: the WAL survives the hand-over
    wec = OpenWEC(app, clients=10)
    wec.init()
    cfg = compat_config(tmp_path / "cfg.yml", db, replica, page_count=64)

    p = run_tool(procs, go, first, cfg)
    wait_ready(p, replica)
    for _ in range(3):
        wec.round()
    stop_go(p) if first == "go" else stop_lsr(p)
    generation = local_generation(db)
    assert generation

    p = run_tool(procs, go, second, cfg)
    for _ in range(3):
        wec.round()
    wec.migrate()
    # Go opens a database only at its first sync, and skips the final sync of a
    # database it never opened: let the second tool ship everything first.
    wait_synced(db, replica)
    assert p.poll() is None, Processes.output(p)
    out = stop_go(p) if second == "go" else stop_lsr(p)
    if local_generation(db) != generation:
        # A new generation is fine as long as it is announced with a reason.
        if second == "lsr":
            assert any(re.search(r"\(.+\)", line) for line in new_generation_lines(out)), out

    for name, restorer in (("by-lsr", "lsr"), ("by-go", "go")):
        out_db = tmp_path / f"{name}.db"
        if restorer == "go":
            go_restore(go, replica, out_db)
        else:
            restore(f"file://{replica}", out_db)
        assert integrity_ok(out_db)
        assert dump(out_db) == dump(db), f"{first} then {second}: restore {name} differs"
    app.close()
    print(f"{first} -> {second}: generations {replica_generations(replica)}, continued={local_generation(db) == generation}")
