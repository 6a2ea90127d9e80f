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


def test_group_help_shows_whole_summaries() -> None:
    """`lsr --help` lists each command's first sentence whole, never cut to '...'."""
    output = CliRunner().invoke(cli, ["--help"], catch_exceptions=False).output
    output = " ".join(output.split("Commands:", 1)[1].split())
    assert "..." not in output
    for name in COMMANDS:
        command = cli.get_command(click.Context(cli), name)
        first = command.help.split("\n\n")[0]
        assert " ".join(first.split()) in output, f"{name}: summary {first!r} not whole"


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_has_examples(name: str) -> None:
    output = CliRunner().invoke(cli, [name, "--help"], catch_exceptions=False).output
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() in ("Examples:", "Example:"))
    examples = [line.strip() for line in lines[at + 1:] if line.strip().startswith(f"lsr {name}")]
    assert examples, output


@pytest.mark.parametrize("name, flag, default", [
    ("restore", "-parallelism", "8"),
    ("verify", "-timeout", "30"),
])
def test_help_shows_defaults(name: str, flag: str, default: str) -> None:
    output = " ".join(CliRunner().invoke(cli, [name, "--help"], catch_exceptions=False).output.split())
    help_of_flag = output.split(f"{flag}, -{flag}", 1)[1].split(" -", 1)[0]
    assert f"[default: {default}" in help_of_flag, help_of_flag
    assert '[default: ""]' not in output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_non_trivial_default_is_shown(name: str) -> None:
    for param in cli.get_command(click.Context(cli), name).params:
        default = param.default
        if param.param_type_name == "option" and isinstance(default, (int, float, str)) \
                and not isinstance(default, bool) and default != "":
            assert param.show_default, f"{name}: {param.opts} hides its default {param.default!r}"
