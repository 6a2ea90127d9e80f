"""End to end on S3: the real ``lsr`` (and Go ``litestream``) against moto and nanio.

Every test runs once per server. The application is a real SQLite connection,
lsr runs as a subprocess configured by YAML or by an ``s3://`` URL, faults come
from a real HTTP proxy (tests/faultproxy.py) between lsr and the server, and
every restore is compared row for row with its source plus PRAGMA
integrity_check.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

import pytest

from support.procs import Processes, run_lsr, stop_process, wait_for
from support.sqlite import integrity_ok, open_app_db
from support.faultproxy import FAULTS, FaultProxy
from support.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, make_s3_client, write_s3_config
from litestream_py.clients.s3 import S3ReplicaClient
from litestream_py.compaction import Compactor
from litestream_py import codec
from litestream_py.errors import LitestreamError
from litestream_py.pos import Pos, WALSegmentInfo
from litestream_py.restore import RestoreOptions, restore
from litestream_py.encryption import AgeReader
from litestream_py.replica_client import ReplicaReader
from support.workload import AGE_MAGIC, AgeKeyPair, Writer, assert_same_data, dump, stop_lsr

# The outage test keeps the server unreachable this long (LSR_S3_OUTAGE_SECONDS=60 for "a minute";
# 6 s is six of the shipper's 1 s retries, and keeps CI under 10 minutes).
OUTAGE_SECONDS = float(os.environ.get("LSR_S3_OUTAGE_SECONDS", "6"))
# Once faults stop, the replica must hold everything within this many seconds.
CATCH_UP_SECONDS = 20.0
WRONG_SECRET = "wrong-secret-NEVER-PRINT-5a6b7c"
WRONG_KEY_ID = "AKIAWRONGNEVERPRINT99"


# -- helpers ------------------------------------------------------------------------

def url(server: S3Server, bucket: str, path: str = "db", endpoint: str | None = None) -> str:
    """lsr's URL form for any endpoint (an lsr extension: ?endpoint=)."""
    return f"s3://{bucket}/{path}?endpoint={endpoint or server.endpoint}"


def go_url(server: S3Server, bucket: str, path: str = "db") -> str:
    """Go Litestream 0.3.13's URL form for a local server: bucket.localhost:PORT."""
    return f"s3://{bucket}.localhost:{server.port}/{path}"


