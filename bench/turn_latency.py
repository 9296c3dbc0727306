"""Turn latency with the offline demo agent (PocketSphinx STT, script LLM, eSpeak TTS).

Turn latency: from the caller's last speech frame sent (the last 20 ms frame of the utterance
above about -50 dBFS) to the first message of the agent's reply received at the caller, for a
few emulated callers. Two voices (bench/voices.py): eSpeak saying issue 13's sentences for
every demo keyword, and phrases of a human reading shipped in the moonshine-voice wheel. The
server (pinned to core 0) records when its user aggregator ends the caller's turn (Silero VAD's
stop, then the agent's [turn] strategy), so the figure splits into the turn detector's wait
(last frame -> turn ended) and the runner's share (turn ended -> first reply audio at the
caller: STT result, LLM, TTS, pipeline hops, output transport and the wire).

    python bench/turn_latency.py [--calls 1] [--voice espeak|human|both]
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    BENCH_DIR,
    CLIENT_CPU,
    PYTHON,
    SERVER_CPU,
    fmt,
    free_port,
    pct,
    server_env,
    stop,
    table,
    wait_http,
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.voices import espeak_sentences, human_phrases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--voice", choices=("espeak", "human", "both"), default="both")
    parser.add_argument(
        "--seconds", type=float, default=None, help="how long each call talks (default: each utterance once)"
    )
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="voicecli-bench-turn-"))
    results = {}
    if args.voice in ("espeak", "both"):
        said = espeak_sentences()
        results["espeak"] = measure(args, logs, "espeak", [a for text in said for a in ("--say", text)], len(said))
    if args.voice in ("human", "both"):
        wavs = human_phrases(logs)
        results["human"] = measure(args, logs, "human", [a for w in wavs for a in ("--wav", str(w))], len(wavs))
    return results


def measure(args: argparse.Namespace, logs: Path, voice: str, say: list[str], count: int) -> dict[str, Any]:
    """One server, `args.calls` callers saying their utterances in turn; the figures for `voice`."""
    from bench.callers import LEAD_S, SILENCE_S, SPEECH_S

    seconds = args.seconds or LEAD_S + count * (SPEECH_S + SILENCE_S)
    port = free_port()
    log = open(logs / f"server-{voice}.log", "w")
    proc = subprocess.Popen(
        [
            PYTHON,
            str(BENCH_DIR / "serve_voicecli.py"),
            "--port",
            str(port),
            "--demo",
            "--probe",
            "--cpu",
            str(SERVER_CPU),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=server_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc=proc)
        out = logs / f"callers-{voice}.json"
        subprocess.run(
            [
                PYTHON,
                str(BENCH_DIR / "callers.py"),
                "--url",
                url,
                "--agent",
                "demo",
                "--n",
                str(args.calls),
                "--ramp-s",
                "1",
                "--settle-s",
                "0",
                "--steady-s",
                str(seconds),
                "--depart-s",
                "1",
                "--cpu",
                str(CLIENT_CPU),
                "--out",
                str(out),
                *say,
            ],
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        with urllib.request.urlopen(f"{url}/bench/turns", timeout=10) as resp:
            turns = json.loads(resp.read())
        stops = sorted(turns["stops"])
        inferences = turns["smart_turn_cpu_s"]
        result = json.loads(out.read_text())
    finally:
        stop(proc)
        log.close()
    total, detector, runner = [], [], []
    for last_frame, first_reply in result["turns"]:
        total.append((first_reply - last_frame) * 1000)
        # The turn stop that led to this reply: the last one before the reply arrived.
        i = bisect.bisect_left(stops, first_reply) - 1
        if i >= 0 and stops[i] >= last_frame - 0.5:
            detector.append((stops[i] - last_frame) * 1000)
            runner.append((first_reply - stops[i]) * 1000)
    rows = [
        [
            "last caller frame -> first reply audio (total)",
            len(total),
            fmt(pct(total, 50), 0),
            fmt(pct(total, 90), 0),
            fmt(max(total) if total else float("nan"), 0),
        ],
        [
            "  turn detector's wait (last frame -> turn ended)",
            len(detector),
            fmt(pct(detector, 50), 0),
            fmt(pct(detector, 90), 0),
            fmt(max(detector) if detector else float("nan"), 0),
        ],
        [
            "  runner's share (turn ended -> first reply audio)",
            len(runner),
            fmt(pct(runner, 50), 0),
            fmt(pct(runner, 90), 0),
            fmt(max(runner) if runner else float("nan"), 0),
        ],
    ]
    print(f"# turn latency, demo agent, {voice} voice, {args.calls} call(s) x {seconds:g} s (logs in {logs})")
    print(table(["", "turns", "p50 ms", "p90 ms", "max ms"], rows))
    share = sum(detector) / sum(total[: len(detector)]) if detector else float("nan")
    print(f"The turn detector's wait is {100 * share:.0f} % of the turn latency (sum over turns).")
    per_turn = len(inferences) / max(1, len(total))
    cpu_ms = 1000 * sum(inferences) / max(1, len(inferences))
    print(
        f"Smart Turn ran {len(inferences)} times for {len(total)} replies ({per_turn:.1f} per caller utterance), "
        f"{cpu_ms:.0f} ms of CPU per run."
    )
    return {
        "voice": voice,
        "detector_share": share,
        "smart_turn_runs_per_turn": per_turn,
        "smart_turn_cpu_ms": cpu_ms,
        "total_ms": total,
        "detector_ms": detector,
        "runner_ms": runner,
        "p50": {"total": pct(total, 50), "detector": pct(detector, 50), "runner": pct(runner, 50)},
        "p90": {"total": pct(total, 90), "detector": pct(detector, 90), "runner": pct(runner, 90)},
    }


if __name__ == "__main__":
    main()
