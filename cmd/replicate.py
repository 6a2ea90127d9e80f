"""``lsr replicate``: run the replication sidecar until SIGTERM or SIGINT."""

from __future__ import annotations

import shlex
import signal
import subprocess
import threading
import time
from types import FrameType
from typing import Protocol, Sequence

import click

from litestream_py.config import (
    Config, DBConfig, ReplicaConfig, default_config_path, expand_path, load_config, parse_duration,
)
from litestream_py.process import configure_process_for_sidecar, raise_open_file_limit, release_free_memory
from litestream_py.errors import ConfigError
from litestream_py.factory import db_from_config
from litestream_py.replicator import Replicator, acquire_leases
from litestream_py.control import ControlServer

from .options import config_options, flag, log, run, setup_logging
from .startup import startup_heap

# How often the sidecar hands freed heap memory back to the OS (a sub-millisecond call).
RELEASE_MEMORY_INTERVAL = 10.0


@click.command("replicate")
@config_options
@flag("exec", "exec_cmd", metavar="CMD", default="", help="Run CMD as a subprocess; stop when it exits.")
@flag("takeover", is_flag=True, help="Take each replica's lease even if another sidecar holds it (failover).")
@flag("lease-ttl", metavar="DURATION", default="30s",
      help="How long a replica's lease outlives a sidecar that stops renewing it.")
@click.argument("args", nargs=-1, metavar="[DB_PATH REPLICA_URL...]")
def command(config_path: str | None, no_expand_env: bool, exec_cmd: str, takeover: bool, lease_ttl: str,
            args: tuple[str, ...]) -> None:
    """Replicate databases continuously, until SIGTERM or SIGINT (then a final sync).

    With DB_PATH and replica URLs, no config file is read. With -exec, lsr exits
    with the command's exit status (128+N if a signal N killed it). Each replica
    is written under a lease: a second writer is refused unless -takeover.

    \b
    Examples:
      lsr replicate -config /etc/litestream.yml
      lsr replicate /var/db/app.db file:///var/backups/app
      lsr replicate -exec "myapp --serve" /var/db/app.db s3://my-backups/app
    """

    def body() -> int:
        # Signals first: a SIGTERM during start-up still ends in a clean stop.
        stop = StopSignal()
        with startup_heap():
            config = _config(config_path, no_expand_env, args)
            setup_logging(config)
            for warning in config.warnings:
                log.warning("%s", warning)
            if not config.dbs:
                raise ConfigError("cannot replicate: no databases configured")
            awake_limit = raise_open_file_limit(len(config.dbs))
            configure_process_for_sidecar()
            dbs = [db_from_config(dbc) for dbc in config.dbs]
            replicator = Replicator(dbs, awake_limit=awake_limit)
        started: list[Service] = []
        keeper = acquire_leases(dbs, parse_duration(lease_ttl, "-lease-ttl"), takeover, stop)
        try:
            if not stop.is_set():
                # Each database's lock first: a second lsr is refused naming the holder's pid.
                replicator.start()
                try:
                    services = _services(config, replicator)
                except BaseException:
                    replicator.stop()
                    raise
                for service in services:
                    service.start()
                    started.append(service)
                for db in dbs:
                    log.info("replicating %s to %s", db.path, ", ".join(r.client.describe() for r in db.replicas),
                             extra={"db": db.path})
            return wait_and_stop(replicator, exec_cmd or config.exec, stop, started)
        finally:
            keeper.stop()

    raise SystemExit(run(body))


def _config(config_path: str | None, no_expand_env: bool, args: tuple[str, ...]) -> Config:
    """The config file's databases, or the one database and replica URLs given as arguments."""
    if not args:
        return load_config(config_path or default_config_path(), expand=not no_expand_env)
    if config_path:
        raise ConfigError("cannot use -config together with DB_PATH and replica URLs")
    if len(args) < 2:
        raise ConfigError("cannot replicate: give DB_PATH followed by at least one REPLICA_URL")
    return Config(dbs=[DBConfig(path=expand_path(args[0]), replicas=[ReplicaConfig(url=u) for u in args[1:]])])


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def _services(config: Config, replicator: Replicator) -> list[Service]:
    """What runs beside the replication: the control socket, the metrics endpoint, the heartbeat."""
    services: list[Service] = [ControlServer(replicator, config.socket)]
    # Imported only when configured: http.server and urllib.request import ssl,
    # which maps libssl: ~3 MiB of an idle file sidecar's resident memory (docs/bench.md).
    if config.addr:
        from litestream_py import metrics
        from litestream_py.monitor import MonitorServer

        registry = metrics.new_registry(replicator.dbs)
        services.append(MonitorServer(config.addr, lambda: metrics.render(registry), metrics.CONTENT_TYPE,
                                      replicator.report))
    if config.heartbeat_url:
        from litestream_py.heartbeat import Heartbeat

        services.append(Heartbeat(config.heartbeat_url, config.heartbeat_interval, replicator.healthy))
    return services


class StopSignal(threading.Event):
    """Set by SIGTERM or SIGINT; remembers which signal arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[int] = []
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        self.set()


def wait_and_stop(replicator: Replicator, exec_cmd: str, stop: StopSignal, services: Sequence[Service] = ()) -> int:
    """Block until a signal (or the -exec child exits), then stop with a final sync.

    Exits non-zero when the final sync could not ship everything.
    """
    child: subprocess.Popen[bytes] | None = None
    code = 0
    if exec_cmd and not stop.is_set():
        child = subprocess.Popen(shlex.split(exec_cmd))

        def stop_when_child_exits(proc: subprocess.Popen[bytes]) -> None:
            proc.wait()
            stop.set()

        threading.Thread(target=stop_when_child_exits, args=(child,), daemon=True).start()
    last_release = time.monotonic()
    while not stop.wait(0.5):
        if time.monotonic() - last_release >= RELEASE_MEMORY_INTERVAL:
            release_free_memory()
            last_release = time.monotonic()
    if child is not None:
        if child.poll() is None and stop.received:
            child.send_signal(stop.received[0])
        code = child.wait()
        if code < 0:  # killed by signal -code: report it as a shell does (137 for SIGKILL)
            log.info("subprocess killed by signal %d", -code)
            code = 128 - code
        else:
            log.info("subprocess exited with %d", code)
    for service in reversed(services):
        service.stop()
    log.info("shutting down: final sync")
    if not replicator.stop():
        log.error("final sync incomplete: some commits may not have reached every replica")
        code = code or 1
    log.info("lsr shut down")
    return code
