"""An agent's `[[tools]]`: the user's own HTTP services the agent may call during a call.

Stdlib only: agents are validated with it at start-up, before any service is imported.
Calling them is `voicecli/call/tools.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from voicecli.services.options import OptionError, text
from voicecli.settings_schema import as_http_url

TOOL_KEYS = frozenset(
    {"name", "description", "url", "method", "headers", "timeout_s", "say_while_waiting", "parameters"}
)
# Offered by voicecli itself; a `[[tools]]` entry may not take these names.
BUILT_IN = frozenset({"end_call", "transfer_call", "send_dtmf"})
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")  # what LLM function calling accepts
VARIABLE_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class HttpTool:
    """One `[[tools]]` entry. `${VAR}` in `url` and `headers` comes from .env or the environment."""

    name: str
    description: str
    url: str
    method: Literal["GET", "POST"] = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 5.0
    say_while_waiting: str | None = None  # spoken when the tool takes over a second
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def variables(self) -> list[str]:
        """The environment variables its URL and headers name."""
        found = VARIABLE_RE.findall(self.url) + [v for _, value in self.headers for v in VARIABLE_RE.findall(value)]
        return list(dict.fromkeys(found))

    def expand(self, value: str, env: Mapping[str, str]) -> str:
        return VARIABLE_RE.sub(lambda m: env.get(m.group(1), ""), value)


def parse_tools(raw: Any) -> tuple[HttpTool, ...]:
    """The `[[tools]]` array; OptionError names the entry and key that is wrong."""
    if not isinstance(raw, list):
        raise OptionError("must be an array of tables: [[tools]]")
    tools = tuple(_tool(entry, f"[{index}]") for index, entry in enumerate(raw))
    names = [tool.name for tool in tools]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise OptionError(f"another tool is already named {name!r}", f"[{index}].name")
    return tools


def _tool(entry: Any, where: str) -> HttpTool:
    if not isinstance(entry, dict):
        raise OptionError("must be a table", where)
    for key in entry:
        if key not in TOOL_KEYS:
            raise OptionError(f"unknown key (valid: {', '.join(sorted(TOOL_KEYS))})", f"{where}.{key}")

    def required(key: str) -> str:
        try:
            return text(entry.get(key))
        except OptionError as exc:
            raise OptionError(exc.problem, f"{where}.{key}") from None

    name = required("name")
    if not NAME_RE.match(name):
        raise OptionError("use letters, digits, '_' or '-', starting with a letter", f"{where}.name")
    if name in BUILT_IN:
        raise OptionError(f"{name!r} is a built-in tool: choose another name", f"{where}.name")
    description, url = required("description"), required("url")
    try:
        as_http_url(VARIABLE_RE.sub("x", url))  # checked with its variables standing in
    except ValueError as exc:
        raise OptionError(str(exc), f"{where}.url") from None
    method = str(entry.get("method", "POST")).upper()
    if method not in ("GET", "POST"):
        raise OptionError("must be GET or POST", f"{where}.method")
    headers = entry.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise OptionError('must be a table of strings, e.g. { Authorization = "Bearer ${TOKEN}" }', f"{where}.headers")
    timeout = entry.get("timeout_s", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise OptionError(f"must be a number of seconds up to {MAX_TIMEOUT_S:g}", f"{where}.timeout_s")
    waiting = entry.get("say_while_waiting")
    if waiting is not None and (not isinstance(waiting, str) or not waiting.strip()):
        raise OptionError("must be a non-empty string", f"{where}.say_while_waiting")
    parameters = entry.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise OptionError('must be a JSON Schema table with type = "object"', f"{where}.parameters")
    return HttpTool(
        name=name,
        description=description,
        url=url,
        method=method,  # type: ignore[arg-type]
        headers=tuple((str(k), v) for k, v in headers.items()),
        timeout_s=float(timeout),
        say_while_waiting=waiting.strip() if waiting else None,
        parameters={"type": "object", "properties": {}, **parameters},
    )
