"""Settings: one declared table, merged in one place, validated once, frozen.

Layers, lowest to highest: built-in defaults; the environment (`.env` in the project
directory, then the process environment); `voicecli.toml` (edited by hand, and where
`config set` puts the file-only settings); the store (what `config set` and the settings
API change: shared by every process, live, surviving restarts); command-line flags.
Code below this module never reads `os.environ`: it gets a `Settings`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar
from urllib.parse import urlsplit

from voicecli.errors import SettingsError, VoicecliError
from voicecli.server.urls import hide_password
from voicecli.settings_schema import Setting, as_http_url, as_str, mask

if TYPE_CHECKING:
    from voicecli.store import CallStore

T = TypeVar("T")

Source = Literal["default", "environment", "file", "store", "flag"]

CONFIG_FILE = "voicecli.toml"
STATE_DIR = ".voicecli"


def _as_provider(value: Any) -> str:
    from voicecli.providers import PROVIDERS  # the registry is data only: cheap to import

    text = as_str(value).lower()
    if text not in PROVIDERS:
        raise ValueError(f"must be one of {', '.join(PROVIDERS)}")
    return text


def _as_database_url(value: Any) -> str:
    text = as_str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("postgresql", "postgres") or not (parts.netloc or parts.query):
        raise ValueError("must be a PostgreSQL URL such as postgresql://user:password@host:5432/voicecli")
    return text


def _as_folder(value: Any) -> str:
    text = as_str(value)
    if not text:
        raise ValueError("must be a folder path")
    return text


def _as_positive(most: float) -> Any:
    def check(value: Any) -> float:
        try:
            number = float(str(value).strip())
        except ValueError:
            number = 0.0
        if isinstance(value, bool) or not 0 < number <= most:
            raise ValueError(f"must be a number above 0 and at most {most:g}")
        return number

    return check


def _as_workers(value: Any) -> int | str:
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        number = int(text)
    except ValueError:
        number = 0
    if isinstance(value, bool) or not 1 <= number <= 256:
        raise ValueError("must be a whole number from 1 to 256, or auto (one per core)")
    return number


def _as_networks(value: Any) -> str:
    """Comma-separated addresses or CIDR ranges, normalised (`127.0.0.1, 10.0.0.0/8`)."""
    import ipaddress

    parts = [p.strip() for p in as_str(value).split(",") if p.strip()]
    try:
        return ",".join(str(ipaddress.ip_network(p, strict=False)) for p in parts)
    except ValueError:
        raise ValueError(
            "must be IP addresses or CIDR ranges separated by commas, such as 127.0.0.1,10.0.0.0/8"
        ) from None


def _provider_rows() -> tuple[Setting, ...]:
    from voicecli.providers import setting_rows  # each provider declares its own (providers/base.py)

    return setting_rows()


SETTINGS: tuple[Setting, ...] = (
    Setting("provider", "twilio", _as_provider, "default telephony provider", env="TELEPHONY_PROVIDER"),
    Setting("public_base_url", None, as_http_url, "public https URL that reaches this server"),
    *_provider_rows(),
    Setting(
        "trusted_proxies",
        None,
        _as_networks,
        "proxies whose X-Forwarded-For names the client (--tunnel adds loopback)",
    ),
    Setting("webhook_url", None, as_http_url, "where each call's call.started and call.ended events are POSTed"),
    Setting(
        "webhook_retry_hours",
        24.0,
        _as_positive(720.0),
        "how long an undelivered webhook event is retried before it is marked failed",
    ),
    Setting(
        "webhook_backoff_max_s",
        3600.0,
        _as_positive(86400.0),
        "the longest wait between two tries of a webhook event (the first is 1 s, then doubling)",
    ),
    Setting(
        "database_url",
        None,
        _as_database_url,
        "PostgreSQL URL shared by several instances (default: SQLite in .voicecli/)",
        secret=True,
        env="VOICECLI_DATABASE_URL",
        file_only=True,
        show=hide_password,
    ),
    Setting(
        "recordings_dir",
        f"{STATE_DIR}/recordings",
        _as_folder,
        "where agents with [call] record = true write each call's WAV (relative: to the project)",
        file_only=True,
        env="VOICECLI_RECORDINGS_DIR",
    ),
    Setting(
        "workers",
        1,
        _as_workers,
        "serving processes: a number, or auto (one per core)",
        file_only=True,
        env="VOICECLI_WORKERS",
    ),
)
BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}

# Environment-only values: never written to voicecli.toml, never served by the settings API.
ENV_ONLY = ("VOICECLI_SECRET", "VOICECLI_API_TOKEN", "VOICECLI_WEBHOOK_SECRET", "VOICECLI_CONFIG", "NGROK_AUTHTOKEN")


class Layers(NamedTuple):
    """What a merge starts from, lowest to highest (defaults come from SETTINGS)."""

    env: Mapping[str, str] = {}
    file: Mapping[str, Any] = {}
    store: Mapping[str, Any] = {}
    flags: Mapping[str, Any] = {}


@dataclass(frozen=True)
class Settings:
    """The merged, validated settings in force; never mutated (see with_store, with_flags)."""

    project_dir: Path
    config_path: Path
    values: Mapping[str, Any]
    sources: Mapping[str, Source]
    # Service keys (OPENAI_API_KEY, ...) and environment-only values, by variable name.
    env: Mapping[str, str] = field(default_factory=dict)
    # What the merge started from, so a change to one layer can be merged again the same way.
    layers: Layers = Layers()

    @property
    def variables(self) -> Mapping[str, str]:
        """Every variable of .env and the environment: what an agent's `${VAR}` may name."""
        return self.layers.env

    # The core settings, typed; a provider reads its own through its typed view
    # (`Provider.config`), anything else by name with `get`.
    @property
    def provider(self) -> str:
        return self.values["provider"]

    @property
    def public_base_url(self) -> str | None:
        return self.values["public_base_url"]

    @property
    def trusted_proxies(self) -> str | None:
        return self.values["trusted_proxies"]

    @property
    def database_url(self) -> str | None:
        return self.values["database_url"]

    @property
    def workers(self) -> int | str:
        return self.values["workers"]

    @property
    def recordings_dir(self) -> Path:
        """Where this instance writes recordings: on its own disk, so file-only."""
        return self.project_dir / self.values["recordings_dir"]

    @property
    def state_dir(self) -> Path:
        return self.project_dir / STATE_DIR

    @property
    def stored(self) -> Mapping[str, Any]:
        """The store layer in this merge, by name (after `check_store_changes`: the parsed values)."""
        return self.layers.store

    def get(self, name: str) -> Any:
        return self.values[name]

    def masked(self) -> dict[str, Any]:
        """All declared settings with secrets masked, for display and the API."""
        return {s.name: s.shown(self.values[s.name]) for s in SETTINGS}

    def with_store(self, values: Mapping[str, Any]) -> Settings:
        """The same settings with the store layer replaced by `values`, merged and validated.

        Names the store may hold from another version (gone, or file-only now) are ignored:
        a value there must never keep a server from starting or from taking a change.
        """
        layer = {
            name: value
            for name, value in values.items()
            if name in BY_NAME and not BY_NAME[name].file_only and value is not None
        }
        return self._merged(store=layer)

    def check_store_changes(self, changes: Mapping[str, Any]) -> Settings:
        """The settings after these changes to the store layer (None removes a name), validated.

        Refuses unknown and file-only names. The values in the result's `stored` are the
        validated ones (`"7"` becomes 7): what to write to the store.
        """
        layer = dict(self.layers.store)
        for name, value in changes.items():
            spec = setting(name)
            if spec.file_only:
                raise SettingsError(read_at_start_up(spec))
            if value is None:
                layer.pop(name, None)
            else:
                layer[name] = _parse(spec, value, "flag")
        return self._merged(store=layer)

    def with_flags(self, changes: Mapping[str, Any]) -> Settings:
        """The settings with these values as if given as flags, for this run only (None drops one)."""
        flags = dict(self.layers.flags)
        for name, value in changes.items():
            setting(name)
            if value is None:
                flags.pop(name, None)
            else:
                flags[name] = value
        return self._merged(flags=flags)

    def _merged(self, **layers: Mapping[str, Any]) -> Settings:
        return _merge(self.project_dir, self.config_path, self.layers._replace(**layers))


