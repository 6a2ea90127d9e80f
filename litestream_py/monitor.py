"""The sidecar's HTTP endpoint at ``addr:``: ``/metrics`` for Prometheus, ``/healthz`` for probes.

``/healthz`` answers 200 while every replica holds every commit older than its
max-lag (see ``health``), else 503; the body is the same JSON report as
``lsr status -json``. Both are answered from memory.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from .errors import ConfigError

__all__ = ["MonitorServer", "parse_addr"]

log = logging.getLogger(__name__)


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` as Go Litestream reads ``addr:``: a port is required; no host means every interface."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port:
        raise ConfigError(f"cannot serve metrics on {addr!r}: a port is required (e.g. addr: \":9090\")")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"cannot serve metrics on {addr!r}: {port!r} is not a port number")
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, self.server.content_type, self.server.metrics())
        elif path == "/healthz":
            body = self.server.report()
            self._reply(200 if body["healthy"] else 503, "application/json",
                        json.dumps(body, indent=2).encode() + b"\n")
        else:
            self._reply(404, "text/plain", b"not found: try /metrics or /healthz\n")

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Callable[[], bytes], content_type: str,
                 report: Callable[[], dict[str, Any]]) -> None:
        self.metrics = metrics
        self.content_type = content_type
        self.report = report
        super().__init__(address, _Handler)


class MonitorServer:
    """Serves ``/metrics`` and ``/healthz`` on a thread of its own until ``stop()``."""

    def __init__(self, addr: str, metrics: Callable[[], bytes], content_type: str,
                 report: Callable[[], dict[str, Any]]) -> None:
        host, port = parse_addr(addr)
        try:
            self._server = _Server((host, port), metrics, content_type, report)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {addr!r}: {exc.strerror}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="lsr-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("serving metrics on http://%s:%d/metrics", self._server.server_address[0], self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
