"""Agents from TOML: `agents/<name>.toml`, validated at start-up with errors naming file and key."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from voicecli.errors import AgentError, MissingKeysError
from voicecli.services import SERVICES, Kind, ServiceConfig
from voicecli.services.options import OptionError
from voicecli.services.script_rules import ScriptRule
from voicecli.settings_schema import as_http_url, as_phone
from voicecli.store.records import VOICEMAIL_MODES, VoicemailMode
from voicecli.tools import HttpTool, parse_tools

AGENTS_DIR = "agents"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
TOP_LEVEL = frozenset(
    {
        "name",
        "greeting",
        "system_prompt",
        "goodbye",
        "stt",
        "llm",
        "tts",
        "call",
        "turn",
        "webhook",
        "tools",
        "transfer",
        "outbound",
    }
)
CALL_KEYS = frozenset({"max_duration_s", "idle_timeout_s", "record", "end_call_tool", "dtmf_tool"})

TurnStrategy = Literal["smart-turn", "silence"]
TURN_STRATEGIES: tuple[TurnStrategy, ...] = ("smart-turn", "silence")
# Each strategy's own key: the other's is an error rather than silently ignored.
TURN_KEYS: dict[str, str] = {"smart-turn": "max_wait_s", "silence": "silence_s"}
# Both waits count from the caller's last sound, and Silero VAD reports a stop 0.2 s after it
# (pipecat's VAD_STOP_SECS): no turn can end sooner than that.
MIN_TURN_WAIT_S = 0.2
MAX_TURN_WAIT_S = 10.0


@dataclass(frozen=True)
class TurnConfig:
    """The `[turn]` table: how the agent decides that the caller has finished speaking.

    `silence`: the turn ends when the caller has been quiet for `silence_s`.
    `smart-turn`: Smart Turn v3 judges the words so far when the caller pauses; when it says
    "not finished", the turn still ends once the caller has been quiet for `max_wait_s`.
    Both count from the caller's last sound.
    """

    strategy: TurnStrategy = "smart-turn"
    silence_s: float = 0.6
    # pipecat's own fallback is 3 s after the voice detector's stop: a caller thinks the line died.
    max_wait_s: float = 1.2


DEFAULT_VOICEMAIL_MESSAGE = "Hello, sorry we missed you. Please call us back when you can. Goodbye!"


@dataclass(frozen=True)
class OutboundConfig:
    """The `[outbound]` table: what a dialled call does when a machine answers.

    `voicemail`: "off" (no detection: every answer is a person), "hangup" (end the call), or
    "message" (wait for the greeting to end, say `voicemail_message`, hang up). A dial's own
    `voicemail` overrides it.
    """

    voicemail: VoicemailMode = "off"
    voicemail_message: str = DEFAULT_VOICEMAIL_MESSAGE


@dataclass(frozen=True)
class TransferConfig:
    """The `[transfer]` table: the people a call may be handed to, by name (never a number
    the caller said: a model talked into dialling one would be toll fraud)."""

    destinations: Mapping[str, str] = field(default_factory=dict)  # name -> E.164 number
    announce: str = "Connecting you now."


@dataclass(frozen=True)
class Agent:
    """A validated agent definition."""

    name: str
    path: Path
    greeting: str
    system_prompt: str
    stt: ServiceConfig
    llm: ServiceConfig
    tts: ServiceConfig
    max_duration_s: float = 1800.0
    idle_timeout_s: float = 60.0
    # Said when the server must end a call that is still going (shutdown, time limit).
    goodbye: str = "Sorry, I have to end the call now. Goodbye!"
    turn: TurnConfig = field(default_factory=TurnConfig)
    # `[webhook] url`: where this agent's call events go (instead of the webhook_url setting).
    webhook_url: str | None = None
    tools: tuple[HttpTool, ...] = ()  # `[[tools]]`: the user's HTTP services it may call
    # `[call] end_call_tool`: a function-calling LLM may end the call (goodbye, then hang-up).
    end_call_tool: bool = True
    # `[call] dtmf_tool`: a function-calling LLM may press keys (send_dtmf) into a phone menu.
    dtmf_tool: bool = False
    transfer: TransferConfig = field(default_factory=TransferConfig)
    # `[call] record`: each call written to `{recordings_dir}/{call_id}.wav` (call/recording.py).
    record: bool = False
    outbound: OutboundConfig = field(default_factory=OutboundConfig)

    @property
    def rules(self) -> tuple[ScriptRule, ...]:
        """The script LLM's rules (none for other LLMs)."""
        return self.llm.options.get("rules", ()) if self.llm.provider == "script" else ()

    def missing_keys(self, env: Mapping[str, str]) -> list[str]:
        """Environment variables this agent's services need that are not set."""
        missing: list[str] = []
        for kind in ("stt", "llm", "tts"):
            config: ServiceConfig = getattr(self, kind)
            spec = SERVICES[kind][config.provider]  # type: ignore[index]
            missing += [k for k in spec.missing_keys(config.options, env) if k not in missing]
        # ${VAR} in a tool's URL or headers: checked at start-up, not at the first call.
        missing += [v for tool in self.tools for v in tool.variables() if not env.get(v) and v not in missing]
        return missing

    def phrases(self) -> list[str]:
        """What callers are expected to say: the script's keywords (for offline recognisers)."""
        return [keyword for rule in self.rules for keyword in rule.keywords]


