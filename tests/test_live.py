"""The live call table: its pure rendering, and `voicecli calls --live` against calls in flight."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import signal
import struct
import sys
import termios
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import aiohttp
from rich.console import Console
from typer.testing import CliRunner

from tests.wire import WireCall
from voicecli.cli import app
from voicecli.runtime import ServerInfo, record_server
from voicecli.ui.render import calls_table, live_view

STARTED = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def text_of(renderable: object) -> str:
    console = Console(file=StringIO(), width=300, no_color=True)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def call(call_id: str, provider: str, **extra: object) -> dict:
    return {
        "id": call_id,
        "provider": provider,
        "agent": "demo",
        "direction": "inbound",
        "from": "+15551230000",
        "to": "+15559870000",
        "status": "in-progress",
        "started_at": STARTED.isoformat().replace("+00:00", "Z"),
        "ended_at": None,
        "duration_s": None,
        "turns": 0,
        "last_role": None,
        "last_text": None,
        **extra,
    }


STATUS = {
    "agents": ["demo"],
    "providers": {
        "twilio": {"active": 2, "limit": 10},
        "exotel": {"active": 1, "limit": 3},
        "vobiz": {"active": 0, "limit": 10},
    },
    "draining": False,
}


def test_live_view_ticks_durations_and_shows_counts_and_the_last_thing_said() -> None:
    calls = [
        call(
            "call_a",
            "twilio",
            turns=3,
            last_role="caller",
            last_text="what is your pricing",
            instance="db1-77-a1b2c3/w2",
        ),
        call("call_b", "exotel"),
    ]
    first = text_of(live_view(calls, STATUS, STARTED + timedelta(seconds=65)))
    later = text_of(live_view(calls, STATUS, STARTED + timedelta(seconds=67)))
    assert "twilio 2/10" in first and "exotel 1/3" in first and "vobiz 0/10" in first
    row = next(line for line in first.splitlines() if "call_a" in line)
    assert "1:05" in row and "3" in row and "caller: what is your pricing" in row
    assert "+15551230000" in row and "+15559870000" in row and "inbound" in row
    assert "db1:77/w2" in row  # which instance and worker carries it
    assert "1:07" in next(line for line in later.splitlines() if "call_a" in line)  # it ticks
    assert "Active calls (2)" in first


def test_live_view_says_when_the_server_is_unreachable_and_keeps_the_rows() -> None:
    out = text_of(live_view([call("call_a", "twilio")], STATUS, STARTED, "server unreachable: retrying"))
    assert "server unreachable" in out and "call_a" in out and "twilio 2/10" not in out


def test_a_long_last_utterance_is_shortened_but_ids_and_numbers_never_are() -> None:
    long = "word " * 40
    out = text_of(live_view([call("call_" + "f" * 20, "vobiz", last_role="agent", last_text=long)], STATUS, STARTED))
    assert "call_" + "f" * 20 in out and "\u2026" in out and long not in out


def test_ended_calls_keep_their_recorded_duration() -> None:
    ended = call("call_x", "twilio", status="completed", ended_at="2026-01-01T12:00:09Z", duration_s=9.2)
    out = text_of(calls_table([ended], now=STARTED + timedelta(hours=1)))
    assert "0:09" in out


runner = CliRunner()


async def live_snapshot(server_url: str) -> str:
    """`voicecli calls --live` with stdout not a terminal: one table, then exit 0."""
    result = await asyncio.to_thread(runner.invoke, app, ["calls", "--live", "--server", server_url])
    assert result.exit_code == 0, result.output
    return result.output


def duration_of(out: str, call_id: str) -> int:
    row = next(line for line in out.splitlines() if call_id in line)
    minutes, seconds = re.search(r"\b(\d+):(\d\d)\b", row).groups()  # type: ignore[union-attr]
    return int(minutes) * 60 + int(seconds)


async def wait_until(predicate, seconds: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_calls_live_follows_three_calls_on_two_providers(start_server, project: Path) -> None:
    server = await start_server(TWILIO_MAX_CONCURRENT="5", EXOTEL_MAX_CONCURRENT="4")
    store = server.state.store
    async with aiohttp.ClientSession() as http:
        sockets = []
        for provider in ("twilio", "twilio", "exotel"):
            wire = WireCall(server.state.settings, server.url, provider)
            await wire.ring(http)
            ws = await wire.connect(http)
            await wire.start(ws)
            sockets.append(ws)

        async def three_live() -> bool:
            calls = await store.list(active_only=True)
            return len(calls) == 3 and all(c.status == "in-progress" for c in calls)

        await wait_until(three_live)
        ids = {c.provider: [] for c in await store.list()}
        for record in reversed(await store.list()):
            ids[record.provider].append(record.id)

        first = await live_snapshot(server.url)
        assert "twilio 2/5" in first and "exotel 1/4" in first and "vobiz 0/10" in first
        assert all(i in first for i in ids["twilio"] + ids["exotel"])
        assert "Active calls (3)" in first
        await asyncio.sleep(1.2)
        second = await live_snapshot(server.url)
        assert duration_of(second, ids["exotel"][0]) > duration_of(first, ids["exotel"][0])  # ticking

        # The greeting reaches the transcript: the row shows turns and what was said.
        async def greeted() -> bool:
            return bool(await store.transcript(ids["exotel"][0]))

        await wait_until(greeted, 30)
        said = await live_snapshot(server.url)
        row = next(line for line in said.splitlines() if ids["exotel"][0] in line)
        assert "agent: Hello! This is the voicecli demo line" in row

        # The caller on the exotel line hangs up: its row leaves and the count drops.
        await sockets[2].close()

        async def exotel_ended() -> bool:
            record = await store.get(ids["exotel"][0])
            return record is not None and record.ended_at is not None and server.state.limiter.in_use("exotel") == 0

        await wait_until(exotel_ended)
        after = await live_snapshot(server.url)
        assert ids["exotel"][0] not in after and "exotel 0/4" in after and "twilio 2/5" in after
        assert "Active calls (2)" in after
        for ws in sockets[:2]:
            await ws.close()


async def test_calls_live_off_a_terminal_reports_an_unreachable_server(project: Path) -> None:
    result = await asyncio.to_thread(runner.invoke, app, ["calls", "--live", "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "no voicecli server answers at http://127.0.0.1:9" in result.output


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A child process on a pseudo-terminal, its output collected as it comes."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        # A wide window, so rich never cuts the ids the test looks for.
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        self.output = bytearray()
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        try:
            self.output.extend(os.read(self.master, 65536))
        except OSError:  # the child has gone: EIO on Linux
            asyncio.get_running_loop().remove_reader(self.master)

    @property
    def text(self) -> str:
        """What was shown, without colours and cursor moves."""
        return ANSI.sub("", self.output.decode(errors="replace"))

    async def wait_for(self, text: str, after: int = 0, seconds: float = 20.0) -> int:
        """Wait until `text` shows up past offset `after`; return where it ends."""
        deadline = asyncio.get_running_loop().time() + seconds
        while (found := self.text.find(text, after)) < 0:
            assert asyncio.get_running_loop().time() < deadline, f"{text!r} not shown:\n{self.text[-2000:]}"
            await asyncio.sleep(0.05)
        return found + len(text)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)


async def test_calls_live_on_a_terminal_survives_a_restart_and_leaves_on_ctrl_c(project: Path, start_server) -> None:
    first = await start_server()
    record_server(project / ".voicecli", ServerInfo(first.url, os.getpid(), ["demo"]))
    term = Terminal()
    env = {"PATH": "/usr/bin:/bin", "TERM": "xterm-256color", "LANG": "C.UTF-8"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicecli", "calls", "--live",
        cwd=project, stdin=term.slave, stdout=term.slave, stderr=term.slave, env=env,
    )  # fmt: skip
    os.close(term.slave)
    try:
        seen = await term.wait_for("twilio 0/10")
        await first.server.close()  # the server stops...
        seen = await term.wait_for("server unreachable", seen)
        second = await start_server()  # ...and comes back on another port
        record_server(project / ".voicecli", ServerInfo(second.url, os.getpid(), ["demo"]))
        record = await second.state.store.create(
            provider="vobiz", agent="demo", direction="inbound", from_number="+919812345678", status="in-progress"
        )
        seen = await term.wait_for(record.id, seen)
        await term.wait_for("vobiz 0/10", seen)
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert "Traceback" not in term.text and "KeyboardInterrupt" not in term.text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        term.close()


async def test_one_shot_calls_and_calls_show_use_the_same_rendering(start_server) -> None:
    server = await start_server()
    store = server.state.store
    live = await store.create(provider="exotel", agent="demo", direction="inbound", status="in-progress")
    await store.add_transcript(live.id, "agent", "Hello! This is the voicecli demo line.")
    await store.add_transcript(live.id, "caller", "pricing")
    listed = await asyncio.to_thread(runner.invoke, app, ["calls", "--server", server.url])
    assert listed.exit_code == 0, listed.output
    assert re.search(r"0:0\d", next(line for line in listed.output.splitlines() if live.id in line))  # ticking
    as_json = await asyncio.to_thread(runner.invoke, app, ["calls", "--json", "--server", server.url])
    [row] = json.loads(as_json.output)
    assert (row["turns"], row["last_role"], row["last_text"]) == (2, "caller", "pricing")
    shown = await asyncio.to_thread(runner.invoke, app, ["calls", "show", live.id, "--server", server.url])
    assert shown.exit_code == 0 and "caller: pricing" in shown.output and live.id in shown.output
