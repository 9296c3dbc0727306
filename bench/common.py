"""Helpers shared by the bench scripts: CPU pinning, /proc readings, ports, percentiles."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PYTHON = sys.executable
VOICECLI = str(Path(PYTHON).with_name("voicecli"))  # the one installed beside this Python
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The server gets core 0; callers and the fake OpenAI server share the other one, as in
# ../shared/baseline.md. On a one-core machine everything shares core 0.
SERVER_CPU = 0
CLIENT_CPU = 1 if (os.cpu_count() or 1) > 1 else 0


def serve_demo_command(port: int) -> list[str]:
    """`voicecli serve` for the shipped demo agent on `port` (0: any free port), logging warnings only."""
    agents = str(ROOT / "agents")
    return [VOICECLI, "serve", "--agent", "demo", "--agents-dir", agents, "--port", str(port), "--log-level", "warning"]


def server_env() -> dict[str, str]:
    """The environment for a pinned server: one OpenMP/OpenBLAS thread.

    Without this, a thread of the ONNX/numpy stack resets its own affinity to every core, and a
    Smart Turn inference (about 100 ms of CPU on this machine) runs partly on the callers' core.
    """
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def pin(cpu: int) -> None:
    """Pin this process (and the threads it starts later) to one core."""
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):  # not Linux: run unpinned
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_pids(pid: int) -> list[int]:
    """`pid` and every process below it (a supervisor and its workers), as /proc lists them now."""
    out, todo = [], [pid]
    while todo:
        each = todo.pop()
        out.append(each)
        for task in Path(f"/proc/{each}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:  # the task ended meanwhile
                pass
    return out


def tree_cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds of each live process in `pids` (gone ones are left out)."""
    out = {}
    for each in pids:
        try:
            out[each] = cpu_seconds(each)
        except OSError:
            pass
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and everything below it, MB."""
    total = 0.0
    for each in tree_pids(pid):
        try:
            total += rss_mb(each)
        except OSError:
            pass
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until GET `url` answers 200 (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End a process we started: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (also readable in a terminal)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
