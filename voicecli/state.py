"""Runtime state in `.voicecli/`: the API token, the stream-token secret, the running server.

Shared by the server and the CLI commands; stdlib only so commands stay fast.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

API_TOKEN_FILE = "api_token"
SECRET_FILE = "secret"
SERVER_FILE = "server.json"
DB_FILE = "calls.db"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _read_or_create(path: Path, make: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    write_private(path, make + "\n")
    return make


def api_token(state_dir: Path, override: str | None) -> str:
    """VOICECLI_API_TOKEN if set, else the token generated at the first `serve` (mode 0600)."""
    return override or _read_or_create(state_dir / API_TOKEN_FILE, secrets.token_urlsafe(32))


def stream_secret(state_dir: Path, override: str | None) -> bytes:
    """VOICECLI_SECRET if set (instances share it), else a per-project secret (mode 0600)."""
    return (override or _read_or_create(state_dir / SECRET_FILE, secrets.token_urlsafe(32))).encode()


@dataclass(frozen=True)
class ServerInfo:
    """Where the running server listens, as recorded by `serve`."""

    url: str
    pid: int
    agents: list[str]


def record_server(state_dir: Path, info: ServerInfo) -> None:
    write_private(state_dir / SERVER_FILE, json.dumps(info.__dict__))


def read_server(state_dir: Path) -> ServerInfo | None:
    try:
        data = json.loads((state_dir / SERVER_FILE).read_text(encoding="utf-8"))
        return ServerInfo(str(data["url"]), int(data["pid"]), list(data.get("agents", [])))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_server(state_dir: Path, pid: int) -> None:
    """Remove the record if it is still this process's."""
    info = read_server(state_dir)
    if info and info.pid == pid:
        (state_dir / SERVER_FILE).unlink(missing_ok=True)


def read_api_token(state_dir: Path, override: str | None) -> str | None:
    """The API token for talking to the server, without creating one."""
    if override:
        return override
    try:
        return (state_dir / API_TOKEN_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