def agent_path(agents_dir: Path, name: str) -> Path:
    return agents_dir / f"{name}.toml"


def list_agent_files(agents_dir: Path) -> list[Path]:
    return sorted(agents_dir.glob("*.toml")) if agents_dir.is_dir() else []


def load_agent(path: Path) -> Agent:
    """Read and validate one agent file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgentError(f"no agent file {path}") from None
    except OSError as exc:
        raise AgentError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentError(f"{path} is not valid TOML: {exc}") from None
    return _validate(path, data)


def load_agents(agents_dir: Path, names: list[str] | None = None) -> dict[str, Agent]:
    """The named agents (all in `agents_dir` when none are named), each validated."""
    if names:
        paths = [agent_path(agents_dir, n) for n in dict.fromkeys(names)]
        for name, path in zip(dict.fromkeys(names), paths, strict=True):
            if not path.is_file():
                known = ", ".join(p.stem for p in list_agent_files(agents_dir)) or "none"
                raise AgentError(f"no agent '{name}': {path} does not exist (agents: {known})")
    else:
        paths = list_agent_files(agents_dir)
        if not paths:
            raise AgentError(f"no agents found: add a TOML file to {agents_dir}/")
    agents = [load_agent(p) for p in paths]
    by_name: dict[str, Agent] = {}
    for agent in agents:
        if agent.name in by_name:
            raise AgentError(f"{agent.path}: agent name '{agent.name}' is also used by {by_name[agent.name].path}")
        by_name[agent.name] = agent
    return by_name


def require_keys(agents: Mapping[str, Agent], env: Mapping[str, str]) -> None:
    """Stop at start-up, naming the variables to set, when a served agent lacks its keys."""
    problems = [f"{a.name} needs {', '.join(m)}" for a in agents.values() if (m := a.missing_keys(env))]
    if problems:
        raise MissingKeysError(
            "missing service keys: " + "; ".join(problems) + " (set them in .env or the environment)"
        )


class _Checker:
    """Validates one file's data, raising AgentError that names the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> AgentError:
        return AgentError(f"{self.path}: {key}: {problem}")

    def text(self, data: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
        value = data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where}{key}", "must be a non-empty string")
        return value.strip()

    def number(self, data: Mapping[str, Any], key: str, where: str, default: float) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(f"{where}{key}", "must be a positive number of seconds")
        return float(value)

    def unknown(self, data: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
        for key in data:
            if key not in allowed:
                raise self.fail(f"{where}{key}", f"unknown key (valid: {', '.join(sorted(allowed))})")

    def service(self, data: Mapping[str, Any], kind: Kind) -> ServiceConfig:
        table = data.get(kind)
        choices = ", ".join(SERVICES[kind])
        if not isinstance(table, dict):
            raise self.fail(f"[{kind}]", f"missing table; set provider to one of {choices}")
        provider = table.get("provider")
        if provider not in SERVICES[kind]:
            raise self.fail(f"{kind}.provider", f"{provider!r} is not one of {choices}")
        try:
            options = SERVICES[kind][provider].parse({k: v for k, v in table.items() if k != "provider"})
        except OptionError as exc:
            raise self.fail(f"{kind}.{exc.where}", exc.problem) from None
        return ServiceConfig(provider, options)

    def webhook(self, data: Mapping[str, Any]) -> str | None:
        table = data.get("webhook", {})
        if not isinstance(table, dict):
            raise self.fail("[webhook]", "must be a table")
        self.unknown(table, frozenset({"url"}), "webhook.")
        if "url" not in table:
            return None
        try:
            return as_http_url(table["url"])
        except ValueError as exc:
            raise self.fail("webhook.url", str(exc)) from None

    def transfer(self, data: Mapping[str, Any]) -> TransferConfig:
        table = data.get("transfer", {})
        if not isinstance(table, dict):
            raise self.fail("[transfer]", "must be a table")
        self.unknown(table, frozenset({"destinations", "announce"}), "transfer.")
        destinations = table.get("destinations", {})
        if not isinstance(destinations, dict):
            raise self.fail("transfer.destinations", 'must be a table of names and numbers: { sales = "+15551230001" }')
        numbers: dict[str, str] = {}
        for name, number in destinations.items():
            try:
                numbers[name] = as_phone(number)
            except ValueError as exc:
                raise self.fail(f"transfer.destinations.{name}", str(exc)) from None
        announce = self.text(table, "announce", "transfer.", required=False) or TransferConfig.announce
        return TransferConfig(numbers, announce)

    def tools(
        self, data: Mapping[str, Any], rules: tuple[ScriptRule, ...], transfer: TransferConfig
    ) -> tuple[HttpTool, ...]:
        try:
            tools = parse_tools(data.get("tools", []))
        except OptionError as exc:
            raise self.fail(f"tools{exc.where}", exc.problem) from None
        # A rule may call the built-ins too: send_dtmf always, transfer_call with destinations.
        names = {tool.name for tool in tools} | {"send_dtmf"} | ({"transfer_call"} if transfer.destinations else set())
        for index, rule in enumerate(rules):
            if rule.tool and rule.tool not in names:
                known = ", ".join(sorted(names))
                raise self.fail(f"llm.rules[{index}].tool", f"no [[tools]] entry named {rule.tool!r} ({known})")
            if rule.tool == "transfer_call" and rule.arguments.get("destination") not in transfer.destinations:
                raise self.fail(
                    f"llm.rules[{index}].arguments.destination",
                    f"must name one of [transfer] destinations ({', '.join(sorted(transfer.destinations))})",
                )
        return tools

    def outbound(self, data: Mapping[str, Any]) -> OutboundConfig:
        table = data.get("outbound", {})
        if not isinstance(table, dict):
            raise self.fail("[outbound]", "must be a table")
        self.unknown(table, frozenset({"voicemail", "voicemail_message"}), "outbound.")
        mode = table.get("voicemail", "off")
        if mode not in VOICEMAIL_MODES:
            raise self.fail("outbound.voicemail", f"{mode!r} is not one of {', '.join(VOICEMAIL_MODES)}")
        message = self.text(table, "voicemail_message", "outbound.", required=False) or DEFAULT_VOICEMAIL_MESSAGE
        return OutboundConfig(voicemail=mode, voicemail_message=message)

    def turn(self, data: Mapping[str, Any]) -> TurnConfig:
        table = data.get("turn", {})
        if not isinstance(table, dict):
            raise self.fail("[turn]", "must be a table")
        strategy = table.get("strategy", "smart-turn")
        if strategy not in TURN_STRATEGIES:
            raise self.fail("turn.strategy", f"{strategy!r} is not one of {', '.join(TURN_STRATEGIES)}")
        own = TURN_KEYS[strategy]
        for key in table:
            if key in TURN_KEYS.values() and key != own:
                other = next(name for name, k in TURN_KEYS.items() if k == key)
                raise self.fail(f"turn.{key}", f'applies to strategy = "{other}", not "{strategy}" (use {own})')
        self.unknown(table, frozenset({"strategy", own}), "turn.")
        default = TurnConfig()
        value = table.get(own, getattr(default, own))
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not MIN_TURN_WAIT_S <= value <= MAX_TURN_WAIT_S
        ):
            raise self.fail(
                f"turn.{own}",
                f"must be a number of seconds from {MIN_TURN_WAIT_S:g} (the voice detector's own stop delay) "
                f"to {MAX_TURN_WAIT_S:g}",
            )
        return TurnConfig(strategy=strategy, **{own: float(value)})


