"""``lsr snapshots``: list snapshots."""

from __future__ import annotations

import click

from .options import config_options, format_time, print_table, replica_option, resolve_target, run, setup_logging


@click.command("snapshots")
@config_options
@replica_option
@click.argument("target", metavar="DB_PATH|REPLICA_URL")
def command(config_path: str | None, no_expand_env: bool, replica_name: str, target: str) -> None:
    """List the snapshots of a database or replica URL: replica, generation, index, size, created.

    \b
    Examples:
      lsr snapshots /var/db/app.db
      lsr snapshots -replica s3 -config /etc/litestream.yml /var/db/app.db
    """

    def body() -> None:
        setup_logging()
        t = resolve_target(target, config_path, no_expand_env, replica_name)
        rows = []
        for replica in t.replicas:
            for generation in replica.client.generations():
                for s in replica.client.snapshots(generation):
                    rows.append([replica.name, s.generation, str(s.index), str(s.size), format_time(s.created_at)])
        print_table(["replica", "generation", "index", "size", "created"], rows)

    run(body)
