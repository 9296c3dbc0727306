"""HTTP tools on a live call: a fake tool server on 127.0.0.1 records each signed request and
answers as asked (well, slowly, with an error, with junk, never); the call goes on each time
and the transcript shows the tool rows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.processes import CLEAN_ENV, run_voicecli, until
from tests.test_webhooks import SECRET, verify
from tests.wire import WireCall, agent_audio, open_greeted
from voicecli.agents import load_agent
from voicecli.errors import AgentError

AGENT = """
greeting = "Orders line."
[stt]
provider = "pocketsphinx"
[tts]
provider = "espeak"
[llm]
provider = "script"
fallback = "Press one for your order."
[[llm.rules]]
dtmf = "1"
tool = "lookup_order"
arguments = {{ order_number = "12345" }}
reply = "Your order is {{result.status}}."
error_reply = "Sorry, the order system is down."
[[llm.rules]]
dtmf = "0"
tool = "end_call"
reply = "Goodbye."

[[tools]]
name = "lookup_order"
description = "Look up an order's status by its number."
url = "{url}"
method = "{method}"
headers = {{ Authorization = "Bearer ${{ORDERS_TOKEN}}" }}
timeout_s = 1.5
say_while_waiting = "One moment while I check."
[tools.parameters]
type = "object"
required = ["order_number"]
properties = {{ order_number = {{ type = "string" }} }}
"""


class ToolServer:
    """Answers each request as the next of `modes` says: ok, slow, error, junk, huge, never."""

    def __init__(self) -> None:
        self.modes: list[str] = []
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/lookup", self._lookup)

    async def _lookup(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.got.append((request.query_string, dict(request.headers), body))
        mode = self.modes.pop(0) if self.modes else "ok"
        if mode == "slow":
            await asyncio.sleep(1.2)
        if mode == "never":
            await asyncio.sleep(30)
        if mode == "error":
            return web.json_response({"detail": "down"}, status=500)
        if mode == "junk":
            return web.Response(text="<html>not json</html>")
        if mode == "huge":
            return web.json_response({"status": "shipped", "padding": "x" * 70_000})
        return web.json_response({"status": "shipped"})


@pytest.fixture
async def tool_server(aiohttp_server: Any) -> tuple[ToolServer, str]:
    tools = ToolServer()
    server = await aiohttp_server(tools.app, host="127.0.0.1")
    return tools, str(server.make_url("/lookup"))


async def _reply_after_press(store: Any, call_id: str, live: WireCall, ws: Any, rows_before: int) -> list[Any]:
    await live.press(ws, "1")
    for _ in range(100):
        rows = await store.transcript(call_id)
        replies = [r for r in rows[rows_before:] if r.role == "agent" and r.text != "One moment while I check."]
        if replies:
            return rows[rows_before:]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no reply: {rows[rows_before:]}")


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_tool_is_called_signed_and_every_failure_leaves_the_call_going(
    project: Path, start_server, tool_server, method: str
) -> None:
    tools, url = tool_server
    (project / "agents" / "orders.toml").write_text(AGENT.format(url=url, method=method))
    server = await start_server(agents=["orders"], VOICECLI_WEBHOOK_SECRET=SECRET, ORDERS_TOKEN="tok-42")
    store = server.state.store
    async with aiohttp.ClientSession() as http:
        live, ws, record = await open_greeted(server, http, "twilio", "orders")
        reader = asyncio.create_task(agent_audio(ws, live.caller, 60.0))
        said: dict[str, list[Any]] = {}
        # Every answer for POST; GET differs only in how the request is sent.
        for mode in ("ok", "slow", "error", "junk", "huge", "never") if method == "POST" else ("ok",):
            tools.modes.append(mode)
            before = len(await store.transcript(record.id))
            said[mode] = await _reply_after_press(store, record.id, live, ws, before)
        await live.press(ws, "0")
        _, closed = await reader
        assert closed

    def texts(mode: str, role: str) -> list[str]:
        return [r.text for r in said[mode] if r.role == role]

    assert "Your order is shipped." in texts("ok", "agent")
    assert texts("ok", "tool") == ['lookup_order({"order_number": "12345"}) -> {"status": "shipped"}']
    ended = await store.get(record.id)
    assert ended.status == "completed"
    query, headers, body = tools.got[0]
    assert headers["Authorization"] == "Bearer tok-42"  # ${ORDERS_TOKEN} expanded
    signed = body if method == "POST" else query.encode()
    assert verify(SECRET, headers["X-Voicecli-Signature"], signed)
    if method == "GET":
        assert "order_number=12345" in query and f"call_id={record.id}" in query
        return
    assert texts("slow", "agent") == ["One moment while I check.", "Your order is shipped."]
    failures = (("error", "HTTP 500"), ("huge", "more than 64 KB"), ("never", "did not answer within 1.5 s"))
    for failed, error in failures:
        assert texts(failed, "agent") == (["One moment while I check."] if failed == "never" else []) + [
            "Sorry, the order system is down."
        ]
        assert error in texts(failed, "tool")[0]
    assert texts("junk", "agent") == ["Sorry, the order system is down."]  # no status field to quote
    sent = json.loads(body)
    assert sent["tool"] == "lookup_order" and sent["arguments"] == {"order_number": "12345"}
    assert sent["call"] == {
        "id": record.id,
        "provider": "twilio",
        "agent": "orders",
        "direction": "inbound",
        "from": record.from_number,
        "to": record.to_number,
    }


async def test_a_tool_variable_not_set_stops_serve_naming_it(project: Path) -> None:
    (project / "agents" / "orders.toml").write_text(AGENT.format(url="http://127.0.0.1:9/x", method="POST"))
    code, out, err = await run_voicecli(project, "serve", "--agent", "orders", "--port", "0", env=CLEAN_ENV)
    assert code == 1 and "orders needs ORDERS_TOKEN" in err and "Traceback" not in out + err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('url = "', 'url = "ftp://'), "tools[0].url"),
        (('method = "POST"', 'method = "PUT"'), "tools[0].method: must be GET or POST"),
        (("timeout_s = 1.5", "timeout_s = 99"), "tools[0].timeout_s"),
        (('name = "lookup_order"', 'name = "end_call"'), "tools[0].name: 'end_call' is a built-in tool"),
        (('tool = "lookup_order"', 'tool = "lookup"'), "llm.rules[0].tool: no [[tools]] entry named 'lookup'"),
        (("[[tools]]", "[[tools]]\nbogus = 1"), "tools[0].bogus: unknown key"),
    ],
)
def test_bad_tool_definitions_name_the_file_and_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = tmp_path / "orders.toml"
    path.write_text(AGENT.format(url="http://127.0.0.1:9/x", method="POST").replace(*change, 1))
    with pytest.raises(AgentError) as caught:
        load_agent(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


LLM_AGENT = """
greeting = "Orders line."
system_prompt = "You answer questions about orders."
[stt]
provider = "pocketsphinx"
[tts]
provider = "espeak"
[llm]
provider = "openai"
base_url = "{llm}"

