"""A fake OpenAI-compatible server on 127.0.0.1 that answers at once.

Transcriptions return a fixed text, chat completions stream one sentence, speech returns
2.5 s of 24 kHz 16-bit PCM. With every service pointed here (`base_url`), what the
benchmark measures is the serving stack, with the real pipecat OpenAI services in the loop.

    python bench/fake_openai.py --port 8100 [--cpu 1]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import pin

TRANSCRIPT = "I would like to know about your pricing."
REPLY = "Our plans start at twenty dollars a month, and you can cancel at any time."
SPEECH_S = 2.5
RATE = 24000


def _speech_pcm() -> bytes:
    # A quiet 220 Hz tone: real samples (not zeros) so nothing downstream can skip it.
    import numpy as np

    t = np.arange(int(SPEECH_S * RATE)) / RATE
    return (3000 * np.sin(2 * math.pi * 220 * t)).astype("<i2").tobytes()


PCM = _speech_pcm()


async def transcriptions(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"text": TRANSCRIPT})


def _chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    model = body.get("model", "gpt-4.1-mini")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(_chunk(model, {"role": "assistant", "content": ""}))
    words = REPLY.split(" ")
    for i in range(0, len(words), 3):
        await resp.write(_chunk(model, {"content": " ".join(words[i : i + 3]) + " "}))
    await resp.write(_chunk(model, {}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 20, "completion_tokens": 16, "total_tokens": 36}
        tail = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [],
            "usage": usage,
        }
        await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def speech(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
    await resp.prepare(request)
    await resp.write(PCM)
    await resp.write_eof()
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args()
    if args.cpu is not None:
        pin(args.cpu)
    web.run_app(make_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
