"""Terminal output helpers shared by the commands."""

from __future__ import annotations

import sys
from functools import cache
from typing import Any


@cache
def stdout() -> Any:
    """A rich console; off a terminal it never wraps or cuts (ids, numbers and URLs stay whole)."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=10_000, no_color=True, soft_wrap=True)


def error(message: str) -> None:
    """One red line on stderr."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text(f"error: {message}", style="bold red"))