[[tools]]
name = "lookup_order"
description = "Look up an order's status by its number."
url = "{url}"
[tools.parameters]
type = "object"
required = ["order_number"]
properties = {{ order_number = {{ type = "string" }} }}

[transfer]
destinations = {{ support = "+15551230002" }}
"""


class FakeLLM:
    """An OpenAI-compatible chat endpoint that streams tool calls: a key press of 1 looks up
    order 12345, 9 asks to transfer to a number (as a caller might talk a model into), 0
    ends the call; after a tool's result it says what the result holds."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._chat)

    @staticmethod
    def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        last = body["messages"][-1]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if last["role"] == "tool":
            result = json.loads(last["content"])
            text = f"Your order is {result['status']}." if "status" in result else "I cannot do that."
            await resp.write(self._chunk({"role": "assistant", "content": text}))
            await resp.write(self._chunk({}, "stop"))
        else:
            pressed = str(last.get("content"))
            name, arguments = {
                "0": ("end_call", "{}"),
                "9": ("transfer_call", json.dumps({"destination": "+15550001111"})),
            }.get(pressed[-1:], ("lookup_order", json.dumps({"order_number": "12345"})))
            call = {"index": 0, "id": f"call_{len(self.requests)}", "type": "function"}
            await resp.write(self._chunk({"role": "assistant", "tool_calls": [call | {"function": {"name": name}}]}))
            await resp.write(self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}))
            await resp.write(self._chunk({}, "tool_calls"))
        await resp.write(b"data: [DONE]\n\n")
        return resp


async def test_an_llm_calls_tools_through_function_calling_and_ends_the_call(
    project: Path, start_server, tool_server, aiohttp_server: Any
) -> None:
    tools, url = tool_server
    fake = FakeLLM()
    llm = await aiohttp_server(fake.app, host="127.0.0.1")
    agent = LLM_AGENT.format(url=url, llm=str(llm.make_url("/v1")))
    (project / "agents" / "orders.toml").write_text(agent)
    server = await start_server(agents=["orders"], VOICECLI_WEBHOOK_SECRET=SECRET)
    store = server.state.store
    async with aiohttp.ClientSession() as http:
        live, ws, record = await open_greeted(server, http, "twilio", "orders")
        reader = asyncio.create_task(agent_audio(ws, live.caller, 60.0))

        async def answered() -> bool:
            return any(r.text == "Your order is shipped." for r in await store.transcript(record.id))

        async def refused() -> bool:
            return any(r.text == "I cannot do that." for r in await store.transcript(record.id))

        await live.press(ws, "1")
        await until(answered, 20, "the reply from the tool's result")
        await live.press(ws, "9")
        await until(refused, 20, "the refused transfer's reply")
        await live.press(ws, "0")
        _, closed = await reader
        assert closed
    offered = {tool["function"]["name"] for tool in fake.requests[0]["tools"]}
    assert offered == {"lookup_order", "transfer_call", "end_call"}  # no send_dtmf: dtmf_tool is off
    assert json.loads(tools.got[0][2])["arguments"] == {"order_number": "12345"}
    rows = [(r.role, r.text) for r in await store.transcript(record.id)]
    assert ("tool", 'lookup_order({"order_number": "12345"}) -> {"status": "shipped"}') in rows
    [refusal] = [text for role, text in rows if role == "tool" and text.startswith("transfer_call")]
    assert "no destination named '+15550001111'" in refusal  # a number the caller said is never dialled
    ended = await store.get(record.id)
    assert ended.status == "completed" and ended.end_reason.startswith("agent ended the call")
    assert rows[-1] == ("agent", "Sorry, I have to end the call now. Goodbye!")  # the agent's goodbye
