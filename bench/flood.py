"""One caller floods its stream: does another call keep its timing? (issue 19, item 1)

A reference call (bench/callers.py: one emulated Twilio caller talking to the offline demo
agent) runs three times against one pinned server, while a flooder on the callers' core:

- `none`: does nothing (the baseline of this run);
- `at budget`: holds one stream sending silence `media` messages at 190 a second, just
  under the server's per-stream budget of 200 (a provider sends 50), for the whole call:
  the most one stream can make the server read without being cut;
- `10k/s, rung again`: sends 10,000 a second (issue 19's attack) on a stream; the server
  drops past the budget and closes it, and the flooder rings again at once, over and over.

Printed: the reference call's turn latency (p50, max) and its agent audio's lateness (p99,
max), with ratios (latency) and differences (lateness) against `none`, all from this run.

    python bench/flood.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BENCH_DIR, CLIENT_CPU, PYTHON, SERVER_CPU, fmt, free_port, server_env, stop, table, wait_http

BATCH = 10  # messages sent back to back, then a pause that keeps the rate
MODES = {"none": (0, False), "at budget": (190, False), "10k/s, rung again": (10_000, True)}


async def flood(url: str, project: Path, rate: int, again: bool, stopping: threading.Event, counts: dict) -> None:
    """Ring, stream and send `rate` messages a second until cut (then ring again if `again`)."""
    import aiohttp

    from voicecli.emulator.simulator import _local_ws_url
    from voicecli.providers import load_caller
    from voicecli.settings import load_settings

    caller = load_caller("twilio", load_settings(project, environ={}))

    async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:  # agent audio, then the server's close
            pass

    async with aiohttp.ClientSession() as http:
        while not stopping.is_set():
            call = caller.new_call("+15550000001", "+15550000002")
            stream_url, parameters = await caller.ring(http, url, "demo", call)
            async with http.ws_connect(_local_ws_url(stream_url, url)) as ws:
                reader = asyncio.create_task(drain(ws))
                for message in caller.opening(call, parameters):
                    await ws.send_str(json.dumps(message))
                silence = json.dumps(caller.media(call, b"\x00" * 320, 2))
                counts["streams"] += 1
                loop = asyncio.get_running_loop()
                began, sent = loop.time(), 0
                try:
                    while not reader.done() and not stopping.is_set():
                        for _ in range(BATCH):
                            await ws.send_str(silence)
                        sent += BATCH
                        counts["messages"] += BATCH
                        await asyncio.sleep(max(0.0, began + sent / rate - loop.time()))
                except ConnectionError:
                    pass  # cut by the server mid-send
                reader.cancel()
            if not again:
                await asyncio.to_thread(stopping.wait)


def reference_call(url: str, seconds: float, out: Path, log: Any) -> dict[str, Any]:
    subprocess.run(
        [
            PYTHON, str(BENCH_DIR / "callers.py"), "--url", url, "--agent", "demo", "--n", "1",
            "--ramp-s", "1", "--settle-s", "2", "--steady-s", str(seconds), "--depart-s", "1",
            "--cpu", str(CLIENT_CPU), "--out", str(out),
        ],
        check=True, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="the reference call's steady talk")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="voicecli-bench-flood-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "bench.log", "w")
    server = subprocess.Popen(
        [PYTHON, str(BENCH_DIR / "serve_voicecli.py"), "--port", str(port), "--demo", "--cpu", str(SERVER_CPU)],
        stdout=log, stderr=subprocess.STDOUT, env=server_env(),
    )  # fmt: skip
    results: dict[str, Any] = {}
    try:
        wait_http(f"{url}/healthz", proc=server)
        for mode, (rate, again) in MODES.items():
            counts = {"streams": 0, "messages": 0}
            stopping = threading.Event()
            flooder = None
            if rate:
                attack = flood(url, work, rate, again, stopping, counts)
                flooder = threading.Thread(target=asyncio.run, args=(attack,), daemon=True)
                flooder.start()
            began = time.monotonic()
            try:
                call = reference_call(url, args.seconds, work / f"{len(results)}.json", log)
            finally:
                stopping.set()
                if flooder is not None:
                    flooder.join(10)
            results[mode] = {"call": call, **counts, "seconds": time.monotonic() - began}
    finally:
        stop(server)
        log.close()
    base = results["none"]["call"]
    rows = []
    for mode, result in results.items():
        call, seconds = result["call"], result["seconds"]
        turn, late = call["turn_steady"], call["lateness_steady"]
        rows.append(
            [
                mode,
                f"{result['messages'] / seconds:.0f}/s on {result['streams']}",
                fmt(turn["p50"], 0),
                fmt(turn["p50"] / base["turn_steady"]["p50"], 2),
                fmt(turn["max"], 0),
                fmt(turn["max"] / base["turn_steady"]["max"], 2),
                fmt(late["p99"], 0),
                f"{late['p99'] - base['lateness_steady']['p99']:+.0f}",
                fmt(late["max"], 0),
                f"{late['max'] - base['lateness_steady']['max']:+.0f}",
            ]
        )
    headers = ["flood", "sent on streams", "turn p50 ms", "x", "turn max ms", "x", "late p99 ms", "+", "late max", "+"]
    print(table(headers, rows))
    return results


if __name__ == "__main__":
    main()
