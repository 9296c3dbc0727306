"""Webhook throughput: POST /telephony/twilio/inbound/demo under 50 concurrent clients.

`voicecli serve --agent demo` runs pinned to core 0 in a temporary project; the load runs in
a separate process on core 1 (aiohttp, one keep-alive connection per client, a new CallSid per
request, so every request creates a call record as a real ringing call does). After a warm-up,
requests completed in the measuring window give requests/s and latency percentiles.

    python bench/webhook.py [--clients 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    CLIENT_CPU,
    PYTHON,
    SERVER_CPU,
    fmt,
    free_port,
    pct,
    pin,
    serve_demo_command,
    stop,
    table,
    wait_http,
)


async def load(url: str, clients: int, warmup: float, seconds: float) -> dict[str, Any]:
    import aiohttp

    start = time.monotonic()
    since, until = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    errors = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (t0 := time.monotonic()) < until:
            form = {
                "AccountSid": "AC" + "0" * 32,
                "CallSid": "CA" + secrets.token_hex(16),
                "CallStatus": "ringing",
                "Direction": "inbound",
                "From": "+15551230000",
                "To": "+15559870000",
                "ApiVersion": "2010-04-01",
            }
            try:
                async with session.post(url, data=form) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            t1 = time.monotonic()
            if since <= t0 and t1 <= until:
                if ok:
                    latencies.append((t1 - t0) * 1000)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / seconds,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "max_ms": max(latencies, default=0.0),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--client-for", default=None, help=argparse.SUPPRESS)  # internal: run the load only
    args = parser.parse_args(argv)
    if args.client_for:
        pin(CLIENT_CPU)
        print(json.dumps(asyncio.run(load(args.client_for, args.clients, args.warmup, args.seconds))))
        return {}
    project = Path(tempfile.mkdtemp(prefix="voicecli-bench-webhook-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "VOICECLI_"))}
    port = free_port()
    server = subprocess.Popen(
        serve_demo_command(port),
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: pin(SERVER_CPU),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=server)
        out = subprocess.run(
            [
                PYTHON,
                __file__,
                "--client-for",
                f"http://127.0.0.1:{port}/telephony/twilio/inbound/demo",
                "--clients",
                str(args.clients),
                "--seconds",
                str(args.seconds),
                "--warmup",
                str(args.warmup),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        stop(server)
    result = json.loads(out.stdout)
    print(
        f"# webhook throughput: POST /telephony/twilio/inbound/demo, {args.clients} concurrent clients, "
        f"{args.seconds:g} s"
    )
    print(
        table(
            ["requests/s", "p50 ms", "p99 ms", "max ms", "requests", "errors"],
            [
                [
                    fmt(result["rps"], 0),
                    fmt(result["p50_ms"], 1),
                    fmt(result["p99_ms"], 1),
                    fmt(result["max_ms"], 1),
                    result["requests"],
                    result["errors"],
                ]
            ],
        )
    )
    return result


if __name__ == "__main__":
    main()
