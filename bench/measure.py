"""Numbers from processes and from arrival logs: CPU, memory, lag percentiles.

A sidecar is measured as its process tree (the process and its descendants),
read from /proc: CPU is utime+stime, memory is VmRSS (now) and VmHWM (the
kernel's high-water mark, so no sampling can miss a peak). The tree's peak is
the sum of each process's VmHWM, an upper bound if they peaked at different
times. Read both before the sidecar is stopped: an exited process has no
/proc entry.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass

import numpy as np


CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its living descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by the process tree."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return total / CLK_TCK


def open_descriptors(pid: int) -> int:
    """Descriptors the process holds open now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_open_file_limit(need: int) -> int:
    """Raise this process's open-file limit (inherited by the tools it starts) to
    ``need`` if it is lower, as an operator's LimitNOFILE would; returns the soft
    limit in force. Raising the hard limit takes CAP_SYS_RESOURCE: without it
    the hard limit stays and the soft one is raised to it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in ((max(need, soft), max(need, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            return limit[0]
        except (ValueError, OSError):
            continue
    return soft


def _status_kib(pid: int, field: str) -> int:
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


@dataclass(frozen=True)
class Segment:
    t: float  # arrival time (monotonic)
    marker: int  # largest commit carried
    wal_bytes: int  # decompressed size


def commit_lags(first_seq: int, t_commit: np.ndarray, segments: list[Segment]) -> np.ndarray:
    """For each commit, seconds from its commit to the first segment that carries it (NaN: never).

    Segments are contiguous, so commit ``s`` is on the replica as soon as any
    segment that has arrived carries a marker >= ``s``.
    """
    lags = np.full(len(t_commit), np.nan)
    if not segments or not len(t_commit):
        return lags
    ordered = sorted(segments, key=lambda s: s.t)
    arrival = np.array([s.t for s in ordered])
    reach = np.maximum.accumulate(np.array([s.marker for s in ordered]))
    seqs = first_seq + np.arange(len(t_commit))
    idx = np.searchsorted(reach, seqs, side="left")
    found = idx < len(ordered)
    lags[found] = arrival[idx[found]] - t_commit[found]
    return lags


def percentiles(values: np.ndarray) -> dict[str, float]:
    """p50, p90 and max of the finite values (NaN when there are none)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return {"p50": float("nan"), "p90": float("nan"), "max": float("nan")}
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)), "max": float(v.max())}


class CpuSampler:
    """Samples a process tree's CPU seconds every ``period`` on a thread of its
    own, so that a run's CPU can be split at a moment known only afterwards
    (the writer's switch from its steady phase to its burst)."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        self.pid = pid
        self.period = period
        self.samples: list[tuple[float, float]] = []  # (monotonic time, CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        self.samples.append((time.monotonic(), cpu_seconds(self.pid)))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def at(self, t: float) -> float:
        """CPU seconds at time ``t``, interpolated between samples."""
        times, cpu = zip(*self.samples)
        return float(np.interp(t, times, cpu))
