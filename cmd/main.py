"""The ``lsr`` command group."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading

from .startup import startup_heap

with startup_heap():
    import click

CONTEXT_SETTINGS = {"help_option_names": ["-h", "-help", "--help"]}

# Each subcommand's module is imported only when it runs: `lsr restore` need not
# pay for the replication machinery's imports (watchdog, the replicator).
SUBCOMMANDS = (
    "databases", "generations", "replicate", "restore", "snapshots", "status", "sync", "verify", "version", "wal",
)


class _LazyGroup(click.Group):
    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with its whole first sentence: click would cut it to fit one line."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        with startup_heap():
            command: click.Command = importlib.import_module(f"{__package__}.{cmd_name}").command
        return command


@click.group(cls=_LazyGroup, context_settings=CONTEXT_SETTINGS)
def cli() -> None:
    """lsr replicates SQLite databases to file and S3 replicas (Litestream 0.3.13 format)."""


def main() -> None:
    """The console script. A command that succeeded and left no thread running
    ends the process at once: its output is flushed and its files synced, and
    the interpreter's teardown, which frees every object of every module one by
    one, would only add ~15-20 ms to each command (a restore's exit included)."""
    try:
        cli(prog_name="lsr")
    except SystemExit as exc:
        if exc.code in (0, None) and threading.active_count() == 1:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise
