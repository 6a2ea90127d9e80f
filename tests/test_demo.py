"""The README's first command: the demo replicates, restores and compares, on a local file replica."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.sqlite import integrity_ok, rows

ROOT = Path(__file__).resolve().parent.parent


def test_demo_replicates_and_restores_a_matching_database(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "OK: the restored database matches the source" in r.stdout
    restored = tmp_path / "demo" / "restored.db"
    assert integrity_ok(restored)
    assert rows(restored, "SELECT count(*) FROM sqlite_master WHERE type = 'table'")[0][0] >= 1
    assert not list(tmp_path.glob("demo/**/*.tmp")), "a temp file was left behind"