def new_db(tmp_path: Path, name: str = "app.db") -> tuple[Path, sqlite3.Connection]:
    db = tmp_path / name
    conn = open_app_db(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
    return db, conn


def insert(conn: sqlite3.Connection, i: int, rows: int = 5, size: int = 200) -> None:
    """One transaction of ``rows`` rows; ``i`` keeps the content deterministic per step."""
    conn.execute("BEGIN")
    for k in range(rows):
        conn.execute("INSERT INTO t (v, n) VALUES (?, ?)", (f"{i:06d}-{k}-" + "x" * size, i))
    if i % 7 == 0:
        conn.execute("UPDATE t SET n = n + 1 WHERE id % 13 = ?", (i % 13,))
    conn.execute("COMMIT")


def restore_to(client: ReplicaReader, out: Path) -> bool:
    """An in-process restore (faster than spawning lsr for polling); False if not possible yet."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{out}{suffix}").unlink(missing_ok=True)
    try:
        restore(client, RestoreOptions(output_path=str(out)))
    except LitestreamError:
        return False
    return True


def wait_caught_up(db: Path, client: ReplicaReader, timeout: float, what: str = "the replica to catch up") -> float:
    """Seconds until a restore of the replica equals the source as it is now."""
    want = dump(db)
    probe = db.parent / "probe.db"
    start = time.monotonic()
    wait_for(lambda: restore_to(client, probe) and dump(probe) == want, timeout=timeout, interval=0.25, what=what)
    return time.monotonic() - start


def wait_replica_ready(p: subprocess.Popen[bytes], client: S3ReplicaClient, timeout: float = 60) -> None:
    def ready() -> bool:
        assert p.poll() is None, f"replicator exited early ({p.returncode}):\n{Processes.output(p)}"
        try:
            return any(client.snapshots(g) for g in client.generations())
        except LitestreamError:
            return False

    wait_for(ready, timeout=timeout, interval=0.2, what="a snapshot on the replica")


def replicate_and_catch_up(procs: Processes, cfg: Path, env: dict[str, str], client: S3ReplicaClient, db: Path,
                           conn: sqlite3.Connection, transactions: int = 20) -> subprocess.Popen[bytes]:
    """lsr replicating per ``cfg``, its snapshot shipped, then ``transactions`` inserts shipped too."""
    p = procs.lsr_replicate("-config", str(cfg), env=env)
    wait_replica_ready(p, client)
    for i in range(transactions):
        insert(conn, i)
    wait_caught_up(db, client, CATCH_UP_SECONDS)
    return p


def lsr_restore_ok(source: Path, replica_url: str, out: Path, env: dict[str, str], *extra: str) -> str:
    res = run_lsr("restore", "-o", str(out), *extra, replica_url, env=env)
    assert res.returncode == 0, f"lsr restore failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    assert_same_data(source, out)
    return res.stdout + res.stderr


def shadow_wal_bytes(db: Path) -> int:
    meta = db.parent / f".{db.name}-litestream"
    return sum(p.stat().st_size for p in meta.glob("generations/*/wal/*.wal"))


@pytest.fixture
def proxy(s3_server: S3Server, fault_proxy: Callable[..., FaultProxy]) -> FaultProxy:
    return fault_proxy(s3_server.port, seed=20240613)


# -- 1. commands on an s3:// URL, no config file ------------------------------------------

def test_url_commands_without_config(tmp_path: Path, procs: Processes, s3_server: S3Server, s3_bucket: str,
                                     s3_env: dict[str, str]) -> None:
    """`lsr replicate DB URL`, then generations / snapshots / wal / restore on the URL,
    in lsr's ?endpoint= form and in Go's bucket.localhost:PORT form; credentials from
    LITESTREAM_ACCESS_KEY_ID / LITESTREAM_SECRET_ACCESS_KEY only."""
    db, conn = new_db(tmp_path)
    replica_url = url(s3_server, s3_bucket)
    p = procs.lsr_replicate(str(db), replica_url, env=s3_env)
    client = make_s3_client(s3_server, s3_bucket)
    wait_replica_ready(p, client)
    for i in range(50):
        insert(conn, i)
    wait_caught_up(db, client, CATCH_UP_SECONDS)
    stop_lsr(p)
    [generation] = client.generations()

    for u in (replica_url, go_url(s3_server, s3_bucket)):
        gens = run_lsr("generations", u, env=s3_env)
        assert gens.returncode == 0, gens.stderr
        assert re.search(rf"^s3\s+{generation}\s", gens.stdout, re.M), gens.stdout
        snaps = run_lsr("snapshots", u, env=s3_env)
        assert snaps.returncode == 0 and generation in snaps.stdout, snaps.stderr
        wal = run_lsr("wal", u, env=s3_env)
        assert wal.returncode == 0, wal.stderr
        listed = [line for line in wal.stdout.splitlines() if generation in line]
        assert len(listed) == len(client.wal_segments(generation))
        out = tmp_path / f"restored-{len(list(tmp_path.glob('restored-*')))}.db"
        lsr_restore_ok(db, u, out, s3_env)


# -- 2. 20 % of requests failing during a write load ------------------------------------

def test_faults_during_write_load(tmp_path: Path, procs: Processes, s3_server: S3Server, s3_bucket: str,
                                  s3_env: dict[str, str], proxy: FaultProxy) -> None:
    """Resets mid-upload and mid-download, 500s, 503 SlowDown, 408s and latency on 20 % of
    requests while the application writes: nothing is lost, and once the faults stop the
    replica catches up within seconds."""
    db, conn = new_db(tmp_path)
    cfg = write_s3_config(tmp_path, db, s3_bucket, proxy.endpoint, monitor_interval="100ms",
                       min_checkpoint_page_count=200, replica={"sync-interval": "200ms"})
    p = procs.lsr_replicate("-config", str(cfg), env=s3_env)
    direct = make_s3_client(s3_server, s3_bucket)
    wait_replica_ready(p, direct)

    proxy.configure(ratio=0.2, faults=FAULTS, latency=0.05)
    writer = Writer(lambda i: insert(conn, i), pause=0.01)
    writer.start()
    # At least 6 s, and until 10 faults were met (on a loaded machine lsr makes fewer requests in 6 s).
    writing_until = time.monotonic() + 6
    while time.monotonic() < writing_until or (
            sum(proxy.injected().values()) < 10 and time.monotonic() < writing_until + 24):
        time.sleep(0.1)
    transactions = writer.stop()
    time.sleep(1)  # let lsr meet a few more faults with nothing new to write
    proxy.heal()
    faults = proxy.injected()
    elapsed = wait_caught_up(db, direct, CATCH_UP_SECONDS)
    print(f"\n{s3_server.name}: {transactions} transactions, faults injected {faults}, "
          f"{proxy.stats['forwarded']} requests forwarded, caught up {elapsed:.1f}s after faults stopped")
    assert transactions > 100
    assert sum(faults.values()) >= 10, faults
    out = stop_lsr(p)
    assert "Traceback" not in out
    lsr_restore_ok(db, url(s3_server, s3_bucket), tmp_path / "restored.db", s3_env)


# -- 3. the server unreachable for a minute -------------------------------------------------

@pytest.mark.slow
def test_outage_keeps_shadow_wal_and_warns_once(tmp_path: Path, procs: Processes, s3_server: S3Server,
                                                 s3_bucket: str, s3_env: dict[str, str], proxy: FaultProxy) -> None:
    """The endpoint refuses connections for OUTAGE_SECONDS: the application keeps writing,
    lsr keeps the shadow WAL, logs one clear warning, and ships everything once it is back."""
    db, conn = new_db(tmp_path)
    cfg = write_s3_config(tmp_path, db, s3_bucket, proxy.endpoint, monitor_interval="200ms")
    direct = make_s3_client(s3_server, s3_bucket)
    p = replicate_and_catch_up(procs, cfg, s3_env, direct, db, conn)

    proxy.outage("refuse")
    down = time.monotonic()
    writer = Writer(lambda i: insert(conn, 1000 + i, rows=2), pause=0.05)
    writer.start()
    shadow_start = shadow_wal_bytes(db)
    time.sleep(max(OUTAGE_SECONDS - 5, 1))
    assert p.poll() is None, Processes.output(p)
    shadow_during = shadow_wal_bytes(db)
    time.sleep(max(OUTAGE_SECONDS - (time.monotonic() - down), 0))
    transactions = writer.stop()
    proxy.recover()
    elapsed = wait_caught_up(db, direct, CATCH_UP_SECONDS + 30)
    print(f"\n{s3_server.name}: {transactions} transactions during a {OUTAGE_SECONDS:.0f}s outage, shadow wal "
          f"{shadow_start} -> {shadow_during} bytes, caught up {elapsed:.1f}s after the endpoint came back")
    assert transactions > 8 * OUTAGE_SECONDS  # the application kept writing (~18 a second)
    assert shadow_during > shadow_start, "the shadow WAL did not keep the writes made during the outage"

    out = stop_lsr(p)
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, "\n".join(warnings)
    assert f"cannot reach s3 endpoint {proxy.endpoint}: connection failed" in warnings[0]
    assert "recovered after" in out
    lsr_restore_ok(db, url(s3_server, s3_bucket), tmp_path / "restored.db", s3_env)


# -- 4. a corrupted object ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["snapshot", "wal"])
def test_corrupted_object_fails_restore(tmp_path: Path, procs: Processes, s3_server: S3Server, s3_bucket: str,
                                        s3_env: dict[str, str], kind: str) -> None:
    """Bytes flipped in one object (on nanio's disk; by a raw overwrite that keeps the
    metadata on moto): restore exits non-zero naming the object, and writes nothing."""
    db, conn = new_db(tmp_path)
    p = procs.lsr_replicate(str(db), url(s3_server, s3_bucket), env=s3_env)
    client = make_s3_client(s3_server, s3_bucket)
    wait_replica_ready(p, client)
    for i in range(30):
        insert(conn, i)
    wait_caught_up(db, client, CATCH_UP_SECONDS)
    stop_lsr(p)

    [generation] = client.generations()
    prefix = f"db/generations/{generation}"
    if kind == "snapshot":
        key = f"{prefix}/snapshots/{client.snapshots(generation)[-1].index:08x}.snapshot.lz4"
    else:
        seg = client.wal_segments(generation)[-1]
        key = f"{prefix}/wal/{seg.index:08x}_{seg.offset:08x}.wal.lz4"
    raw = s3_server.raw_client()
    if s3_server.data_dir is not None:
        path = s3_server.object_file(s3_bucket, key)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x55
        path.write_bytes(bytes(data))
    else:
        head = raw.head_object(Bucket=s3_bucket, Key=key)
        data = bytearray(raw.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0x55
        raw.put_object(Bucket=s3_bucket, Key=key, Body=bytes(data), Metadata=head["Metadata"])

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = run_lsr("restore", "-o", str(out_dir / "restored.db"), url(s3_server, s3_bucket), env=s3_env)
    assert res.returncode != 0
    assert f"s3://{s3_bucket}/{key}: crc32c mismatch" in res.stderr, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert list(out_dir.iterdir()) == []


# -- 5. credentials never appear ----------------------------------------------------------

def _assert_clean(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text, f"credential {s[:4]}... leaked:\n{text}"


def test_credentials_never_logged(tmp_path: Path, procs: Processes, s3_server: S3Server, s3_bucket: str,
                                  s3_env: dict[str, str], proxy: FaultProxy) -> None:
    """Keys written inline in the config, debug logging, faults, failing runs with wrong keys:
    no key id or secret in any line lsr prints."""
    secrets = (ACCESS_KEY_ID, SECRET_ACCESS_KEY, WRONG_KEY_ID, WRONG_SECRET)
    env = {k: v for k, v in s3_env.items() if not k.startswith("LITESTREAM_")}
    db, conn = new_db(tmp_path)
    cfg = write_s3_config(tmp_path, db, s3_bucket, proxy.endpoint, credentials=(ACCESS_KEY_ID, SECRET_ACCESS_KEY),
                       log_level="debug")
    p = procs.lsr_replicate("-config", str(cfg), env=env)
    direct = make_s3_client(s3_server, s3_bucket)
    wait_replica_ready(p, direct)
    proxy.configure(ratio=0.3, faults=["error_500", "slowdown_503", "reset_upload"])
    for i in range(20):
        insert(conn, i)
    proxy.heal()
    wait_caught_up(db, direct, CATCH_UP_SECONDS)
    proxy.outage("refuse")
    insert(conn, 99)
    wait_for(lambda: "cannot reach s3 endpoint" in Processes.output(p), what="lsr to meet the outage")
    proxy.recover()
    wait_caught_up(db, direct, CATCH_UP_SECONDS + 20)
    outputs = [stop_lsr(p)]

    for args in (["generations"], ["snapshots"], ["wal"], ["restore", "-v", "-o", str(tmp_path / "r1.db")]):
        res = run_lsr(*args[:1], "-config", str(cfg), *args[1:], str(db), env=env)
        assert res.returncode == 0, res.stderr
        outputs.append(res.stdout + res.stderr)
    assert_same_data(db, tmp_path / "r1.db")

    # Failing runs: wrong secret, unknown key id (nanio checks both; moto accepts any
    # key, so there the wrong keys meet a missing bucket instead), unreachable endpoint.
    bad = [
        write_s3_config(tmp_path, db, s3_bucket, s3_server.endpoint, name="bad1.yml",
                     credentials=(ACCESS_KEY_ID, WRONG_SECRET)),
        write_s3_config(tmp_path, db, "no-such-bucket-x", s3_server.endpoint, name="bad2.yml",
                     credentials=(WRONG_KEY_ID, WRONG_SECRET)),
        write_s3_config(tmp_path, db, s3_bucket, "http://127.0.0.1:9", name="bad3.yml",
                     credentials=(WRONG_KEY_ID, WRONG_SECRET)),
    ]
    for n, cfg_bad in enumerate(bad):
        for args in (["generations"], ["restore", "-v", "-o", str(tmp_path / f"never-{n}.db")]):
            res = run_lsr(*args[:1], "-config", str(cfg_bad), *args[1:], str(db), env=env)
            assert res.returncode != 0 or s3_server.name == "moto" and cfg_bad.name == "bad1.yml", res
            outputs.append(res.stdout + res.stderr)
    # And lsr replicate itself failing to reach its replica.
    p = procs.lsr_replicate("-config", str(bad[1]), env=env)
    wait_for(lambda: any(e in Processes.output(p) for e in ("access denied", "bucket does not exist")),
             what="lsr to fail to reach its replica")
    outputs.append(stop_any(p))
    for text in outputs:
        _assert_clean(text, *secrets)
    assert any("access denied" in t or "bucket does not exist" in t for t in outputs)


def stop_any(p: subprocess.Popen[bytes]) -> str:
    """Stop lsr or Go litestream, whatever its exit status; its output."""
    Processes.stop(p, timeout=60)
    return Processes.output(p)


# -- 6. compatibility with Go Litestream 0.3.13 on the same server ----------------------------


def assert_encrypted_on_s3(server: S3Server, bucket: str) -> None:
    """Every object under the replica's path is age-encrypted and holds no row text."""
    raw = server.raw_client()
    keys = [o["Key"] for o in raw.list_objects_v2(Bucket=bucket, Prefix="db/").get("Contents", [])]
    assert keys
    for key in keys:
        blob = raw.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert blob.startswith(AGE_MAGIC), f"{key} is not age-encrypted"
        assert b"xxxxxxxxxx" not in blob, f"{key} holds row text"


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "age"])
def test_go_replicates_lsr_restores(tmp_path: Path, procs: Processes, s3_server: S3Server, s3_bucket: str,
                                    s3_env: dict[str, str], encrypted: bool, go: str) -> None:
    db, conn = new_db(tmp_path)
    for i in range(10):
        insert(conn, i)
    age = AgeKeyPair() if encrypted else None
    # A low checkpoint threshold: the replica spans several WAL indexes.
    cfg = write_s3_config(tmp_path, db, s3_bucket, s3_server.endpoint, min_checkpoint_page_count=100,
                          replica={"age": age.flow()} if age else None)
    p = procs.start([go, "replicate", "-config", str(cfg)], "go-litestream", env=s3_env)
    client = make_s3_client(s3_server, s3_bucket)
    wait_replica_ready(p, client)
    for i in range(10, 200):
        insert(conn, i, size=500)
    wait_caught_up(db, AgeReader(client, age.keys() if age else None), CATCH_UP_SECONDS + 10)
    out = stop_any(p)
    assert "write snapshot" in out, out
    [generation] = client.generations()
    # Objects written by Go carry no CRC32C metadata: they are accepted as they are.
    head = s3_server.raw_client().head_object(
        Bucket=s3_bucket, Key=f"db/generations/{generation}/wal/{client.wal_segments(generation)[0].index:08x}"
                               f"_{client.wal_segments(generation)[0].offset:08x}.wal.lz4")
    assert "crc32c" not in head.get("Metadata", {})
    assert len({w.index for w in client.wal_segments(generation)}) > 1, "expected several WAL indexes"
    if age:
        assert_encrypted_on_s3(s3_server, s3_bucket)
        # Without the identity: one line naming the encryption, and nothing written.
        res = run_lsr("restore", "-o", str(tmp_path / "by-url.db"), url(s3_server, s3_bucket), env=s3_env)
        assert res.returncode == 1 and "age-encrypted" in res.stderr and "lz4" not in res.stderr.lower(), res
        assert not (tmp_path / "by-url.db").exists()
        age.assert_absent(lsr_restore_ok(db, str(db), tmp_path / "by-config.db", s3_env, "-config", str(cfg)))
        return
    lsr_restore_ok(db, url(s3_server, s3_bucket), tmp_path / "by-url.db", s3_env)
    lsr_restore_ok(db, str(db), tmp_path / "by-config.db", s3_env, "-config", str(cfg))


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "age"])
def test_lsr_replicates_go_restores(tmp_path: Path, procs: Processes, s3_server: S3Server, s3_bucket: str,
                                    s3_env: dict[str, str], encrypted: bool, go: str) -> None:
    db, conn = new_db(tmp_path)
    age = AgeKeyPair() if encrypted else None
    cfg = write_s3_config(tmp_path, db, s3_bucket, s3_server.endpoint, monitor_interval="100ms",
                       min_checkpoint_page_count=100, replica={"age": age.flow()} if age else None)
    p = procs.lsr_replicate("-config", str(cfg), env=s3_env)
    client = make_s3_client(s3_server, s3_bucket)
    wait_replica_ready(p, client)
    for i in range(200):
        insert(conn, i, size=500)
    wait_caught_up(db, AgeReader(client, age.keys() if age else None), CATCH_UP_SECONDS)
    out = stop_lsr(p)
    [generation] = client.generations()
    assert len({w.index for w in client.wal_segments(generation)}) > 1, "expected several WAL indexes"
    sources = [("by-config", ["-config", str(cfg), str(db)])]
    if age:
        age.assert_absent(out)
        assert_encrypted_on_s3(s3_server, s3_bucket)
    else:
        sources.append(("by-url", [go_url(s3_server, s3_bucket)]))

    before = len(client.wal_segments(generation))
    for name, args in sources:
        out = tmp_path / f"{name}.db"
        res = subprocess.run([go, "restore", "-o", str(out), *args], capture_output=True, text=True,
                             env={**os.environ, **s3_env}, timeout=120)
        assert res.returncode == 0, f"go restore failed:\n{res.stdout}\n{res.stderr}"
        assert integrity_ok(out)
        assert_same_data(db, out)
        # Go restores it as shipped (by config), then compacted: one merged segment
        # per WAL index, under the same names, encrypted again if it was (issue 29).
        keys = age.keys() if age else None
        Compactor(client, "s3", threading.Lock(), age=timedelta(0), reader=AgeReader(client, keys),
                  seal=keys.encrypt if keys else None).compact()
        segments = client.wal_segments(generation)
        indexes = [w.index for w in segments]
        # One segment per index (how many were merged depends on how often the load let lsr ship);
        # the last index keeps the generation's last one (lsr resumes there) apart.
        assert len(segments) <= before and len(segments) - len(set(indexes)) <= indexes.count(max(indexes)) - 1 <= 1
        if age:
            assert_encrypted_on_s3(s3_server, s3_bucket)
        if age and name == "by-config":
            sources.append(("compacted", ["-config", str(cfg), str(db)]))


