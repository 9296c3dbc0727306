"""Call records and transcripts, and `CallStore`: the small interface the server uses.

An implementation keeps records as the call goes so none is ever lost; `sqlite.py` and
`postgres.py` hold the two backends.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from voicecli.errors import VoicecliError

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
    "transferred",  # handed to a person by the agent's transfer_call
]
Direction = Literal["inbound", "outbound"]
Role = Literal["caller", "agent", "tool"]  # tool: an HTTP tool's call and result
# Who answered an outbound call that asked for voicemail detection.
AnsweredBy = Literal["human", "machine", "unknown"]
ANSWERED_BY: frozenset[str] = frozenset(get_args(AnsweredBy))
# What an outbound call does on a machine: hang up, leave the agent's message, or not ask.
VoicemailMode = Literal["hangup", "message", "off"]
VOICEMAIL_MODES: tuple[VoicemailMode, ...] = get_args(VoicemailMode)

CALL_STATUSES: frozenset[str] = frozenset(get_args(CallStatus))
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"completed", "busy", "no-answer", "failed", "canceled", "interrupted", "no-stream", "transferred"}
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
    # An agent reply's: from the caller's last speech to its first audio reaching the caller.
    latency_ms: int | None = None


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
    # The call's WAV (call/recording.py) on the disk of the instance named above; its length
    # once closed (or repaired at start-up); and what ended it early, when something did.
    recording_path: str | None = None
    recording_s: float | None = None
    recording_error: str | None = None
    # Outbound calls with voicemail detection: who answered, once known.
    answered_by: AnsweredBy | None = None
    # What the dial asked for on a machine (None: inbound, or a record from before m006).
    voicemail: VoicemailMode | None = None

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


def new_record(
    *,
    provider: str,
    agent: str,
    direction: Direction,
    from_number: str | None,
    to_number: str | None,
    provider_call_id: str | None,
    status: CallStatus,
    call_id: str | None,
    instance: str | None,
    voicemail: VoicemailMode | None = None,
) -> CallRecord:
    """A call as `create` records it, validated (the same in every store)."""
    if direction not in ("inbound", "outbound"):
        raise ValueError(f"unknown call direction {direction!r}")
    if voicemail is not None and voicemail not in VOICEMAIL_MODES:
        raise ValueError(f"unknown voicemail mode {voicemail!r}")
    if status not in CALL_STATUSES:
        raise ValueError(f"unknown call status {status!r}")
    now = utcnow_iso()
    ended = status in TERMINAL_STATUSES  # a dial the provider refused ended as it began
    return CallRecord(
        id=call_id or new_call_id(),
        provider=provider,
        agent=agent,
        direction=direction,
        from_number=from_number,
        to_number=to_number,
        provider_call_id=provider_call_id,
        status=status,
        started_at=now,
        ended_at=now if ended else None,
        duration_s=0.0 if ended else None,
        end_reason=None,
        instance=instance,
        voicemail=voicemail,
    )


def check_ending(status: str) -> None:
    """`finish` takes only a status that ends a call."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"{status!r} does not end a call")


def transcript_stamp(role: str, at: str | None) -> str:
    """An utterance's role checked and its time normalised (now when not given)."""
    if role not in get_args(Role):
        raise ValueError(f"unknown transcript role {role!r}")
    return format_iso(parse_iso(at)) if at is not None else utcnow_iso()


def apply_update(
    record: CallRecord,
    *,
    status: CallStatus | None = None,
    provider_call_id: str | None = None,
    from_number: str | None = None,
    to_number: str | None = None,
    end_reason: str | None = None,
    answered_by: AnsweredBy | None = None,
    now: str | None = None,
) -> CallRecord:
    """The record after an update, under the rules every store shares (None leaves a field alone)."""
    if status is not None and status not in CALL_STATUSES:
        raise ValueError(f"unknown call status {status!r}")
    if answered_by is not None and answered_by not in ANSWERED_BY:
        raise ValueError(f"unknown answered_by {answered_by!r}")
    if record.status in TERMINAL_STATUSES:
        # First writer wins: an ended call keeps its status and end; only a missing reason, or
        # a verdict that came after the end (a provider's late callback), is filled.
        filled: dict[str, Any] = {}
        if end_reason is not None and record.end_reason is None:
            filled["end_reason"] = end_reason
        if answered_by is not None and record.answered_by is None:
            filled["answered_by"] = answered_by
        return replace(record, **filled) if filled else record
    fields = dict(
        provider_call_id=provider_call_id, from_number=from_number, to_number=to_number, answered_by=answered_by
    )
    changes: dict[str, Any] = {name: value for name, value in fields.items() if value is not None}
    if end_reason is not None:
        changes["end_reason"] = end_reason
    if status in TERMINAL_STATUSES:
        ended_at = now or utcnow_iso()
        changes.update(status=status, ended_at=ended_at, duration_s=_seconds_between(record.started_at, ended_at))
    elif status is not None and PROGRESS_ORDER[status] > PROGRESS_ORDER[record.status]:
        changes["status"] = status
    return replace(record, **changes) if changes else record


