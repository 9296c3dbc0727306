"""Settings: one merge order (defaults, environment, voicecli.toml, the store, flags), validation with names,
secrets masked, config commands."""

from __future__ import annotations

import asyncio
import stat
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from voicecli.cli import app
from voicecli.errors import SettingsError
from voicecli.providers import PROVIDERS, load_provider
from voicecli.settings import hide_password, load_settings, setting
from voicecli.store import SQLiteCallStore

runner = CliRunner()


def test_defaults_then_dotenv_then_environment_then_file_then_flags(project: Path) -> None:
    settings = load_settings(project, environ={})
    assert settings.provider == "twilio" and settings.sources["provider"] == "default"
    assert settings.get("twilio_max_concurrent") == 10
    assert settings.get("twilio_api_base") == "https://api.twilio.com"
    assert settings.get("exotel_api_base") == "https://api.exotel.com"
    assert settings.get("vobiz_api_base") == "https://api.vobiz.ai/api/v1"

    (project / ".env").write_text("TELEPHONY_PROVIDER=exotel\nTWILIO_MAX_CONCURRENT=3\n")
    settings = load_settings(project, environ={})
    assert (settings.provider, settings.sources["provider"]) == ("exotel", "environment")

    settings = load_settings(project, environ={"TELEPHONY_PROVIDER": "vobiz"})
    assert settings.provider == "vobiz"  # the process environment beats .env
    assert settings.get("twilio_max_concurrent") == 3

    (project / "voicecli.toml").write_text('provider = "twilio"\n')
    settings = load_settings(project, environ={"TELEPHONY_PROVIDER": "vobiz"})
    assert (settings.provider, settings.sources["provider"]) == ("twilio", "file")

    settings = load_settings(project, environ={}, flags={"provider": "exotel"})
    assert (settings.provider, settings.sources["provider"]) == ("exotel", "flag")


def test_voicecli_config_names_another_file(project: Path) -> None:
    other = project / "elsewhere.toml"
    other.write_text("vobiz_max_concurrent = 4\n")
    assert load_settings(project, environ={"VOICECLI_CONFIG": str(other)}).get("vobiz_max_concurrent") == 4
    assert load_settings(project, environ={}, config_path=other).get("vobiz_max_concurrent") == 4


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


def _listing(output: str) -> dict[str, list[str]]:
    rows = [line.replace("│", " ").replace("┃", " ").split() for line in output.splitlines()]
    return {row[0]: row for row in rows if row}


def test_config_set_get_list_unset(project: Path) -> None:
    result = runner.invoke(app, ["config", "set", "provider", "vobiz"])
    assert result.exit_code == 0, result.output
    db = project / ".voicecli" / "calls.db"
    assert f"provider = vobiz  (saved in the store ({db}))" in result.output
    assert not (project / "voicecli.toml").exists()  # the store, not the file
    assert asyncio.run(_stored(project)) == {"provider": "vobiz"}

    result = runner.invoke(app, ["config", "get", "provider"], env={"TELEPHONY_PROVIDER": "exotel"})
    assert result.output.strip() == "vobiz"  # the store overrides the environment

    secret = "supersecrettoken-987654"
    result = runner.invoke(app, ["config", "set", "twilio_auth_token", secret])
    assert result.exit_code == 0 and secret not in result.output and "****7654" in result.output
    listing = runner.invoke(app, ["config", "list"], env={"TWILIO_MAX_CONCURRENT": "7"})
    assert listing.exit_code == 0
    assert secret not in listing.output and "****7654" in listing.output
    lines = _listing(listing.output)
    assert lines["provider"][1:] == ["vobiz", "store"]
    assert lines["twilio_max_concurrent"][1:] == ["7", "environment"]
    assert lines["exotel_max_concurrent"][1:] == ["10", "default"]
    assert secret not in runner.invoke(app, ["config", "get", "twilio_auth_token"]).output

    result = runner.invoke(app, ["config", "unset", "provider"], env={"TELEPHONY_PROVIDER": "exotel"})
    assert result.exit_code == 0, result.output
    assert "provider unset (removed from the store" in result.output
    assert result.output.strip().endswith("now exotel from environment")  # the lower layer again
    assert asyncio.run(_stored(project)) == {"twilio_auth_token": secret}


def test_config_describe_says_what_a_setting_is_and_where_its_value_comes_from(project: Path) -> None:
    secret = "describe-me-secret-1234"
    result = runner.invoke(app, ["config", "describe", "vobiz_auth_token"], env={"VOBIZ_AUTH_TOKEN": secret})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "vobiz_auth_token: Vobiz auth token"
    assert "variable:   VOBIZ_AUTH_TOKEN" in lines[1]
    assert "value:      ****1234  (from environment)" in result.output
    assert secret not in result.output

    result = runner.invoke(app, ["config", "describe", "exotel_api_base"])
    assert "default:    https://api.exotel.com" in result.output
    assert "read at start-up" in result.output  # file-only

    result = runner.invoke(app, ["config", "describe", "twilio_max_concurent"])
    assert result.exit_code == 1 and "unknown setting 'twilio_max_concurent'" in result.output


