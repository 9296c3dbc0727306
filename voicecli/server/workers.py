"""`voicecli serve --workers N`: a supervisor that binds the port, and N workers that serve it.

The supervisor never imports pipecat and never serves a request: it binds the listening
socket (so `--port 0` works; on Linux one socket per worker on that port, see `listen`), runs
start-up recovery once, opens the tunnel and prints the banner once, then starts N worker
processes (`python -m voicecli.server.worker`) that inherit it, each with its own event loop and
pipelines. Everything the workers must agree on
(records, slots, settings) is in the store they share. A worker that dies is replaced; its
calls become `interrupted` and its slots come back at once. Ctrl-C drains every worker; a
second Ctrl-C cuts them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from voicecli.errors import VoicecliError
from voicecli.runtime import ServerInfo, forget_server, record_server
from voicecli.server.urls import http_url

if TYPE_CHECKING:
    from voicecli.server.state import ServerState
    from voicecli.settings import Settings
    from voicecli.store import CallStore

# A worker that never got as far as serving counts as a failed start; this many in a row
# and the supervisor gives up instead of restarting it forever.
MAX_FAILED_STARTS = 5
# Wait before a restart: doubled after each failed start, from the first up to the last.
RESTART_BACKOFF_S = (0.2, 5.0)


def worker_count(value: int | str) -> int:
    """The `workers` setting as a number of processes: `auto` is one per core."""
    if value == "auto":
        cores = getattr(os, "process_cpu_count", os.cpu_count)()  # process_cpu_count: Python 3.13
        return cores or 1
    return int(value)


@dataclass(frozen=True)
class WorkerPlan:
    """How each worker is started: everything it needs is passed to it explicitly."""

    count: int
    host: str
    port: int
    drain_timeout: float
    log_level: str
    agents_dir: Path
    agents: list[str]
    config_path: Path


@dataclass(frozen=True)
class WorkerSpec:
    """One worker's start-up, as the single JSON argument of `python -m voicecli.server.worker`."""

    number: int
    instance: str
    holder: str
    supervisor_pid: int
    listen_fd: int
    ready_fd: int
    project_dir: str
    config_path: str
    flags: dict[str, Any]
    agents_dir: str
    agents: list[str]
    host: str
    drain_timeout: float
    log_level: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


# One listening socket per worker, all on the port (SO_REUSEPORT), where the kernel spreads
# new connections over them by hash: with one shared socket, the busiest worker (its event
# loop polling most often) wins nearly every accept, and one worker ends up with the calls.
SPREAD_BY_KERNEL = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listen(host: str, port: int, count: int) -> list[socket.socket]:
    """The listening sockets the workers accept on: one per worker where the kernel spreads
    connections over them, else one they all share. A VoicecliError when the port is taken."""
    sockets: list[socket.socket] = []
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        spread = SPREAD_BY_KERNEL and count > 1  # one process: a second `serve` on the port must fail
        for _ in range(count if spread else 1):
            # The first binds (port 0 picks one); the others join it on the same port.
            bound = sockets[0].getsockname()[1] if sockets else port
            sockets.append(socket.create_server((host, bound), family=family, backlog=1024, reuse_port=spread))
    except OSError as exc:
        for each in sockets:
            each.close()
        raise VoicecliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Try --port.") from None
    return sockets


@dataclass
class Worker:
    """One running worker process."""

    number: int
    seat: int  # which listening socket it accepts on: a replacement takes the same one
    holder: str
    proc: asyncio.subprocess.Process
    ready: bool = False


