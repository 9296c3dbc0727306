"""Errors meant for the person at the terminal: the CLI turns them into one red line."""

from __future__ import annotations


class VoicecliError(Exception):
    """Something the user can fix; the message says what went wrong and what to do."""


class SettingsError(VoicecliError):
    """A setting has an unknown name or a bad value."""


class AgentError(VoicecliError):
    """An agent file is missing or invalid."""


class MissingKeysError(VoicecliError):
    """Credentials or service keys needed for the requested work are not set."""


class ServerNotRunningError(VoicecliError):
    """No voicecli server answers where the project says one runs."""


class ProviderError(VoicecliError):
    """A telephony provider refused or failed a request."""
