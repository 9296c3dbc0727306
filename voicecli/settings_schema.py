"""One declared setting and the parsers its values go through.

Stdlib only: provider modules declare their own rows with these, and `voicecli.settings`
collects every row from the core table and the provider registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


def as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value.strip()


def as_limit(value: Any) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError("must be a whole number from 1 to 10000") from None
    if isinstance(value, bool) or not 1 <= number <= 10000:
        raise ValueError("must be a whole number from 1 to 10000")
    return number


def as_url(*schemes: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = as_str(value).rstrip("/")
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return text

    return check


as_http_url = as_url("http", "https")


def as_phone(value: Any) -> str:
    text = as_str(value)
    if not re.fullmatch(r"\+?[0-9]{6,16}", text, re.ASCII):
        raise ValueError("must be a phone number such as +15551234567")
    return text


def mask(value: Any) -> Any:
    """Show that a secret is set without showing it."""
    if not value:
        return value
    text = str(value)
    return "****" + text[-4:] if len(text) >= 12 else "****"


@dataclass(frozen=True)
class Setting:
    """One declared setting: its name in the file and API, its variable, its rules."""

    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    secret: bool = False
    env: str = ""
    # Read once at start-up (where the store is, how many processes): voicecli.toml, the
    # environment or a flag only; the settings API refuses them, a restart applies them.
    file_only: bool = False
    # How a secret is shown (default: `mask`); a URL keeps everything but its password.
    show: Callable[[Any], Any] | None = None

    @property
    def env_name(self) -> str:
        return self.env or self.name.upper()

    def shown(self, value: Any) -> Any:
        """The value fit for a terminal or an API answer: secrets masked."""
        if value is None or not self.secret:
            return value
        return (self.show or mask)(value)