class Supervisor:
    """Starts the workers, replaces the ones that die, and stops them all on a signal."""

    def __init__(
        self,
        state: ServerState,
        store: CallStore,
        plan: WorkerPlan,
        sockets: list[socket.socket],
        flags: dict[str, Any],
    ):
        self.state, self.store, self.plan, self.sockets, self.flags = state, store, plan, sockets, flags
        self.workers: dict[int, Worker] = {}
        self.numbers = 0
        self.failed_starts = 0
        self.stopping = False
        self.gave_up: str | None = None
        self.all_ready = asyncio.Event()
        self.done = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_restarts = 0

    # --- starting -----------------------------------------------------------------------
    async def spawn(self, seat: int) -> None:
        """Start the next worker (numbered from 1; a replacement gets a new number, and the
        listening socket of the one it replaces, with the connections waiting on it)."""
        sock = self.sockets[seat % len(self.sockets)]
        self.numbers += 1
        number = self.numbers
        holder = f"{self.state.instance}/w{number}"
        ready_r, ready_w = os.pipe()
        settings = self.state.settings
        spec = WorkerSpec(
            number=number,
            instance=self.state.instance,
            holder=holder,
            supervisor_pid=os.getpid(),
            listen_fd=sock.fileno(),
            ready_fd=ready_w,
            project_dir=str(settings.project_dir),
            config_path=str(self.plan.config_path),
            flags=self.flags,
            agents_dir=str(settings.project_dir / self.plan.agents_dir),
            agents=self.plan.agents,
            host=self.plan.host,
            drain_timeout=self.plan.drain_timeout,
            log_level=self.plan.log_level,
        )
        try:
            # Its own session: a Ctrl-C in the terminal reaches the supervisor only, which
            # decides what each worker hears. stdout and stderr are the terminal's.
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "voicecli.server.worker",
                spec.to_json(),
                cwd=settings.project_dir,
                pass_fds=(sock.fileno(), ready_w),
                start_new_session=True,
            )
        finally:
            os.close(ready_w)
        worker = Worker(number, seat, holder, proc)
        self.workers[number] = worker
        logger.info(f"worker {number} started (pid {proc.pid})")
        self._watch_ready(worker, ready_r)
        self._keep(self._watch(worker))

    def _watch_ready(self, worker: Worker, fd: int) -> None:
        # The worker writes one byte to its end once it serves; the end closing unwritten
        # (the worker died first) reads as EOF.
        loop = asyncio.get_running_loop()

        def readable() -> None:
            loop.remove_reader(fd)
            try:
                data = os.read(fd, 16)
            finally:
                os.close(fd)
            if data and not worker.ready:
                worker.ready = True
                self.failed_starts = 0
                if sum(w.ready for w in self.workers.values()) >= self.plan.count:
                    self.all_ready.set()

        loop.add_reader(fd, readable)

    def _keep(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- a worker's end -------------------------------------------------------------------
    async def _watch(self, worker: Worker) -> None:
        code = await worker.proc.wait()
        del self.workers[worker.number]
        if code != 0 or not self.stopping:
            # Whatever it was doing is over: its calls end `interrupted`, its slots come back
            # now (not when its lease runs out), so the others can take new calls at once.
            try:
                ended = await self.store.reap([worker.holder], f"worker {worker.number} stopped unexpectedly")
            except Exception as exc:  # the store is unreachable: the lease expires instead
                logger.warning(f"could not release worker {worker.number}'s calls: {type(exc).__name__}: {exc}")
                ended = 0
            calls = f"; {ended} call(s) marked interrupted" if ended else ""
            log = logger.warning if self.stopping else logger.error
            log(f"worker {worker.number} (pid {worker.proc.pid}) exited with status {code}{calls}")
        if self.stopping:
            self._check_done()
            return
        if not worker.ready:
            self.failed_starts += 1
            if self.failed_starts >= MAX_FAILED_STARTS:
                self.gave_up = (
                    f"workers exited before serving {self.failed_starts} times in a row: "
                    "stopping (the log above says why)"
                )
                self.stop()
                return
        first, last = RESTART_BACKOFF_S
        self._pending_restarts += 1
        try:
            await asyncio.sleep(min(last, first * 2**self.failed_starts))
        finally:
            self._pending_restarts -= 1
        if self.stopping:
            self._check_done()
        else:
            await self.spawn(worker.seat)

    def _check_done(self) -> None:
        if not self.workers and not self._pending_restarts:
            self.done.set()

    # --- stopping -------------------------------------------------------------------------
    def stop(self) -> None:
        """First call: every worker drains. Later calls: every worker cuts its calls."""
        self.stopping = True
        for worker in list(self.workers.values()):
            if worker.proc.returncode is None:
                try:
                    worker.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self._check_done()

    def on_signal(self) -> None:
        if self.stopping:
            logger.warning("second signal: every worker ends its calls now")
        else:
            logger.info("stopping: no new calls; active calls may finish (Ctrl-C again to stop at once)")
        self.stop()

    async def wait_until_serving(self) -> None:
        """Until every first worker serves, or the supervisor is stopping."""
        waits = {asyncio.ensure_future(self.all_ready.wait()), asyncio.ensure_future(self.done.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


def worker_flags(settings: Settings) -> dict[str, Any]:
    """What workers get as flags: the command's own, and what this run set once bound (a tunnel's URL)."""
    return {name: value for name, value in settings.layers.flags.items() if value is not None}


async def supervise(state: ServerState, plan: WorkerPlan, on_started: Callable[[str], Awaitable[None]]) -> None:
    """Bind, recover, announce (`on_started(url)`: tunnel, banner), run the workers until a signal.

    `state` is never served: it holds the settings, agents and instance id of this run.
    """
    from voicecli.server.state import open_shared

    sockets = listen(plan.host, plan.port, plan.count)
    store = state.store
    try:
        # The API token for the CLI, and the store checked before any worker depends on it.
        await open_shared(state.settings, store)
        await state.reload_settings()  # the banner shows the limits in force, as the workers will
        # Start-up recovery, once for every worker (they start with recover=False).
        if ended := await state.membership.sweep():
            logger.warning(f"{ended} call(s) left open by a server that was killed: marked interrupted")
        from voicecli.server.recordings import repair_recordings  # numpy only: no pipecat here

        await repair_recordings(store)
        url = http_url(plan.host, sockets[0].getsockname()[1])
        await on_started(url)
        supervisor = Supervisor(state, store, plan, sockets, worker_flags(state.settings))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, supervisor.on_signal)
        state_dir = state.settings.state_dir
        try:
            for seat in range(plan.count):
                await supervisor.spawn(seat)
            await supervisor.wait_until_serving()
            if not supervisor.stopping:
                # The CLI talks to this instance through the supervisor's entry, once all serve.
                record_server(state_dir, ServerInfo(url, os.getpid(), sorted(state.agents), state.instance))
                logger.info(f"{plan.count} workers serving on {url}")
            await supervisor.done.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            forget_server(state_dir, os.getpid())
        if supervisor.gave_up:
            raise VoicecliError(supervisor.gave_up)
        logger.info("server stopped")
    finally:
        for each in sockets:
            each.close()
        await store.close()
