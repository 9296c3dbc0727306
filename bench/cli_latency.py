"""CLI latency: wall time of voicecli commands against `python -c pass` and a minimal Typer app.

Each command runs --repeat times (after one warm-up run, so the OS file cache is warm, as it is
for a user running commands one after another); the median is reported. `calls --json` talks
to a real `voicecli serve` started for the purpose in a temporary project.

    python bench/cli_latency.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BENCH_DIR, PYTHON, VOICECLI, fmt, serve_demo_command, stop, table


def timed(cmd: list[str], cwd: Path, env: dict[str, str], repeat: int) -> float:
    """Median wall time in ms of `cmd` (after one warm-up run); fails loudly if it fails."""
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)
    project = Path(tempfile.mkdtemp(prefix="voicecli-bench-cli-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "EXOTEL_", "VOBIZ_", "VOICECLI_"))}
    server = subprocess.Popen(
        serve_demo_command(0),
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (project / ".voicecli" / "server.json").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("voicecli serve did not start")
            time.sleep(0.1)
        commands = {
            "python -c pass": [PYTHON, "-c", "pass"],
            "minimal Typer app --help": [PYTHON, str(BENCH_DIR / "typer_min.py"), "--help"],
            "voicecli --help": [VOICECLI, "--help"],
            "voicecli config get provider": [VOICECLI, "config", "get", "provider"],
            "voicecli calls --json": [VOICECLI, "calls", "--json"],
        }
        ms = {name: timed(cmd, project, env, args.repeat) for name, cmd in commands.items()}
    finally:
        stop(server)
    floor, typer_ms = ms["python -c pass"], ms["minimal Typer app --help"]
    targets = {"voicecli --help": 1.5, "voicecli config get provider": 1.5, "voicecli calls --json": 2.0}
    rows = []
    for name, value in ms.items():
        target = targets.get(name)
        ratio = value / typer_ms
        rows.append(
            [
                name,
                fmt(value, 0),
                fmt(value / floor, 2),
                fmt(ratio, 2),
                f"<= {target}: {'met' if ratio <= target else 'MISSED'}" if target else "",
            ]
        )
    print(f"# CLI latency (median of {args.repeat} runs)")
    print(table(["command", "wall ms", "x python -c pass", "x Typer --help", "target"], rows))
    return {"ms": ms}


if __name__ == "__main__":
    main()
