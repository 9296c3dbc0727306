"""The aiohttp server: app factory, routes, lifecycle and graceful shutdown."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from loguru import logger

from voicecli.runtime import ServerInfo, forget_server, record_server
from voicecli.server import api, outbound, settings_api, telephony
from voicecli.server.state import STATE, ServerState
from voicecli.server.urls import http_url
from voicecli.store import StoreUnavailable

# What a client told "the store cannot be written" should wait before trying again.
STORE_RETRY_AFTER_S = 5


async def healthz(request: web.Request) -> web.Response:
    """200 while taking calls; 503 while draining or while the store cannot be written, so a
    load balancer sends new calls elsewhere."""
    state = request.app[STATE]
    calls, unwritable = state.calls, state.store.unwritable
    ok = not calls.draining and unwritable is None
    body = {"ok": ok, "draining": calls.draining, "active_calls": len(calls.live), "store_unwritable": unwritable}
    return web.json_response(body, status=200 if ok else 503)


@web.middleware
async def store_unavailable(request: web.Request, handler: api.Handler) -> web.StreamResponse:
    """A request whose write the store refused gets 503 and Retry-After, not a 500: a provider
    or client may try again, and a load balancer sends the next call elsewhere."""
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        logger.warning(f"{request.method} {request.path}: 503, {exc}")
        headers = {"Retry-After": str(STORE_RETRY_AFTER_S)}
        message = f"{exc}; try again shortly"
        if request.path.startswith("/api/"):
            return web.json_response({"error": message}, status=503, headers=headers)
        return web.Response(status=503, text=message + "\n", headers=headers)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await state.start()
    state.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    yield
    await state.http.close()
    await state.stop()


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    telephony.setup_routes(app)
    api.setup_routes(app)
    outbound.setup_routes(app)
    settings_api.setup_routes(app)


def create_app(state: ServerState) -> web.Application:
    """The voicecli web application around `state`."""
    app = web.Application(middlewares=[store_unavailable, api.bearer_auth], client_max_size=1024 * 1024)
    app[STATE] = state
    app.cleanup_ctx.append(_resources)
    setup_routes(app)
    return app


# How long a connection may take to send a request's headers (and stay idle between requests).
HEADER_TIMEOUT_S = 5.0


class TurnedAway(asyncio.Protocol):
    """A connection past the cap: told 503 and closed at once, so its descriptor comes back."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(  # type: ignore[attr-defined]  # a stream transport (uvloop's is no asyncio.Transport)
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        transport.close()


class CappedSite(web.SockSite):
    """A listening socket that turns connections away past `max_connections`.

    Every connection holds a file descriptor, and so does every live call's TTS, store and
    provider request: a flood of idle sockets must leave the last ones to them, or live
    calls go silent and the server stops answering even /healthz.
    """

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, max_connections: int) -> None:
        super().__init__(runner, sock, backlog=1024)
        self.max_connections = max_connections
        self.turned_away = 0
        self._warned_at = 0.0

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers with the runner; the server is made below
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) < self.max_connections:
                return server()
            self.turned_away += 1
            if loop.time() - self._warned_at > 10:
                self._warned_at = loop.time()
                logger.warning(
                    f"{self.max_connections} connections open: new ones turned away (503) so the calls"
                    f" already running keep their file descriptors ({self.turned_away} so far)"
                )
            return TurnedAway()

        self._server = await loop.create_server(protocol, sock=self._sock, backlog=1024)


def connection_cap(file_limit: int) -> int:
    """Connections allowed at once under a file limit: all but an eighth (at least 64) of it,
    left for what the calls themselves open."""
    return max(16, file_limit - max(64, file_limit // 8))


def raise_file_limit() -> int:
    """The soft limit on open files, raised to the hard one: every call holds a socket, and
    the common soft 1,024 is reached by a few hundred slow clients. The limit now in force
    (0 where there is none, or it cannot be read)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # a container may refuse: the soft limit stays
    return 0 if soft == resource.RLIM_INFINITY else soft


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (not on Windows), else asyncio's own loop.

    Every call is dozens of tasks, queues and socket reads a second on one event loop;
    uvloop runs the same server on about 6 % less CPU (bench/README.md).
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def serve(
    state: ServerState,
    host: str,
    port: int,
    drain_timeout: float,
    on_started: Callable[[str], Awaitable[None] | None] | None = None,
    *,
    sock: socket.socket | None = None,
    record: bool = True,
) -> None:
    """Serve until SIGINT/SIGTERM; drain calls on the first signal, cut them on the second.

    `on_started(url)` runs once the port is bound (a tunnel needs it); it may be async.
    `sock`: a listening socket to accept on instead of binding host:port (a worker's,
    inherited from `serve --workers`' supervisor). `record`: list this process in
    server.json; a worker does not, its supervisor is listed once for the whole instance.
    """
    file_limit = raise_file_limit()
    if sock is None:
        from voicecli.server.workers import listen

        [sock] = listen(host, port, 1)
    app = create_app(state)
    # Drain has ended every call before cleanup: what is left (a client mid-request) gets
    # the cut's few seconds, not aiohttp's default minute.
    # keepalive_timeout also bounds a new connection's wait for its first request: a client
    # that connects and sends nothing, or its headers a byte at a time, is closed after it
    # (aiohttp's default is an hour: 1,000 such sockets took the server off the air).
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=state.timeouts.cut_s,
        keepalive_timeout=HEADER_TIMEOUT_S,
    )
    await runner.setup()
    site = CappedSite(runner, sock, connection_cap(file_limit) if file_limit > 0 else 1_000_000)
    await site.start()
    bound_port = sock.getsockname()[1]
    url = http_url(host, bound_port)
    state_dir = state.settings.state_dir
    # Only a server that got its port joins the list the CLI reads.
    if record:
        record_server(state_dir, ServerInfo(url, os.getpid(), sorted(state.agents), state.instance))

    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            logger.warning("second signal: ending every call now")
            force.set()
        else:
            logger.info("stopping: no new calls; active calls may finish (Ctrl-C again to stop at once)")
            stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        if on_started and inspect.isawaitable(started := on_started(url)):
            await started
        await stop.wait()
        await state.calls.drain(drain_timeout, force)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if record:
            forget_server(state_dir, os.getpid())
        await runner.cleanup()
        logger.info("server stopped")
