"""What the API and the CLI show of calls, read from a store: one shape for both."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voicecli.errors import VoicecliError
from voicecli.store.records import CallRecord, CallStore


async def call_rows(
    store: CallStore,
    *,
    limit: int = 50,
    status: str | None = None,
    provider: str | None = None,
    agent: str | None = None,
    active_only: bool = False,
    answered_by: str | None = None,
) -> list[dict[str, Any]]:
    """Recent calls, newest first, each with its turns so far and the last thing said."""
    records = await store.list(
        limit=limit, status=status, provider=provider, agent=agent, active_only=active_only, answered_by=answered_by
    )
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
    """One call with its transcript and its replies' latency; None when there is no such call."""
    record = await store.get(call_id)
    if record is None:
        return None
    transcript = await store.transcript(record.id)
    call = record.to_json(transcript)
    call["latency"] = latency_summary([t.latency_ms for t in transcript if t.latency_ms is not None])
    return call


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile of `values`, linearly interpolated between ranks (numpy's default)."""
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(latencies: Sequence[int]) -> dict[str, Any]:
    """A call's reply latencies: how many, and their p50 and p90 in ms (None without replies)."""
    if not latencies:
        return {"replies": 0, "p50_ms": None, "p90_ms": None}
    return {
        "replies": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5)),
        "p90_ms": round(percentile(latencies, 0.9)),
    }


def no_recording(record: CallRecord | None, call_id: str) -> str | None:
    """Why there is no recording to look for: no such call, or the call was not recorded
    (with the record's reason); None when the record names a file."""
    if record is None:
        return f"no call {call_id}"
    if not record.recording_path:
        why = f" ({record.recording_error})" if record.recording_error else ""
        return f"call {call_id} has no recording{why}"
    return None


async def recording_file(store: CallStore, call_id: str) -> Path:
    """Where a call's finished recording is on this machine, read from the store (no server to
    ask); VoicecliError saying why when there is none here."""
    record = await store.get(call_id)
    if (missing := no_recording(record, call_id)) is not None:
        raise VoicecliError(missing)
    assert record is not None and record.recording_path is not None
    path = Path(record.recording_path)
    if not await asyncio.to_thread(path.is_file):
        where = f" (instance {record.instance} carried the call)" if record.instance else ""
        raise VoicecliError(f"the recording of call {call_id} is not on this machine at {path}{where}")
    if record.recording_s is None:
        raise VoicecliError(
            f"call {call_id}'s recording is not finished: start `voicecli serve` to finish it if its server was killed"
        )
    return path
