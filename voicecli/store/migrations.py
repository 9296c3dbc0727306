"""The store's schema: one named, ordered list of migrations, with the SQL for each backend.

Each is applied once, in order, and recorded by name in `_migrations` (as simonw/llm does);
the names are those the first SQLite-only releases recorded, so their databases open as is.
Times the database compares (leases, nonces, events) are Unix seconds by the database's
own clock, so instances on machines whose clocks differ still agree on who is alive.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_CALLS = """CREATE TABLE calls (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    agent TEXT NOT NULL,
    direction TEXT NOT NULL,
    from_number TEXT,
    to_number TEXT,
    provider_call_id TEXT,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    duration_s {real},
    end_reason TEXT
)"""
# The integer key keeps utterances in the order they were written.
_TRANSCRIPT = """CREATE TABLE transcript (
    id {serial_key},
    call_id TEXT NOT NULL REFERENCES calls(id),
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    at TEXT NOT NULL
)"""
_INDEXES = (
    "CREATE INDEX calls_provider_call_id ON calls(provider, provider_call_id)",
    "CREATE INDEX calls_started_at ON calls(started_at, id)",
    "CREATE INDEX calls_status ON calls(status)",
    "CREATE INDEX transcript_call_id ON transcript(call_id, id)",
)
_NONCES = """CREATE TABLE nonces (
    provider TEXT NOT NULL,
    nonce TEXT NOT NULL,
    seen_at {real} NOT NULL,
    PRIMARY KEY (provider, nonce)
)"""

# m003: what every worker and instance must agree on.
# holders: one row per serving process (a worker of an instance), alive while its lease
# (expires_at) is in the future; slots: each held place under a provider's limit, a dial's
# reservation (reserved_for = its call id) until its stream claims it; events: what one
# process tells another (target NULL: every process); settings and secrets: shared values.
_HOLDERS = """CREATE TABLE holders (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at {real} NOT NULL,
    expires_at {real} NOT NULL
)"""
_SLOTS = """CREATE TABLE slots (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    holder TEXT NOT NULL,
    reserved_for TEXT UNIQUE,
    taken_at {real} NOT NULL
)"""
_EVENTS = """CREATE TABLE events (
    id {serial_key},
    kind TEXT NOT NULL,
    target TEXT,
    call_id TEXT,
    data TEXT NOT NULL,
    created_at {real} NOT NULL
)"""
_SETTINGS = "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL, changed_at {real} NOT NULL)"
_SECRETS = "CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
_SHARED_INDEXES = (
    "CREATE INDEX slots_provider ON slots(provider, holder)",
    "CREATE INDEX slots_holder ON slots(holder)",
    "CREATE INDEX events_created_at ON events(created_at)",
    "CREATE INDEX calls_instance ON calls(instance, status)",
)

# m004: a slot taken in one round trip (PostgreSQL only; SQLite's take is already in-process).
# The same steps as the take before it, in one statement's implicit transaction: queue on the
# provider's advisory lock (the key the earlier take used, 0x736C6F74 = "slot" with
# hashtext(provider), so instances from before and after this migration still exclude each
# other), hand over a claimed reservation, else count live holders' slots and insert if there
# is room. VOLATILE (the default) on purpose: each statement inside takes a fresh snapshot, so
# the count sees every slot committed by the taker that held the lock before; a STABLE
# function would count with the snapshot from before the lock and over-admit. The slot id
# comes from the caller (uuid4 hex, as before; gen_random_uuid needs PostgreSQL 13).
_TAKE_SLOT = """CREATE FUNCTION voicecli_take_slot(
    p_provider TEXT, p_limit INTEGER, p_holder TEXT, p_claim TEXT, p_reserve TEXT, p_slot TEXT
) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    claimed TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock(1936486260, hashtext(p_provider));
    IF p_claim IS NOT NULL THEN
        UPDATE slots SET holder = p_holder, reserved_for = NULL
            WHERE reserved_for = p_claim AND provider = p_provider RETURNING id INTO claimed;
        IF claimed IS NOT NULL THEN
            RETURN claimed;
        END IF;
    END IF;
    IF (SELECT count(*) FROM slots s JOIN holders h ON h.id = s.holder
        WHERE s.provider = p_provider
          AND h.expires_at > extract(epoch from clock_timestamp())::double precision) >= p_limit THEN
        RETURN NULL;
    END IF;
    INSERT INTO slots (id, provider, holder, reserved_for, taken_at)
        VALUES (p_slot, p_provider, p_holder, p_reserve, extract(epoch from clock_timestamp())::double precision);
    RETURN p_slot;
