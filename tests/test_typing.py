"""The engine type-checks under mypy --strict (the house style)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_on_the_engine() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "litestream_py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
