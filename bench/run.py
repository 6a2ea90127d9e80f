"""Benchmark lsr against Go Litestream 0.3.13 side by side, in one run.

    python bench/run.py            # full run (~18 min on 2 cores): docs/bench.md, docs/bench.png
    python bench/run.py --quick    # smoke run (< 1 min, file replicas only), output in the work dir

Every figure is printed for both tools with their ratio, the issue's target
and lsr's verdict. Scenarios are in ``scenarios.py``; the method and its
error bounds are written into the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import compaction
import lagtrace
import report
import restore_floor
import scenarios
import stall
import workload
from tools import AgeKeyPair, Backend, S3Server, Tool, find_tool

from litestream_py.restore import DEFAULT_RESTORE_PARALLELISM

ROOT = Path(__file__).resolve().parent.parent
QUICK = scenarios.Settings(steady=1.0, rate=100.0, burst=1.0, catchup_timeout=20.0, restore_mib=4.0,
                           restore_segments=20, restore_repeats=1, parallelism_pairs=2, replication_repeats=1,
                           throughput_slices=4, throughput_slice=0.25, idle_dbs=20, idle_many_dbs=0, idle_seconds=1.0,
                           idle_settle=0.5, compaction_mib=8.0, compaction_txns=30, compaction_seconds=1.0, compaction_settle=2.0,
                           compaction_interval="1s", stall_seconds=1.0, stall_repeats=1)


# The S3 server behind each S3 backend: moto for replication and restores, nanio
# (objects as files, a server that is not the bottleneck) for restores.
SERVER_KINDS = {"s3": "moto", "nanio": "nanio"}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = scenarios.Settings()
    p.add_argument("--quick", action="store_true", help="tiny smoke run (defaults below become the QUICK ones)")
    p.add_argument("--backends", default=None, help="replication on: file,s3 (default: both; --quick: file)")
    p.add_argument("--restore-backends", default=None,
                   help="restores from: file,s3,nanio (default: all three; --quick: file)")
    p.add_argument("--tools", default="lsr,go", help="comma-separated: lsr,go")
    p.add_argument("--only", default="replication,lagtrace,stall,restore,idle,age,compaction",
                   help="scenarios to run")
    p.add_argument("--age", action="store_true",
                   help="encrypt every replica with age (a key pair made for the run), both tools")
    p.add_argument("--age-backends", default=None,
                   help="the age scenario (lsr with and without age) on: file,s3 (default: both; --quick: file)")
    p.add_argument("--compaction-backends", default=None,
                   help="compaction scenario on: file,nanio (default: both; --quick: file); nanio counts requests")
    p.add_argument("--steady", type=float, help=f"seconds of steady writing (default {d.steady})")
    p.add_argument("--rate", type=float, help=f"steady transactions per second (default {d.rate})")
    p.add_argument("--burst", type=float, help=f"seconds of back-to-back writing (default {d.burst})")
    p.add_argument("--replication-repeats", type=int,
                   help=f"replication runs per tool and backend, taken in turns (default {d.replication_repeats})")
    p.add_argument("--throughput-slices", type=int,
                   help=f"paired throughput slices, a multiple of 4 (ABBA) (default {d.throughput_slices})")
    p.add_argument("--throughput-slice", type=float,
                   help=f"seconds per paired throughput slice (default {d.throughput_slice})")
    p.add_argument("--restore-mib", type=float, help=f"restore database size (default {d.restore_mib})")
    p.add_argument("--restore-segments", type=int, help=f"WAL segments to restore (default {d.restore_segments})")
    p.add_argument("--restore-repeats", type=int, help=f"restores timed per tool (default {d.restore_repeats})")
    p.add_argument("--parallelism-pairs", type=int,
                   help=f"pairs of lsr restores, default and -parallelism 1 (default {d.parallelism_pairs})")
    p.add_argument("--compaction-mib", type=float, help=f"compaction database size (default {d.compaction_mib})")
    p.add_argument("--compaction-settle", type=float,
                   help=f"seconds the sidecar runs on after the writes (default {d.compaction_settle})")
    p.add_argument("--stall-seconds", type=float,
                   help=f"seconds of big transactions in the stall scenario (default {d.stall_seconds})")
    p.add_argument("--stall-rows", type=int, help=f"rows per big transaction (default {d.stall_rows})")
    p.add_argument("--stall-repeats", type=int, help=f"stall runs per tool, and alone (default {d.stall_repeats})")
    p.add_argument("--idle-dbs", type=int, help=f"idle databases (default {d.idle_dbs})")
    p.add_argument("--idle-many-dbs", type=int,
                   help=f"idle databases of a second, larger idle run; 0: none (default {d.idle_many_dbs})")
    p.add_argument("--idle-seconds", type=float, help=f"idle CPU window (default {d.idle_seconds})")
    p.add_argument("--s3-poll", type=float, help=f"S3 listing period in seconds (default {d.s3_poll})")
    p.add_argument("--lsr", help="lsr executable (default: next to this Python)")
    p.add_argument("--litestream", help="Go litestream 0.3.13 executable (default: next to this Python)")
    p.add_argument("--md", type=Path, help="markdown output (default docs/bench.md; --quick: in the work dir)")
    p.add_argument("--png", type=Path, help="plot output (default docs/bench.png; --quick: in the work dir)")
    p.add_argument("--json", type=Path, help="also save the raw results here")
    p.add_argument("--work", type=Path, help="working directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    return p.parse_args()


def _settings(args: argparse.Namespace) -> scenarios.Settings:
    base = QUICK if args.quick else scenarios.Settings()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(base)
             if getattr(args, f.name, None) is not None}
    s = dataclasses.replace(base, **given)
    if s.restore_repeats < 1 or s.replication_repeats < 1:
        raise SystemExit("--restore-repeats and --replication-repeats must be at least 1")
    if s.throughput_slices < 4 or s.throughput_slices % 4:
        raise SystemExit("--throughput-slices must be a multiple of 4: whole ABBA groups")
    return s


def _machine() -> dict[str, Any]:
    model = "?"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "load_before": _load()}


def _compile_lsr() -> None:
    """Byte-compile lsr's sources first, as a regular install does: no timed run
    should pay for compiling them (an editable install under PYTHONDONTWRITEBYTECODE would)."""
    import litestream_py
    import litestream_py.cmd

    # litestream_py.cmd is a namespace package (no __file__): its folder is on its __path__.
    dirs = [d for m in (litestream_py, litestream_py.cmd) for d in m.__path__]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], stdout=subprocess.DEVNULL, check=False)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _attempt(results: dict[str, Any], where: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one scenario; a failure is recorded and reported, and the others still run."""
    print(f"[{time.strftime('%H:%M:%S')}] {where} ...", flush=True)
    t0 = time.monotonic()
    try:
        out = fn()
    except Exception as exc:  # one broken run must not hide the rest of the figures
        traceback.print_exc()
        results["errors"].append(f"{where}: {type(exc).__name__}: {exc}"[:500])
        out = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    print(f"[{time.strftime('%H:%M:%S')}] {where} done in {time.monotonic() - t0:.1f} s", flush=True)
    return out


