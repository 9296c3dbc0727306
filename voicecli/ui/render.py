"""Pure rendering: call records for `calls`, `calls show` and `calls --live`; doctor's checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {
    "in-progress": "bold green",
    "ringing": "cyan",
    "queued": "cyan",
    "completed": "",
    "failed": "red",
    "interrupted": "red",
    "busy": "yellow",
    "no-answer": "yellow",
    "canceled": "yellow",
    "transferred": "cyan",
}


def _parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _duration(call: dict[str, Any], now: datetime | None = None) -> str:
    """m:ss; a call still going ticks against `now` (the record has no duration until it ends)."""
    seconds = call.get("duration_s")
    if seconds is None and now is not None and not call.get("ended_at"):
        started = _parse_time(call.get("started_at"))
        seconds = max(0.0, (now - started).total_seconds()) if started else None
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _last_said(call: dict[str, Any]) -> str:
    text = call.get("last_text") or ""
    if len(text) > LAST_SAID_MAX:
        text = text[: LAST_SAID_MAX - 1] + "…"
    return f"{call['last_role']}: {text}" if text and call.get("last_role") else text


def _status(call: dict[str, Any]) -> Text:
    status = call.get("status", "")
    return Text(status, style=STATUS_STYLE.get(status, ""))


# Every column either table can show: header -> cell. Both tables pick from here.
Cell = Callable[[dict[str, Any], datetime | None], str | Text]
COLUMNS: dict[str, Cell] = {
    "id": lambda c, now: c.get("id", ""),
    "provider": lambda c, now: c.get("provider", ""),
    "agent": lambda c, now: c.get("agent", ""),
    "dir": lambda c, now: c.get("direction", ""),
    "from": lambda c, now: c.get("from") or "",
    "to": lambda c, now: c.get("to") or "",
    "status": lambda c, now: _status(c),
    "started": lambda c, now: (c.get("started_at") or "")[:19].replace("T", " "),
    "dur": _duration,
    "turns": lambda c, now: str(c.get("turns", "")),
    "last said": lambda c, now: _last_said(c),
    "end reason": lambda c, now: c.get("end_reason") or "",
    "on": lambda c, now: carrier(c.get("instance")),
}
LIST_COLUMNS = ("id", "provider", "agent", "dir", "from", "to", "status", "started", "dur", "end reason")
LIVE_COLUMNS = ("id", "provider", "agent", "dir", "from", "to", "status", "dur", "on", "turns", "last said")
LAST_SAID_MAX = 60


def carrier(instance: str | None) -> str:
    """Where a call runs, short: `host-pid-nonce/w2` (an instance's worker) reads `host:pid/w2`."""
    if not instance:
        return ""
    base, slash, worker = instance.partition("/")
    host, dash, rest = base.rpartition("-")  # the nonce
    host, dash2, pid = host.rpartition("-")
    short = f"{host}:{pid}" if dash and dash2 and pid.isdigit() else base
    return short + slash + worker


# A narrow terminal drops columns in this order; id, from, to and status always show, whole.
DROP_FIRST = ("dir", "on", "provider", "agent", "started", "turns", "dur", "end reason", "last said")
FREE_TEXT = frozenset({"end reason", "last said"})  # these fold onto more lines instead
FREE_TEXT_MIN = 12


def fitting_columns(columns: Sequence[str], natural: dict[str, int], width: int | None) -> list[str]:
    """`columns` less the fewest lower-priority ones for a table to fit `width` (None: any)."""

    def needed(kept: Sequence[str]) -> int:  # rich's default box: a border, padding each side
        return 1 + sum(3 + (min(natural[c], FREE_TEXT_MIN) if c in FREE_TEXT else natural[c]) for c in kept)

    kept = list(columns)
    for column in DROP_FIRST:
        if width is None or needed(kept) <= width:
            break
        if column in kept:
            kept.remove(column)
    return kept


def _cell_len(cell: str | Text) -> int:
    return (Text(cell) if isinstance(cell, str) else cell).cell_len


def calls_table(
    calls: Sequence[dict[str, Any]],
    title: str | None = None,
    *,
    columns: Sequence[str] = LIST_COLUMNS,
    now: datetime | None = None,
    width: int | None = None,
) -> Table:
    """One row per call. Ids, numbers and statuses are never cut or folded: to fit `width`
    (a terminal's), lower-priority columns are left out and free text folds.

    With `now`, calls still going show their duration so far.
    """
    cells = [{column: COLUMNS[column](call, now) for column in columns} for call in calls]
    natural = {c: max([len(c), *(_cell_len(row[c]) for row in cells)]) for c in columns}
    shown = fitting_columns(columns, natural, width)
    table = Table(title=title, title_justify="left")
    for column in shown:
        if column in FREE_TEXT:
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, no_wrap=True, min_width=natural[column])
    for row in cells:
        table.add_row(*(row[column] for column in shown))
    return table


