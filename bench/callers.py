"""N emulated Twilio callers in one process, on a real-time clock.

Each call rings the inbound webhook (POST), follows the TwiML to the media WebSocket, sends
`connected` and `start` (with the TwiML's parameters), then one 20 ms mu-law `media` message
every 20 ms: 4 s of silence, then loops of 2 s of speech (eSpeak, through voicecli's offline
TTS) and 4 s of silence. Calls arrive evenly over the ramp and hang up (`stop`, then close)
evenly over the departure span. Every media message carries `"bench_t"`, its send time, for
the server-side probe (bench/probe.py).

Lateness of an agent audio message (../shared/baseline.md): its arrival minus (the
utterance's first arrival + the audio received in that utterance, this message included). An
utterance is the agent audio that follows one caller utterance (or the start, for the
greeting); a `clear` starts a new one.

    python bench/callers.py --url http://127.0.0.1:8200 --n 10 --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_seconds, pct, pin

RATE = 8000
FRAME_S = 0.02
FRAME_BYTES = 160  # 20 ms of mu-law
SILENCE_S, SPEECH_S, LEAD_S = 4.0, 2.0, 4.0
# About 1.97 s of eSpeak speech without internal pauses: one VAD stop (one Smart Turn run) per utterance.
SENTENCE = "I would like to know your prices please"
TEMPLATE = (
    '{"event": "media", "sequenceNumber": "%d", "media": {"track": "inbound", "chunk": "%d", '
    '"timestamp": "%d", "payload": "%s"}, "streamSid": "%s", "bench_t": %.6f}'
)


# A 20 ms frame above this level (about -50 dBFS) holds speech: the utterance's last such frame
# is the caller's "last speech frame" that turn latency counts from.
SPEECH_RMS = 100.0


def speech_frames(utterances: list[bytes] | None = None) -> tuple[list[tuple[list[str], int]], str]:
    """Base64 mu-law payloads of each utterance (8 kHz PCM) in a 2 s window of 20 ms frames, with
    the index of its last speech frame; and one frame of silence."""
    from voicecli.call.audio import rms, silence, ulaw_encode
    from voicecli.emulator.simulator import speech

    want = int(SPEECH_S * RATE) * 2
    out = []
    for pcm in utterances or [speech(SENTENCE)]:
        pcm = (pcm + silence(int(SPEECH_S * 1000), RATE))[:want]
        pieces = [pcm[i : i + 2 * FRAME_BYTES] for i in range(0, len(pcm), 2 * FRAME_BYTES)]
        last = max((k for k, piece in enumerate(pieces) if rms(piece) > SPEECH_RMS), default=len(pieces) - 1)
        out.append(([base64.b64encode(ulaw_encode(piece)).decode() for piece in pieces], last))
    return out, base64.b64encode(ulaw_encode(silence(20, RATE))).decode()


class Stats:
    """Everything the callers measured, as flat arrays (cheap to append)."""

    def __init__(self) -> None:
        self.late_t = array("d")  # arrival time of each agent audio message
        self.late_ms = array("d")  # its lateness
        self.turn_t = array("d")  # arrival of the first message of a reply
        self.turn_ms = array("d")  # last caller speech frame -> that first message
        self.turns: list[tuple[float, float]] = []  # (last caller speech frame, first reply message)
        self.sent_t = array("d")  # send time of every media message
        self.lag_ms = array("d")  # how late the caller's own clock sent (caller overload check)
        self.failures: list[str] = []
        self.connected = 0
        self.ended_by_server = 0


async def one_call(
    i: int,
    http: Any,
    args: argparse.Namespace,
    said: list[tuple[list[str], int]],
    silent: str,
    stats: Stats,
    start_at: float,
    hang_up_at: float,
) -> None:
    from voicecli.emulator.simulator import _local_ws_url
    from voicecli.emulator.twilio import TwilioCaller
    from voicecli.settings import load_settings

    caller = TwilioCaller(load_settings(environ={}))
    call = caller.new_call(f"+1555{i:07d}", "+15559870000")
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    try:
        stream_url, parameters = await caller.ring(http, args.url, args.agent, call)
        ws = await http.ws_connect(_local_ws_url(stream_url, args.url), autoping=True, max_msg_size=0)
    except Exception as exc:  # a refused call is a result, not a crash
        stats.failures.append(f"call {i}: {type(exc).__name__}: {exc}")
        return
    stats.connected += 1
    for message in caller.opening(call, parameters):
        await ws.send_str(json.dumps(message))

    speech_done = 0  # caller utterances finished so far
    clears = 0
    last_speech_t = 0.0
    utterances: dict[tuple[int, int], list[float]] = {}
    now = time.monotonic

    async def receive() -> None:
        nonlocal clears
        async for msg in ws:
            if msg.type != 1:  # aiohttp.WSMsgType.TEXT
                continue
            arrival = now()
            message = json.loads(msg.data)
            event = message.get("event")
            if event == "clear":
                clears += 1
                continue
            if event != "media":
                continue
            payload = message["media"]["payload"]
            seconds = (len(payload) * 3 // 4 - payload[-2:].count("=")) / RATE
            key = (speech_done, clears)
            utt = utterances.get(key)
            if utt is None:
                utt = utterances[key] = [arrival, 0.0]
                if speech_done and last_speech_t:
                    stats.turn_t.append(arrival)
                    stats.turn_ms.append((arrival - last_speech_t) * 1000)
                    stats.turns.append((last_speech_t, arrival))
            utt[1] += seconds
            stats.late_t.append(arrival)
            stats.late_ms.append((arrival - (utt[0] + utt[1])) * 1000)

    receiver = asyncio.create_task(receive())
    seq, k = 1, 0
    t0 = now()
    try:
        while now() < hang_up_at and not ws.closed:
            due = t0 + k * FRAME_S
            delay = due - now()
            if delay > 0:
                await asyncio.sleep(delay)
            pos = k * FRAME_S
            payload = silent
            if pos >= LEAD_S - 1e-9:
                loop = int((pos - LEAD_S + 1e-9) // (SPEECH_S + SILENCE_S))
                frames, last = said[loop % len(said)]
                q = round(((pos - LEAD_S) % (SPEECH_S + SILENCE_S)) / FRAME_S)
                if q < len(frames):
                    payload = frames[q]
                    if q == last:
                        last_speech_t = now()
                if q == last + 1:
                    # Agent audio from here on answers this utterance (a short one's reply can
                    # start before its 2 s window is over).
                    speech_done += 1
            seq += 1
            sent = now()
            stats.lag_ms.append((sent - due) * 1000)
            stats.sent_t.append(sent)
            await ws.send_str(TEMPLATE % (seq, seq - 1, (seq - 2) * 20, payload, call.stream_id, sent))
            k += 1
        if ws.closed:
            stats.ended_by_server += 1
            stats.failures.append(f"call {i}: the server closed the stream")
        else:
            stop = caller.hang_up(call, seq + 1)
            await ws.send_str(json.dumps(stop))
            await ws.close()
    except (ConnectionError, RuntimeError) as exc:
        stats.failures.append(f"call {i}: {type(exc).__name__}: {exc}")
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)


def summary(values_t: array, values: array, since: float, until: float) -> dict[str, Any]:
    window = [v for t, v in zip(values_t, values, strict=True) if since <= t < until]
    return {
        "count": len(window),
        "p50": pct(window, 50),
        "p99": pct(window, 99),
        "max": max(window) if window else float("nan"),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    utterances, silent = speech_frames(_utterances(args))
    stats = Stats()
    start = args.start_at or time.monotonic() + 1.0
    arrivals = [start + i * args.ramp_s / args.n for i in range(args.n)]
    hold = args.depart_at or arrivals[-1] + args.settle_s + args.steady_s
    departures = [hold + i * args.depart_s / args.n for i in range(args.n)]
    cpu0 = cpu_seconds(os.getpid())
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(
            *(one_call(i, http, args, utterances, silent, stats, arrivals[i], departures[i]) for i in range(args.n))
        )
    end = time.monotonic()
    steady = (args.window[0], args.window[1]) if args.window else (arrivals[-1] + args.settle_s, hold)
    phases = {
        "arrivals": (start, arrivals[-1] + 2.0),
        "steady": steady,
        "departures": (hold, departures[-1] + 1.0),
    }
    result: dict[str, Any] = {
        "n": args.n,
        "connected": stats.connected,
        "failures": stats.failures,
        "ended_by_server": stats.ended_by_server,
        "caller_cpu_s": cpu_seconds(os.getpid()) - cpu0,
        "wall_s": end - start,
        "phases": {name: list(span) for name, span in phases.items()},
        "sent_in_steady": sum(1 for t in stats.sent_t if steady[0] <= t < steady[1]),
        "caller_lag_p99_ms": pct(stats.lag_ms, 99),
        "turns": stats.turns if args.n <= 4 else [],
    }
    for name, (since, until) in phases.items():
        result[f"lateness_{name}"] = summary(stats.late_t, stats.late_ms, since, until)
        result[f"turn_{name}"] = summary(stats.turn_t, stats.turn_ms, since, until)
    return result


def _utterances(args: argparse.Namespace) -> list[bytes] | None:
    """What the callers say, in turn: --say sentences (eSpeak), then --wav files; None: SENTENCE."""
    from voicecli.call.audio import read_wav, resample
    from voicecli.emulator.simulator import speech

    said = [speech(text) for text in args.say]
    for path in args.wav:
        pcm, rate = read_wav(path)
        said.append(resample(pcm, rate, RATE))
    return said or None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8200")
    parser.add_argument("--agent", default="bench")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--start-at", type=float, default=None, help="time.monotonic() of the first arrival")
    parser.add_argument("--ramp-s", type=float, default=10.0)
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--steady-s", type=float, default=20.0)
    parser.add_argument("--depart-at", type=float, default=None)
    parser.add_argument("--depart-s", type=float, default=10.0)
    parser.add_argument("--window", type=float, nargs=2, default=None, help="steady window (monotonic)")
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--say", action="append", default=[], help="a sentence to say (eSpeak), in turn")
    parser.add_argument("--wav", action="append", default=[], type=Path, help="a WAV utterance to say, in turn")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.cpu is not None:
        pin(args.cpu)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
