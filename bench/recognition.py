"""How often the offline recognizer (PocketSphinx) brings a spoken keyword to its rule.

Issue 13's sentences ("I need {} please", "Can you give me {}", "{}") for every keyword of the
demo's and the pizza shop's rules, plus three held-out forms the recognizer was never tuned on,
each rendered several times by eSpeak and sent through the phone path (8 kHz mu-law, the line's
quiet around it). eSpeak does not say a sentence the same way twice in one process (its noise
sources and pitch flutter carry state from one utterance to the next: two renderings of one
sentence differ in length by a few samples and in their fricatives), so one rendering per
sentence is one draw; this bench takes several and reports the mean. It also counts
out-of-script sentences that land on a rule (a wrong answer, worse than the fallback).

    python bench/recognition.py [--renders 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import table
from bench.voices import FORMS
from voicecli.agents import load_agent
from voicecli.call.audio import silence, ulaw_decode, ulaw_encode
from voicecli.emulator.simulator import speech
from voicecli.services.factories import FILLER_PHRASES
from voicecli.services.pocketsphinx_stt import transcribe
from voicecli.services.script_llm import match_rule

AGENTS = Path(__file__).resolve().parent.parent / "agents"
HELD_OUT_FORMS = ("Tell me about {}", "What about {}", "I want to ask about {}")
OUT_OF_SCRIPT = (
    "My dog likes bananas",
    "It is raining outside",
    "Good morning",
    "I would like to book a table",
    "Where is my order",
    "Thank you very much",
    "Can I speak to the manager",
    "What is the weather like",
    "My name is John Smith",
    "I lost my password",
)


def phone_segment(text: str) -> bytes:
    """One rendering of `text` as the STT gets it in a call: through mu-law, the line's quiet around it."""
    return silence(1000, 8000) + ulaw_decode(ulaw_encode(speech(text))) + silence(200, 8000)


def share(hits: int, total: int) -> str:
    return f"{hits}/{total} ({hits / total:.2f})"


def measure(name: str, renders: int) -> dict[str, str]:
    agent = load_agent(AGENTS / f"{name}.toml")
    phrases = [*agent.phrases(), *FILLER_PHRASES]
    reached = {"target": [0, 0], "held out": [0, 0]}
    started = time.perf_counter()
    for rule in agent.rules:
        for keyword in rule.keywords:
            for label, forms in (("target", FORMS), ("held out", HELD_OUT_FORMS)):
                for form in forms:
                    for _ in range(renders):
                        heard = transcribe(phone_segment(form.format(keyword)), phrases, 8000)
                        reached[label][0] += match_rule(agent.rules, heard) is rule
                        reached[label][1] += 1
    wrong = sum(
        match_rule(agent.rules, transcribe(phone_segment(text), phrases, 8000)) is not None
        for text in OUT_OF_SCRIPT
        for _ in range(renders)
    )
    decodes = reached["target"][1] + reached["held out"][1] + len(OUT_OF_SCRIPT) * renders
    return {
        "agent": name,
        "issue 13's sentences": share(*reached["target"]),
        "held-out forms": share(*reached["held out"]),
        "out of script on a rule": f"{wrong}/{len(OUT_OF_SCRIPT) * renders}",
        "ms per utterance": f"{(time.perf_counter() - started) * 1000 / decodes:.0f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--renders", type=int, default=4, help="eSpeak renderings of each sentence")
    args = parser.parse_args()
    rows = [measure(name, args.renders) for name in ("demo", "pizza")]
    renderings = "1 rendering" if args.renders == 1 else f"{args.renders} renderings"
    print(f"PocketSphinx on eSpeak through 8 kHz mu-law, {renderings} per sentence (target: 0.90)")
    print(table(list(rows[0]), [list(row.values()) for row in rows]))


if __name__ == "__main__":
    main()
