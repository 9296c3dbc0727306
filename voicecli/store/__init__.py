"""The store every server process shares: the interface, its records, and its two backends.

`store_for(settings)` picks the backend: PostgreSQL when `database_url` is set (several
instances, any number of machines), else SQLite in `.voicecli/calls.db` (every worker of
one machine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voicecli.runtime import DB_FILE
from voicecli.store.migrations import MIGRATIONS, Migration
from voicecli.store.records import (
    ANSWERED_BY,
    CALL_STATUSES,
    EVENT_KEEP_S,
    LEASE_S,
    RENEW_S,
    TERMINAL_STATUSES,
    VOICEMAIL_MODES,
    AnsweredBy,
    CallRecord,
    CallStatus,
    CallStore,
    Direction,
    DuplicateCall,
    Event,
    Holder,
    LeaseConnection,
    Role,
    SlotCount,
    StoreUnavailable,
    TranscriptEntry,
    TranscriptSummary,
    VoicemailMode,
    new_call_id,
    utcnow_iso,
)
from voicecli.store.sqlite import SQLiteCallStore

if TYPE_CHECKING:
    from voicecli.settings import Settings


def store_for(settings: Settings) -> CallStore:
    """The store these settings name (not yet opened)."""
    if settings.database_url:
        from voicecli.store.postgres import PostgresCallStore  # asyncpg: only when asked for

        return PostgresCallStore(settings.database_url)
    return SQLiteCallStore(settings.state_dir / DB_FILE)


__all__ = [
    "ANSWERED_BY",
    "CALL_STATUSES",
    "DB_FILE",
    "EVENT_KEEP_S",
    "LEASE_S",
    "MIGRATIONS",
    "RENEW_S",
    "TERMINAL_STATUSES",
    "VOICEMAIL_MODES",
    "AnsweredBy",
    "CallRecord",
    "CallStatus",
    "CallStore",
    "Direction",
    "DuplicateCall",
    "Event",
    "Holder",
    "LeaseConnection",
    "Migration",
    "Role",
    "SQLiteCallStore",
    "SlotCount",
    "StoreUnavailable",
    "TranscriptEntry",
    "TranscriptSummary",
    "VoicemailMode",
    "new_call_id",
    "store_for",
    "utcnow_iso",
]
