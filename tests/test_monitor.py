"""``/healthz`` and the heartbeat of a real sidecar whose S3 server is stopped and started again.

The server is a nanio of the test's own (it keeps its objects on disk, so the
one started again on the same port holds what the first one did).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from support.procs import Processes, run_lsr, wait_for
from support.sqlite import rows
from support.s3 import S3Server, free_port, start_nanio, write_s3_config
from support.metrics import scrape
from support.workload import WriterProcess

HEARTBEAT_INTERVAL = 0.2
PING_KEY = "k3y-zz9-not-hex"  # a dead-man service's secret: must never be logged


class Pings:
    """A local dead-man service: counts the GETs it receives."""

    def __init__(self) -> None:
        self.count = 0
        pings = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                pings.count += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/ping/{PING_KEY}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def pings() -> Iterator[Pings]:
    p = Pings()
    try:
        yield p
    finally:
        p.stop()


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _status(port: int) -> int | None:
    try:
        return healthz(port)[0]
    except (urllib.error.URLError, ConnectionError):
        return None


@pytest.fixture
def nanio(tmp_path: Path) -> Iterator[list[S3Server]]:
    """The test's own nanio; the test may replace it with one started again (the last is stopped)."""
    servers = [start_nanio(tmp_path)]
    try:
        yield servers
    finally:
        servers[-1].stop()


def test_healthz_and_heartbeat_follow_an_s3_outage(
    tmp_path: Path, procs: Processes, nanio: list[S3Server], s3_env: dict[str, str], pings: Pings
) -> None:
    server = nanio[0]
    db = tmp_path / "app.db"
    writer = WriterProcess(db)
    writer.insert(0)
    port = free_port()
    bucket = server.create_bucket()
    cfg = write_s3_config(tmp_path, db, bucket, server.endpoint, replica={"max-lag": "1s"},
                          top={"addr": f"127.0.0.1:{port}", "heartbeat-url": pings.url,
                               "heartbeat-interval": f"{int(HEARTBEAT_INTERVAL * 1000)}ms"})
    p = procs.lsr_replicate("-config", str(cfg), env=s3_env)
    try:
        wait_for(lambda: _status(port) == 200, what="healthz 200")
        wait_for(lambda: pings.count >= 2, what="heartbeats while healthy")

        server.stop()
        writer.insert(1)  # a commit that cannot leave the host
        wait_for(lambda: _status(port) == 503, what="healthz 503 during the outage")
        code, body = healthz(port)
        [replica] = body["dbs"][0]["replicas"]
        assert code == 503 and body["healthy"] is False and replica["healthy"] is False
        assert replica["name"] == "s3" and replica["lag_seconds"] > replica["max_lag_seconds"] == 1
        assert replica["last_success"] is not None and replica["last_error"] is not None
        assert replica["last_error"]["consecutive_failures"] >= 1
        page = scrape(port)
        labels = {"db": str(db), "name": "s3"}
        assert page.value("lsr_replica_healthy", **labels) == 0
        assert page.value("lsr_replica_lag_seconds", **labels) > 1
        assert page.value("lsr_replica_consecutive_failures", **labels) >= 1
        assert page.value("lsr_replica_last_error_timestamp_seconds", **labels,
                          kind=replica["last_error"]["kind"]) > 1.7e9
        # A ping decided just before the outage showed may still land; none after.
        time.sleep(5 * HEARTBEAT_INTERVAL)
        withheld = pings.count
        time.sleep(5 * HEARTBEAT_INTERVAL)
        assert _status(port) == 503 and pings.count == withheld

        nanio.append(start_nanio(tmp_path, server.port))
        wait_for(lambda: _status(port) == 200, what="healthz 200 after catch-up")
        code, body = healthz(port)
        [replica] = body["dbs"][0]["replicas"]
        assert replica["lag_seconds"] == 0 and replica["position"] == body["dbs"][0]["position"]
        wait_for(lambda: pings.count > withheld, what="heartbeats to resume")
        assert scrape(port).value("lsr_replica_healthy", db=str(db), name="s3") == 1
        out = tmp_path / "restored.db"
        res = run_lsr("restore", "-o", str(out), f"s3://{bucket}/db?endpoint={server.endpoint}&region=us-east-1",
                      env=s3_env)
        assert res.returncode == 0, res.stderr
        assert rows(out, "SELECT id FROM t ORDER BY id") == [(0,), (1,)]  # the commit made during the outage
    finally:
        Processes.stop(p)
        writer.close()
    assert "Traceback" not in Processes.output(p)
    assert PING_KEY not in Processes.output(p)