def _validate(path: Path, data: dict[str, Any]) -> Agent:
    check = _Checker(path)
    check.unknown(data, TOP_LEVEL, "")
    name = check.text(data, "name", "", required=False) or path.stem
    if not NAME_RE.match(name):
        raise check.fail("name", "use letters, digits, '-' or '_' (it appears in URLs)")
    if name != path.stem:
        # A copied file still naming its original would serve under the original's URLs.
        raise check.fail(
            "name", f"'{name}' is not the file's name: rename the file to {name}.toml or set name = \"{path.stem}\""
        )
    greeting = check.text(data, "greeting", "") or ""
    system_prompt = check.text(data, "system_prompt", "", required=False) or ""
    goodbye = check.text(data, "goodbye", "", required=False)
    stt, llm, tts = check.service(data, "stt"), check.service(data, "llm"), check.service(data, "tts")
    call = data.get("call", {})
    if not isinstance(call, dict):
        raise check.fail("[call]", "must be a table")
    check.unknown(call, CALL_KEYS, "call.")
    record, end_call_tool = call.get("record", False), call.get("end_call_tool", True)
    dtmf_tool = call.get("dtmf_tool", False)
    for key, value in (("record", record), ("end_call_tool", end_call_tool), ("dtmf_tool", dtmf_tool)):
        if not isinstance(value, bool):
            raise check.fail(f"call.{key}", "must be true or false")
    transfer = check.transfer(data)
    if llm.provider != "script" and not system_prompt:
        raise check.fail("system_prompt", f"the {llm.provider} LLM needs a system prompt")
    extra = {"goodbye": goodbye} if goodbye else {}
    return Agent(
        name=name,
        path=path,
        greeting=greeting,
        system_prompt=system_prompt,
        stt=stt,
        llm=llm,
        tts=tts,
        max_duration_s=check.number(call, "max_duration_s", "call.", 1800.0),
        idle_timeout_s=check.number(call, "idle_timeout_s", "call.", 60.0),
        turn=check.turn(data),
        webhook_url=check.webhook(data),
        tools=check.tools(data, llm.options.get("rules", ()) if llm.provider == "script" else (), transfer),
        transfer=transfer,
        dtmf_tool=dtmf_tool,
        record=record,
        end_call_tool=end_call_tool,
        outbound=check.outbound(data),
        **extra,
    )
