"""Every command has help, reachable with -h, -help and --help (sqlite-utils' habit)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from litestream_py.cmd.main import cli

COMMANDS = sorted(cli.list_commands(click.Context(cli)))  # subcommands load lazily


def test_all_litestream_commands_exist() -> None:
    assert {"databases", "generations", "replicate", "restore", "snapshots", "version", "wal"} <= set(COMMANDS)


@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
def test_group_help_lists_every_command(flag: str) -> None:
    result = CliRunner().invoke(cli, [flag], catch_exceptions=False)
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
def test_command_help(name: str, flag: str) -> None:
    result = CliRunner().invoke(cli, [name, flag], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    assert f" {name} " in result.output.splitlines()[0] + " "
    command = cli.get_command(click.Context(cli), name)
    assert command.help and command.help.strip(), f"{name} has no description"
    for param in command.params:
        if param.param_type_name == "option" and not getattr(param, "hidden", False):
            assert getattr(param, "help", None), f"{name}: option {param.opts} has no help"


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "version"])
def test_flags_have_one_and_two_dash_spellings(name: str) -> None:
    """Litestream spells flags -config; lsr accepts that and --config."""
    for param in cli.get_command(click.Context(cli), name).params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        longs = [o for o in param.opts if o.startswith("--")]
        for opt in longs:
            assert opt[1:] in param.opts, f"{name}: {opt} has no one-dash spelling"
