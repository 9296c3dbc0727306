"""Log lines: one format for voicecli and pipecat, the call id on every line about a call."""

from __future__ import annotations

import sys

from loguru import logger

FORMAT = "{time:HH:mm:ss.SSS} {level: <7} {extra[call]}{message}"


def _add_call(record: dict) -> None:
    call_id = record["extra"].get("call_id")
    record["extra"]["call"] = f"[{call_id}] " if call_id else ""


def configure(level: str = "INFO") -> None:
    """Send logs to stderr at `level` (pipecat logs at DEBUG by default: far too chatty)."""
    logger.remove()
    logger.configure(patcher=_add_call)
    # diagnose=False: a traceback must never print the values of locals (tokens, auth keys).
    logger.add(sys.stderr, level=level.upper(), format=FORMAT, colorize=None, diagnose=False)
