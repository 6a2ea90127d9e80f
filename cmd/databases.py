"""``lsr databases``: list the databases in the config file."""

from __future__ import annotations

import click

from litestream_py.factory import db_from_config

from .options import config_options, print_table, read_config, run, setup_logging


@click.command("databases")
@config_options
def command(config_path: str | None, no_expand_env: bool) -> None:
    """List the databases in the config file and their replicas.

    \b
    Examples:
      lsr databases
      lsr databases -config etc/litestream.yml
    """

    def body() -> None:
        setup_logging()
        config = read_config(config_path, no_expand_env)
        rows = []
        for dbc in config.dbs:
            db = db_from_config(dbc, read_only=True)
            rows.append([db.path, ",".join(r.name for r in db.replicas)])
        print_table(["path", "replicas"], rows)

    run(body)