def providers_line(status: dict[str, Any]) -> Text:
    """Each provider's active calls against its limit, from GET /api/status."""
    line = Text()
    for name, numbers in status.get("providers", {}).items():
        active, limit = numbers.get("active", 0), numbers.get("limit", 0)
        style = "bold red" if active >= limit else "bold green" if active else ""
        if line:
            line.append("   ")
        line.append(f"{name} ", style="bold")
        line.append(f"{active}/{limit}", style=style)
    if status.get("draining"):
        line.append("   draining: no new calls", style="yellow")
    return line


def live_view(
    calls: Sequence[dict[str, Any]],
    status: dict[str, Any] | None,
    now: datetime,
    problem: str | None = None,
    width: int | None = None,
) -> Group:
    """The `calls --live` screen: per-provider counts, then the calls in progress.

    `problem` (the server is unreachable) replaces the counts; the last rows seen stay.
    """
    header = Text(problem, style="bold red") if problem else providers_line(status or {})
    when = now.astimezone().strftime("%H:%M:%S")
    table = calls_table(calls, f"Active calls ({len(calls)}) at {when}", columns=LIVE_COLUMNS, now=now, width=width)
    return Group(header, table)


def call_detail(call: dict[str, Any]) -> Group:
    """A call's record and its transcript."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    for key in (
        "id",
        "provider",
        "agent",
        "direction",
        "from",
        "to",
        "provider_call_id",
        "status",
        "started_at",
        "ended_at",
        "duration_s",
        "end_reason",
        "recording_path",
        "recording_s",
        "recording_error",
        "answered_by",
    ):
        value = call.get(key)
        if value is None and (key == "answered_by" or key.startswith("recording")):
            continue  # a call without voicemail detection, or not recorded
        facts.add_row(key, "" if value is None else str(value))
    latency = call.get("latency") or {}
    if replies := latency.get("replies"):
        counted = f"{replies} repl{'y' if replies == 1 else 'ies'}"
        facts.add_row("latency", f"p50 {latency['p50_ms']} ms, p90 {latency['p90_ms']} ms ({counted})")
    lines = [
        Text.assemble(
            (f"{t['role']:>6}: ", "bold cyan" if t["role"] == "agent" else "bold"),
            t["text"],
            (f"  [{t['latency_ms']} ms]" if t.get("latency_ms") is not None else "", "dim"),
        )
        for t in call.get("transcript", [])
    ]
    return Group(facts, Text(""), Text("transcript", style="bold underline"), *(lines or [Text("(empty)")]))


CHECK_STYLE = {"ok": "bold green", "warn": "bold yellow", "fail": "bold red", "skip": "dim"}


def checks_table(checks: Sequence[Any]) -> Table:
    """`voicecli doctor`'s result: one row per check, with what is wrong and the fix."""
    table = Table(title="voicecli doctor", title_justify="left")
    for column in ("check", "result", "what is wrong / detail", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(check.name, Text(check.status, style=CHECK_STYLE.get(check.status, "")), check.problem, check.fix)
    return table
