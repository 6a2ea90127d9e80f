"""The control socket: ask a running sidecar for its state, or to sync now and wait.

``lsr replicate`` listens on a Unix socket (mode 0600, never a TCP port) and
leaves a pointer to it, a file named ``control`` in each database's meta
directory, so that ``lsr status``, ``lsr sync`` and ``wait_replicated`` find the
sidecar of a database from its path alone. The default socket path needs no
configuration and stays far below the 108-byte limit of a socket path:
``$XDG_RUNTIME_DIR/lsr/<hash>.sock``, else ``/tmp/lsr-<uid>/<hash>.sock``, the hash
naming the set of databases served. A socket left behind by a killed sidecar is
taken over; one that answers belongs to a live sidecar and is left alone.

The protocol is one JSON object per line each way: a request
``{"op": "status"}`` or ``{"op": "sync", "db": PATH, "wait": true, "timeout": 30}``,
and a reply with ``"ok"`` and either the answer or ``"error"``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
import time
from typing import TYPE_CHECKING, Any

from . import health
from .digest import digest_hex
from .errors import ControlError, LitestreamError, ReplicationTimeoutError
from .fsutil import atomic_write
from .paths import meta_dir

if TYPE_CHECKING:
    from .config import Config
    from .db import DB
    from .replica import Replica
    from .replicator import Replicator

__all__ = [
    "ControlServer",
    "CONTROL_FILE",
    "DEFAULT_WAIT_TIMEOUT",
    "default_socket_path",
    "socket_for",
    "request",
    "sockets_for",
    "status",
    "sync",
    "wait_replicated",
]

log = logging.getLogger(__name__)

# In a database's meta directory: the path of the socket of the sidecar serving it.
CONTROL_FILE = "control"
DEFAULT_WAIT_TIMEOUT = 30.0
# A reply may take as long as the barrier's timeout; past it plus this, the sidecar is stuck.
REPLY_GRACE = 10.0
MAX_REQUEST = 1 << 16
# sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH = 107


def default_socket_path(db_paths: list[str]) -> str:
    """A short, per-user socket path for a sidecar serving ``db_paths``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = os.path.join(runtime, "lsr") if runtime and os.path.isdir(runtime) else f"/tmp/lsr-{os.getuid()}"
    digest = digest_hex("\n".join(sorted(db_paths)).encode(), 8)
    return os.path.join(base, f"{digest}.sock")


def _pointer(meta_path: str) -> str:
    return os.path.join(meta_path, CONTROL_FILE)


def _private_dir(path: str) -> None:
    """Create the socket's directory 0700 and refuse one another user could write to."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise ControlError(f"cannot open control socket in {path}: not a private directory of this user")


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            reply = {"ok": True, **self.server.answer(json.loads(line))}
        except LitestreamError as exc:
            reply = {"ok": False, "error": str(exc)}
        except (ValueError, TypeError, KeyError) as exc:
            reply = {"ok": False, "error": f"cannot read request: {exc}"}
        except Exception as exc:  # keep serving; report the bug
            log.exception("control request failed")
            reply = {"ok": False, "error": f"cannot answer request: {exc}"}
        with contextlib.suppress(OSError):  # the client gave up
            self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, replicator: Replicator) -> None:
        self.replicator = replicator
        old = os.umask(0o177)  # born 0600: no moment at which another user may connect
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)

    def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            dbs = [self._db(req["db"])] if req.get("db") else None
            return self.replicator.report(dbs)
        if op == "sync":
            db = self._db(req["db"])
            target = self.replicator.flush(db)
            if not req.get("wait"):
                return {"position": str(target), "replicated": False}
            late = self.replicator.wait_replicated(db, target, float(req.get("timeout", DEFAULT_WAIT_TIMEOUT)))
            now = time.time()
            return {"position": str(target), "replicated": not late,
                    "pending": {r.name: round(health.lag(r, now), 3) for r in late}}
        raise ControlError(f"cannot answer request: unknown op {op!r}")

    def _db(self, path: str) -> DB[Replica]:
        db = self.replicator.find_db(str(path))
        if db is None:
            raise ControlError(f"cannot find database {path}: this sidecar does not replicate it")
        return db


class ControlServer:
    """Serves the control socket on threads of its own until ``stop()``."""

    def __init__(self, replicator: Replicator, path: str = "") -> None:
        self.replicator = replicator
        self.path = path or default_socket_path([db.path for db in replicator.dbs])
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise ControlError(f"cannot open control socket {self.path}: longer than {MAX_SOCKET_PATH} bytes "
                               "(set a shorter socket: in the config)")
        if path:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        else:
            _private_dir(os.path.dirname(self.path))  # a shared /tmp: it must be ours alone
        self._take_over_stale_socket()
        try:
            self._server = _Server(self.path, replicator)
        except OSError as exc:
            raise ControlError(f"cannot open control socket {self.path}: {exc.strerror}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="lsr-control", daemon=True)

    def _take_over_stale_socket(self) -> None:
        if not os.path.exists(self.path):
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.path)
            except OSError:
                log.info("control socket %s left by a sidecar that is gone: taking it over", self.path)
                os.unlink(self.path)
                return
        raise ControlError(f"cannot open control socket {self.path}: another lsr sidecar is serving it")

    def start(self) -> None:
        self._thread.start()
        for db in self.replicator.dbs:
            os.makedirs(db.meta_path, mode=0o700, exist_ok=True)
            with atomic_write(_pointer(db.meta_path)) as f:
                f.write(self.path.encode() + b"\n")
        log.info("control socket %s", self.path)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for db in self.replicator.dbs:
            with contextlib.suppress(OSError):
                with open(_pointer(db.meta_path)) as f:
                    mine = f.read().strip() == self.path
                if mine:
                    os.unlink(_pointer(db.meta_path))


# -- the client side ---------------------------------------------------------------
def socket_for(db_path: str, meta_path: str | None = None) -> str:
    """The socket of the sidecar replicating ``db_path``, from the pointer it left."""
    try:
        with open(_pointer(meta_dir(db_path, meta_path))) as f:
            return f.read().strip()
    except FileNotFoundError:
        raise ControlError(f"cannot reach the lsr sidecar of {db_path}: none is running "
                           "(start `lsr replicate`, or pass -config)") from None


def request(socket_path: str, req: dict[str, Any], timeout: float = REPLY_GRACE) -> dict[str, Any]:
    """Send one request to the sidecar at ``socket_path``; its reply, or ControlError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
            sock.sendall(json.dumps(req).encode() + b"\n")
            with sock.makefile("rb") as f:
                line = f.readline()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"cannot reach the lsr sidecar at {socket_path}: no sidecar is running "
                               "(start `lsr replicate`)") from exc
        except OSError as exc:
            detail = "no reply in time" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise ControlError(f"cannot reach the lsr sidecar at {socket_path}: {detail}") from exc
    if not line:
        raise ControlError(f"cannot reach the lsr sidecar at {socket_path}: it closed the connection")
    reply: dict[str, Any] = json.loads(line)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or "cannot complete request: unknown error"))
    return reply


