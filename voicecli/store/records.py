"""Call records and transcripts, and `CallStore`: the small interface the server uses.

An implementation keeps records as the call goes so none is ever lost; `sqlite.py` holds
the one-instance implementation, and a PostgreSQL one can sit beside it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, get_args

CallStatus = Literal[
    "queued",
    "ringing",
    "in-progress",
    "completed",
    "busy",
    "no-answer",
    "failed",
    "canceled",
    "interrupted",
    "no-stream",
]
Direction = Literal["inbound", "outbound"]
Role = Literal["caller", "agent"]

CALL_STATUSES: frozenset[str] = frozenset(get_args(CallStatus))
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"completed", "busy", "no-answer", "failed", "canceled", "interrupted", "no-stream"}
)
# A live call only moves forward: a late "ringing" callback must not undo "in-progress".
PROGRESS_ORDER: dict[str, int] = {"queued": 0, "ringing": 1, "in-progress": 2}


def utcnow_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a 'Z'."""
    return format_iso(datetime.now(UTC))


def format_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return moment


def _seconds_between(start: str, end: str) -> float:
    # Wall clocks can step backwards; a negative duration would only mislead.
    return max(0.0, round((parse_iso(end) - parse_iso(start)).total_seconds(), 3))


_id_lock = threading.Lock()
_last_id: tuple[int, int] = (0, 0)


def new_call_id() -> str:
    """A short unique id that sorts by creation time: `call_` + 12 hex of ms + 8 hex of randomness."""
    global _last_id
    with _id_lock:
        millis = int(datetime.now(UTC).timestamp() * 1000)
        rand = uuid.uuid4().int & 0xFFFFFFFF
        last_millis, last_rand = _last_id
        if millis <= last_millis:
            # Same millisecond (or a clock step back): keep ids increasing, like a monotonic ULID.
            millis, rand = last_millis, last_rand + 1
            if rand > 0xFFFFFFFF:
                millis, rand = millis + 1, 0
        _last_id = (millis, rand)
    return f"call_{millis:012x}{rand:08x}"


_JSON_NAMES = {"from_number": "from", "to_number": "to"}


@dataclass(frozen=True)
class TranscriptEntry:
    """One utterance on a call."""

    role: Role
    text: str
    at: str


@dataclass(frozen=True)
class CallRecord:
    """One call as stored; field order matches the `calls` table's columns."""

    id: str
    provider: str
    agent: str
    direction: Direction
    from_number: str | None
    to_number: str | None
    provider_call_id: str | None
    status: CallStatus
    started_at: str
    ended_at: str | None
    duration_s: float | None
    end_reason: str | None
    # The server process that carries (or last carried) the call: `serve` instance id.
    instance: str | None = None

    def to_json(self, transcript: list[TranscriptEntry] | None = None) -> dict[str, Any]:
        """The API shape of the call, with its transcript when one is given."""
        data = {_JSON_NAMES.get(name, name): value for name, value in asdict(self).items()}
        if transcript is not None:
            data["transcript"] = [asdict(entry) for entry in transcript]
        return data


@dataclass(frozen=True)
class TranscriptSummary:
    """How far a call's conversation has got: utterances so far and the last one."""

    turns: int
    last_role: Role | None
    last_text: str | None


def apply_update(
    record: CallRecord,
    *,
    status: CallStatus | None = None,
    provider_call_id: str | None = None,
    from_number: str | None = None,
    to_number: str | None = None,
    end_reason: str | None = None,
    now: str | None = None,
) -> CallRecord:
    """The record after an update, under the rules every store shares (None leaves a field alone)."""
    if status is not None and status not in CALL_STATUSES:
        raise ValueError(f"unknown call status {status!r}")
    if record.status in TERMINAL_STATUSES:
        # First writer wins: an ended call keeps its status and end; only a missing reason is filled.
        if end_reason is not None and record.end_reason is None:
            return replace(record, end_reason=end_reason)
        return record
    fields = dict(provider_call_id=provider_call_id, from_number=from_number, to_number=to_number)
    changes: dict[str, Any] = {name: value for name, value in fields.items() if value is not None}
    if end_reason is not None:
        changes["end_reason"] = end_reason
    if status in TERMINAL_STATUSES:
        ended_at = now or utcnow_iso()
        changes.update(status=status, ended_at=ended_at, duration_s=_seconds_between(record.started_at, ended_at))
    elif status is not None and PROGRESS_ORDER[status] > PROGRESS_ORDER[record.status]:
        changes["status"] = status
    return replace(record, **changes) if changes else record


class CallStore(Protocol):
    """Where call records live; the server needs only these methods.

    `mark_interrupted` ends only the live calls of servers that are gone: every record names
    the instance carrying it, and the caller passes the instances still running.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(
        self,
        *,
        provider: str,
        agent: str,
        direction: Direction,
        from_number: str | None = None,
        to_number: str | None = None,
        provider_call_id: str | None = None,
        status: CallStatus = "ringing",
        call_id: str | None = None,
        instance: str | None = None,
    ) -> CallRecord: ...

    async def get(self, call_id: str) -> CallRecord | None: ...

    async def find_by_provider_call_id(self, provider: str, provider_call_id: str) -> CallRecord | None: ...

    async def update(
        self,
        call_id: str,
        *,
        status: CallStatus | None = None,
        provider_call_id: str | None = None,
        from_number: str | None = None,
        to_number: str | None = None,
        end_reason: str | None = None,
    ) -> CallRecord | None: ...

    async def finish(self, call_id: str, status: CallStatus, end_reason: str) -> CallRecord | None: ...

    async def add_transcript(self, call_id: str, role: Role, text: str, at: str | None = None) -> None: ...

    async def transcript(self, call_id: str) -> list[TranscriptEntry]: ...

    async def claim_stream(
        self, call_id: str, *, provider: str, agent: str, instance: str | None, provider_call_id: str | None
    ) -> CallRecord | None: ...

    async def first_use(self, provider: str, nonce: str, keep_s: float) -> bool: ...

    async def mark_interrupted(
        self, reason: str = "server stopped unexpectedly", live_instances: Collection[str] = ()
    ) -> int: ...

    async def transcript_summaries(self, call_ids: Sequence[str]) -> dict[str, TranscriptSummary]: ...

    # Last in the class so that `list[...]` above still names the builtin for type checkers.
    async def list(
        self,
        *,
        limit: int = 50,
        status: str | None = None,
        provider: str | None = None,
        agent: str | None = None,
        active_only: bool = False,
    ) -> list[CallRecord]: ...
