"""Processes the tests start: lsr, the Go binary, helpers; each stopped and reaped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

__all__ = [
    "BIN_DIR", "GO_VERSION", "LSR", "Processes", "assert_one_line_error", "go_litestream_path", "run_lsr", "stop_process", "wait_for",
]

BIN_DIR = Path(sys.executable).parent
LSR = str(BIN_DIR / "lsr")
GO_VERSION = "v0.3.13"


def go_litestream_path() -> str | None:
    candidate = BIN_DIR / "litestream"
    if candidate.exists():
        return str(candidate)
    return shutil.which("litestream")


def stop_process(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    """Send ``sig`` to ``p`` and reap it; its exit status. One that outlives ``timeout``
    is SIGKILLed with its process group, reaped, and fails the test."""
    if p.poll() is None:
        p.send_signal(sig)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(p)
        raise AssertionError(f"pid {p.pid} still ran {timeout}s after signal {sig}; killed") from None


def _kill_group(p: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # not a group leader of ours
        p.kill()
    p.wait(timeout=10)


class Processes:
    """Starts processes and guarantees they are gone after the test."""

    stop = staticmethod(stop_process)

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], name: str = "proc", env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        p.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def lsr_replicate(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.start([LSR, "replicate", *args], "lsr", env)

    @staticmethod
    def output(p: subprocess.Popen[bytes]) -> str:
        return Path(p.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                _kill_group(p)


def wait_for(cond: Callable[[], bool], timeout: float = 30, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_lsr(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([LSR, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 1, exactly one line on stderr naming the problem, no traceback."""
    assert res.returncode == 1, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line:\n{res.stderr}"
    assert "Traceback" not in res.stdout + res.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"
    return lines[0]