# -- 7. a slow endpoint holds up shipments, never the local syncs -------------------------

# One transaction in each database named on the command line.
COMMIT_TO_EACH = """
import sqlite3, sys
for path in sys.argv[1:]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.execute("INSERT INTO t (v, n) VALUES ('one more', 1)")
    conn.close()
"""


def test_replicas_stuck_on_a_slow_endpoint_do_not_hold_up_local_syncs(
        tmp_path: Path, s3_servers: dict[str, S3Server], fault_proxy: Callable[..., FaultProxy]) -> None:
    """More replicas than worker threads wait on an endpoint that answers after 30 s.
    Every database's WAL is still copied to its shadow WAL (and so can still be
    checkpointed): the shippers' waits never take the monitors' threads."""
    from litestream_py.db import DB
    from litestream_py.replica import Replica
    from litestream_py.replicator import Replicator
    from litestream_py.scheduler import MAX_WORKERS

    server = s3_servers["moto"]
    bucket = server.create_bucket()
    slow = fault_proxy(server.port, seed=9)
    slow.configure(ratio=1.0, faults=["latency"], latency=30.0)
    dbs = []
    for k in range(MAX_WORKERS + 4):
        path, conn = new_db(tmp_path, f"app{k}.db")
        conn.close()  # the app writes from another process (see below)
        db = DB(str(path))
        client = make_s3_client(server, bucket, f"db{k}", endpoint=slow.endpoint)
        db.replicas.append(Replica(db, client, "s3"))
        dbs.append(db)
    replicator = Replicator(dbs)
    replicator.start()
    try:
        wait_for(lambda: all(not db.pos().is_zero() for db in dbs), 20, what="every generation")
        # Every shipper has now asked the endpoint about its new generation and waits.
        wait_for(lambda: slow.stats["latency"] >= MAX_WORKERS, 20, what="shippers waiting on the endpoint")
        before = [db.pos() for db in dbs]
        # Not from this process: sqlite3's SQLite and lsr's (apsw's) would not see
        # each other's POSIX locks, and the app could write during a checkpoint.
        subprocess.run([sys.executable, "-c", COMMIT_TO_EACH, *(db.path for db in dbs)], check=True, timeout=60)
        wait_for(lambda: all(db.pos().offset > b.offset for db, b in zip(dbs, before)), 10,
                 what="every commit copied to its shadow WAL")
    finally:
        slow.stop()  # the waiting requests fail at once
        replicator.stop(final_sync=False)


