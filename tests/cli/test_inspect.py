"""The inspection commands print Litestream's tables, for a config DB and for a replica URL.

Every flag is accepted with one dash (as Litestream spells it) and with two.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from support.config import write_config
from support.procs import Processes, run_lsr, wait_for
from support.sqlite import open_app_db
from support.workload import local_generation, replica_ready, stop_lsr

HEADERS = {
    "generations": ["name", "generation", "lag", "start", "end"],
    "snapshots": ["replica", "generation", "index", "size", "created"],
    "wal": ["replica", "generation", "index", "offset", "size", "created"],
    "databases": ["path", "replicas"],
}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
GO_DURATION = re.compile(r"^-?(\d+h)?(\d+m)?\d+(\.\d+)?(s|ms|µs|ns)$|^0s$")


def table(stdout: str) -> tuple[list[str], list[list[str]]]:
    lines = [line.split() for line in stdout.strip().splitlines()]
    return lines[0], lines[1:]


def lsr_table(*args: str) -> list[list[str]]:
    res = run_lsr(*args)
    assert res.returncode == 0, f"{args}: {res.stderr}"
    header, rows = table(res.stdout)
    assert header == HEADERS[args[0]], res.stdout
    return rows


@pytest.fixture
def setup(tmp_path: Path, db_path: Path, procs: Processes) -> tuple[Path, Path, dict[str, Path]]:
    """A config with two named file replicas, both holding a snapshot and WAL segments."""
    replicas = {"alpha": tmp_path / "r-alpha", "beta": tmp_path / "r-beta"}
    cfg = write_config(tmp_path / "litestream.yml", db_path,
                       *({"name": n, "url": f"file://{p}"} for n, p in replicas.items()))
    conn = open_app_db(db_path)
    p = procs.lsr_replicate("-config", str(cfg))
    wait_for(lambda: all(replica_ready(r) for r in replicas.values()), what="snapshots on both replicas")
    for i in range(20):
        conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
    stop_lsr(p)
    conn.close()
    return cfg, db_path, replicas


@pytest.mark.parametrize("dash", ["-", "--"])
def test_generations(setup: tuple[Path, Path, dict[str, Path]], dash: str) -> None:
    cfg, db, replicas = setup
    generation = local_generation(db)
    rows = lsr_table("generations", f"{dash}config", str(cfg), str(db))
    assert [(r[0], r[1]) for r in rows] == [("alpha", generation), ("beta", generation)]
    for _, _, lag, start, end in rows:
        assert GO_DURATION.match(lag), lag
        assert RFC3339.match(start) and RFC3339.match(end) and start <= end
    only_beta = lsr_table("generations", f"{dash}config", str(cfg), f"{dash}replica", "beta", str(db))
    assert [r[:2] for r in only_beta] == [["beta", generation]]
    by_url = lsr_table("generations", f"file://{replicas['alpha']}")
    assert [r[:2] for r in by_url] == [["file", generation]]


@pytest.mark.parametrize("dash", ["-", "--"])
def test_snapshots(setup: tuple[Path, Path, dict[str, Path]], dash: str) -> None:
    cfg, db, replicas = setup
    generation = local_generation(db)
    rows = lsr_table("snapshots", f"{dash}config", str(cfg), str(db))
    assert [r[:3] for r in rows] == [["alpha", generation, "0"], ["beta", generation, "0"]]
    for name, gen, index, size, created in rows:
        on_disk = replicas[name] / "generations" / gen / "snapshots" / f"{int(index):08x}.snapshot.lz4"
        assert int(size) == on_disk.stat().st_size
        assert RFC3339.match(created)
    by_url = lsr_table("snapshots", f"file://{replicas['beta']}")
    assert [r[1:4] for r in by_url] == [r[1:4] for r in rows if r[0] == "beta"]
    assert lsr_table("snapshots", f"{dash}config", str(cfg), f"{dash}replica", "alpha", str(db)) == rows[:1]


@pytest.mark.parametrize("dash", ["-", "--"])
def test_wal(setup: tuple[Path, Path, dict[str, Path]], dash: str) -> None:
    cfg, db, replicas = setup
    generation = local_generation(db)
    rows = lsr_table("wal", f"{dash}config", str(cfg), str(db))
    assert {r[0] for r in rows} == {"alpha", "beta"}
    for name in replicas:
        mine = [r for r in rows if r[0] == name]
        files = sorted(p.name for p in (replicas[name] / "generations" / generation / "wal").iterdir())
        listed = [f"{int(r[2]):08x}_{int(r[3]):08x}.wal.lz4" for r in mine]
        assert listed == files
        for _, gen, index, offset, size, created in mine:
            path = replicas[name] / "generations" / gen / "wal" / f"{int(index):08x}_{int(offset):08x}.wal.lz4"
            assert int(size) == path.stat().st_size and RFC3339.match(created)
    assert len(rows) >= 4  # a few segments each
    by_url = lsr_table("wal", f"{dash}generation", generation, f"file://{replicas['alpha']}")
    assert [r[1:5] for r in by_url] == [r[1:5] for r in rows if r[0] == "alpha"]
    assert lsr_table("wal", f"{dash}generation", "0123456789abcdef", f"file://{replicas['alpha']}") == []


@pytest.mark.parametrize("dash", ["-", "--"])
def test_databases(setup: tuple[Path, Path, dict[str, Path]], dash: str) -> None:
    cfg, db, _ = setup
    rows = lsr_table("databases", f"{dash}config", str(cfg))
    assert rows == [[str(db), "alpha,beta"]]


def test_databases_reads_litestream_config_env(setup: tuple[Path, Path, dict[str, Path]]) -> None:
    cfg, db, _ = setup
    res = run_lsr("databases", env={"LITESTREAM_CONFIG": str(cfg)})
    assert res.returncode == 0, res.stderr
    assert table(res.stdout) == (HEADERS["databases"], [[str(db), "alpha,beta"]])


def test_version() -> None:
    res = run_lsr("version")
    assert res.returncode == 0
    assert re.match(r"^v\d+\.\d+\.\d+\S*$", res.stdout.strip()), res.stdout


def test_empty_replica_prints_headers_only(tmp_path: Path) -> None:
    for command in ("generations", "snapshots", "wal"):
        assert lsr_table(command, f"file://{tmp_path / 'nothing-here'}") == []



RFC3339_SUBSECOND = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_json_has_the_tables_fields(setup: tuple[Path, Path, dict[str, Path]]) -> None:
    """-json prints the table's rows as objects: same fields, typed, times in RFC 3339 to the microsecond."""
    cfg, db, replicas = setup
    for command, extra in (("generations", [str(db)]), ("snapshots", [str(db)]), ("wal", [str(db)]),
                           ("databases", []), ("snapshots", [f"file://{replicas['beta']}"])):
        args = [command, "-config", str(cfg), *extra] if not extra or not extra[0].startswith("file:") else [
            command, *extra]
        res = run_lsr(*args, "-json")
        assert res.returncode == 0, res.stderr
        objects = json.loads(res.stdout)
        header, table_rows = table(run_lsr(*args).stdout)
        assert [list(o) for o in objects] == [[h.replace(" ", "_") for h in header]] * len(table_rows)
        assert objects, command
        for obj, row in zip(objects, table_rows):
            for key, cell in zip(obj, row):
                value = obj[key]
                if key in ("start", "end", "created"):
                    assert RFC3339_SUBSECOND.match(value) and value[:19] == cell[:19], (key, value, cell)
                elif key == "lag":
                    assert isinstance(value, float) and value >= 0
                elif key == "replicas":
                    assert value == ["alpha", "beta"] and cell == "alpha,beta"
                elif key in ("index", "offset", "size"):
                    assert value == int(cell)
                else:
                    assert value == cell
    gens = json.loads(run_lsr("generations", "-config", str(cfg), str(db), "-json").stdout)
    assert {g["generation"] for g in gens} == {local_generation(db)}
