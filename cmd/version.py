"""``lsr version``: print the version."""

from __future__ import annotations

import click

from litestream_py import __version__


@click.command("version")
def command() -> None:
    """Print the version.

    \b
    Example:
      lsr version
    """
    click.echo(f"v{__version__}")
