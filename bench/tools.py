"""The programs under test and the servers they need, each started and stopped by PID.

``Tool`` is one implementation (lsr or Go Litestream 0.3.13): both take the same
YAML config and the same ``replicate`` / ``restore`` arguments. ``Backend`` is
where replicas go (a directory, or a bucket on a local moto or nanio server) and makes
the matching config and watcher. Every process is started in its own session
and stopped in a ``finally`` by its PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from watch import FileWatcher, S3Watcher, Watcher, sigv4_headers

BIN_DIR = Path(sys.executable).parent
STOP_TIMEOUT = 60.0
ACCESS_KEY_ID = "LSRBENCHKEY"
SECRET_ACCESS_KEY = "lsr-bench-secret"


@dataclass(frozen=True)
class Tool:
    name: str  # "lsr" or "go"
    exe: str

    @property
    def label(self) -> str:
        return {"lsr": "lsr", "go": "Litestream 0.3.13"}.get(self.name, self.name)


def find_tool(name: str, exe: str | None) -> Tool | None:
    """The tool at ``exe``, or next to this Python, or on PATH; None if absent."""
    default = {"lsr": "lsr", "go": "litestream"}[name]
    for candidate in (exe, str(BIN_DIR / default), default):
        if candidate and (os.access(candidate, os.X_OK) or _on_path(candidate)):
            return Tool(name, candidate)
    return None


def _on_path(name: str) -> bool:
    return "/" not in name and any(os.access(os.path.join(d, name), os.X_OK) for d in os.environ["PATH"].split(":"))


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)


def stop(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM the process (its own session), SIGKILL it if it has not exited in time."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.wait()


# -- where replicas go ----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """A local S3 server on a free port of 127.0.0.1, run as a subprocess.

    moto: Python, in memory, one interpreter lock for all requests, unsigned
    requests accepted. nanio: Python (Starlette on uvicorn), objects as files,
    every request's SigV4 signature checked.
    """

    def __init__(self, kind: str, work: Path, access_log: bool = False) -> None:
        self.kind, self.port = kind, _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.signed = kind == "nanio"
        self.log = work / f"{kind}-{self.port}.log"
        if kind == "moto":
            args, env = [str(BIN_DIR / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)], None
        else:
            data = work / "nanio-data"
            data.mkdir(parents=True, exist_ok=True)
            args = [str(BIN_DIR / "nanio"), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                    "--data-dir", str(data), *(["--log-level", "info"] if access_log else
                                               ["--no-access-log", "--log-level", "warning"])]
            env = {"NANIO_ACCESS_KEY": ACCESS_KEY_ID, "NANIO_SECRET_KEY": SECRET_ACCESS_KEY}
        self.proc = _spawn(args, self.log, env)
        deadline = time.monotonic() + 30
        while True:
            try:
                self._request("GET", "/moto-api/data.json" if kind == "moto" else "/")
                return
            except (OSError, urllib.error.HTTPError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{kind} did not start: {self.log.read_text(errors='replace')[-1000:]}")
                time.sleep(0.1)

    def _request(self, method: str, path: str) -> None:
        url = self.endpoint + path
        headers = sigv4_headers(method, url, (ACCESS_KEY_ID, SECRET_ACCESS_KEY)) if self.signed else {}
        urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=30).close()

    def create_bucket(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        self._request("PUT", f"/{name}")
        return name

    def requests(self) -> dict[str, int]:
        """Requests so far by kind (PUT, GET, LIST, DELETE), from nanio's access log."""
        counts = {"PUT": 0, "GET": 0, "LIST": 0, "DELETE": 0}
        for m in _ACCESS_RE.finditer(self.log.read_text(errors="replace")):
            method, target = m.group(1), m.group(2)
            if method == "GET":
                # Path-style: a GET of the bucket itself (no key) is a listing, V1 or V2.
                key = urllib.parse.urlsplit(target).path.lstrip("/").partition("/")[2]
                counts["GET" if key else "LIST"] += 1
            elif method == "DELETE" or (method == "POST" and "?delete" in target):
                counts["DELETE"] += 1
            elif method == "PUT":
                counts["PUT"] += 1
        return counts

    def stop(self) -> None:
        stop(self.proc)


# A uvicorn access log line: '127.0.0.1:55068 - "GET /b?list-type=2 HTTP/1.1" 200 OK'.
_ACCESS_RE = re.compile(r'"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/[\d.]+" 2\d\d')


@dataclass
class Backend:
    """A replica destination: ``file`` (a directory under work), or a bucket on
    ``server``: ``s3`` (moto) or ``nanio``."""

    name: str
    server: S3Server | None = None
    s3_poll: float = 0.02
    age: AgeKeyPair | None = None  # encrypt every replica (run.py --age)

    def replica(self, work: Path, db_name: str) -> dict[str, object]:
        """A fresh, empty replica's YAML mapping."""
        age: dict[str, object] = {"age": self.age.config()} if self.age else {}
        if self.name == "file":
            path = work / f"{db_name}-replica"
            return {"type": "file", "path": str(path), **age}
        assert self.server is not None
        return {"type": "s3", "bucket": self.server.create_bucket(), "path": db_name, "endpoint": self.server.endpoint,
                "region": "us-east-1", "force-path-style": True,
                "access-key-id": ACCESS_KEY_ID, "secret-access-key": SECRET_ACCESS_KEY, **age}

    def watcher(self, replica: dict[str, object]) -> Watcher:
        watcher: Watcher
        if replica["type"] == "file":
            watcher = FileWatcher(str(replica["path"]))
        else:
            assert self.server is not None
            watcher = S3Watcher(str(replica["endpoint"]), str(replica["bucket"]), str(replica["path"]), self.s3_poll,
                                (ACCESS_KEY_ID, SECRET_ACCESS_KEY), signed=self.server.signed)
        if self.age:
            watcher.identities = [self.age.identity]
        return watcher


class AgeKeyPair:
    """An age key pair made for one benchmark run."""

    def __init__(self) -> None:
        from pyrage import x25519

        self.identity = x25519.Identity.generate()

    def config(self) -> dict[str, list[str]]:
        """The replica's ``age:`` mapping (both keys: the bench restores what it replicates)."""
        return {"identities": [str(self.identity)], "recipients": [str(self.identity.to_public())]}


def write_config(path: Path, dbs: list[tuple[Path, dict[str, object], dict[str, object]]]) -> Path:
    """A litestream.yml: (db path, replica mapping, extra db keys) per database."""
    lines = ["dbs:"]
    for db, replica, extra in dbs:
        lines.append(f"  - path: {db}")
        lines += [f"    {k}: {_yaml(v)}" for k, v in extra.items()]
        lines.append("    replicas:")
        first = True
        for k, v in replica.items():
            lines.append(f"      {'- ' if first else '  '}{k}: {_yaml(v)}")
            first = False
    path.write_text("\n".join(lines) + "\n")
    return path


def _yaml(v: object) -> str:
    if isinstance(v, dict):
        return json.dumps(v)  # a JSON object is a YAML flow mapping
    return ("true" if v else "false") if isinstance(v, bool) else f'"{v}"'


# -- running the tools ----------------------------------------------------------------

@contextmanager
def sidecar(tool: Tool, config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``<tool> replicate -config CONFIG`` for the duration of the block."""
    proc = _spawn([tool.exe, "replicate", "-config", str(config)], log)
    try:
        yield proc
    finally:
        stop(proc)


def restore(tool: Tool, config: Path, db: Path, out: Path, log: Path, flags: tuple[str, ...] = ()) -> float:
    """Seconds taken by ``<tool> restore [FLAGS] -config CONFIG -o OUT DB``; raises if it fails."""
    t0 = time.monotonic()
    proc = _spawn([tool.exe, "restore", *flags, "-config", str(config), "-o", str(out), str(db)], log)
    # A blocking wait, timed out by a timer: wait(timeout=...) polls in sleeps
    # of up to 50 ms, which rounded every restore time up to a 50 ms step.
    timeout = threading.Timer(600, proc.kill)
    timeout.start()
    try:
        code = proc.wait()
        elapsed = time.monotonic() - t0
    finally:
        timeout.cancel()
        stop(proc)
    if code != 0:
        raise RuntimeError(f"{tool.name} restore exited {code}: {log.read_text(errors='replace')[-1000:]}")
    return elapsed


def log_problems(log: Path) -> list[str]:
    """Lines of a tool's log that report an error or a traceback."""
    if not log.exists():
        return []
    return [line for line in log.read_text(errors="replace").splitlines()
            if any(w in line for w in ("ERROR", "level=ERROR", "Traceback", "CRITICAL", "panic:"))]