def _replications(results: dict[str, Any], backend: Backend, work: Path, tools: list[Tool],
                  s: scenarios.Settings) -> None:
    """Each tool's replication run and paired throughput run, the tools in turns,
    the order alternating; each figure is then the median over a tool's runs
    (the worst run for a worst-case figure)."""
    name = backend.name
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {"replication": [], "throughput": []} for t in tools}
    for i in range(s.replication_repeats):
        tag = f" #{i + 1}" if s.replication_repeats > 1 else ""
        for t in tools if i % 2 == 0 else tools[::-1]:
            for key, scenario in (("replication", scenarios.replication), ("throughput", scenarios.throughput)):
                runs[t.name][key].append(_attempt(results, f"{key} {name} {t.name}{tag}",
                                                  partial(scenario, t, backend, work / f"run{i + 1}", s)))
    for key in ("replication", "throughput"):
        results[key][name] = {t.name: scenarios.combine_runs(runs[t.name][key]) for t in tools}


def _stalls(results: dict[str, Any], backend: Backend, work: Path, tools: list[Tool],
            s: scenarios.Settings) -> dict[str, Any]:
    """The saturating writer alone and beside each tool, in turns, the order alternating."""
    runs: dict[str, list[dict[str, Any]]] = {"alone": [], **{t.name: [] for t in tools}}
    for i in range(s.stall_repeats):
        order: list[Tool | None] = [None, *tools]
        for t in order if i % 2 == 0 else order[::-1]:
            name = t.name if t else "alone"
            fn = partial(stall.stall, t, backend, work, s, i) if t else partial(stall.alone, work, s, i)
            runs[name].append(_attempt(results, f"stall {backend.name} {name} #{i + 1}", fn))
    return {name: scenarios.combine_runs(r) for name, r in runs.items()}