async def _stored(project: Path, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The store's settings layer, read (or changed) as any other process would."""
    store = SQLiteCallStore(project / ".voicecli" / "calls.db")
    await store.open()
    try:
        return await store.change_settings(changes) if changes else await store.stored_settings()
    finally:
        await store.close()


def test_the_store_beats_the_file_and_the_environment_and_flags_beat_the_store(project: Path) -> None:
    (project / "voicecli.toml").write_text('provider = "vobiz"\ntwilio_max_concurrent = 4\n')
    base = load_settings(project, environ={"TELEPHONY_PROVIDER": "twilio", "EXOTEL_MAX_CONCURRENT": "6"})
    stored = base.with_store({"provider": "exotel", "exotel_max_concurrent": 8})
    assert (stored.provider, stored.sources["provider"]) == ("exotel", "store")
    assert (stored.get("exotel_max_concurrent"), stored.sources["exotel_max_concurrent"]) == (8, "store")
    assert (stored.get("twilio_max_concurrent"), stored.sources["twilio_max_concurrent"]) == (4, "file")
    assert stored.with_store({}).provider == "vobiz"  # an empty store: the file again

    flagged = load_settings(project, environ={}, flags={"provider": "twilio"}).with_store({"provider": "exotel"})
    assert (flagged.provider, flagged.sources["provider"]) == ("twilio", "flag")
    # Run-only overrides (the tunnel's URL) are flags: a store change later keeps them.
    tunnel = stored.with_flags({"public_base_url": "https://abc.ngrok.app"})
    later = tunnel.with_store({"public_base_url": "https://stored.example.com", "provider": "vobiz"})
    assert (later.public_base_url, later.sources["public_base_url"]) == ("https://abc.ngrok.app", "flag")
    assert later.provider == "vobiz"


def test_the_store_layer_ignores_names_gone_or_file_only(project: Path) -> None:
    settings = load_settings(project, environ={}).with_store(
        {"colour": "blue", "database_url": "postgresql://u:p@db/voicecli", "workers": 4, "vobiz_max_concurrent": 3}
    )
    assert settings.database_url is None and settings.workers == 1
    assert settings.get("vobiz_max_concurrent") == 3 and dict(settings.stored) == {"vobiz_max_concurrent": 3}


@pytest.mark.parametrize("name", ["database_url", "workers", "twilio_api_base", "exotel_api_base", "vobiz_api_base"])
def test_file_only_settings_cannot_change_through_the_store(project: Path, name: str) -> None:
    settings = load_settings(project, environ={})
    with pytest.raises(SettingsError, match=f"^{name} is read at start-up: set it in voicecli.toml") as caught:
        settings.check_store_changes({name: "2"})
    assert "restart" in str(caught.value) and setting(name).env_name in str(caught.value)


def test_store_changes_are_validated_and_kept_in_their_parsed_form(project: Path) -> None:
    settings = load_settings(project, environ={})
    with pytest.raises(SettingsError, match="unknown setting 'colour'"):
        settings.check_store_changes({"colour": "blue"})
    with pytest.raises(SettingsError, match="^bad value for twilio_max_concurrent: must be a whole number"):
        settings.check_store_changes({"twilio_max_concurrent": "0"})
    checked = settings.check_store_changes({"twilio_max_concurrent": " 7 ", "trusted_proxies": "10.0.0.1"})
    assert dict(checked.stored) == {"twilio_max_concurrent": 7, "trusted_proxies": "10.0.0.1/32"}
    assert dict(checked.check_store_changes({"twilio_max_concurrent": None}).stored) == {
        "trusted_proxies": "10.0.0.1/32"
    }


def test_a_bad_value_in_the_store_is_named_and_can_be_removed(project: Path) -> None:
    settings = load_settings(project, environ={})
    with pytest.raises(SettingsError, match=r"bad value for twilio_max_concurrent \(from the store\)"):
        settings.with_store({"twilio_max_concurrent": "zero"})

    asyncio.run(_stored(project, {"twilio_max_concurrent": "zero"}))  # as an older voicecli might have
    result = runner.invoke(app, ["config", "list"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "bad value for twilio_max_concurrent (from the store)" in result.output
    assert "voicecli config unset twilio_max_concurrent" in result.output
    result = runner.invoke(app, ["config", "unset", "twilio_max_concurrent"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("now 10 from default")


def test_a_voicecli_toml_from_an_earlier_version_still_applies(project: Path) -> None:
    (project / "voicecli.toml").write_text(
        "# Set through `voicecli config set` or the settings API; safe to edit by hand.\n"
        'provider = "exotel"\nexotel_max_concurrent = 3\n'
    )
    listing = runner.invoke(app, ["config", "list"])
    assert listing.exit_code == 0, listing.output
    assert _listing(listing.output)["provider"][1:] == ["exotel", "file"]
    assert runner.invoke(app, ["config", "set", "provider", "vobiz"]).exit_code == 0
    assert runner.invoke(app, ["config", "get", "provider"]).output.strip() == "vobiz"

    # unset takes it out of both layers, and says so.
    result = runner.invoke(app, ["config", "unset", "provider"])
    assert result.exit_code == 0, result.output
    assert f"and {project / 'voicecli.toml'}" in result.output and "now twilio from default" in result.output
    assert tomllib.loads((project / "voicecli.toml").read_text()) == {"exotel_max_concurrent": 3}


def test_config_set_writes_file_only_settings_to_voicecli_toml(project: Path) -> None:
    path = project / "voicecli.toml"
    result = runner.invoke(app, ["config", "set", "workers", "4"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"workers = 4  (saved in {path}; a restart of voicecli serve applies it)"
    result = runner.invoke(app, ["config", "set", "database_url", "postgresql://voice:hunter2pass@db.example/voicecli"])
    assert result.exit_code == 0, result.output
    assert "postgresql://voice:****@db.example/voicecli" in result.output and "hunter2pass" not in result.output
    assert tomllib.loads(path.read_text()) == {
        "database_url": "postgresql://voice:hunter2pass@db.example/voicecli",
        "workers": 4,
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (project / ".voicecli" / "calls.db").exists()  # the store was never opened

    result = runner.invoke(app, ["config", "unset", "database_url"])
    assert result.exit_code == 0, result.output
    assert "a restart of voicecli serve applies it" in result.output
    assert tomllib.loads(path.read_text()) == {"workers": 4}


def test_a_database_url_shows_without_its_password(project: Path) -> None:
    assert hide_password("postgresql://voice:s3cret@db:5432/voicecli") == "postgresql://voice:****@db:5432/voicecli"
    assert (
        hide_password("postgres://db/voicecli?user=v&password=s3cret") == "postgres://db/voicecli?user=v&password=****"
    )
    assert hide_password("postgresql://voice@db/voicecli") == "postgresql://voice@db/voicecli"
    settings = load_settings(project, environ={"VOICECLI_DATABASE_URL": "postgresql://voice:s3cret@db/voicecli"})
    assert settings.masked()["database_url"] == "postgresql://voice:****@db/voicecli"


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
    assert not (project / ".voicecli" / "calls.db").exists()


async def test_the_settings_api_writes_the_store_and_refuses_file_only_settings(project: Path, start_server) -> None:
    server = await start_server()
    url = server.url + "/api/settings/telephony"
    async with aiohttp.ClientSession(headers=server.headers) as http:
        for name, value in [("database_url", "postgresql://u:p@db/v"), ("workers", 2), ("vobiz_api_base", "http://x")]:
            async with http.put(url, json={name: value}) as resp:
                assert resp.status == 422, name
                assert (await resp.json())["error"].startswith(f"{name} is read at start-up: set it in voicecli.toml")
        async with http.put(url, data=b"{not json", headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400
        async with http.put(url, json={"provider": "exotel", "exotel_max_concurrent": "4"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["exotel_max_concurrent"] == 4
        async with http.get(url) as resp:
            assert (await resp.json())["provider"] == "exotel"
    assert server.state.settings.sources["provider"] == "store"
    assert server.state.provider("exotel").max_concurrent == 4  # applied without a restart
    assert await server.state.store.stored_settings() == {"exotel_max_concurrent": 4, "provider": "exotel"}
    assert not (project / "voicecli.toml").exists()

    # A new server on the same project (a restart) reads the store back.
    again = await start_server()
    async with (
        aiohttp.ClientSession(headers=again.headers) as http,
        http.get(url.replace(server.url, again.url)) as resp,
    ):
        assert (await resp.json())["provider"] == "exotel"


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_each_provider_reads_its_own_settings_from_its_own_variables(project: Path, name: str) -> None:
    # Every provider's limit set to a different number: each must read only its own.
    env = {f"{other.upper()}_MAX_CONCURRENT": str(3 + i) for i, other in enumerate(PROVIDERS)}
    settings = load_settings(project, environ={**env, f"{name.upper()}_PHONE_NUMBER": "+15550001234"})
    provider = load_provider(name, settings)
    assert provider.max_concurrent == int(env[f"{name.upper()}_MAX_CONCURRENT"])
    assert provider.config.phone_number == "+15550001234" and provider.caller_id(None) == "+15550001234"
    assert settings.sources[f"{name}_max_concurrent"] == "environment"
    # Its credentials are its own rows, named after it, and doctor asks for them by variable.
    assert provider.credential_settings and all(s.startswith(f"{name}_") for s in provider.credential_settings)
    assert provider.missing_credentials() == [s.upper() for s in provider.credential_settings]
