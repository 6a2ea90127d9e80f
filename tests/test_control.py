"""The control socket: ``lsr status``, ``lsr sync [-wait]`` and ``litestream_py.wait_replicated``.

Real ``lsr replicate`` processes, a real writer process, real restores; the
barrier's rounds run in-process against one sidecar (Replicator + ControlServer)
so that they can count the storage requests the barrier makes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from support.config import ReplicaSpec, write_config
from support.procs import LSR, Processes, run_lsr, wait_for
from support.sqlite import open_app_db, rows
from support.s3 import S3Server, free_port, make_s3_client
from support.workload import WriterProcess, local_generation, meta_dir, restore

from litestream_py import wait_replicated
from litestream_py.clients.file import FileReplicaClient
from litestream_py.config import ReplicaConfig
from litestream_py.control import CONTROL_FILE, ControlServer, request
from litestream_py.db import DB
from litestream_py.errors import ControlError
from litestream_py.factory import replica_from_config
from litestream_py.replica_client import ReplicaReader
from litestream_py.replicator import Replicator
from litestream_py.restore import RestoreOptions
from litestream_py.restore import restore as restore_replica

def status_json(db: Path) -> dict[str, object]:
    res = run_lsr("status", "-json", str(db))
    assert res.returncode == 0, res.stderr
    report: dict[str, object] = json.loads(res.stdout)
    return report


def _serving(db: Path) -> bool:
    return run_lsr("status", str(db)).returncode == 0


def test_status_and_sync_wait_through_the_socket_of_a_real_sidecar(
    tmp_path: Path, procs: Processes, writer: WriterProcess
) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    p = procs.lsr_replicate(str(db), f"file://{replica}")
    wait_for(lambda: _serving(db), what="lsr status to answer")

    # The socket is private, and found from the database's path alone.
    socket_path = (meta_dir(db) / CONTROL_FILE).read_text().strip()
    st = os.stat(socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert len(socket_path) < 108

    writer.insert(1)
    res = run_lsr("sync", "-wait", str(db))
    assert res.returncode == 0, res.stderr
    restore(f"file://{replica}", tmp_path / "r1.db")
    assert rows(tmp_path / "r1.db", "SELECT id FROM t ORDER BY id") == [(0,), (1,)]

    report = status_json(db)
    [entry] = report["dbs"]  # type: ignore[misc]
    assert entry["path"] == str(db) and entry["generation"] == local_generation(db)
    [r] = entry["replicas"]
    assert r["name"] == "file" and r["lag_seconds"] == 0 and r["healthy"] is True and r["last_error"] is None
    assert r["position"] == entry["position"] and r["position"].startswith(local_generation(db))
    assert r["last_shipment"].endswith("Z") and "." in r["last_shipment"]  # RFC 3339, sub-second
    text = run_lsr("status", str(db)).stdout
    assert str(db) in text and local_generation(db) in text and "next retention" in text

    # A SIGKILL leaves the socket behind: nobody answers on it, and a new sidecar takes it over.
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert os.path.exists(socket_path)
    res = run_lsr("sync", "-wait", str(db))
    assert res.returncode == 1 and "no sidecar is running" in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1
    p2 = procs.lsr_replicate(str(db), f"file://{replica}")
    wait_for(lambda: _serving(db), what="the new sidecar's status")
    assert "taking it over" in Processes.output(p2)
    # A second sidecar of the same database is refused, naming the holder: by the
    # replica's lease, which the first took with its first write (else by the database's lock).
    p3 = procs.lsr_replicate(str(db), f"file://{replica}")
    assert p3.wait(timeout=60) != 0
    refusal = Processes.output(p3)
    assert f"pid {p2.pid}" in refusal and ("lease is held" in refusal or "another lsr process" in refusal), refusal
    # One of another database told to use the same, live socket does not take it over.
    other = tmp_path / "other.db"
    open_app_db(other).close()
    cfg = write_config(tmp_path / "other.yml", other, f"file://{tmp_path / 'other-replica'}",
                       top={"socket": socket_path})
    p4 = procs.start([LSR, "replicate", "-config", str(cfg)], "lsr-other")
    assert p4.wait(timeout=60) != 0
    assert "another lsr sidecar is serving it" in Processes.output(p4)
    assert _serving(db)


def test_no_sidecar_is_a_one_line_error(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    open_app_db(db).close()
    for args in (["status", str(db)], ["sync", "-wait", str(db)]):
        res = run_lsr(*args)
        assert res.returncode == 1
        assert "cannot reach the lsr sidecar" in res.stderr and "lsr replicate" in res.stderr
        assert res.stderr.count("\n") == 1, res.stderr
    with pytest.raises(ControlError, match="none is running"):
        wait_replicated(str(db), timeout=1)
    res = run_lsr("sync", "-wait", "-timeout", "soon", str(db))
    assert res.returncode != 0 and "not a duration" in res.stderr


def test_sync_wait_times_out_naming_the_late_replica(
    tmp_path: Path, procs: Processes, writer: WriterProcess, s3_env: dict[str, str]
) -> None:
    """An S3 endpoint where nothing listens: the barrier gives up at its timeout with the lag."""
    db = tmp_path / "app.db"
    dead = f"s3://bucket/db?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1"
    procs.lsr_replicate(str(db), dead, env=s3_env)
    wait_for(lambda: _serving(db), what="lsr status to answer")
    writer.insert(1)
    res = run_lsr("sync", "-wait", "-timeout", "2s", str(db))
    assert res.returncode == 1
    assert "cannot confirm replication of" in res.stderr and "within 2s: s3 " in res.stderr, res.stderr
    assert "behind" in res.stderr

    def failing() -> bool:
        [r] = status_json(db)["dbs"][0]["replicas"]  # type: ignore[index]
        return r["last_error"] is not None and r["last_error"]["consecutive_failures"] >= 1

    wait_for(failing, what="status to show the replica's failure")
    [r] = status_json(db)["dbs"][0]["replicas"]  # type: ignore[index]
    assert r["healthy"] is True  # lagging, but not yet past its max-lag of 10 s
    assert r["last_error"]["kind"].endswith("Error") and r["last_error"]["at"].endswith("Z")
    assert "SECRET" not in json.dumps(r).upper()


def _sidecar(tmp_path: Path, rc: ReplicaConfig) -> tuple[DB, Replicator, ControlServer]:
    db = DB(str(tmp_path / "app.db"))
    db.replicas.append(replica_from_config(rc, db))
    replicator = Replicator([db])
    replicator.start()
    control = ControlServer(replicator)
    control.start()
    return db, replicator, control


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_barrier_rounds_then_restore_at_once(
    tmp_path: Path, writer: WriterProcess, s3_servers: dict[str, S3Server], kind: str
) -> None:
    """20 rounds of write, barrier, restore: each restore holds its round's write.

    The S3 replica ships every 10 s: only the barrier's immediate shipment can
    put each write on it within the barrier's timeout, 9 s (an immediate
    shipment to the local server takes milliseconds). A barrier with nothing
    pending makes no PUT.
    """
    timeout = 9.0 if kind == "s3" else 60.0
    reader: ReplicaReader
    if kind == "file":
        rc = ReplicaConfig(path=str(tmp_path / "replica"))
        reader = FileReplicaClient(str(tmp_path / "replica"))
    else:
        server = s3_servers["moto"]
        bucket = server.create_bucket()
        rc = ReplicaConfig(type="s3", bucket=bucket, path="db", endpoint=server.endpoint, region="us-east-1",
                           force_path_style=True, access_key_id=server.access_key_id,
                           secret_access_key=server.secret_access_key, sync_interval=timedelta(seconds=10))
        reader = make_s3_client(server, bucket)
    db, replicator, control = _sidecar(tmp_path, rc)
    try:
        replica = db.replicas[0]
        wait_replicated(db.path, timeout=60)
        for i in range(1, 21):
            # Counted before the write: a file replica may ship it on its own before the barrier.
            before = replica.client.operations.counts().get("PUT", (0, 0))[0]
            writer.insert(i)
            wait_replicated(db.path, timeout=timeout)
            assert replica.client.operations.counts()["PUT"][0] > before
            out = tmp_path / f"restored-{i}.db"
            restore_replica(reader, RestoreOptions(str(out)))
            assert rows(out, "SELECT max(id), count(*) FROM t") == [(i, i + 1)]
        idle = replica.client.operations.counts()
        for _ in range(3):
            wait_replicated(db.path, timeout=60)
        assert replica.client.operations.counts() == idle  # no PUT, nor any other request
    finally:
        control.stop()
        replicator.stop()
    assert not os.path.exists(control.path)


def test_status_of_a_config_with_two_databases_and_its_own_socket(tmp_path: Path, procs: Processes) -> None:
    dbs = [tmp_path / "one.db", tmp_path / "two.db"]
    for db in dbs:
        open_app_db(db).close()
    sock = tmp_path / "ctl.sock"
    replicas: dict[Path, list[ReplicaSpec]] = {db: [{"name": "r", "path": tmp_path / ("r-" + db.stem)}] for db in dbs}
    cfg = write_config(tmp_path / "litestream.yml", replicas, top={"socket": sock})
    procs.lsr_replicate("-config", str(cfg))
    wait_for(lambda: run_lsr("status", "-config", str(cfg)).returncode == 0, what="lsr status -config")
    report = json.loads(run_lsr("status", "-config", str(cfg), "-json").stdout)
    assert [d["path"] for d in report["dbs"]] == [str(db) for db in dbs]
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    res = run_lsr("sync", "-wait", "-config", str(cfg), str(dbs[1]))
    assert res.returncode == 0, res.stderr
    [only] = json.loads(run_lsr("status", "-config", str(cfg), "-json", str(dbs[1])).stdout)["dbs"]
    assert only["path"] == str(dbs[1]) and only["replicas"][0]["lag_seconds"] == 0
    res = run_lsr("sync", "-config", str(cfg), str(dbs[0]))
    assert res.returncode == 0 and "synced to" in res.stdout, res.stderr
    res = run_lsr("sync", "-config", str(cfg), str(tmp_path / "other.db"))
    assert res.returncode == 1 and "this sidecar does not replicate it" in res.stderr


def test_socket_path_over_the_limit_and_bad_requests_are_refused(tmp_path: Path) -> None:
    db = DB(str(tmp_path / "app.db"))
    replicator = Replicator([db], watch=False)
    with pytest.raises(ControlError, match="longer than 107 bytes"):
        ControlServer(replicator, str(tmp_path / ("x" * 120) / "ctl.sock"))
    control = ControlServer(replicator, str(tmp_path / "ctl.sock"))
    control.start()
    try:
        with pytest.raises(ControlError, match="unknown op 'reboot'"):
            request(control.path, {"op": "reboot"})
        with pytest.raises(ControlError, match="cannot find database"):
            request(control.path, {"op": "sync", "db": str(tmp_path / "other.db")})
    finally:
        control.stop()