def _restores(results: dict[str, Any], backend: Backend, work: Path, large: Path, tools: list[Tool],
              s: scenarios.Settings) -> dict[str, Any]:
    """Each tool's replica of ``large``, then restores of them timed in turns."""
    out: dict[str, Any] = {}
    built: list[scenarios.RestoreReplica] = []

    def build(t: Tool) -> dict[str, Any]:
        built.append(scenarios.build_restore(t, backend, work, large, s))
        return built[-1].result

    for t in tools:
        out[t.name] = _attempt(results, f"restore {backend.name} {t.name}: build", partial(build, t))
    for r in built:
        if "error" not in out[r.tool.name]:
            out[r.tool.name] = _attempt(results, f"restore {backend.name} {r.tool.name}: warm-up",
                                        partial(scenarios.time_restore, r, warm_up=True))
    # In turns, the order alternating: the machine's speed drifts over minutes,
    # and moto's slows as it fills; both then fall on every tool alike.
    for i in range(s.restore_repeats):
        for r in built if i % 2 == 0 else built[::-1]:
            if "error" not in out[r.tool.name]:
                out[r.tool.name] = _attempt(results, f"restore {backend.name} {r.tool.name}: #{i + 1}",
                                            partial(scenarios.time_restore, r))
    # lsr's default against -parallelism 1 (issue 28: never slower), in adjacent
    # pairs, each pair's order the other's reverse: report.py compares them pair by pair.
    pair = [(None, "pair_default"), (1, "restore_p1")]
    for r in built:
        for i in range(s.parallelism_pairs if r.tool.name == "lsr" else 0):
            for parallelism, series in pair if i % 2 == 0 else pair[::-1]:
                if "error" not in out[r.tool.name]:
                    flag = f" -parallelism {parallelism}" if parallelism else ""
                    out[r.tool.name] = _attempt(
                        results, f"restore {backend.name} {r.tool.name}{flag}: pair #{i + 1}",
                        partial(scenarios.time_restore, r, parallelism=parallelism, series=series))
    server = backend.server
    for r in built:
        if server is not None and r.tool.name == "lsr" and "error" not in out["lsr"]:
            results["restore_floor"][f"bare_gets_{backend.name}"] = _attempt(
                results, f"restore floor: bare GETs of {backend.name}'s lsr replica",
                partial(restore_floor.bare_gets, r.config, server, DEFAULT_RESTORE_PARALLELISM, s.restore_repeats))
    return out


def _compactions(results: dict[str, Any], backend: Backend, work: Path, source: Path, tools: list[Tool],
                 s: scenarios.Settings) -> dict[str, Any]:
    """Each tool's replica of issue 29's workload under its own defaults, then restores timed in turns."""
    out: dict[str, Any] = {}
    for t in tools:
        out[t.name] = _attempt(results, f"compaction {backend.name} {t.name}: build",
                               partial(compaction.build, t, backend, work, source, s))
    ok = [t for t in tools if "error" not in out[t.name]]
    for t in ok:
        out[t.name] = _attempt(results, f"compaction {backend.name} {t.name}: warm-up",
                               partial(compaction.time_restore, t, backend, out[t.name], warm_up=True))
    for i in range(s.restore_repeats):
        for t in ok if i % 2 == 0 else ok[::-1]:
            if "error" not in out[t.name]:
                out[t.name] = _attempt(results, f"compaction {backend.name} {t.name}: restore #{i + 1}",
                                       partial(compaction.time_restore, t, backend, out[t.name]))
    return out


