"""Agents from TOML: the shipped ones load, and every mistake names the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from voicecli.agents import load_agent, load_agents, require_keys
from voicecli.errors import AgentError, MissingKeysError
from voicecli.services.script_llm import match_rule

DEMO_HEAD = """
greeting = "Hi"
[stt]
provider = "pocketsphinx"
[tts]
provider = "espeak"
"""
SCRIPT = """
[llm]
provider = "script"
fallback = "Pardon?"
[[llm.rules]]
keywords = ["pricing"]
reply = "Twenty dollars."
"""


def test_shipped_agents_are_valid(project: Path) -> None:
    agents = load_agents(project / "agents")
    demo = agents["demo"]
    assert demo.stt.provider == "pocketsphinx" and demo.llm.provider == "script"
    assert {"pricing", "hours", "support"} <= set(demo.phrases())
    assert any(r.dtmf == "0" and r.end_call for r in demo.rules)
    assert agents["sales"].llm.provider == "openai"
    assert demo.missing_keys({}) == []
    assert set(agents["sales"].missing_keys({})) == {"DEEPGRAM_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY"}


def test_missing_keys_stop_only_the_agents_that_need_them(project: Path) -> None:
    require_keys(load_agents(project / "agents", ["demo"]), {})
    with pytest.raises(MissingKeysError, match="sales needs DEEPGRAM_API_KEY, OPENAI_API_KEY, CARTESIA_API_KEY"):
        require_keys(load_agents(project / "agents", ["sales"]), {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (DEMO_HEAD + SCRIPT.replace("fallback =", "colour = 1\nfallback ="), "llm.colour: unknown key"),
        (DEMO_HEAD + SCRIPT + "colour = 1\n", r"llm.rules\[0\].colour: unknown key"),
        ("mood = 'happy'\n" + DEMO_HEAD + SCRIPT, "mood: unknown key"),
        (DEMO_HEAD.replace("espeak", "bark") + SCRIPT, "tts.provider: 'bark' is not one of espeak"),
        (DEMO_HEAD + SCRIPT.replace('reply = "Twenty dollars."', ""), r"llm.rules\[0\].reply: must be"),
        (
            DEMO_HEAD + SCRIPT.replace('keywords = ["pricing"]', 'dtmf = "12"'),
            r"llm.rules\[0\].dtmf: must be one key",
        ),
        (
            DEMO_HEAD + SCRIPT.replace('keywords = ["pricing"]', 'keywords = ["a"]\ndtmf = "1"'),
            "exactly one of",
        ),
        (DEMO_HEAD + SCRIPT.replace('fallback = "Pardon?"', ""), "llm.fallback: must be"),
        (DEMO_HEAD.replace('greeting = "Hi"', "") + SCRIPT, "greeting: must be a non-empty string"),
        (DEMO_HEAD + '[llm]\nprovider = "openai"\n', "system_prompt: the openai LLM needs"),
        (DEMO_HEAD + SCRIPT + "[call]\nmax_duration_s = -5\n", "call.max_duration_s: must be a positive"),
        (DEMO_HEAD + SCRIPT + '[webhook]\nurl = "ftp://crm"\n', "webhook.url: must be a URL starting with http"),
        (DEMO_HEAD + SCRIPT + '[webhook]\nsecret = "x"\n', "webhook.secret: unknown key"),
        # A file copied from demo.toml that still says so would serve under /demo.
        ('name = "demo"\n' + DEMO_HEAD + SCRIPT, "name: 'demo' is not the file's name: rename the file to demo.toml"),
        ('name = "has space"\n' + DEMO_HEAD + SCRIPT, "name: use letters"),
        ("greeting = \n", "is not valid TOML"),
        (DEMO_HEAD + SCRIPT + "[turn]\nstrategy = 'vibes'\n", "turn.strategy: 'vibes' is not one of smart-turn"),
        (DEMO_HEAD + SCRIPT + "[turn]\nstrategy = 'silence'\nsilence_s = 0.1\n", "turn.silence_s: must be a number"),
        (DEMO_HEAD + SCRIPT + "[turn]\nmax_wait_s = 'soon'\n", "turn.max_wait_s: must be a number of seconds from 0.2"),
        (DEMO_HEAD + SCRIPT + "[turn]\nmax_wait_s = 30\n", "turn.max_wait_s: must be a number of seconds .* to 10"),
        (DEMO_HEAD + SCRIPT + "[turn]\nsilence_s = 0.5\n", 'turn.silence_s: applies to strategy = "silence"'),
        (
            DEMO_HEAD + SCRIPT + "[turn]\nstrategy = 'silence'\nmax_wait_s = 1\n",
            'turn.max_wait_s: applies to strategy = "smart-turn", not "silence"',
        ),
        (DEMO_HEAD + SCRIPT + "[turn]\npatience = 1\n", "turn.patience: unknown key"),
        ("turn = 3\n" + DEMO_HEAD + SCRIPT, r"\[turn\]: must be a table"),
        (DEMO_HEAD + SCRIPT + "[outbound]\nvoicemail = 'beep'\n", "outbound.voicemail: 'beep' is not one of hangup"),
        (DEMO_HEAD + SCRIPT + "[outbound]\nvoicemail_message = ''\n", "outbound.voicemail_message: must be a non"),
        (DEMO_HEAD + SCRIPT + "[outbound]\nvoicemail_url = 'x'\n", "outbound.voicemail_url: unknown key"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(AgentError, match=message) as info:
        load_agent(path)
    assert str(path) in str(info.value)


def test_outbound_voicemail_defaults_to_off(tmp_path: Path) -> None:
    path = tmp_path / "plain.toml"
    path.write_text(DEMO_HEAD + SCRIPT)
    assert load_agent(path).outbound.voicemail == "off"  # today's behaviour: no detection
    path.write_text(DEMO_HEAD + SCRIPT + '[outbound]\nvoicemail = "message"\nvoicemail_message = "Call back."\n')
    outbound = load_agent(path).outbound
    assert (outbound.voicemail, outbound.voicemail_message) == ("message", "Call back.")


def test_turn_table_defaults_to_smart_turn_with_a_short_fallback(tmp_path: Path) -> None:
    path = tmp_path / "plain.toml"
    path.write_text(DEMO_HEAD + SCRIPT)
    turn = load_agent(path).turn
    assert (turn.strategy, turn.max_wait_s) == ("smart-turn", 1.2)
    path.write_text(DEMO_HEAD + SCRIPT + "[turn]\nstrategy = 'silence'\nsilence_s = 0.5\n")
    turn = load_agent(path).turn
    assert (turn.strategy, turn.silence_s) == ("silence", 0.5)


def test_unknown_agent_lists_the_known_ones(project: Path) -> None:
    with pytest.raises(AgentError, match=r"no agent 'nope'.*agents: demo, pizza, sales"):
        load_agents(project / "agents", ["nope"])


def test_script_rules_match_words_not_substrings(project: Path) -> None:
    rules = load_agents(project / "agents", ["demo"])["demo"].rules
    assert match_rule(rules, "What is your pricing?").reply.startswith("Our plans")
    assert match_rule(rules, "when are you open").reply.startswith("We are open")
    assert match_rule(rules, "opened helpful") is None  # no keyword as a whole word


def test_services_do_not_import_agents() -> None:
    # agents use services, never the other way: each service owns its options' schema.
    code = "import sys, voicecli.services.factories; print('voicecli.agents' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_an_openai_compatible_server_needs_no_openai_key(tmp_path: Path) -> None:
    path = tmp_path / "local.toml"
    llm = '[llm]\nprovider = "openai"\nbase_url = "http://127.0.0.1:11434/v1"\n'
    path.write_text('system_prompt = "Be brief."\n' + DEMO_HEAD + llm)
    agent = load_agent(path)
    assert agent.missing_keys({}) == []  # Ollama, vLLM: base_url makes OPENAI_API_KEY optional
    assert agent.llm.options == {"base_url": "http://127.0.0.1:11434/v1"}
