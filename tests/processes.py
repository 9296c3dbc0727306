"""The real `voicecli` executable in a child process, for tests that run it as a user would."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Narrow on purpose: output off a terminal must never be cut, whatever COLUMNS says.
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "COLUMNS": "60"}


async def run_voicecli(
    project: Path, *args: str, python_flags: tuple[str, ...] = (), env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `python -m voicecli ARGS` in the project while this event loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *python_flags,
        "-m",
        "voicecli",
        *args,
        cwd=project,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(CLEAN_ENV if env is None else env),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode or 0, out.decode(), err.decode()


@contextmanager
def serving(
    project: Path, env: Mapping[str, str], *extra: str, preexec_fn: Callable[[], None] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`voicecli serve --agent demo` in a child process logging to serve.log; killed and reaped after.

    `preexec_fn` runs in the child before voicecli starts (a resource limit, say)."""
    with (project / "serve.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voicecli", "serve", "--agent", "demo", "--port", "0", *extra],
            cwd=project,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


async def ctrl_c_twice(proc: subprocess.Popen[bytes]) -> float:
    """Ctrl-C, then Ctrl-C again half a second into the drain: seconds from the second to the exit."""
    proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    cut_at = time.monotonic()
    assert await asyncio.to_thread(proc.wait, 20) == 0
    return time.monotonic() - cut_at


async def until(check: Callable[[], Any], within_s: float = 20.0, what: str = "the condition") -> Any:
    """Poll `check()` (a function or a coroutine function) until it is true; its last value."""
    began = time.monotonic()
    while not (result := await check() if asyncio.iscoroutinefunction(check) else check()):
        assert time.monotonic() - began < within_s, f"{what}: not within {within_s:g} s"
        await asyncio.sleep(0.1)
    return result
