"""The offline `script` LLM: keyword and DTMF rules from the agent file, no model, no network."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipecat.frames.frames import (
    EndWorkerFrame,
    Frame,
    InputDTMFFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicecli.services.script_rules import ScriptRule

if TYPE_CHECKING:
    from voicecli.call.tools import ToolRunner

END_REASON = "agent ended the call"  # the record's reason, whichever LLM ends the call
_QUOTED = re.compile(r"\{result((?:\.[A-Za-z0-9_]+)*)\}")


def quote_result(reply: str, result: Any) -> str:
    """`reply` with each `{result.a.b}` replaced by that field of the tool's result (`{result}`:
    all of it); KeyError when the tool failed or a field is missing."""
    if isinstance(result, dict) and set(result) == {"error"}:
        raise KeyError("error")

    def field(match: re.Match[str]) -> str:
        value = result
        for name in filter(None, match.group(1).split(".")):
            if not isinstance(value, dict) or name not in value:
                raise KeyError(name)
            value = value[name]
        return str(value)

    return _QUOTED.sub(field, reply)


def match_rule(rules: Sequence[ScriptRule], text: str) -> ScriptRule | None:
    """The first keyword rule with a keyword among the caller's words."""
    words = set(re.findall(r"[a-z0-9']+", text.lower()))
    for rule in rules:
        if any(keyword in words or (" " in keyword and keyword in text.lower()) for keyword in rule.keywords):
            return rule
    return None


def _last_user_text(frame: LLMContextFrame) -> str:
    for message in reversed(frame.context.get_messages()):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class ScriptLLMService(FrameProcessor):
    """Answers each user turn and key press with the first matching rule's reply."""

    def __init__(self, rules: Sequence[ScriptRule], fallback: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rules = list(rules)
        self._fallback = fallback
        self._dtmf = {rule.dtmf: rule for rule in rules if rule.dtmf}
        self._ending = False
        self._tools: ToolRunner | None = None
        self._tool_tasks: set[asyncio.Task[None]] = set()

    def attach_tools(self, tools: ToolRunner) -> None:
        """The call's HTTP tools, for rules with `tool = ...`."""
        self._tools = tools

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            if not getattr(frame, "speculation", False):
                await self._answer(match_rule(self._rules, _last_user_text(frame)))
        elif isinstance(frame, InputDTMFFrame):
            await self._answer(self._dtmf.get(frame.button.value))
        else:
            await self.push_frame(frame, direction)

    async def _answer(self, rule: ScriptRule | None) -> None:
        if rule is None:
            await self._reply(self._fallback, None)
        elif rule.tool is None:
            await self._reply(rule.reply, rule)
        else:
            # On a task of its own: a frame being processed is cancelled by any interruption
            # (a key press, the caller speaking), and the reply must follow the tool's answer.
            task = self.create_task(self._answer_with_tool(rule))
            self._tool_tasks.add(task)
            task.add_done_callback(self._tool_tasks.discard)

    async def _answer_with_tool(self, rule: ScriptRule) -> None:
        assert rule.tool is not None
        result = await self._call_tool(rule.tool, rule.arguments)
        try:
            text = quote_result(rule.reply, result)
        except KeyError:
            text = rule.error_reply
        await self._reply(text, rule)

    async def cleanup(self) -> None:
        await super().cleanup()
        for task in list(self._tool_tasks):
            await self.cancel_task(task)

    async def _call_tool(self, name: str, arguments: Any) -> Any:
        if self._tools is None:
            return {"error": "tools are not available on this call"}
        return await self._tools.run(name, arguments, announce=lambda text: self._reply(text, None))

    async def _reply(self, text: str, rule: ScriptRule | None) -> None:
        if self._ending:
            return  # the goodbye is already on its way: say nothing more
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(LLMTextFrame(text))
        await self.push_frame(LLMFullResponseEndFrame())
        if rule and rule.end_call:
            self._ending = True
            # Downstream, behind the reply, so the goodbye is spoken before the pipeline ends.
            await self.push_frame(EndWorkerFrame(reason=END_REASON))
