"""The benchmark's tiny smoke run: both tools, every scenario (lsr with and without age too), no crash,
every figure measured.

Speed is judged by the full benchmark (bench/run.py, docs/bench.md), never here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_lsr_and_go_side_by_side(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--work", str(tmp_path), "--json", str(results)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = (tmp_path / "bench-quick.md").read_text()
    assert "lag p50, steady" in table and "restore" in table and "idle" in table
    data = json.loads(results.read_text())
    assert data["errors"] == []
    for scenario in ("replication", "throughput", "restore"):
        assert set(data[scenario]["file"]) >= {"lsr", "go"}, scenario
    assert set(data["idle"]) >= {"lsr", "go"}
    assert data["replication"]["file"]["lsr"]["lag"], "lsr's lag was not measured"
    assert all(data["throughput"]["file"][tool]["ratio"] > 0 for tool in ("lsr", "go"))
    row = next(line for line in table.splitlines() if line.startswith("| writer throughput, with / alone | file |"))
    assert float(row.split("|")[4]) > 0, row  # lsr's median pair reached the table
    # lsr without and with age, in turns (issue 24): both measured, and the section rendered.
    for scenario, key in (("replication", "cpu_per_mib"), ("restore", "restore_seconds")):
        for variant in ("plain", "age"):
            assert data["age_cost"]["file"][scenario][variant][key] > 0, (scenario, variant)
    assert "## Encryption (age)" in table
    # Each tool's replica of issue 29's workload, and its restore (compaction on, for lsr).
    for tool in ("lsr", "go"):
        r = data["compaction"]["file"][tool]
        assert r["objects"] > 0 and r["restore_seconds"] > 0 and r["check"] == "ok", (tool, r)
    assert data["compaction"]["file"]["lsr"]["compactions"] > 0, "lsr's replica was not compacted"
    assert "replica objects after" in table
    # The restore command's steps, each measured, in the Restore section.
    phases = data["restore_floor"]["compaction"]["phases"]
    assert all(phases[step] >= 0 for step in ("interpreter", "imports", "plan", "snapshot", "wal", "fsync")), phases
    assert phases["snapshot"] > 0 and phases["total"] > phases["snapshot"], phases
    assert "| where `lsr restore`'s time goes (compaction scenario, file replica) | s |" in table
