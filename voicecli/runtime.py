"""Runtime state in `.voicecli/`: the API token file the CLI reads, the running servers.

Shared by the server and the CLI commands; stdlib only so commands stay fast.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

API_TOKEN_FILE = "api_token"
SECRET_FILE = "secret"
SERVER_FILE = "server.json"
SERVER_LOCK_FILE = "server.lock"
DB_FILE = "calls.db"
WEBHOOK_SECRET_FILE = "webhook_secret"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name: two writers at once (threads or processes) never share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ServerInfo:
    """Where one running server listens, as recorded by its `serve`."""

    url: str
    pid: int
    agents: list[str]
    instance: str = ""


def new_instance_id() -> str:
    """This `serve` run's name in call records and in server.json: host, pid and a nonce."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextmanager
def _servers_locked(state_dir: Path) -> Iterator[None]:
    """Hold the server list's lock: two `serve` starting or stopping at once both keep their entry."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / SERVER_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _parse_server(data: object) -> ServerInfo | None:
    if not isinstance(data, dict):
        return None
    try:
        agents = data.get("agents", [])
        return ServerInfo(str(data["url"]), int(data["pid"]), list(agents), str(data.get("instance", "")))
    except (KeyError, TypeError, ValueError):
        return None


def read_servers(state_dir: Path) -> list[ServerInfo]:
    """Every server recorded in this project whose process is still alive, oldest first."""
    try:
        data = json.loads((state_dir / SERVER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    # Before several servers were recorded, the file held one server's object.
    entries = data.get("servers", [data]) if isinstance(data, dict) else []
    servers = [info for info in map(_parse_server, entries if isinstance(entries, list) else []) if info]
    return [info for info in servers if pid_alive(info.pid)]


def read_server(state_dir: Path) -> ServerInfo | None:
    """The server commands talk to: the oldest one still running, if any."""
    servers = read_servers(state_dir)
    return servers[0] if servers else None


def _write_servers(state_dir: Path, servers: list[ServerInfo]) -> None:
    if servers:
        write_private(state_dir / SERVER_FILE, json.dumps({"servers": [asdict(info) for info in servers]}))
    else:
        (state_dir / SERVER_FILE).unlink(missing_ok=True)


def record_server(state_dir: Path, info: ServerInfo) -> None:
    """Add this server to the list (dead entries are dropped on the way)."""
    with _servers_locked(state_dir):
        others = [s for s in read_servers(state_dir) if s.pid != info.pid]
        _write_servers(state_dir, [*others, info])


def forget_server(state_dir: Path, pid: int) -> None:
    """Remove this process's entry, leaving every other server's."""
    with _servers_locked(state_dir):
        _write_servers(state_dir, [s for s in read_servers(state_dir) if s.pid != pid])


def read_api_token(state_dir: Path, override: str | None) -> str | None:
    """The API token for talking to the server, without creating one."""
    if override:
        return override
    try:
        return (state_dir / API_TOKEN_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
