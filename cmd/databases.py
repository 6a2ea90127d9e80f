"""``lsr databases``: list the databases in the config file."""

from __future__ import annotations

import os

import click

from litestream_py.factory import targets_from_config

from .options import Cell, config_options, json_option, print_rows, read_config, run, setup_logging


@click.command("databases")
@config_options
@json_option
def command(config_path: str | None, no_expand_env: bool, as_json: bool) -> None:
    """List the databases in the config file and their replicas.

    \b
    Examples:
      lsr databases
      lsr databases -config etc/litestream.yml
    """

    def body() -> None:
        setup_logging()
        config = read_config(config_path, no_expand_env)
        rows: list[list[Cell]] = []
        for dbc in config.dbs:
            rows.append([os.path.abspath(dbc.path), [t.name for t in targets_from_config(dbc)]])
        print_rows(["path", "replicas"], rows, as_json)

    run(body)
