"""Calling an agent's HTTP tools during a call: signed requests, bounded, never fatal.

Whatever happens (a timeout, a refused connection, a non-2xx answer, a body over 64 KB),
the caller of `run` gets a result: the tool's answer (JSON, else its text) or
`{"error": "<what happened>"}`. The call always goes on. Each call and result becomes a
transcript row (role `tool`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp

from voicecli.signing import signed
from voicecli.tools import HttpTool

MAX_RESULT_BYTES = 64 * 1024
SLOW_S = 1.0  # a tool slower than this gets its `say_while_waiting` spoken
Transcript = Callable[[str, str], Awaitable[None]]
BuiltIn = Callable[[Mapping[str, Any]], Awaitable[Any]]


def _short(value: Any, limit: int = 300) -> str:
    shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


class ToolRunner:
    """One call's tools: sends each request as README ("Tools") describes, signed."""

    def __init__(
        self,
        tools: tuple[HttpTool, ...],
        *,
        http: aiohttp.ClientSession,
        secret: str,
        env: Mapping[str, str],
        call: Mapping[str, str | None],
        transcript: Transcript,
        built_in: Mapping[str, BuiltIn] | None = None,
    ) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.http, self.secret, self.env, self.call = http, secret, env, dict(call)
        self.transcript = transcript
        # transfer_call and send_dtmf, run by the call itself (session.py)
        self.built_in = dict(built_in or {})

    async def run(
        self, name: str, arguments: Mapping[str, Any], announce: Callable[[str], Awaitable[None]] | None = None
    ) -> Any:
        """The tool's result, or `{"error": ...}`; both are written to the transcript.
        `announce(say_while_waiting)` is awaited once the tool has taken over SLOW_S."""
        tool = self.tools.get(name)
        if name in self.built_in:
            result: Any = await self.built_in[name](arguments)
        elif tool is None:
            result = {"error": f"no tool named {name!r}"}
        else:
            pending = asyncio.ensure_future(self._request(tool, dict(arguments)))
            done, _ = await asyncio.wait({pending}, timeout=SLOW_S)
            if not done and tool.say_while_waiting and announce is not None:
                await announce(tool.say_while_waiting)
            result = await pending
        await self.transcript("tool", f"{name}({_short(dict(arguments))}) -> {_short(result)}")
        return result

    async def _request(self, tool: HttpTool, arguments: dict[str, Any]) -> Any:
        headers = {name: tool.expand(value, self.env) for name, value in tool.headers}
        url = tool.expand(tool.url, self.env)
        if tool.method == "GET":
            # Arguments and the call's id as the query; the signature covers the query string.
            query = urlencode(
                {k: v if isinstance(v, str) else json.dumps(v) for k, v in arguments.items()}
                | {"call_id": self.call.get("id") or ""}
            )
            request = self.http.get(
                f"{url}{'&' if '?' in url else '?'}{query}", headers={**headers, **signed(self.secret, query)}
            )
        else:
            body = json.dumps({"tool": tool.name, "arguments": arguments, "call": self.call})
            headers = {**headers, "Content-Type": "application/json", **signed(self.secret, body)}
            request = self.http.post(url, data=body.encode(), headers=headers)
        try:
            async with asyncio.timeout(tool.timeout_s):
                async with request as resp:
                    raw = await resp.content.read(MAX_RESULT_BYTES + 1)
                    status = resp.status
        except TimeoutError:
            return {"error": f"{tool.name} did not answer within {tool.timeout_s:g} s"}
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return {"error": f"{tool.name} could not be reached: {type(exc).__name__}: {exc}".rstrip(": ")}
        if not 200 <= status < 300:
            return {"error": f"{tool.name} answered HTTP {status}"}
        if len(raw) > MAX_RESULT_BYTES:
            return {"error": f"{tool.name} answered more than {MAX_RESULT_BYTES // 1024} KB"}
        text = raw.decode("utf-8", errors="replace")
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # not JSON (or nested past the parser): its text
            return text.strip()


# The built-ins a call may offer besides end_call: (description, properties; all required).
BUILT_IN_SCHEMAS: dict[str, tuple[str, dict[str, Any]]] = {
    "transfer_call": (
        "Transfer the caller to a person: name one of the destinations (never a number the caller said).",
        {"destination": {"type": "string", "description": "The destination's name"}},
    ),
    "send_dtmf": (
        "Press keys on the phone (DTMF tones), e.g. to choose from a phone menu.",
        {"digits": {"type": "string", "description": "The keys: 0-9, * and #"}},
    ),
}


def offered_functions(runner: ToolRunner | None, end_call: Callable[[str], Awaitable[None]] | None) -> list[Any]:
    """What a function-calling LLM is offered: each HTTP tool, and `end_call` unless turned off.

    Each schema carries its handler (pipecat registers it with the context's LLM).
    """
    from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
    from pipecat.frames.frames import FunctionCallResultProperties, TTSSpeakFrame
    from pipecat.services.llm_service import FunctionCallParams

    from voicecli.services.script_llm import END_REASON

    offered: list[Any] = []
    for tool in runner.tools.values() if runner is not None else ():

        async def call_tool(params: FunctionCallParams, name: str = tool.name) -> None:
            assert runner is not None

            async def announce(text: str) -> None:
                await params.llm.push_frame(TTSSpeakFrame(text))

            await params.result_callback(await runner.run(name, params.arguments, announce))

        schema = tool.parameters
        offered.append(
            FunctionSchema(
                tool.name,
                tool.description,
                dict(schema.get("properties", {})),
                list(schema.get("required", [])),
                handler=call_tool,
            )
        )
    built_in = runner.built_in if runner is not None else {}
    for name, described in BUILT_IN_SCHEMAS.items():
        if name in built_in:

            async def call_built_in(params: FunctionCallParams, name: str = name) -> None:
                assert runner is not None
                await params.result_callback(await runner.run(name, params.arguments))

            description, properties = described
            offered.append(FunctionSchema(name, description, properties, list(properties), handler=call_built_in))
    if end_call is not None:

        async def hang_up(params: FunctionCallParams) -> None:
            # No reply to the result: the agent's goodbye is said, then the call is hung up.
            await params.result_callback({"ended": True}, properties=FunctionCallResultProperties(run_llm=False))
            await end_call(END_REASON)

        offered.append(
            FunctionSchema(
                "end_call",
                "End the phone call: the agent says goodbye and hangs up. Use it when the caller is done.",
                {},
                [],
                handler=hang_up,
            )
        )
    return offered
