"""A small client for the running server's management API (stdlib only: commands stay fast)."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode

from voicecli.errors import ServerNotRunningError, VoicecliError
from voicecli.runtime import read_api_token, read_server
from voicecli.settings import Settings

START_HINT = "start one with: voicecli serve --agent demo"
# A dial waits for the provider's API, which the server gives 10 s: the CLI waits longer, so
# it reports what the server said instead of giving up on a dial that went out.
DIAL_TIMEOUT_S = 30.0


class ApiClient:
    """Calls /api routes with the bearer token; errors become VoicecliError with the server's words."""

    def __init__(self, base_url: str, token: str | None, timeout: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        url = f"{self.base_url}{path}" + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        wait_s = timeout or self.timeout
        try:
            with urllib.request.urlopen(req, timeout=wait_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise VoicecliError(f"{method} {path}: HTTP {exc.code}: {_reason(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                # It answers, slowly: the request may have been done. Not "no server".
                raise VoicecliError(
                    f"{method} {path}: the server at {self.base_url} did not answer within {wait_s:g} s;"
                    " it may still have done it (voicecli calls shows what it did)"
                ) from None
            raise ServerNotRunningError(
                f"no voicecli server answers at {self.base_url} ({reason}); {START_HINT}"
            ) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params)

    def download(self, path: str, dest: Path) -> int:
        """GET `path` into the file `dest` as it arrives (a call's WAV can be long); bytes written."""
        req = urllib.request.Request(f"{self.base_url}{path}")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return save_stream(resp, dest)
        except urllib.error.HTTPError as exc:
            raise VoicecliError(f"GET {path}: HTTP {exc.code}: {_reason(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(exc, OSError) and exc.filename:  # our own file, not the network
                raise VoicecliError(f"cannot write {exc.filename}: {exc.strerror}") from None
            raise ServerNotRunningError(
                f"no voicecli server answers at {self.base_url} ({getattr(exc, 'reason', exc)}); {START_HINT}"
            ) from None


def save_stream(source: BinaryIO, dest: Path) -> int:
    """Copy `source` to `dest` through a temporary file beside it: a broken copy leaves no `dest`."""
    partial = dest.with_name(f".{dest.name}.partial")
    try:
        with partial.open("wb") as out:
            shutil.copyfileobj(source, out, 64 * 1024)
        partial.replace(dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return dest.stat().st_size


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read() or b"{}")
        return str(payload.get("error") or payload)
    except ValueError:
        return exc.reason or ""


def server_url(settings: Settings, override: str | None) -> str:
    """--server, else the address the running `serve` recorded in .voicecli/."""
    if override:
        return override.rstrip("/")
    info = read_server(settings.state_dir)
    if info is None:
        raise ServerNotRunningError(f"no voicecli server is running in {settings.project_dir}; {START_HINT}")
    return info.url


def connect(settings: Settings, override: str | None = None) -> ApiClient:
    return ApiClient(
        server_url(settings, override),
        read_api_token(settings.state_dir, settings.env.get("VOICECLI_API_TOKEN")),
    )


def choose_agent(served: Sequence[str], wanted: str | None) -> str:
    """The agent to call: the one named, or the server's only one."""
    if wanted:
        if wanted not in served:
            raise VoicecliError(f"the server does not serve agent '{wanted}' (it serves: {', '.join(served)})")
        return wanted
    if len(served) != 1:
        raise VoicecliError(f"the server serves several agents; pick one with --agent ({', '.join(served)})")
    return served[0]


def follow_call(client: ApiClient, call_id: str, poll_s: float = 0.5) -> dict[str, Any]:
    """Poll a call until it has ended; return its record with the transcript."""
    import time

    while True:
        record = client.get(f"/api/calls/{call_id}")
        if record.get("ended_at"):
            return record
        time.sleep(poll_s)


def running_client(settings: Settings) -> ApiClient | None:
    """A client for the server running in this project, or None when none answers."""
    info = read_server(settings.state_dir)
    if info is None:
        return None
    client = ApiClient(info.url, read_api_token(settings.state_dir, settings.env.get("VOICECLI_API_TOKEN")), 2.0)
    try:
        client.get("/api/status")
    except ServerNotRunningError:
        return None
    return client


class LiveFeed:
    """What `calls --live` polls: active calls and per-provider counts, surviving restarts.

    The server's address and token are read again at every poll: a restarted server may
    listen on another port (port 0) or have a new token.
    """

    def __init__(self, settings: Settings, override: str | None, filters: dict[str, Any], timeout: float = 2.0):
        self.settings, self.override, self.filters, self.timeout = settings, override, filters, timeout

    def poll(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(active calls, GET /api/status); ServerNotRunningError while no server answers."""
        token = read_api_token(self.settings.state_dir, self.settings.env.get("VOICECLI_API_TOKEN"))
        client = ApiClient(server_url(self.settings, self.override), token, self.timeout)
        status = client.get("/api/status")
        calls = client.get("/api/calls", active=1, limit=1000, **self.filters)
        return calls, status