class SegmentArrivals:
    """Lists the replica's WAL segments every few ms from a thread, noting when each appears."""

    def __init__(self, client: S3ReplicaClient, generation: str) -> None:
        self.client, self.generation = client, generation
        self.arrivals: list[tuple[float, WALSegmentInfo]] = []
        # Per poll, by its start: when the poll before it began and when it ended, the
        # window its new segments landed in (LISTs are slow on a loaded machine).
        self.windows: dict[float, tuple[float, float]] = {}
        self._last_poll = -math.inf
        self._seen: set[tuple[int, int]] = set()
        self._arrived = threading.Condition()  # notified when a poll sees new segments
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SegmentArrivals:
        self._poll(arrived=-math.inf)  # what is there already
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self._poll(time.monotonic())

    def _poll(self, arrived: float) -> None:
        new = False
        for seg in self.client.wal_segments(self.generation):
            if (seg.index, seg.offset) not in self._seen:
                self._seen.add((seg.index, seg.offset))
                self.arrivals.append((arrived, seg))
                new = True
        self.windows[arrived] = (self._last_poll, time.monotonic())
        self._last_poll = arrived
        if new:
            with self._arrived:
                self._arrived.notify_all()

    def shipments(self, since: float = 0.0) -> list[float]:
        """When each shipment began to arrive: one shipment may be several segments."""
        times = [t for t, _ in list(self.arrivals) if t >= since]
        return [t for k, t in enumerate(times) if k == 0 or t - times[k - 1] > 0.15]

    def longest_gap(self, a: float, b: float) -> float:
        """The longest two shipments seen at ``a`` and ``b`` can have been apart."""
        return self.windows[b][1] - self.windows[a][0]

    def wait_just_after_shipment(self, since: float, count: int) -> list[float]:
        """Until ``count`` shipments have arrived since ``since``: returns as soon as a poll
        sees the last of them begin. (Woken by the poll, not by comparing its time stamp
        with the clock: on a loaded machine one LIST can take longer than "just now".)"""
        deadline = since + 15
        with self._arrived:
            while len(self.shipments(since)) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"fewer than {count} shipments in 15 s of commits"
                self._arrived.wait(left)
        return self.shipments(since)

    def end(self) -> int:
        """The WAL offset that the latest segment ends at (index 0); 0 before the first one."""
        segments = [s for _, s in list(self.arrivals)]
        if not segments:
            return 0
        seg = max(segments, key=lambda s: (s.index, s.offset))
        assert seg.index == 0, "a checkpoint restarted the WAL: offsets no longer compare"
        frames, _ = codec.decode_segment(self.client.read_wal_segment(Pos(seg.generation, seg.index, seg.offset)))
        return seg.offset + len(frames)