END
$$"""

# Post-call webhooks: where a call's events go (fixed when the call is recorded), and the
# outbox of events, each row written in the transaction of the record change it reports.
_CALL_WEBHOOKS = """CREATE TABLE call_webhooks (
    call_id TEXT PRIMARY KEY REFERENCES calls(id) ON DELETE CASCADE,
    url TEXT NOT NULL
)"""
_OUTBOX = """CREATE TABLE webhook_outbox (
    id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    tries INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at {real} NOT NULL,
    retry_from {real} NOT NULL,
    next_try_at {real} NOT NULL,
    delivered_at {real},
    claimed_by TEXT,
    claimed_until {real}
)"""
_OUTBOX_INDEXES = (
    "CREATE INDEX webhook_outbox_due ON webhook_outbox(status, next_try_at)",
    "CREATE INDEX webhook_outbox_created ON webhook_outbox(created_at)",
)

# m007: each call's recording (a WAV on the carrying instance's disk: where, how long, and
# what cut it short), and each agent reply's latency with its transcript line.
_RECORDINGS = (
    "ALTER TABLE calls ADD COLUMN recording_path TEXT",
    "ALTER TABLE calls ADD COLUMN recording_s {real}",
    "ALTER TABLE calls ADD COLUMN recording_error TEXT",
    "ALTER TABLE transcript ADD COLUMN latency_ms INTEGER",
)

# AUTOINCREMENT: ids never reused, even after old events are pruned (readers remember the last).
_SQLITE = {"real": "REAL", "serial_key": "INTEGER PRIMARY KEY AUTOINCREMENT"}
_POSTGRES = {"real": "DOUBLE PRECISION", "serial_key": "BIGSERIAL PRIMARY KEY"}


def _both(*statements: str) -> dict[str, tuple[str, ...]]:
    return {
        "sqlite": tuple(s.format(**_SQLITE) for s in statements),
        "postgres": tuple(s.format(**_POSTGRES) for s in statements),
    }


MIGRATIONS: tuple[Migration, ...] = (
    # The calls table, their transcripts, and the indexes for lookups and newest-first lists.
    Migration("m001_calls_and_transcripts", **_both(_CALLS, _TRANSCRIPT, *_INDEXES)),
    # Which server carries each call, and the signature nonces already seen (replays refused).
    Migration(
        "m002_instances_and_nonces",
        **_both(
            "ALTER TABLE calls ADD COLUMN instance TEXT", _NONCES, "CREATE INDEX nonces_seen_at ON nonces(seen_at)"
        ),
    ),
    # Slots, holders' leases, events between processes, live settings and shared secrets.
    Migration("m003_shared_state", **_both(_HOLDERS, _SLOTS, _EVENTS, _SETTINGS, _SECRETS, *_SHARED_INDEXES)),
    # PostgreSQL's slot take as one function: one round trip, the lock held only inside it.
    Migration("m004_take_slot_function", sqlite=(), postgres=(_TAKE_SLOT,)),
    # Post-call webhooks delivered at least once from an outbox.
    Migration("m005_webhook_outbox", **_both(_CALL_WEBHOOKS, _OUTBOX, *_OUTBOX_INDEXES)),
    # Voicemail detection on outbound calls: who answered (human, machine, unknown), and what
    # the dial asked for on a machine (hangup, message, off), which the stream and the
    # provider's verdict read later, on whichever process takes them.
    Migration(
        "m006_answered_by",
        **_both("ALTER TABLE calls ADD COLUMN answered_by TEXT", "ALTER TABLE calls ADD COLUMN voicemail TEXT"),
    ),
    # Recordings and per-turn latency. Names, not numbers, order the runner: a migration
    # another branch adds before this one (m006) is applied wherever it is listed.
    Migration("m007_recordings", **_both(*_RECORDINGS)),
)
