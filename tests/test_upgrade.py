"""A project from the release before the shared store opens with its history and its tokens."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp

from voicecli.server.tokens import TokenScope, make_token, verify_token
from voicecli.store import MIGRATIONS

# The schema as the previous release wrote it: its two migrations, recorded by name.
OLD_SCHEMA = """
CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL);
CREATE TABLE calls (
    id TEXT PRIMARY KEY, provider TEXT NOT NULL, agent TEXT NOT NULL, direction TEXT NOT NULL,
    from_number TEXT, to_number TEXT, provider_call_id TEXT, status TEXT NOT NULL,
    started_at TEXT NOT NULL, ended_at TEXT, duration_s REAL, end_reason TEXT, instance TEXT
);
CREATE TABLE transcript (
    id INTEGER PRIMARY KEY AUTOINCREMENT, call_id TEXT NOT NULL REFERENCES calls(id),
    role TEXT NOT NULL, text TEXT NOT NULL, at TEXT NOT NULL
);
CREATE INDEX calls_provider_call_id ON calls(provider, provider_call_id);
CREATE INDEX calls_started_at ON calls(started_at, id);
CREATE INDEX calls_status ON calls(status);
CREATE INDEX transcript_call_id ON transcript(call_id, id);
CREATE TABLE nonces (provider TEXT NOT NULL, nonce TEXT NOT NULL, seen_at REAL NOT NULL, PRIMARY KEY (provider, nonce));
CREATE INDEX nonces_seen_at ON nonces(seen_at);
INSERT INTO _migrations VALUES ('m001_calls_and_transcripts', '2026-11-01T00:00:00.000Z');
INSERT INTO _migrations VALUES ('m002_instances_and_nonces', '2026-11-01T00:00:00.000Z');
INSERT INTO calls VALUES ('call_old_done', 'twilio', 'demo', 'inbound', '+15550001111', '+15550002222', 'CAold',
    'completed', '2026-11-01T10:00:00.000Z', '2026-11-01T10:01:00.000Z', 60.0, 'caller hung up', 'oldhost-1-abc');
INSERT INTO calls VALUES ('call_old_live', 'exotel', 'demo', 'inbound', '+915550001111', '+915550002222', 'EXold',
    'in-progress', '2026-11-01T11:00:00.000Z', NULL, NULL, NULL, 'oldhost-2-def');
INSERT INTO transcript (call_id, role, text, at) VALUES ('call_old_done', 'agent', 'Hello from before.',
    '2026-11-01T10:00:01.000Z');
"""
OLD_TOKEN = "old-api-token-" + "x" * 30
OLD_SECRET = "old-stream-secret-" + "y" * 30


def _old_project(project: Path) -> None:
    state = project / ".voicecli"
    state.mkdir()
    db = sqlite3.connect(state / "calls.db")
    db.executescript(OLD_SCHEMA)
    db.close()
    (state / "api_token").write_text(OLD_TOKEN + "\n")
    (state / "secret").write_text(OLD_SECRET + "\n")


async def test_an_old_project_keeps_its_records_api_token_and_stream_secret(project: Path, start_server) -> None:
    _old_project(project)
    server = await start_server()
    assert server.state.api_token == OLD_TOKEN  # the CLI's token file still works
    assert (project / ".voicecli" / "api_token").read_text().strip() == OLD_TOKEN
    # A stream token the old server handed out just before the upgrade is still accepted.
    token = make_token(OLD_SECRET.encode(), TokenScope("call_x", "twilio", "demo"), 1_000_000.0)
    assert verify_token(server.state.secret, token, "twilio", "demo", 1_000_010.0) == "call_x"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/calls/call_old_done", headers=server.headers) as resp:
            assert resp.status == 200
            done = await resp.json()
        async with http.get(f"{server.url}/api/calls/call_old_live", headers=server.headers) as resp:
            live = await resp.json()
    assert done["status"] == "completed" and done["duration_s"] == 60.0 and done["instance"] == "oldhost-1-abc"
    assert [t["text"] for t in done["transcript"]] == ["Hello from before."]
    # Left open by a server that is gone: start-up recovery ends it, as before.
    assert live["status"] == "interrupted" and live["ended_at"]
    db = sqlite3.connect(project / ".voicecli" / "calls.db")
    names = [row[0] for row in db.execute("SELECT name FROM _migrations")]
    db.close()
    assert names[:2] == ["m001_calls_and_transcripts", "m002_instances_and_nonces"]
    assert names == [step.name for step in MIGRATIONS]  # and the newer ones applied on top, once
