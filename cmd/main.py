"""The ``lsr`` command group."""

from __future__ import annotations

import click

from . import databases, generations, replicate, restore, snapshots, verify, version, wal

CONTEXT_SETTINGS = {"help_option_names": ["-h", "-help", "--help"]}


@click.group(context_settings=CONTEXT_SETTINGS)
def cli() -> None:
    """lsr replicates SQLite databases to file and S3 replicas (Litestream 0.3.13 format)."""


for module in (databases, generations, replicate, restore, snapshots, verify, version, wal):
    cli.add_command(module.command)


def main() -> None:
    cli(prog_name="lsr")
