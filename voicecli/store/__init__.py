"""Call records: the records and the store interface, and the SQLite store behind it."""

from voicecli.store.records import (
    CALL_STATUSES,
    TERMINAL_STATUSES,
    CallRecord,
    CallStatus,
    CallStore,
    Direction,
    Role,
    TranscriptEntry,
    TranscriptSummary,
    new_call_id,
    utcnow_iso,
)
from voicecli.store.sqlite import MIGRATIONS, SQLiteCallStore

__all__ = [
    "CALL_STATUSES",
    "MIGRATIONS",
    "TERMINAL_STATUSES",
    "CallRecord",
    "CallStatus",
    "CallStore",
    "Direction",
    "Role",
    "SQLiteCallStore",
    "TranscriptEntry",
    "TranscriptSummary",
    "new_call_id",
    "utcnow_iso",
]
