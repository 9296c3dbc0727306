"""The offline `script` LLM's `[[llm.rules]]`: what a rule is and how its table is read.

Stdlib only: agents are validated with it at start-up, before any service is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from voicecli.services.options import OptionError, text

DTMF_KEYS = frozenset("0123456789*#")
RULE_KEYS = frozenset({"keywords", "dtmf", "reply", "end_call", "tool", "arguments", "error_reply"})
ERROR_REPLY = "Sorry, I could not do that right now."


@dataclass(frozen=True)
class ScriptRule:
    """A `[[llm.rules]]` entry of the offline `script` LLM."""

    reply: str  # with a tool, it may quote the result's fields: "Your order is {result.status}."
    keywords: tuple[str, ...] = ()
    dtmf: str | None = None
    end_call: bool = False
    tool: str | None = None  # a [[tools]] entry's name (the agent checks it exists)
    arguments: Mapping[str, Any] = field(default_factory=dict)
    error_reply: str = ERROR_REPLY  # said when the tool fails or a quoted field is missing


def parse_rules(raw: Any) -> tuple[ScriptRule, ...]:
    """The rules of an `[llm]` table; OptionError names the entry and key that is wrong."""
    if not isinstance(raw, list) or not raw:
        raise OptionError("the script LLM needs at least one [[llm.rules]] entry")
    return tuple(_rule(entry, f"[{index}]") for index, entry in enumerate(raw))


def _rule(entry: Any, where: str) -> ScriptRule:
    if not isinstance(entry, dict):
        raise OptionError("must be a table", where)
    for key in entry:
        if key not in RULE_KEYS:
            raise OptionError(f"unknown key (valid: {', '.join(sorted(RULE_KEYS))})", f"{where}.{key}")
    try:
        reply = text(entry.get("reply"))
    except OptionError as exc:
        raise OptionError(exc.problem, f"{where}.reply") from None
    keywords, dtmf = entry.get("keywords"), entry.get("dtmf")
    if (keywords is None) == (dtmf is None):
        raise OptionError("needs exactly one of keywords or dtmf", where)
    if keywords is not None and (
        not isinstance(keywords, list) or not keywords or not all(isinstance(k, str) and k.strip() for k in keywords)
    ):
        raise OptionError("must be a non-empty list of words", f"{where}.keywords")
    if dtmf is not None and (not isinstance(dtmf, str) or dtmf not in DTMF_KEYS):
        raise OptionError("must be one key: 0-9, * or #", f"{where}.dtmf")
    end_call = entry.get("end_call", False)
    if not isinstance(end_call, bool):
        raise OptionError("must be true or false", f"{where}.end_call")
    tool, arguments = entry.get("tool"), entry.get("arguments", {})
    if tool is not None and (not isinstance(tool, str) or not tool.strip()):
        raise OptionError("must be a tool's name", f"{where}.tool")
    if not isinstance(arguments, dict):
        raise OptionError('must be a table, e.g. { order_number = "12345" }', f"{where}.arguments")
    if arguments and tool is None:
        raise OptionError("arguments need a tool", f"{where}.arguments")
    error_reply = entry.get("error_reply", ERROR_REPLY)
    if not isinstance(error_reply, str) or not error_reply.strip():
        raise OptionError("must be a non-empty string", f"{where}.error_reply")
    if tool == "end_call":  # the built-in: say the reply, then hang up
        tool, end_call = None, True
    return ScriptRule(
        reply,
        tuple(k.strip().lower() for k in keywords or ()),
        dtmf,
        end_call,
        tool.strip() if tool else None,
        arguments,
        error_reply.strip(),
    )
