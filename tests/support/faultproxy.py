"""A fault-injecting HTTP/1.1 proxy for S3 tests, on 127.0.0.1.

Clients talk to the proxy as if it were the S3 endpoint (the Host header is
passed through untouched, so SigV4 signatures stay valid). For each request the
proxy either forwards it to the upstream server or, with probability ``ratio``,
injects one of the enabled faults that can happen to that request:

- ``reset_upload``: read part of the request body, then reset the connection
  (requests with a body);
- ``reset_download``: forward, send the response headers and part of the body,
  then reset the connection (GET requests);
- ``error_500``, ``slowdown_503``, ``timeout_408``: answer with an S3 XML error
  (the request is read in full first, so keep-alive stays in sync). Like S3,
  the proxy sends RequestTimeout only for a request with a body (an upload):
  botocore retries a 408 by its error code, which a HEAD response cannot carry;
- ``latency``: delay the request by ``latency`` seconds, then forward it.

``outage("refuse")`` closes the listening socket (connections are refused) and
resets every open connection; ``outage("drop")`` accepts connections and closes
them without answering. ``recover()`` ends either. Everything runs on daemon
threads owned by the proxy; ``stop()`` closes every socket and joins them. The
number of simultaneous connections is bounded.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Iterable

__all__ = ["FaultProxy", "FAULTS"]

FAULTS = ("reset_upload", "reset_download", "error_500", "slowdown_503", "timeout_408", "latency")
MAX_CONNECTIONS = 128
IO_TIMEOUT = 30.0
_ERRORS = {
    "error_500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "slowdown_503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "timeout_408": (408, "Request Timeout", "RequestTimeout",
                    "Your socket connection to the server was not read from or written to within the timeout period."),
}


class _Closed(Exception):
    """The peer closed the connection."""


@dataclass
class _Request:
    head: bytes  # request line and headers, as forwarded
    method: str
    body: bytes
    keep_alive: bool


@dataclass
class _Settings:
    ratio: float = 0.0
    faults: tuple[str, ...] = ()
    latency: float = 0.0
    outage: str = ""  # "", "refuse" or "drop"


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: what a crashed peer or a middlebox does.

    shutdown(SHUT_RD) first wakes a thread blocked in recv() on this socket
    (close() alone does not on Linux), without sending a FIN.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Reader:
    """Buffered reads of lines and exact byte counts from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise _Closed()
        self.buf += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise _Closed()
            self._fill()
        i = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def until_close(self) -> bytes:
        try:
            while True:
                self._fill()
        except (_Closed, OSError):
            pass
        out, self.buf = self.buf, b""
        return out

    def headers(self) -> tuple[bytes, list[tuple[str, str]]]:
        first = self.line()
        while first == b"\r\n":  # tolerate stray blank lines between messages
            first = self.line()
        raw = [first]
        headers = []
        while True:
            line = self.line()
            raw.append(line)
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return b"".join(raw), headers

    def chunked(self) -> bytes:
        """A chunked body, returned re-encoded exactly as received."""
        out = []
        while True:
            size_line = self.line()
            out.append(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the final blank line
                    line = self.line()
                    out.append(line)
                    if line == b"\r\n":
                        return b"".join(out)
            out.append(self.exact(size + 2))


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


@dataclass
class FaultProxy:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    upstream_port: int
    upstream_host: str = "127.0.0.1"
    seed: int = 0
    port: int = 0
    stats: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._settings = _Settings()
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    # -- control -----------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configure(self, ratio: float = 0.0, faults: Iterable[str] = (), latency: float = 0.0) -> None:
        faults = tuple(faults)
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        with self._lock:
            self._settings.ratio = ratio
            self._settings.faults = faults
            self._settings.latency = latency

    def heal(self) -> None:
        """No more injected faults (an outage is ended by recover())."""
        self.configure()

    def outage(self, mode: str = "refuse") -> None:
        if mode not in ("refuse", "drop"):
            raise ValueError(f"unknown outage mode {mode!r}")
        with self._lock:
            self._settings.outage = mode
        self._count(f"outage_{mode}")
        self._close_connections()
        if mode == "refuse":
            self._close_listener()

    def recover(self) -> None:
        with self._lock:
            mode, self._settings.outage = self._settings.outage, ""
        if mode == "refuse":
            self._listen()

    def start(self) -> FaultProxy:
        self._listen()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._close_listener()
        self._close_connections()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout=10)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def injected(self) -> dict[str, int]:
        """The faults injected so far, by kind (``stats`` less the requests forwarded)."""
        with self._lock:
            return {k: v for k, v in self.stats.items() if k != "forwarded"}

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    # -- sockets -------------------------------------------------------------
    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(0.2)
        self.port = sock.getsockname()[1]
        self._listener = sock
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=10)
        self._accept_thread = threading.Thread(target=self._accept, args=(sock,), name="faultproxy-accept", daemon=True)
        self._accept_thread.start()

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            sock.close()

    def _close_connections(self) -> None:
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            _reset(s)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set() and self._listener is listener:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self._settings.outage == "drop":
                self._count("dropped")
                _reset(conn)
                continue
            if not self._slots.acquire(timeout=IO_TIMEOUT):
                _reset(conn)
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name="faultproxy-conn", daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    # -- one client connection -------------------------------------------------------
    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        client.settimeout(IO_TIMEOUT)
        try:
            reader = _Reader(client)
            while not self._stop.is_set() and not self._settings.outage:
                request, fault = self._read_request(reader, client)
                if request is None:
                    return  # reset mid-upload
                if not self._handle(request, client, fault):
                    return
                if not request.keep_alive:
                    return
        except (_Closed, OSError, ValueError):
            pass
        finally:
            self._untrack(client)
            try:
                client.close()
            except OSError:
                pass
            self._slots.release()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _choose(self, method: str, has_body: bool) -> str:
        """A fault for this request, among those that can happen to it."""
        with self._lock:
            s = self._settings
            if not s.faults or self._rng.random() >= s.ratio:
                return ""
            possible = [
                f for f in s.faults
                if (f not in ("reset_upload", "timeout_408") or has_body)
                and (f != "reset_download" or method == "GET")
            ]
            return self._rng.choice(possible) if possible else ""

    def _read_request(self, reader: _Reader, client: socket.socket) -> tuple[_Request | None, str]:
        head, headers = reader.headers()
        method = head.split(b" ", 1)[0].decode("latin-1")
        if (_header(headers, "expect") or "").lower() == "100-continue":
            # Answer for the server and drop the header (it is not signed).
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            lines = head.split(b"\r\n")
            head = b"\r\n".join(line for line in lines if not line.lower().startswith(b"expect:"))
        length = int(_header(headers, "content-length") or 0)
        chunked = "chunked" in (_header(headers, "transfer-encoding") or "").lower()
        fault = self._choose(method, length > 0 or chunked)
        if fault == "reset_upload":
            reader.exact(min(length // 2, len(reader.buf)) if length else 0)
            self._count("reset_upload")
            _reset(client)
            return None, fault
        body = reader.chunked() if chunked else reader.exact(length)
        keep_alive = (_header(headers, "connection") or "").lower() != "close"
        return _Request(head, method, body, keep_alive), fault

    def _handle(self, request: _Request, client: socket.socket, fault: str) -> bool:
        """Answer one request; False when the client connection must end."""
        if fault in _ERRORS:
            status, reason, code, message = _ERRORS[fault]
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>faultproxy</RequestId></Error>"
            ).encode()
            self._count(fault)  # counted before the client can see it
            client.sendall(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
            return True
        if fault == "latency" or (self._settings.latency and fault == ""):
            delay = self._settings.latency
            if fault == "latency":
                self._count("latency")
            if self._stop.wait(delay):
                return False
        upstream = socket.create_connection((self.upstream_host, self.upstream_port), timeout=IO_TIMEOUT)
        self._track(upstream)
        try:
            upstream.sendall(request.head + request.body)
            reader = _Reader(upstream)
            while True:
                head, headers = reader.headers()
                status = int(head.split(b" ", 2)[1])
                if status != 100:
                    break
            body_expected = request.method != "HEAD" and status >= 200 and status not in (204, 304)
            length_header = _header(headers, "content-length")
            if not body_expected:
                body = b""
            elif length_header is not None:
                body = reader.exact(int(length_header))
            elif "chunked" in (_header(headers, "transfer-encoding") or "").lower():
                body = reader.chunked()
            else:
                body = reader.until_close()
                request.keep_alive = False
            if fault == "reset_download" and len(body) > 1:
                self._count("reset_download")
                client.sendall(head + body[: len(body) // 2])
                _reset(client)
                return False
            self._count("forwarded")
            client.sendall(head + body)
            if (_header(headers, "connection") or "").lower() == "close":
                return False
            return True
        finally:
            self._untrack(upstream)
            upstream.close()