@contextlib.contextmanager
def default_s3_replication(tmp_path: Path, procs: Processes, server: S3Server,
                           s3_env: dict[str, str]) -> Iterator[tuple[Path, sqlite3.Connection, SegmentArrivals]]:
    """``lsr replicate`` with an S3 replica left at its defaults, and no checkpoints (the
    WAL's offsets stay comparable); yields once the generation's snapshot is on S3."""
    path, conn = new_db(tmp_path)
    bucket = server.create_bucket()
    cfg = write_s3_config(tmp_path, path, bucket, server.endpoint, min_checkpoint_page_count=1_000_000,
                          max_checkpoint_page_count=1_000_000)
    p = procs.lsr_replicate("-config", str(cfg), env=s3_env)
    client = make_s3_client(server, bucket)
    wait_replica_ready(p, client)
    try:
        with SegmentArrivals(client, client.generations()[0]) as arrivals:
            yield path, conn, arrivals
        assert "Traceback" not in stop_lsr(p)
    finally:
        conn.close()


# Commits every 10 ms until a line arrives on stdin, then prints the monotonic
# times of its commits (one clock for all processes). A process of its own: the
# test's S3 polling thread would stall commits made from the test's interpreter
# by tens of ms, and lsr takes a 50 ms gap between commits for a pause.
BUSY_WRITER = """
import json, sqlite3, sys, threading, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
commits = []
while not stop.is_set():
    conn.execute("INSERT INTO t (v, n) VALUES (?, ?)", ("x" * 200, len(commits)))
    commits.append(time.monotonic())
    time.sleep(0.01)
print(json.dumps(commits), flush=True)
"""


