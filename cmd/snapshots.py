"""``lsr snapshots``: list snapshots."""

from __future__ import annotations

import click

from .options import Cell, config_options, json_option, print_rows, replica_option, resolve_target, run, setup_logging


@click.command("snapshots")
@config_options
@replica_option
@json_option
@click.argument("target", metavar="DB_PATH|REPLICA_URL")
def command(config_path: str | None, no_expand_env: bool, replica_name: str, as_json: bool, target: str) -> None:
    """List the snapshots of a database or replica URL: replica, generation, index, size, created.

    \b
    Examples:
      lsr snapshots /var/db/app.db
      lsr snapshots -replica s3 -config /etc/litestream.yml /var/db/app.db
    """

    def body() -> None:
        setup_logging()
        t = resolve_target(target, config_path, no_expand_env, replica_name)
        rows: list[list[Cell]] = []
        for replica in t.replicas:
            for generation in replica.client.generations():
                for s in replica.client.snapshots(generation):
                    rows.append([replica.name, s.generation, s.index, s.size, s.created_at])
        print_rows(["replica", "generation", "index", "size", "created"], rows, as_json)

    run(body)
