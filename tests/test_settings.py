"""Settings: one merge order, validation with names, secrets masked, config commands."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voicecli.cli import app
from voicecli.errors import SettingsError
from voicecli.settings import load_settings

runner = CliRunner()


def test_defaults_then_dotenv_then_environment_then_file_then_flags(project: Path) -> None:
    settings = load_settings(project, environ={})
    assert settings.provider == "twilio" and settings.sources["provider"] == "default"
    assert settings.twilio_max_concurrent == 10
    assert settings.twilio_api_base == "https://api.twilio.com"
    assert settings.exotel_api_base == "https://api.exotel.com"
    assert settings.vobiz_api_base == "https://api.vobiz.ai/api/v1"

    (project / ".env").write_text("TELEPHONY_PROVIDER=exotel\nTWILIO_MAX_CONCURRENT=3\n")
    settings = load_settings(project, environ={})
    assert (settings.provider, settings.sources["provider"]) == ("exotel", "environment")

    settings = load_settings(project, environ={"TELEPHONY_PROVIDER": "vobiz"})
    assert settings.provider == "vobiz"  # the process environment beats .env
    assert settings.twilio_max_concurrent == 3

    (project / "voicecli.toml").write_text('provider = "twilio"\n')
    settings = load_settings(project, environ={"TELEPHONY_PROVIDER": "vobiz"})
    assert (settings.provider, settings.sources["provider"]) == ("twilio", "file")

    settings = load_settings(project, environ={}, flags={"provider": "exotel"})
    assert (settings.provider, settings.sources["provider"]) == ("exotel", "flag")


def test_voicecli_config_names_another_file(project: Path) -> None:
    other = project / "elsewhere.toml"
    other.write_text("vobiz_max_concurrent = 4\n")
    assert load_settings(project, environ={"VOICECLI_CONFIG": str(other)}).vobiz_max_concurrent == 4
    assert load_settings(project, environ={}, config_path=other).vobiz_max_concurrent == 4


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TELEPHONY_PROVIDER": "skype"}, "provider"),
        ({"TWILIO_MAX_CONCURRENT": "0"}, "twilio_max_concurrent"),
        ({"TWILIO_MAX_CONCURRENT": "ten"}, "twilio_max_concurrent"),
        ({"PUBLIC_BASE_URL": "example.com"}, "public_base_url"),
        ({"TWILIO_PHONE_NUMBER": "call me"}, "twilio_phone_number"),
    ],
)
def test_bad_values_are_refused_by_name(project: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(project, environ=env)


def test_bad_config_file_is_a_clear_error(project: Path) -> None:
    (project / "voicecli.toml").write_text("provider = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(project, environ={})
    (project / "voicecli.toml").write_text('colour = "blue"\n')
    with pytest.raises(SettingsError, match="unknown setting 'colour'"):
        load_settings(project, environ={})


def test_secrets_are_masked(project: Path) -> None:
    settings = load_settings(project, environ={"TWILIO_AUTH_TOKEN": "abcdefghijklmnopqrstuvwxyz123456"})
    masked = settings.masked()
    assert masked["twilio_auth_token"] == "****3456"
    assert "abcdefghijklmnop" not in str(masked)


def test_config_set_get_list_unset(project: Path) -> None:
    result = runner.invoke(app, ["config", "set", "provider", "vobiz"])
    assert result.exit_code == 0, result.output
    path = project / "voicecli.toml"
    assert tomllib.loads(path.read_text()) == {"provider": "vobiz"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    result = runner.invoke(app, ["config", "get", "provider"], env={"TELEPHONY_PROVIDER": "exotel"})
    assert result.output.strip() == "vobiz"  # the file overrides the environment's default

    secret = "supersecrettoken-987654"
    assert runner.invoke(app, ["config", "set", "twilio_auth_token", secret]).exit_code == 0
    listing = runner.invoke(app, ["config", "list"], env={"TWILIO_MAX_CONCURRENT": "7"})
    assert listing.exit_code == 0
    assert secret not in listing.output and "****7654" in listing.output
    rows = [line.replace("│", " ").replace("┃", " ").split() for line in listing.output.splitlines()]
    lines = {row[0]: row for row in rows if row}
    assert lines["provider"][1:] == ["vobiz", "file"]
    assert lines["twilio_max_concurrent"][1:] == ["7", "environment"]
    assert lines["exotel_max_concurrent"][1:] == ["10", "default"]
    assert secret not in runner.invoke(app, ["config", "get", "twilio_auth_token"]).output

    result = runner.invoke(app, ["config", "unset", "provider"])
    assert result.exit_code == 0
    assert "provider" not in tomllib.loads(path.read_text())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["config", "set", "colour", "blue"], "unknown setting 'colour'"),
        (["config", "set", "provider", "skype"], "must be one of twilio"),
        (["config", "set", "twilio_max_concurrent", "0"], "whole number"),
        (["config", "get", "nope"], "Valid settings: provider"),
    ],
)
def test_config_refuses_bad_keys_and_values(project: Path, args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output
    assert not (project / "voicecli.toml").exists()
