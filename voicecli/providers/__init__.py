"""The provider registry: names to lazy import strings, the only place that lists providers.

Importing this module is cheap (no SDKs, no pipecat); `load_provider` imports one on demand.
Adding a provider means one module beside this file and one line here.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voicecli.providers.base import CallerSide, Provider
    from voicecli.settings import Settings

# Each module defines `provider` (its Provider class) and `caller` (its CallerSide class).
PROVIDERS: dict[str, str] = {
    "twilio": "voicecli.providers.twilio",
    "exotel": "voicecli.providers.exotel",
    "vobiz": "voicecli.providers.vobiz",
}


def load_provider(name: str, settings: Settings) -> Provider:
    """The server side of provider `name` (KeyError when none is registered)."""
    return import_module(PROVIDERS[name]).provider(settings)


def load_caller(name: str, settings: Settings) -> CallerSide:
    """The provider's own side of a call, for the emulator."""
    return import_module(PROVIDERS[name]).caller(settings)
