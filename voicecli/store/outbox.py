"""Post-call webhook events as the store keeps them: which record changes emit one, the body
each carries, and a delivery's row. Both backends use these, so an event is the same
whichever database wrote it; `voicecli.server.webhooks` sends them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from voicecli.store.records import TERMINAL_STATUSES, CallRecord, TranscriptEntry

EventName = Literal["call.started", "call.ended"]
DeliveryStatus = Literal["pending", "delivered", "failed"]
# What one try came to: sent, to be tried again later, or given up.
Outcome = Literal["delivered", "retry", "failed"]
# A claimed delivery is another process's to send for this long (a try takes at most 10 s).
CLAIM_S = 30.0


def new_delivery_id() -> str:
    return "whd_" + secrets.token_hex(10)


def transition_event(before: str | None, after: CallRecord) -> EventName | None:
    """The event a record change emits: `call.started` when its stream starts (the record
    becomes in-progress), `call.ended` when it is finished; each at most once per call."""
    if after.status in TERMINAL_STATUSES and before not in TERMINAL_STATUSES:
        return "call.ended"
    if after.status == "in-progress" and before in (None, "queued", "ringing"):
        return "call.started"
    return None


def event_body(
    event: EventName, delivery_id: str, record: CallRecord, transcript: Sequence[TranscriptEntry] | None, at: str
) -> str:
    """The JSON a receiver gets: the event, its delivery id, and the whole record (with the
    transcript once the call has ended). Fixed when written, so every retry is identical."""
    call = record.to_json(list(transcript) if transcript is not None else None)
    # Which server process carried it, and where on its disk the recording is, are voicecli's
    # own business: a receiver fetches a recording by call id (GET /api/calls/{id}/recording).
    call.pop("instance", None)
    call.pop("recording_path", None)
    return json.dumps({"event": event, "delivery_id": delivery_id, "created_at": at, "call": call})


@dataclass(frozen=True)
class Delivery:
    """One event's delivery: where it goes, what it carries, how far it got."""

    id: str
    call_id: str
    event: str
    url: str
    body: str
    status: DeliveryStatus
    tries: int
    last_error: str | None
    created_at: float
    retry_from: float  # when the retry window began (the event, or `voicecli webhooks retry`)
    next_try_at: float
    delivered_at: float | None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("body")
        return data


DELIVERY_COLUMNS = (
    "id, call_id, event, url, body, status, tries, last_error, created_at, retry_from, next_try_at, delivered_at"
)
