"""``lsr wal``: list WAL segments."""

from __future__ import annotations

import click

from litestream_py.compaction import segment_extent
from .options import (
    Cell, config_options, flag, json_option, print_rows, replica_option, resolve_target, run, setup_logging,
)


@click.command("wal")
@config_options
@replica_option
@flag("generation", metavar="NAME", default="", help="Only this generation.")
@flag("compaction", is_flag=True,
      help="Also read every segment: the WAL bytes it holds and how many shipped segments compaction merged into it.")
@json_option
@click.argument("target", metavar="DB_PATH|REPLICA_URL")
def command(config_path: str | None, no_expand_env: bool, replica_name: str, generation: str, compaction: bool,
            as_json: bool, target: str) -> None:
    """List the WAL segments of a database or replica URL.

    \b
    Examples:
      lsr wal /var/db/app.db
      lsr wal -generation 5d6f0c1e2a3b4c5d file:///var/backups/app
      lsr wal -compaction file:///var/backups/app    # one GET per segment on S3
    """

    def body() -> None:
        setup_logging()
        t = resolve_target(target, config_path, no_expand_env, replica_name)
        rows: list[list[Cell]] = []
        for replica in t.replicas:
            generations = [generation] if generation else replica.client.generations()
            for g in generations:
                for w in replica.client.wal_segments(g):
                    row: list[Cell] = [replica.name, w.generation, w.index, w.offset, w.size, w.created_at]
                    if compaction:
                        row += list(segment_extent(replica.reader, w))
                    rows.append(row)
        extra = ["wal-size", "merged"] if compaction else []
        print_rows(["replica", "generation", "index", "offset", "size", "created", *extra], rows, as_json)

    run(body)
