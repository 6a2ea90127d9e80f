"""S3 servers for the tests: moto and nanio, each a real HTTP server on 127.0.0.1.

Each server runs as a subprocess on a free port, started once per test session
(on first use, by conftest's ``s3_servers``) and killed by PID at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litestream_py.clients.s3 import S3ReplicaClient, S3Settings

from .config import write_config
from .procs import BIN_DIR

SERVER_NAMES = ("moto", "nanio")
STARTUP_TIMEOUT = 30.0

# Distinctive fake credentials: tests assert they never appear in any output.
ACCESS_KEY_ID = "LSRTESTKEYID7Q3Z"
SECRET_ACCESS_KEY = "lsr-secret-DO-NOT-LOG-9f41c2e7b8"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_bucket_name() -> str:
    return f"lsr-{uuid.uuid4().hex[:16]}"


@dataclass
class S3Server:
    """A running S3-compatible server and what a client needs to reach it."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path | None = None  # nanio keeps objects as files here; moto in memory
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def raw_client(self, endpoint: str | None = None, **kwargs: Any) -> Any:
        """A plain boto3 client, for setting up and tampering with buckets in tests."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=kwargs.pop("access_key_id", self.access_key_id),
            aws_secret_access_key=kwargs.pop("secret_access_key", self.secret_access_key),
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3}),
            **kwargs,
        )

    def create_bucket(self, name: str | None = None) -> str:
        name = name or new_bucket_name()
        self.raw_client().create_bucket(Bucket=name)
        return name

    def object_file(self, bucket: str, key: str) -> Path:
        """Where nanio stores an object's bytes (only nanio has one)."""
        assert self.data_dir is not None, f"{self.name} keeps objects in memory"
        return self.data_dir / bucket / key

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)


def _wait_ready(server: S3Server, path: str = "/") -> None:
    """Until the server answers HTTP at all (any status means it is up)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(server.endpoint + path, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    server.stop()
    log = server.log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{server.name} did not start on {server.endpoint}: {log}")


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    full_env = dict(os.environ)
    full_env.update(env)
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)


def start_moto(work_dir: Path, env: dict[str, str] | None = None) -> S3Server:
    """moto's server; pass INITIAL_NO_AUTH_ACTION_COUNT in ``env`` to make it check credentials."""
    port = free_port()
    log_path = work_dir / f"moto-{port}.log"
    env = dict(env or {})
    proc = _spawn([str(BIN_DIR / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log_path, env)
    server = S3Server("moto", port, proc, log_path, extra_env=env)
    # moto's own API: unlike an S3 request it does not count as an action
    # against INITIAL_NO_AUTH_ACTION_COUNT.
    _wait_ready(server, "/moto-api/data.json")
    return server


def start_nanio(work_dir: Path, port: int | None = None) -> S3Server:
    """nanio always checks SigV4 signatures against its one configured user.

    ``port``: start again a server stopped there, with the objects it held.
    """
    port = port or free_port()
    data_dir = work_dir / f"nanio-data-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / f"nanio-{port}.log"
    env = {"NANIO_ACCESS_KEY": ACCESS_KEY_ID, "NANIO_SECRET_KEY": SECRET_ACCESS_KEY}
    args = [
        str(BIN_DIR / "nanio"), "serve", "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data_dir), "--no-access-log", "--log-level", "warning",
    ]
    proc = _spawn(args, log_path, env)
    server = S3Server("nanio", port, proc, log_path, data_dir=data_dir)
    _wait_ready(server)
    return server


def start_server(name: str, work_dir: Path) -> S3Server:
    if name == "moto":
        return start_moto(work_dir)
    if name == "nanio":
        return start_nanio(work_dir)
    raise ValueError(f"unknown s3 server {name!r}")


def make_s3_client(
    server: S3Server,
    bucket: str,
    path: str = "db",
    *,
    endpoint: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    **kwargs: Any,
) -> S3ReplicaClient:
    """An S3ReplicaClient for ``server`` (or another endpoint in front of it, such as a FaultProxy)."""
    settings = S3Settings(
        bucket=bucket, path=path, region="us-east-1", endpoint=endpoint or server.endpoint, force_path_style=True
    )
    return S3ReplicaClient(
        settings,
        server.access_key_id if access_key_id is None else access_key_id,
        server.secret_access_key if secret_access_key is None else secret_access_key,
        **kwargs,
    )


def write_s3_config(
    tmp_path: Path,
    db: Path,
    bucket: str,
    endpoint: str,
    *,
    name: str = "litestream.yml",
    credentials: tuple[str, str] | None = None,
    log_level: str = "info",
    replica: dict[str, Any] | None = None,
    top: dict[str, object] | None = None,
    **db_settings: Any,
) -> Path:
    """A litestream.yml (for lsr or Go litestream) with one S3 replica named ``s3`` under path ``db``.

    Credentials come from the environment (``s3_env``) unless given; ``db_settings``
    are DB keys (``monitor_interval="100ms"``), ``replica`` extra replica keys, ``top``
    the file's own keys (see ``write_config``).
    """
    keys: dict[str, object] = {
        "name": "s3", "type": "s3", "bucket": bucket, "path": "db", "endpoint": endpoint,
        "region": "us-east-1", "force-path-style": "true",
    }
    if credentials:
        keys.update({"access-key-id": credentials[0], "secret-access-key": credentials[1]})
    keys.update(replica or {})
    return write_config(tmp_path / name, db, keys, top={**(top or {}), "logging": {"level": log_level}}, **db_settings)
