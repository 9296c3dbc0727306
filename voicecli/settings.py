"""Settings: one declared table, merged in one place, validated once, frozen.

Order, lowest to highest: built-in defaults; the environment (`.env` in the project
directory, then the process environment); `voicecli.toml` (what the user set through
voicecli itself: `config set`, the settings API); command-line flags.
Code below this module never reads `os.environ`: it gets a `Settings`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from voicecli.errors import SettingsError

Source = Literal["default", "environment", "file", "flag"]

CONFIG_FILE = "voicecli.toml"
STATE_DIR = ".voicecli"


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value.strip()


def _as_limit(value: Any) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError("must be a whole number from 1 to 10000") from None
    if isinstance(value, bool) or not 1 <= number <= 10000:
        raise ValueError("must be a whole number from 1 to 10000")
    return number


def _as_url(*schemes: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _as_str(value).rstrip("/")
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return text

    return check


def _as_provider(value: Any) -> str:
    from voicecli.providers import PROVIDERS  # the registry is data only: cheap to import

    text = _as_str(value).lower()
    if text not in PROVIDERS:
        raise ValueError(f"must be one of {', '.join(PROVIDERS)}")
    return text


def _as_phone(value: Any) -> str:
    text = _as_str(value)
    if not re.fullmatch(r"\+?[0-9]{6,16}", text):
        raise ValueError("must be a phone number such as +15551234567")
    return text


def _as_database_url(value: Any) -> str:
    text = _as_str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("postgresql", "postgres") or not (parts.netloc or parts.query):
        raise ValueError("must be a PostgreSQL URL such as postgresql://user:password@host:5432/voicecli")
    return text


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

    parts = [p.strip() for p in _as_str(value).split(",") if p.strip()]
    try:
        return ",".join(str(ipaddress.ip_network(p, strict=False)) for p in parts)
    except ValueError:
        raise ValueError(
            "must be IP addresses or CIDR ranges separated by commas, such as 127.0.0.1,10.0.0.0/8"
        ) from None


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

    @property
    def env_name(self) -> str:
        return self.env or self.name.upper()


_HTTP = _as_url("http", "https")

SETTINGS: tuple[Setting, ...] = (
    Setting("provider", "twilio", _as_provider, "default telephony provider", env="TELEPHONY_PROVIDER"),
    Setting("public_base_url", None, _HTTP, "public https URL that reaches this server"),
    Setting("twilio_account_sid", None, _as_str, "Twilio account SID (AC...)"),
    Setting("twilio_auth_token", None, _as_str, "Twilio auth token", secret=True),
    Setting("twilio_phone_number", None, _as_phone, "default Twilio caller ID"),
    Setting("twilio_api_base", "https://api.twilio.com", _HTTP, "Twilio REST base URL", file_only=True),
    Setting("twilio_max_concurrent", 10, _as_limit, "concurrent Twilio calls"),
    Setting("exotel_account_sid", None, _as_str, "Exotel account SID"),
    Setting("exotel_api_key", None, _as_str, "Exotel API key", secret=True),
    Setting("exotel_api_token", None, _as_str, "Exotel API token", secret=True),
    Setting("exotel_phone_number", None, _as_phone, "default Exotel virtual number"),
    Setting("exotel_api_base", "https://api.exotel.com", _HTTP, "Exotel REST base URL (no /v1)", file_only=True),
    Setting("exotel_max_concurrent", 10, _as_limit, "concurrent Exotel calls"),
    Setting("exotel_stream_secret", None, _as_str, "secret for static Exotel stream URLs", secret=True),
    Setting("vobiz_auth_id", None, _as_str, "Vobiz auth ID (MA_...)"),
    Setting("vobiz_auth_token", None, _as_str, "Vobiz auth token", secret=True),
    Setting("vobiz_phone_number", None, _as_phone, "default Vobiz caller ID"),
    Setting("vobiz_api_base", "https://api.vobiz.ai/api/v1", _HTTP, "Vobiz REST base URL", file_only=True),
    Setting("vobiz_max_concurrent", 10, _as_limit, "concurrent Vobiz calls"),
    Setting(
        "trusted_proxies",
        None,
        _as_networks,
        "proxies whose X-Forwarded-For names the client (--tunnel adds loopback)",
    ),
    Setting(
        "database_url",
        None,
        _as_database_url,
        "PostgreSQL URL shared by several instances (default: SQLite in .voicecli/)",
        secret=True,
        env="VOICECLI_DATABASE_URL",
        file_only=True,
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
ENV_ONLY = ("VOICECLI_SECRET", "VOICECLI_API_TOKEN", "VOICECLI_CONFIG", "NGROK_AUTHTOKEN")


@dataclass(frozen=True)
class Settings:
    """The merged, validated settings in force; never mutated (see with_file_changes)."""

    project_dir: Path
    config_path: Path
    values: Mapping[str, Any]
    sources: Mapping[str, Source]
    # Service keys (OPENAI_API_KEY, ...) and environment-only values, by variable name.
    env: Mapping[str, str] = field(default_factory=dict)
    # What the merge started from, so a change to the file can be merged again the same way.
    layers: tuple[Mapping[str, str], Mapping[str, Any], Mapping[str, Any]] = ({}, {}, {})

    def __getattr__(self, name: str) -> Any:
        # Declared settings read as attributes: settings.twilio_auth_token.
        if name in BY_NAME:
            return self.values[name]
        raise AttributeError(name)

    @property
    def state_dir(self) -> Path:
        return self.project_dir / STATE_DIR

    def get(self, name: str) -> Any:
        return self.values[name]

    def masked(self) -> dict[str, Any]:
        """All declared settings with secrets masked, for display and the API."""
        return {s.name: mask(self.values[s.name]) if s.secret else self.values[s.name] for s in SETTINGS}

    def with_file_changes(self, changes: Mapping[str, Any]) -> Settings:
        """The settings after these changes to voicecli.toml (None removes a key), validated.

        The environment and flags still apply as at start-up, so unsetting a key brings back
        the environment's value, not the built-in default.
        """
        env, file_values, flags = self.layers
        new_file = dict(file_values)
        for name, value in changes.items():
            setting(name)
            if value is None:
                new_file.pop(name, None)
            else:
                new_file[name] = value
        return _merge(self.project_dir, self.config_path, env, new_file, flags)


def mask(value: Any) -> Any:
    """Show that a secret is set without showing it."""
    if not value:
        return value
    text = str(value)
    return "****" + text[-4:] if len(text) >= 12 else "****"


def setting(name: str) -> Setting:
    """The declared setting `name`, or a SettingsError listing the valid ones."""
    spec = BY_NAME.get(name)
    if spec is None:
        raise SettingsError(f"unknown setting '{name}'. Valid settings: {', '.join(BY_NAME)}")
    return spec


def _parse(spec: Setting, raw: Any, source: str) -> Any:
    try:
        return spec.parse(raw)
    except ValueError as exc:
        where = f" (from {source})" if source != "flag" else ""
        raise SettingsError(f"bad value for {spec.name}{where}: {exc}") from None


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
    """Merge defaults, .env, the environment, voicecli.toml and flags into one Settings."""
    project_dir = (project_dir or Path.cwd()).resolve()
    process_env = dict(os.environ if environ is None else environ)
    env = {**read_dotenv(project_dir / ".env"), **{k: v for k, v in process_env.items() if v != ""}}
    if config_path is None:
        named = env.get("VOICECLI_CONFIG")
        config_path = Path(named) if named else project_dir / CONFIG_FILE
    if not config_path.is_absolute():
        config_path = project_dir / config_path
    return _merge(project_dir, config_path, env, read_config_file(config_path), flags or {})


def _merge(
    project_dir: Path,
    config_path: Path,
    env: Mapping[str, str],
    file_values: Mapping[str, Any],
    flags: Mapping[str, Any],
) -> Settings:
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
        if flags.get(spec.name) is not None:
            values[spec.name] = _parse(spec, flags[spec.name], "flag")
            sources[spec.name] = "flag"
    declared = {s.env_name for s in SETTINGS}
    extra = {k: v for k, v in env.items() if k not in declared and _is_service_env(k)}
    return Settings(project_dir, config_path, values, sources, extra, (env, file_values, flags))


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


__all__ = [
    "SETTINGS",
    "Setting",
    "Settings",
    "SettingsError",
    "load_settings",
    "mask",
    "read_config_file",
    "setting_names",
    "validate_value",
]