def _floor(db: Path, lsr_replica: Path, s: scenarios.Settings, lsr: Tool | None = None) -> dict[str, Any]:
    """The floor under restoring ``db`` (LZ4 decode, write, fsync), and lsr's
    restore of its file replica of it in this process, when there is one; with
    ``lsr``, also the steps of its restore command (the replica's config beside it)."""
    out = restore_floor.floor(db, db.parent, s.restore_repeats)
    if lsr_replica.is_dir():
        out["in_process"] = restore_floor.in_process(lsr_replica, db.parent, s.restore_repeats)
        config = lsr_replica.parent / "litestream.yml"
        if lsr is not None and config.exists():
            out["phases"] = restore_floor.phases(lsr, config, lsr_replica.parent / "app.db", db.parent,
                                                 s.restore_repeats)
    return out


def _age_cost(results: dict[str, Any], plain: Backend, sealed: Backend, work: Path, large: Path, tool: Tool,
              s: scenarios.Settings) -> dict[str, Any]:
    """lsr on one backend without and with age, the two in turns, the order alternating:
    the sidecar's CPU per MiB (replication runs) and restore time (restore replicas)."""
    variants = {"plain": plain, "age": sealed}
    name = plain.name
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for i in range(s.replication_repeats):
        for v in list(variants) if i % 2 == 0 else list(variants)[::-1]:
            runs[v].append(_attempt(results, f"age cost {name}: replication {v} #{i + 1}",
                                    partial(scenarios.replication, tool, variants[v], work / f"age-{v}-{i + 1}", s)))
    out: dict[str, Any] = {"replication": {v: scenarios.combine_runs(r) for v, r in runs.items()}, "restore": {}}
    built: dict[str, scenarios.RestoreReplica] = {}

    def build(v: str) -> dict[str, Any]:
        built[v] = scenarios.build_restore(tool, variants[v], work / f"age-{v}", large, s)
        return built[v].result

    for v in variants:
        out["restore"][v] = _attempt(results, f"age cost {name}: restore build {v}", partial(build, v))
    for v, r in built.items():
        out["restore"][v] = _attempt(results, f"age cost {name}: restore warm-up {v}",
                                     partial(scenarios.time_restore, r, warm_up=True))
    for i in range(s.restore_repeats):
        for v in list(built) if i % 2 == 0 else list(built)[::-1]:
            out["restore"][v] = _attempt(results, f"age cost {name}: restore {v} #{i + 1}",
                                         partial(scenarios.time_restore, built[v]))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    s = _settings(args)
    backends = (args.backends or ("file" if args.quick else "file,s3")).split(",")
    restore_backends = (args.restore_backends or ("file" if args.quick else "file,s3,nanio")).split(",")
    only = set(args.only.split(","))
    tools: list[Tool] = []
    results: dict[str, Any] = {
        "command": shlex.join(["python", "bench/run.py", *sys.argv[1:]]),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": dataclasses.asdict(s), "machine": _machine(), "tools": {}, "errors": [],
        "replication": {}, "throughput": {}, "restore": {}, "idle": {}, "age": args.age, "age_cost": {},
        "compaction": {}, "restore_floor": {}, "stall": {}, "lagtrace": {},
    }
    age = AgeKeyPair() if args.age else None
    for name in args.tools.split(","):
        tool = find_tool(name, args.lsr if name == "lsr" else args.litestream)
        if tool is None:
            results["errors"].append(f"{name}: executable not found, its column is empty")
            continue
        tools.append(tool)
        results["tools"][name] = tool.exe
    if any(t.name == "lsr" for t in tools):
        _compile_lsr()
    work = args.work or Path(tempfile.mkdtemp(prefix="lsr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"working in {work}", flush=True)
    t_start = time.monotonic()
    servers: dict[str, S3Server] = {}

    def backend(name: str, keys: AgeKeyPair | None = age) -> Backend:
        """``name``'s replicas; its S3 server is started on first use and runs to the end of the scenario."""
        if name in SERVER_KINDS and name not in servers:
            servers[name] = S3Server(SERVER_KINDS[name], work)
        return Backend(name, servers.get(name), s.s3_poll, keys)

    try:
        for name in backends:
            if "replication" in only:
                _replications(results, backend(name), work, tools, s)
        if "lagtrace" in only and any(t.name == "lsr" for t in tools):
            results["lagtrace"]["file"] = _attempt(results, "lag breakdown file lsr (traced)",
                                                   partial(lagtrace.traced_lag, backend("file"), work, s))
        if "stall" in only:
            results["stall"]["file"] = _stalls(results, backend("file"), work, tools, s)
        # Restores get servers of their own: moto's requests cost it more CPU the
        # more it holds, and the replication runs leave it several GiB of WAL
        # (restore server CPU 1.4-1.5 s after them, 0.65-0.75 s fresh).
        for server in servers.values():
            server.stop()
        servers.clear()
        large = work / "large.db"
        if only & {"restore", "age"}:
            print(f"building a {s.restore_mib:g} MiB database", flush=True)
            workload.build_large(large, s.restore_mib)
        if "restore" in only:
            for name in restore_backends:
                results["restore"][name] = _restores(results, backend(name), work, large, tools, s)
            results["restore_floor"]["startup"] = _attempt(
                results, "restore floor: start-up", partial(restore_floor.startup, tools, s.restore_repeats))
            results["restore_floor"]["restore"] = _attempt(results, "restore floor: restore scenario", partial(
                _floor, large, work / "restore-file-lsr" / "big-replica", s))
        lsr = next((t for t in tools if t.name == "lsr"), None)
        if "age" in only and lsr is not None and not args.age:
            for name in (args.age_backends or ("file" if args.quick else "file,s3")).split(","):
                for server in servers.values():  # a fresh server for each (see the restores)
                    server.stop()
                servers.clear()
                results["age_cost"][name] = _age_cost(results, backend(name, None), backend(name, AgeKeyPair()),
                                                      work, large, lsr, s)
        for server in servers.values():
            server.stop()
        servers.clear()
        if "compaction" in only:
            source = work / "compaction.db"
            workload.build_large(source, s.compaction_mib)
            for name in (args.compaction_backends or ("file" if args.quick else "file,nanio")).split(","):
                if name in SERVER_KINDS:  # a server of its own, whose access log counts the requests
                    servers[name] = S3Server(SERVER_KINDS[name], work, access_log=True)
                results["compaction"][name] = _compactions(results, backend(name), work, source, tools, s)
            results["restore_floor"]["compaction"] = _attempt(results, "restore floor: compaction", partial(
                _floor, source, work / "compaction-file-lsr" / "app-replica", s, lsr))
        if "idle" in only:
            for key, count in (("idle", s.idle_dbs), ("idle_many", s.idle_many_dbs)):
                if count:
                    results[key] = {t.name: _attempt(results, f"idle {count} {t.name}",
                                                     partial(scenarios.idle, t, work, s, count)) for t in tools}
    finally:
        for server in servers.values():
            server.stop()
        results["elapsed"] = time.monotonic() - t_start
        results["machine"]["load_after"] = _load()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    args = _parse()
    results = run(args)
    out_dir = (args.work or Path(tempfile.gettempdir())) if args.quick else ROOT / "docs"
    md = args.md or out_dir / ("bench-quick.md" if args.quick else "bench.md")
    png = args.png or md.with_suffix(".png")
    md.parent.mkdir(parents=True, exist_ok=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    report.write(results, md, png)
    print()
    print(report.table(results))
    print(f"\nwrote {md}" + (f" and {png}" if png.exists() else " (no plot: pip install matplotlib)"))
    for error in results["errors"]:
        print(f"error: {error}", file=sys.stderr)
    sys.exit(1 if results["errors"] else 0)


if __name__ == "__main__":
    main()
