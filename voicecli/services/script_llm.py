"""The offline `script` LLM: keyword and DTMF rules from the agent file, no model, no network."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

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

END_REASON = "agent ended the call"


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

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            if not getattr(frame, "speculation", False):
                rule = match_rule(self._rules, _last_user_text(frame))
                await self._reply(rule.reply if rule else self._fallback, rule)
        elif isinstance(frame, InputDTMFFrame):
            rule = self._dtmf.get(frame.button.value)
            await self._reply(rule.reply if rule else self._fallback, rule)
        else:
            await self.push_frame(frame, direction)

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
