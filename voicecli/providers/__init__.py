"""The provider registry: names to lazy import strings, the only place that lists providers.

Importing this module is cheap (no SDKs, no pipecat). Adding a provider means one server
module beside this file, its emulator in `voicecli/emulator/`, and one line here; its
settings, routes, limits, banner rows and doctor checks follow from the registry.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from voicecli.emulator.api import ProviderApi
    from voicecli.emulator.base import CallerSide
    from voicecli.providers.base import Provider
    from voicecli.settings import Settings
    from voicecli.settings_schema import Setting


class Entry(NamedTuple):
    server: str  # the module that defines `provider`, its Provider class
    emulator: str  # the module that defines `caller` (its CallerSide) and `api` (its ProviderApi)


PROVIDERS: dict[str, Entry] = {
    "twilio": Entry("voicecli.providers.twilio", "voicecli.emulator.twilio"),
    "exotel": Entry("voicecli.providers.exotel", "voicecli.emulator.exotel"),
    "vobiz": Entry("voicecli.providers.vobiz", "voicecli.emulator.vobiz"),
    "plivo": Entry("voicecli.providers.plivo", "voicecli.emulator.plivo"),
}


def provider_class(name: str) -> type[Provider]:
    """The Provider class registered as `name` (KeyError when none is)."""
    return import_module(PROVIDERS[name].server).provider


def load_provider(name: str, settings: Settings) -> Provider:
    """The server side of provider `name` (KeyError when none is registered)."""
    return provider_class(name)(settings)


def load_caller(name: str, settings: Settings) -> CallerSide:
    """The provider's own side of a call, for the emulator."""
    return import_module(PROVIDERS[name].emulator).caller(settings)


def load_api(name: str) -> ProviderApi:
    """The provider's REST API as the emulator serves it (not started)."""
    return import_module(PROVIDERS[name].emulator).api()


def setting_rows() -> tuple[Setting, ...]:
    """Every provider's declared settings, in registry order."""
    rows: list[Setting] = []
    for name in PROVIDERS:
        cls = provider_class(name)
        if cls.name != name:
            raise RuntimeError(f"provider module {PROVIDERS[name].server} names itself {cls.name!r}, not {name!r}")
        rows.extend(cls.config_type.rows(name, cls.label))
    return tuple(rows)
