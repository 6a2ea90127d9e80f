"""``lsr generations``: list generations with their lag and time range."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import click

from litestream_py.restore_target import generation_time_bounds

from .options import Cell, config_options, json_option, print_rows, replica_option, resolve_target, run, setup_logging


@click.command("generations")
@config_options
@replica_option
@json_option
@click.argument("target", metavar="DB_PATH|REPLICA_URL")
def command(config_path: str | None, no_expand_env: bool, replica_name: str, as_json: bool, target: str) -> None:
    """List the generations of a database or replica URL: name, generation, lag, start, end.

    \b
    Examples:
      lsr generations /var/db/app.db
      lsr generations s3://my-backups/app
    """

    def body() -> None:
        setup_logging()
        t = resolve_target(target, config_path, no_expand_env, replica_name)
        now = datetime.now(timezone.utc)
        if t.db is not None:
            mtimes = [os.path.getmtime(p) for p in (t.db.path, t.db.wal_path) if os.path.exists(p)]
            if mtimes:
                now = datetime.fromtimestamp(max(mtimes), tz=timezone.utc)
        rows: list[list[Cell]] = []
        for replica in t.replicas:
            for generation in replica.client.generations():
                created, updated = generation_time_bounds(replica.client, generation)
                if created is None or updated is None:
                    continue
                rows.append([replica.name, generation, now - updated, created, updated])
        print_rows(["name", "generation", "lag", "start", "end"], rows, as_json)

    run(body)
