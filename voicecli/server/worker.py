"""One worker of `voicecli serve --workers N`: `python -m voicecli.server.worker SPEC_JSON`.

Started by the supervisor (`voicecli.server.workers`), never by hand. It serves on the listening
socket it inherited until SIGTERM: the first drains its calls, a second cuts them. A worker
whose supervisor is gone (killed with -9) drains and stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from loguru import logger

from voicecli.server.workers import WorkerSpec

# How often a worker checks that its supervisor is still there.
PARENT_CHECK_S = 1.0


def _log_as_worker(number: int, level: str) -> None:
    from voicecli.ui import logs

    logs.configure(level)
    # The terminal is shared with the supervisor and the other workers: name this one.
    logger.remove()
    prefixed = logs.FORMAT.replace("{extra[call]}", f"w{number} {{extra[call]}}")
    logger.add(sys.stderr, level=level.upper(), format=prefixed, colorize=None, diagnose=False)


async def _watch_supervisor(pid: int) -> None:
    while os.getppid() == pid:  # noqa: ASYNC110 (no event tells a process its parent died)
        await asyncio.sleep(PARENT_CHECK_S)
    logger.warning("the supervisor is gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)  # as if the supervisor had asked: drain, then stop


async def _serve(spec: WorkerSpec) -> None:
    from voicecli.agents import load_agents
    from voicecli.call.session import warm_up
    from voicecli.server.app import serve
    from voicecli.server.state import build_state
    from voicecli.settings import load_settings

    settings = load_settings(Path(spec.project_dir), config_path=Path(spec.config_path), flags=spec.flags)
    agents = load_agents(Path(spec.agents_dir), spec.agents)
    # The supervisor ran start-up recovery once for every worker.
    state = build_state(settings, agents, instance=spec.instance, holder=spec.holder, recover=False)
    warm_up(agents.values(), settings.env)
    sock = socket.socket(fileno=spec.listen_fd)

    def serving(url: str) -> None:
        os.write(spec.ready_fd, b"1")
        os.close(spec.ready_fd)

    watch = asyncio.create_task(_watch_supervisor(spec.supervisor_pid))
    try:
        await serve(state, spec.host, 0, spec.drain_timeout, serving, sock=sock, record=False)
    finally:
        watch.cancel()


def main(argv: list[str]) -> int:
    spec = WorkerSpec.from_json(argv[1])
    _log_as_worker(spec.number, spec.log_level)
    from voicecli.errors import VoicecliError
    from voicecli.server.app import event_loop_factory

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_serve(spec))
    except VoicecliError as exc:
        from voicecli.ui.console import error

        error(f"worker {spec.number}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