def sync(db_path: str, *, wait: bool = False, timeout: float = DEFAULT_WAIT_TIMEOUT,
         meta_path: str | None = None, socket_path: str | None = None) -> dict[str, Any]:
    """Have the sidecar copy and ship ``db_path`` now; with ``wait``, until every replica holds it."""
    path = socket_path or socket_for(db_path, meta_path)
    req = {"op": "sync", "db": os.path.abspath(db_path), "wait": wait, "timeout": timeout}
    return request(path, req, timeout + REPLY_GRACE)


def wait_replicated(db_path: str, timeout: float = DEFAULT_WAIT_TIMEOUT, *,
                    meta_path: str | None = None, socket_path: str | None = None) -> None:
    """Return once every replica of ``db_path`` durably holds every commit made before the call.

    Asks the running ``lsr replicate`` (through its control socket) to copy and
    ship at once, so an application can advance its own state (say, an event
    log's bookmark) only once its commit is off the host. Raises
    ``ReplicationTimeoutError`` (naming each late replica's lag) after
    ``timeout`` seconds, and ``ControlError`` when no sidecar replicates the database.
    ``meta_path``: the database's ``meta-path`` if the config sets one.
    """
    reply = sync(db_path, wait=True, timeout=timeout, meta_path=meta_path, socket_path=socket_path)
    if not reply.get("replicated"):
        pending = ", ".join(f"{name} {lag:.1f}s behind" for name, lag in sorted(reply.get("pending", {}).items()))
        raise ReplicationTimeoutError(f"cannot confirm replication of {db_path} within {timeout:g}s: {pending}")



def sockets_for(config: Config | None, db_path: str = "") -> list[str]:
    """The sockets of the sidecars replicating ``db_path`` (else every database of ``config``)."""
    if config is not None and config.socket:
        return [config.socket]
    if db_path:
        dbc = config.db_config(db_path) if config is not None else None
        return [socket_for(db_path, dbc.meta_path if dbc is not None else None)]
    if config is None or not config.dbs:
        raise ControlError("cannot find a sidecar to ask: give DB_PATH or a config with databases (-config)")
    found: list[str] = []
    errors: list[ControlError] = []
    for dbc in config.dbs:
        try:
            path = socket_for(dbc.path, dbc.meta_path)
        except ControlError as exc:
            errors.append(exc)
            continue
        if path not in found:
            found.append(path)
    if not found:
        raise errors[0]
    return found


def status(config: Config | None, db_path: str = "") -> dict[str, Any]:
    """The report of the sidecars replicating ``db_path`` (else every database of ``config``)."""
    dbs: dict[str, Any] = {}
    for path in sockets_for(config, db_path):
        req = {"op": "status", "db": os.path.abspath(db_path)} if db_path else {"op": "status"}
        for db in request(path, req)["dbs"]:
            dbs.setdefault(db["path"], db)
    return health.report(list(dbs.values()))
