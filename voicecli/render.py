"""Pure rendering of call records: shared by `calls`, `calls show` and `calls --live`."""

from __future__ import annotations

from collections.abc import Sequence
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
}


def _duration(call: dict[str, Any]) -> str:
    seconds = call.get("duration_s")
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def calls_table(calls: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    """One row per call; cells fold rather than cut, so ids and numbers stay whole."""
    table = Table(title=title, title_justify="left")
    for column in ("id", "provider", "agent", "dir", "from", "to", "status", "started", "dur", "end reason"):
        table.add_column(column, overflow="fold")
    for call in calls:
        status = call.get("status", "")
        table.add_row(
            call.get("id", ""),
            call.get("provider", ""),
            call.get("agent", ""),
            call.get("direction", ""),
            call.get("from") or "",
            call.get("to") or "",
            Text(status, style=STATUS_STYLE.get(status, "")),
            (call.get("started_at") or "")[:19].replace("T", " "),
            _duration(call),
            call.get("end_reason") or "",
        )
    return table


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
    ):
        value = call.get(key)
        facts.add_row(key, "" if value is None else str(value))
    lines = [
        Text.assemble((f"{t['role']:>6}: ", "bold cyan" if t["role"] == "agent" else "bold"), t["text"])
        for t in call.get("transcript", [])
    ]
    return Group(facts, Text(""), Text("transcript", style="bold underline"), *(lines or [Text("(empty)")]))
