"""Log lines: one format for voicecli and pipecat, the call id on every line about a call."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

FORMAT = "{time:HH:mm:ss.SSS} {level: <7} {extra[call]}{message}"


# Control characters (a newline in a caller's number, say) are written escaped: a field a
# webhook controls can never start a forged log line.
_ESCAPES = {code: f"\\x{code:02x}" for code in range(32) if code != 9} | {10: "\\n", 13: "\\r", 127: "\\x7f"}


def _add_call(record: Record) -> None:
    call_id = record["extra"].get("call_id")
    record["extra"]["call"] = f"[{str(call_id).translate(_ESCAPES)}] " if call_id else ""
    record["message"] = record["message"].translate(_ESCAPES)


def configure(level: str = "INFO") -> None:
    """Send logs to stderr at `level` (pipecat logs at DEBUG by default: far too chatty)."""
    logger.remove()
    logger.configure(patcher=_add_call)
    # diagnose=False: a traceback must never print the values of locals (tokens, auth keys).
    logger.add(sys.stderr, level=level.upper(), format=FORMAT, colorize=None, diagnose=False)
