"""At 80 columns, what a user copies stays whole: every banner URL on a line of its own, and
the call tables fit by leaving columns out, never by folding an id or a number."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.processes import CLEAN_ENV
from tests.wire import in_store
from voicecli.providers import PROVIDERS

WIDTH = 80
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]")


def in_terminal(project: Path, *args: str, until: str | None = None, within_s: float = 30.0) -> list[str]:
    """`voicecli ARGS` in a pseudo-terminal WIDTH columns wide: the lines it drew, escapes gone.
    With `until`, it is interrupted once that text has appeared."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, WIDTH, 0, 0))
    env = {**CLEAN_ENV, "COLUMNS": str(WIDTH), "LINES": "24", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "voicecli", *args], cwd=project, env=env, stdin=child, stdout=child, stderr=child
    )
    os.close(child)
    output, deadline = b"", time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if until and until.encode() in output:
                break
            if proc.poll() is not None and not ready:
                break
        else:
            raise AssertionError(f"voicecli {' '.join(args)}: {until!r} not within {within_s:g} s:\n{output.decode()}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        os.close(main)
    text = _ESCAPES.sub("", output.decode(errors="replace")).replace("\r", "")
    return text.split("\n")


def test_every_banner_url_is_whole_on_a_line_of_its_own(project: Path) -> None:
    lines = in_terminal(project, "serve", "--agent", "demo", "--port", "0", until="Check the setup")
    # Searched for, not matched: the server's log shares the terminal and may precede it.
    serving = re.search(r"voicecli serving on (http://\S+)", "\n".join(lines))
    assert serving, lines
    base = serving.group(1)
    for provider in PROVIDERS:
        assert f"{base}/telephony/{provider}/inbound/demo" in lines, lines
        assert f"{base.replace('http', 'ws', 1)}/ws/{provider}/demo" in lines, lines
    tables = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert tables and all(len(line) <= WIDTH for line in tables), tables


async def test_the_calls_table_fits_80_columns_with_ids_and_numbers_whole(project: Path) -> None:
    async def record(store) -> list[tuple[str, str, str]]:
        made = []
        for n in range(3):
            call = await store.create(
                provider="exotel",
                agent="demo",
                direction="inbound",
                status="in-progress",
                from_number=f"+9198765432{n}0",
                to_number="+918041234567",
            )
            await store.finish(call.id, "completed", "caller hung up (the stream closed) " * 3)
            made.append((call.id, call.from_number, call.to_number))
        return made

    made = await in_store(project, record)
    lines = in_terminal(project, "calls")
    assert all(len(line) <= WIDTH for line in lines), [line for line in lines if len(line) > WIDTH]
    for call_id, from_number, to_number in made:
        [row] = [line for line in lines if call_id in line]
        assert from_number in row and to_number in row and "completed" in row