# Leases: a holder renews every RENEW_S; one not renewed for LEASE_S is dead, by the database's clock.
LEASE_S = 10.0
RENEW_S = 2.0
# Events are read within seconds; older ones are dropped by `maintain`.
EVENT_KEEP_S = 300.0


@dataclass(frozen=True)
class Holder:
    """One serving process (a worker of an instance) that may hold slots and carry calls."""

    id: str  # what call records name in `instance`: the instance id, plus /wN for a worker
    instance: str  # the `voicecli serve` run it belongs to
    host: str
    pid: int
    expired: bool = False  # as read by `holders()`: its lease ran out (the database's clock)


@dataclass(frozen=True)
class SlotCount:
    """A provider's slots held by live holders, cluster-wide: `held` includes `reserved` (dials)."""

    held: int = 0
    reserved: int = 0


@dataclass(frozen=True)
class Event:
    """A message from one process to another (target None: every process)."""

    id: int
    kind: str
    target: str | None
    call_id: str | None
    data: dict[str, Any]


class LeaseConnection(Protocol):
    """A connection of its own for renewing a lease from a thread with its own event loop."""

    async def renew(self, holder: str) -> bool:
        """Push the lease LEASE_S ahead (database clock); False when the holder row is gone."""
        ...

    async def close(self) -> None: ...


if TYPE_CHECKING:
    from voicecli.store.outbox import Delivery, Outcome


