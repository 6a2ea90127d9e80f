"""Fencing and following next to Go Litestream 0.3.13 (the real binary).

Go must still restore a replica that holds lsr's lease object, and ``lsr
restore -f`` must follow a replica that Go writes, across Go's checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from support.procs import LSR, Processes, wait_for
from support.sqlite import integrity_ok, open_app_db
from support.go import checkpoint_pages, compat_config, compat_workload, go_restore, start_go, stop_go
from support.workload import assert_same_data, dump, wait_ready



def test_go_restores_a_replica_holding_a_lease(tmp_path: Path, procs: Processes, go: str) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    sidecar = procs.lsr_replicate(str(db), f"file://{replica}")
    wait_for(lambda: (replica / "lsr-lease.json").exists(), what="lsr's lease")
    app.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(200)])
    app.commit()
    app.close()
    wait_for(lambda: any(replica.glob("generations/*/wal/*.wal.lz4")), what="a segment")
    assert Processes.stop(sidecar) == 0
    (replica / "lsr-lease.json").write_text('{"left": "behind by a crashed sidecar"}')
    out = tmp_path / "go.db"
    go_restore(go, replica, out)
    assert_same_data(db, out)


def test_lsr_follows_a_replica_go_writes(tmp_path: Path, procs: Processes, go: str) -> None:
    db, replica, standby = tmp_path / "app.db", tmp_path / "replica", tmp_path / "standby.db"
    open_app_db(db).close()
    go_proc = start_go(procs, go, compat_config(tmp_path / "go.yml", db, replica, checkpoint_pages(4096)))
    wait_ready(go_proc, replica)
    follower = procs.start([LSR, "restore", "-f", "-o", str(standby), f"file://{replica}"], "follow")
    compat_workload(db, 4096, 12, replica)  # OpenWEC traffic, a migration, checkpoints mid-way
    stop_go(go_proc)
    want = dump(db)

    def caught_up() -> bool:
        try:
            return dump(standby) == want
        except Exception:
            return False

    wait_for(caught_up, timeout=60, interval=0.2, what="the standby to match Go's replica")
    assert Processes.stop(follower) == 0, Processes.output(follower)
    assert integrity_ok(standby)
    assert "ERROR" not in Processes.output(follower)
