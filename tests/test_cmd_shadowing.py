"""The command layer must never shadow the standard library's ``cmd``."""

import cmd


def test_stdlib_cmd_is_not_shadowed() -> None:
    assert hasattr(cmd, "Cmd")
    assert cmd.Cmd.__module__ == "cmd"


def test_command_layer_is_a_subpackage() -> None:
    import litestream_py.cmd.main as main

    assert main.cli.name == "cli"
