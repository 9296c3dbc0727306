"""How a service checks the options of its `[stt]`, `[llm]` or `[tts]` table (stdlib only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# An option's parser: the value as the service will use it, or OptionError.
Option = Callable[[Any], Any]


class OptionError(ValueError):
    """A bad option value; `where` names the part that is wrong (`[0].reply`), "" for the whole."""

    def __init__(self, problem: str, where: str = ""):
        super().__init__(problem)
        self.problem, self.where = problem, where


def as_given(value: Any) -> Any:
    """An option the service itself checks when it is built."""
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OptionError("must be a non-empty string")
    return value.strip()