def read_at_start_up(spec: Setting) -> str:
    """Why a file-only setting cannot change through the store, and where to set it."""
    return (
        f"{spec.name} is read at start-up: set it in voicecli.toml (voicecli config set {spec.name} VALUE)"
        f" or the environment ({spec.env_name}); a restart of voicecli serve applies it"
    )


def setting(name: str) -> Setting:
    """The declared setting `name`, or a SettingsError listing the valid ones."""
    spec = BY_NAME.get(name)
    if spec is None:
        raise SettingsError(f"unknown setting '{name}'. Valid settings: {', '.join(BY_NAME)}")
    return spec


STORE = "the store"


def _parse(spec: Setting, raw: Any, source: str) -> Any:
    try:
        return spec.parse(raw)
    except ValueError as exc:
        where = f" (from {source})" if source != "flag" else ""
        fix = ""
        if source == STORE:
            name = spec.name
            fix = f"; change it with: voicecli config set {name} VALUE, or drop it with: voicecli config unset {name}"
        raise SettingsError(f"bad value for {spec.name}{where}: {exc}{fix}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The user's voicecli.toml as a dict; missing file is empty, a broken one a clear error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None
    for name in data:
        if name not in BY_NAME:
            raise SettingsError(f"{path}: unknown setting '{name}'. Valid settings: {', '.join(BY_NAME)}")
    return data


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE pairs from a .env file (python-dotenv's parser, nothing exported)."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_settings(
    project_dir: Path | None = None,
    *,
    config_path: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, .env, the environment, voicecli.toml and flags into one Settings.

    The store layer starts empty: `load_store_layer` (the CLI) or the server adds it.
    """
    project_dir = (project_dir or Path.cwd()).resolve()
    process_env = dict(os.environ if environ is None else environ)
    # An empty value (`PUBLIC_BASE_URL=` in .env or the environment) means "not set", never "".
    env = {k: v for layer in (read_dotenv(project_dir / ".env"), process_env) for k, v in layer.items() if v != ""}
    if config_path is None:
        named = env.get("VOICECLI_CONFIG")
        config_path = Path(named) if named else project_dir / CONFIG_FILE
    if not config_path.is_absolute():
        config_path = project_dir / config_path
    layers = Layers(env=env, file=read_config_file(config_path), flags=dict(flags or {}))
    return _merge(project_dir, config_path, layers)


@asynccontextmanager
async def opened_store(settings: Settings) -> AsyncIterator[CallStore]:
    """The store these settings name, open for the CLI (no server runs, or reading); closed after."""
    import sqlite3

    from voicecli.store import store_for  # only here: commands that never open the store stay fast

    store = store_for(settings)
    try:
        await store.open()
    except (OSError, sqlite3.Error) as exc:
        raise VoicecliError(f"cannot open the store at {store.location}: {exc}") from None
    try:
        yield store
    finally:
        await store.close()


def store_exists(settings: Settings) -> bool:
    """Whether there is a store to read: a database URL, or a `calls.db` some `serve` made."""
    from voicecli.runtime import DB_FILE

    return bool(settings.database_url) or (settings.state_dir / DB_FILE).is_file()


def read_store(settings: Settings, work: Callable[[CallStore], Awaitable[T]], nothing: T) -> T:
    """`work(store)` on the store these settings name, for a CLI command with no server to ask;
    `nothing` when no store was ever made here (reading must not create one)."""
    import asyncio

    if not store_exists(settings):
        return nothing

    async def run() -> T:
        async with opened_store(settings) as store:
            return await work(store)

    return asyncio.run(run())


async def load_store_layer(settings: Settings) -> Settings:
    """`settings` with the store's layer read into it (the CLI's way; the server keeps its store open)."""
    if not store_exists(settings):
        # Nothing was ever stored here: reading settings must not create .voicecli/calls.db.
        return settings.with_store({})
    async with opened_store(settings) as store:
        return settings.with_store(await store.stored_settings())


def _merge(project_dir: Path, config_path: Path, layers: Layers) -> Settings:
    """The one merge: each layer, lowest first, replaces what is below it."""
    env, file_values, store_values, flags = layers
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for spec in SETTINGS:
        values[spec.name], sources[spec.name] = spec.default, "default"
        if spec.env_name in env:
            values[spec.name] = _parse(spec, env[spec.env_name], f"${spec.env_name}")
            sources[spec.name] = "environment"
        if spec.name in file_values:
            values[spec.name] = _parse(spec, file_values[spec.name], str(config_path))
            sources[spec.name] = "file"
        if spec.name in store_values:
            values[spec.name] = _parse(spec, store_values[spec.name], STORE)
            sources[spec.name] = "store"
        if flags.get(spec.name) is not None:
            values[spec.name] = _parse(spec, flags[spec.name], "flag")
            sources[spec.name] = "flag"
    declared = {s.env_name for s in SETTINGS}
    extra = {k: v for k, v in env.items() if k not in declared and _is_service_env(k)}
    return Settings(project_dir, config_path, values, sources, extra, layers)


def _is_service_env(name: str) -> bool:
    # Keys the speech/LLM services read (OPENAI_API_KEY, DEEPGRAM_API_KEY, ...) plus our own.
    return name in ENV_ONLY or name.endswith(("_API_KEY", "_BASE_URL")) or name.startswith("VOICECLI_")


def setting_names() -> list[str]:
    return [s.name for s in SETTINGS]


def is_secret(name: str) -> bool:
    return setting(name).secret


def validate_value(name: str, raw: Any) -> Any:
    """Parse one value for `name`, raising SettingsError naming it when bad."""
    return _parse(setting(name), raw, "flag")


def shown(name: str, value: Any) -> Any:
    """`value` of setting `name` fit to show: secrets masked, a database URL without its password."""
    return setting(name).shown(value)


__all__ = [
    "SETTINGS",
    "Layers",
    "Setting",
    "Settings",
    "SettingsError",
    "hide_password",
    "load_settings",
    "load_store_layer",
    "opened_store",
    "mask",
    "read_config_file",
    "setting_names",
    "shown",
    "validate_value",
]