@contextlib.contextmanager
def busy_writer(path: Path) -> Iterator[Callable[[], list[float]]]:
    """Runs BUSY_WRITER on ``path``; yields the function that stops it and returns
    the monotonic times of its commits."""
    writer = subprocess.Popen([sys.executable, "-c", BUSY_WRITER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        yield lambda: [float(t) for t in json.loads(writer.communicate("stop\n", timeout=10)[0])]
    finally:
        stop_process(writer, signal.SIGKILL)


def writer_paused(commits: list[float], start: float, end: float) -> bool:
    """Whether the writer left 40 ms or more between two commits, the pause (lsr's
    is 50 ms of an unwritten WAL) reached between ``start`` and ``end``: on a loaded
    machine a busy writer does stall, and lsr rightly ships early then."""
    return any(b - a >= 0.04 and start <= a + 0.04 <= end for a, b in zip(commits, commits[1:]))


@pytest.mark.alone
def test_default_s3_replica_ships_the_last_commits_once_the_writer_pauses(
        tmp_path: Path, procs: Processes, s3_servers: dict[str, S3Server], s3_env: dict[str, str]) -> None:
    """Left at its default, an S3 replica ships about once a second while the writer
    is busy, and once more as soon as the writer pauses: commits made just after a
    shipment reach S3 in well under the second they would otherwise wait."""
    with default_s3_replication(tmp_path, procs, s3_servers["moto"], s3_env) as (path, conn, arrivals):
        busy_from = time.monotonic()
        with busy_writer(path) as stop_writer:
            busy = arrivals.wait_just_after_shipment(busy_from, 5)
            time.sleep(0.03)  # a few commits just after a shipment: the next is a second away
            commits = stop_writer()
        wal_end = Path(f"{path}-wal").stat().st_size
        wait_for(lambda: arrivals.end() >= wal_end, 5, interval=0.005, what="the last commits on S3")
        caught_up = time.monotonic() - commits[-1]
    assert caught_up < 0.6, f"the last commits took {caught_up:.2f} s to reach S3"
    # Apart from early ones after the writer stalled, shipments are a second apart:
    # by lsr's clock 0.99-1.0 s (a wake within MIN_SYNC_SPACING of the due time
    # ships), here as seen on S3, each after an upload whose time varies by tens of ms.
    # (The slack before a shipment's upload began is a guess: 0.3 s.)
    # On a loaded machine the writer itself pauses often, and may explain every gap:
    # then no gap is left to measure, which is no failure of lsr's.
    # (Each gap as long as the LISTs that saw the two shipments allow: on a loaded machine a
    # LIST takes a good part of a second, and a shipment is known only to within two of them.)
    spaced = [arrivals.longest_gap(a, b) for a, b in zip(busy, busy[1:]) if not writer_paused(commits, a - 0.3, b)]
    pauses = [(round(a - busy[0], 3), round(b - a, 3)) for a, b in zip(commits, commits[1:]) if b - a >= 0.04]
    shown = f"shipments while busy at {[round(t - busy[0], 3) for t in busy]}, writer's pauses (at, for) {pauses}"
    assert all(gap > 0.7 for gap in spaced), shown
    assert len(spaced) < 3 or sum(spaced) / len(spaced) > 0.9, shown


def big_commit_rows() -> list[tuple[str, int]]:
    """~12 MiB of incompressible rows: one full 8 MiB segment and a partial one."""
    return [(os.urandom(100_000).hex(), i) for i in range(60)]


@pytest.mark.alone
def test_default_s3_replica_ships_a_big_commit_right_after_a_shipment(
        tmp_path: Path, procs: Processes, s3_servers: dict[str, S3Server], s3_env: dict[str, str]) -> None:
    """A commit of more than one segment, made just after a shipment, reaches S3 whole
    within about the time its uploads take: shipping its full segment early must not
    leave the partial one after it waiting until another write wakes the replica
    (IDLE_WAKE_INTERVAL, a minute)."""
    with default_s3_replication(tmp_path, procs, s3_servers["moto"], s3_env) as (path, conn, arrivals):
        insert(conn, 0)
        wal_end = Path(f"{path}-wal").stat().st_size
        wait_for(lambda: arrivals.end() >= wal_end, 5, interval=0.005, what="the first commit on S3")
        conn.execute("BEGIN")  # the next whole shipment is a second away
        conn.executemany("INSERT INTO t (v, n) VALUES (?, ?)", big_commit_rows())
        conn.execute("COMMIT")
        committed = time.monotonic()
        wal_end = Path(f"{path}-wal").stat().st_size
        assert wal_end > 10 << 20  # one full 8 MiB segment and a partial one
        wait_for(lambda: arrivals.end() >= wal_end, 10, interval=0.005, what="the big commit on S3")
        took = time.monotonic() - committed
    assert took < 2.5, f"the big commit took {took:.2f} s to reach S3"


@pytest.mark.alone
def test_default_s3_replica_ships_a_full_segment_without_waiting_for_its_interval(
        tmp_path: Path, procs: Processes, s3_servers: dict[str, S3Server], s3_env: dict[str, str]) -> None:
    """While the writer is busy an S3 replica left at its default ships once a second,
    but a full segment goes as soon as it is copied: a big commit made just after a
    shipment does not wait most of a second for the next."""
    rows = big_commit_rows()
    with default_s3_replication(tmp_path, procs, s3_servers["moto"], s3_env) as (path, conn, arrivals):
        conn.execute("PRAGMA busy_timeout = 10000")
        with busy_writer(path) as stop_writer:
            arrivals.wait_just_after_shipment(time.monotonic(), 2)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t (v, n) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
            committed = time.monotonic()

            def full_segments() -> list[float]:
                return [t for t, seg in list(arrivals.arrivals) if t >= committed and seg.size >= 4 << 20]

            wait_for(lambda: bool(full_segments()), 10, interval=0.005, what="the full segment on S3")
            took = full_segments()[0] - committed
            stop_writer()
    assert took < 0.7, f"the full segment took {took:.2f} s to reach S3"


# -- a bucket prefix wiped while lsr runs -------------------------------------------------

def test_replica_wiped_while_running_is_written_again(tmp_path: Path, procs: Processes,
                                                      s3_servers: dict[str, S3Server], s3_env: dict[str, str]) -> None:
    """A lifecycle rule (here: the test) deletes every object under the replica's prefix: lsr
    notices at its next validation, logs it, and writes the replica again from a new snapshot."""
    server = s3_servers["moto"]
    bucket = server.create_bucket()
    db, conn = new_db(tmp_path)
    cfg = write_s3_config(tmp_path, db, bucket, server.endpoint, replica={"validation-interval": "1s"})
    client = make_s3_client(server, bucket)
    p = replicate_and_catch_up(procs, cfg, s3_env, client, db, conn)
    raw = server.raw_client()
    keys = [o["Key"] for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="db/")
            for o in page.get("Contents", [])]
    assert keys
    raw.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    for i in range(20, 30):
        insert(conn, i)
    wait_for(lambda: "no snapshot on the replica any more" in Processes.output(p), timeout=60,
             what="lsr to notice the wiped replica")
    wait_caught_up(db, client, CATCH_UP_SECONDS, "the replica to be written again")
    assert p.poll() is None  # no restart
    insert(conn, 30)
    stop_lsr(p)
    conn.close()
    lsr_restore_ok(db, url(server, bucket), tmp_path / "restored.db", s3_env)
