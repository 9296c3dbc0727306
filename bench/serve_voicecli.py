"""The voicecli side of the benchmark: `voicecli serve` as its command builds it, one process.

It serves one agent, written as TOML in a temporary project, that uses pipecat's OpenAI STT,
LLM and TTS pointed at the fake server (bench/fake_openai.py). With --probe it installs the
media-path probe (bench/probe.py) and answers GET /bench/probe; the probe is bench code.

    python bench/serve_voicecli.py --port 8200 --fake-url http://127.0.0.1:8100/v1 [--cpu 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import pin

AGENT = """\
name = "bench"
greeting = "Hello, thanks for calling. How can I help you today?"
system_prompt = "You are a test agent on a phone call. Answer in one short sentence."

[stt]
provider = "openai"
base_url = "{fake}"

[llm]
provider = "openai"
base_url = "{fake}"

[tts]
provider = "openai"
base_url = "{fake}"

[call]
max_duration_s = 3600
idle_timeout_s = 600
"""


def write_project(directory: Path, fake_url: str) -> Path:
    """A voicecli project with the bench agent in agents/bench.toml."""
    (directory / "agents").mkdir(parents=True, exist_ok=True)
    (directory / "agents" / "bench.toml").write_text(AGENT.format(fake=fake_url))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--fake-url", default="http://127.0.0.1:8100/v1")
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--probe", action="store_true", help="install the media-path probe")
    parser.add_argument("--log-level", default="info", help="as `voicecli serve --log-level` (default info)")
    parser.add_argument(
        "--as-committed",
        action="store_true",
        help="for A/B runs: restore voicecli's earlier media path (16 kHz input, 20 ms frames, VAD in a thread)",
    )
    parser.add_argument(
        "--input-frame-ms", type=int, default=None, help="for A/B runs: voicecli.call.transport.INPUT_FRAME_MS"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for this server, as its variable (repeatable): TWILIO_AUTH_TOKEN, VOICECLI_DATABASE_URL...",
    )
    parser.add_argument(
        "--admission-probe", action="store_true", help="time every slot taken (bench/admission_probe.py)"
    )
    parser.add_argument("--demo", action="store_true", help="serve the offline demo agent (agents/demo.toml) instead")
    parser.add_argument("--project", type=Path, default=None, help="project folder (default: a temporary one)")
    parser.add_argument(
        "--slow-callback-ms",
        type=float,
        default=None,
        help="asyncio debug mode: log every step that holds the event loop longer than this",
    )
    args = parser.parse_args()
    if args.cpu is not None:
        pin(args.cpu)

    import asyncio

    from voicecli.agents import load_agents, require_keys
    from voicecli.call.session import warm_up
    from voicecli.server.app import create_app
    from voicecli.server.state import build_state
    from voicecli.settings import load_settings
    from voicecli.ui import logs

    project = args.project or Path(tempfile.mkdtemp(prefix="voicecli-bench-"))
    write_project(project, args.fake_url)
    name = "bench"
    if args.demo:
        import shutil

        shutil.copy(Path(__file__).resolve().parent.parent / "agents" / "demo.toml", project / "agents" / "demo.toml")
        name = "demo"
    logs.configure(args.log_level)
    # Only what the bench sets (no signature checks: no TWILIO_AUTH_TOKEN; a limit above any N), and --env.
    environ = {"TWILIO_MAX_CONCURRENT": "10000", **dict(item.split("=", 1) for item in args.env)}
    settings = load_settings(project, environ=environ)
    agents = load_agents(project / "agents", [name])
    require_keys(agents, settings.env)
    state = build_state(settings, agents)
    warm_up(agents.values(), settings.env)
    if args.as_committed:
        _committed_media_path()
    if args.input_frame_ms is not None:
        import voicecli.call.transport

        voicecli.call.transport.INPUT_FRAME_MS = args.input_frame_ms
    app = create_app(state)
    if args.admission_probe:
        from bench import admission_probe

        admission_probe.install(app)
    if args.probe:
        from bench import probe

        probe.install()
        probe.install_turns()
        _probe_routes(app, probe)
    from voicecli.server.app import event_loop_factory

    # The event loop `voicecli serve` runs on.
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(app, args.port, args.slow_callback_ms))


def _committed_media_path() -> None:
    """voicecli's media path before the bench's changes (commit 57dfdaa..0025365), for A/B runs."""
    from pipecat.audio.vad.vad_analyzer import VADAnalyzer

    import voicecli.call.models
    import voicecli.call.pipeline
    import voicecli.call.transport

    voicecli.call.pipeline.AUDIO_IN_RATE = 16000
    voicecli.call.transport.INPUT_FRAME_MS = 0
    voicecli.call.models.SharedSileroVAD.analyze_audio = VADAnalyzer.analyze_audio


def _probe_routes(app, probe) -> None:
    from aiohttp import web

    async def read(request: web.Request) -> web.Response:
        since, until = float(request.query["since"]), float(request.query["until"])
        return web.json_response(probe.snapshot(since, until))

    async def reset(request: web.Request) -> web.Response:
        probe.reset()
        return web.json_response({"ok": True})

    async def turns(request: web.Request) -> web.Response:
        return web.json_response(probe.turn_stops())

    app.router.add_get("/bench/turns", turns)
    app.router.add_get("/bench/probe", read)
    app.router.add_post("/bench/probe/reset", reset)


async def _serve(app, port: int, slow_callback_ms: float | None) -> None:
    import asyncio
    import logging
    import signal

    from aiohttp import web

    if slow_callback_ms is not None:
        logging.basicConfig(level=logging.WARNING)
        asyncio.get_running_loop().set_debug(True)
        asyncio.get_running_loop().slow_callback_duration = slow_callback_ms / 1000

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    main()
