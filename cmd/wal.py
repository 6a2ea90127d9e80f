"""``lsr wal``: list WAL segments."""

from __future__ import annotations

import click

from .options import (
    Cell, config_options, flag, json_option, print_rows, replica_option, resolve_target, run, setup_logging,
)


@click.command("wal")
@config_options
@replica_option
@flag("generation", metavar="NAME", default="", help="Only this generation.")
@json_option
@click.argument("target", metavar="DB_PATH|REPLICA_URL")
def command(config_path: str | None, no_expand_env: bool, replica_name: str, generation: str, as_json: bool,
            target: str) -> None:
    """List the WAL segments of a database or replica URL.

    \b
    Examples:
      lsr wal /var/db/app.db
      lsr wal -generation 5d6f0c1e2a3b4c5d file:///var/backups/app
    """

    def body() -> None:
        setup_logging()
        t = resolve_target(target, config_path, no_expand_env, replica_name)
        rows: list[list[Cell]] = []
        for replica in t.replicas:
            generations = [generation] if generation else replica.client.generations()
            for g in generations:
                for w in replica.client.wal_segments(g):
                    rows.append([replica.name, w.generation, w.index, w.offset, w.size, w.created_at])
        print_rows(["replica", "generation", "index", "offset", "size", "created"], rows, as_json)

    run(body)
