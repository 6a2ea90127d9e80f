"""The command layer must never shadow the standard library's ``cmd``.

``cmd/`` has no ``__init__.py``: from the repository root (first on
``sys.path`` for ``python -m`` and ``python -c``) it is only a namespace
portion, and the standard module wins over it.
"""

import subprocess
import sys
from pathlib import Path

import cmd

ROOT = Path(__file__).resolve().parent.parent


def test_stdlib_cmd_is_not_shadowed() -> None:
    assert hasattr(cmd, "Cmd")
    assert cmd.Cmd.__module__ == "cmd"


def test_command_layer_is_a_subpackage() -> None:
    import litestream_py.cmd.main as main

    assert main.cli.name == "cli"


def test_cmd_folder_is_not_a_regular_package() -> None:
    assert (ROOT / "cmd").is_dir() and not (ROOT / "cmd" / "__init__.py").exists()


def _from_root(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_pdb_imports_from_the_repository_root() -> None:
    r = _from_root("-c", "import pdb, cmd; print(cmd.__file__)")
    assert r.returncode == 0, r.stderr
    assert not r.stdout.strip().startswith(str(ROOT / "cmd")), r.stdout


def test_pytest_collects_from_the_repository_root() -> None:
    r = _from_root("-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "tests/test_cmd_shadowing.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "INTERNALERROR" not in r.stdout + r.stderr
    assert "5 tests collected" in r.stdout, r.stdout
