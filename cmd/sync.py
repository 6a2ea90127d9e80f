"""``lsr sync``: have the running sidecar copy and ship a database now, and wait for it."""

from __future__ import annotations

import click

from litestream_py import control
from litestream_py.config import parse_duration
from litestream_py.errors import ConfigError

from .options import config_options, flag, optional_config, run


@click.command("sync")
@config_options
@flag("wait", is_flag=True, help="Return only once every replica holds every commit made before the call.")
@flag("timeout", default="30s", metavar="DURATION", help="With -wait, give up after this long (default 30s).")
@click.argument("db_path")
def command(config_path: str | None, no_expand_env: bool, wait: bool, timeout: str, db_path: str) -> None:
    """Sync DB_PATH now through the running sidecar.

    With -wait, exit 0 only once every replica durably holds every commit made
    before the call; at the timeout, exit 1 with each late replica's lag.

    \b
    Examples:
      lsr sync /var/db/app.db
      lsr sync -wait -timeout 10s /var/db/app.db
    """

    def body() -> None:
        seconds = parse_duration(timeout, "-timeout").total_seconds()
        if seconds <= 0:
            raise ConfigError(f"cannot wait: -timeout must be positive, got {timeout!r}")
        config = optional_config(config_path, no_expand_env)
        [socket_path] = control.sockets_for(config, db_path)
        if wait:
            control.wait_replicated(db_path, seconds, socket_path=socket_path)
            click.echo(f"{db_path}: every replica holds every commit")
        else:
            reply = control.sync(db_path, socket_path=socket_path)
            click.echo(f"{db_path}: synced to {reply['position'] or 'nothing yet'}; shipping")

    run(body)