class CallStore(Protocol):
    """What every server process shares: records, slots, leases, events, settings, secrets.

    Two backends keep it: SQLite (`sqlite.py`, every worker on one machine) and PostgreSQL
    (`postgres.py`, any number of instances). `tests/test_store.py` runs on both.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def location(self) -> str:
        """Where the store is, for messages: a path, or a URL without its password."""
        ...

    @property
    def unwritable(self) -> str | None:
        """Why the last write failed, while the store refuses writes (None when it takes them)."""
        ...

    async def probe(self) -> bool:
        """Try one write that changes nothing (writing any kept writes first); whether it took."""
        ...

    # --- call records and transcripts ----------------------------------------------------
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
        webhook_url: str | None = None,
        voicemail: VoicemailMode | None = None,
    ) -> CallRecord:
        """Record a new call; raises `DuplicateCall` if `call_id` is already taken.

        `webhook_url`: where the call's events go. Every later change that starts or ends the
        call writes its event to the outbox in the same transaction (outbox.py).
        """
        ...

    async def get(self, call_id: str) -> CallRecord | None: ...

    async def find_by_provider_call_id(self, provider: str, provider_call_id: str) -> CallRecord | None:
        """The newest call the provider knows by this id, if any."""
        ...

    async def update(
        self,
        call_id: str,
        *,
        status: CallStatus | None = None,
        provider_call_id: str | None = None,
        from_number: str | None = None,
        to_number: str | None = None,
        end_reason: str | None = None,
        answered_by: AnsweredBy | None = None,
    ) -> CallRecord | None:
        """Change a call under `apply_update`'s rules, atomically; None if there is no such call."""
        ...

    async def finish(self, call_id: str, status: CallStatus, end_reason: str) -> CallRecord | None: ...

    async def add_transcript(
        self, call_id: str, role: Role, text: str, at: str | None = None, latency_ms: int | None = None
    ) -> None: ...

    async def set_recording(
        self, call_id: str, *, path: str | None = None, seconds: float | None = None, error: str | None = None
    ) -> None:
        """Note a call's recording: its file when opened, its length and any error when closed
        (None leaves a field alone; the call's status is not touched, ended or not)."""
        ...

    async def unfinished_recordings(self) -> list[CallRecord]:
        """Ended calls whose recording was never closed (their server was killed): to repair."""
        ...

    async def transcript(self, call_id: str) -> list[TranscriptEntry]: ...

    async def claim_stream(
        self, call_id: str, *, provider: str, agent: str, instance: str | None, provider_call_id: str | None
    ) -> CallRecord | None:
        """Move a call waiting for its stream (queued/ringing) to in-progress, once, naming
        `instance` as its carrier; None if it is not this provider's and agent's, or not waiting."""
        ...

    async def first_use(self, provider: str, nonce: str, keep_s: float) -> bool:
        """Note a signature nonce; False when it was already seen within `keep_s` (a replay)."""
        ...

    async def transcript_summaries(self, call_ids: Sequence[str]) -> dict[str, TranscriptSummary]: ...

    # --- post-call webhooks: the outbox ---------------------------------------------------------
    async def claim_deliveries(self, holder: str, limit: int, claim_s: float = 30.0) -> list[Delivery]:
        """Up to `limit` pending deliveries that are due and nobody holds, now `holder`'s for
        `claim_s` (so with several processes each is sent by one at a time)."""
        ...

    async def record_attempt(
        self, delivery_id: str, holder: str, outcome: Outcome, error: str | None = None, retry_in_s: float = 0.0
    ) -> None:
        """What a try of a delivery `holder` claimed came to; `retry` makes it due in `retry_in_s`."""
        ...

    async def deliveries(self, limit: int = 50) -> list[Delivery]:
        """The newest deliveries, any status."""
        ...

    async def retry_delivery(self, delivery_id: str) -> bool:
        """Queue a failed delivery again, its retry window restarted; False if none failed by that id."""
        ...

    # --- holders and their leases ----------------------------------------------------------
    async def join(self, holder: Holder) -> None:
        """Register (or re-register) a holder with a fresh lease."""
        ...

    async def leave(self, holder: str) -> None:
        """A holder stops cleanly: its row and any slot it still holds go."""
        ...

    def lease_connection(self) -> LeaseConnection:
        """A new connection for `leases.LeaseKeeper`'s thread; opened on that thread's loop."""
        ...

    async def holders(self) -> list[Holder]:
        """Every registered holder, with `expired` by the database's clock."""
        ...

    async def reap(self, holders: Collection[str], reason: str) -> int:
        """Holders known dead (a worker that exited, a pid gone on this host): delete them and
        their slots, and end their live calls `interrupted`. How many calls were ended."""
        ...

    async def maintain(self, reason: str) -> int:
        """Reap every holder whose lease expired, end `interrupted` every live call whose carrier
        is no registered holder (a server killed before leases, or reaped), drop slots no holder
        holds and events older than EVENT_KEEP_S. How many calls were ended."""
        ...

    # --- slots: check and take in one transaction --------------------------------------------
    async def take_slot(
        self, provider: str, limit: int, holder: str, *, claim: str | None = None, reserve: str | None = None
    ) -> str | None:
        """A slot id, or None when the provider's live slots are at `limit`.

        `claim`: a call id whose dial reservation, if still there, is handed to `holder`
        (whatever the limit now); otherwise a new slot is taken if there is room.
        `reserve`: the new slot is a dial's reservation, named by that call id.
        Slots of expired holders do not count.
        """
        ...

    async def release_slot(self, slot: str) -> None:
        """Give a slot back; releasing one already gone does nothing."""
        ...

    async def release_reservation(self, call_id: str) -> bool:
        """Give back the dial reservation for `call_id` if no stream claimed it; whether one was."""
        ...

    async def slot_counts(self) -> dict[str, SlotCount]:
        """Live holders' slots per provider (providers with none are absent)."""
        ...

    # --- events between processes --------------------------------------------------------------
    async def publish(
        self, kind: str, *, target: str | None = None, call_id: str | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        """Tell one holder (or, with no target, every process) something; PostgreSQL wakes listeners."""
        ...

    async def last_event(self) -> int:
        """The newest event's id (0 when none): where a new reader starts."""
        ...

    async def events_after(self, after: int, holder: str) -> list[Event]:
        """Events newer than `after` meant for `holder` or for everyone, oldest first."""
        ...

    async def wait_for_events(self, within_s: float) -> None:
        """Return when an event may have arrived: at once on a PostgreSQL NOTIFY, else after `within_s`."""
        ...

    # --- settings and secrets every process shares ---------------------------------------------
    async def stored_settings(self) -> dict[str, Any]:
        """The settings layer kept in the store (what `config set` and the settings API wrote)."""
        ...

    async def change_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply changes (None removes a name) and publish a `settings` event, in one transaction;
        the layer after the change."""
        ...

    async def shared_secret(self, name: str, candidate: str) -> str:
        """The secret stored under `name`; `candidate` is stored first if there is none yet."""
        ...

    # Last in the class so that `list[...]` above still names the builtin for type checkers.
    async def list(
        self,
        *,
        limit: int = 50,
        status: str | None = None,
        provider: str | None = None,
        agent: str | None = None,
        active_only: bool = False,
        answered_by: str | None = None,
    ) -> list[CallRecord]:
        """Calls newest first, optionally filtered; `active_only` keeps calls not yet ended."""
        ...


class DuplicateCall(Exception):
    """`create` was given a call id that is already taken."""


class StoreUnavailable(VoicecliError):
    """The store cannot be written now: locked past its wait, read-only, full, or unreachable.

    The writes a call must not lose (transcript lines, a call's end, a slot given back) are
    kept instead and written, in order, once the store takes writes again; the rest raise this.
    """
