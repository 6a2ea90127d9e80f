"""The engine type-checks under mypy --strict (the house style)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_on_the_engine_and_the_command_layer() -> None:
    """litestream_py/cmd links to cmd/, so the command layer is checked too."""
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "litestream_py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "litestream_py/cmd" not in r.stdout  # no error in the command layer either
    # Both halves really were checked: the engine's modules and cmd/'s.
    engine = ROOT / "litestream_py"  # its modules, and the stubs of its C extensions
    n_engine = len(list(engine.rglob("*.py"))) + len(list(engine.rglob("*.pyi")))  # rglob does not enter the link
    n_cmd = len(list((ROOT / "cmd").glob("*.py")))
    assert f"in {n_engine + n_cmd} source files" in r.stdout, r.stdout
