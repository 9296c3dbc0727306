"""What the API and the CLI show of calls, read from a store: one shape for both."""

from __future__ import annotations

from typing import Any

from voicecli.store.records import CallStore


async def call_rows(
    store: CallStore,
    *,
    limit: int = 50,
    status: str | None = None,
    provider: str | None = None,
    agent: str | None = None,
    active_only: bool = False,
) -> list[dict[str, Any]]:
    """Recent calls, newest first, each with its turns so far and the last thing said."""
    records = await store.list(limit=limit, status=status, provider=provider, agent=agent, active_only=active_only)
    summaries = await store.transcript_summaries([record.id for record in records])
    rows = []
    for record in records:
        # Added fields only (the record's own keys are unchanged): what the live table shows.
        summary = summaries.get(record.id)
        row = record.to_json()
        row["turns"] = summary.turns if summary else 0
        row["last_role"] = summary.last_role if summary else None
        row["last_text"] = summary.last_text if summary else None
        rows.append(row)
    return rows


async def call_detail(store: CallStore, call_id: str) -> dict[str, Any] | None:
    """One call with its transcript; None when there is no such call."""
    record = await store.get(call_id)
    return record.to_json(await store.transcript(record.id)) if record else None
