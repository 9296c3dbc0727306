"""Admission probe, installed in the bench's own server process only (serve_voicecli.py --admission-probe).

It times, inside the server, how long admission takes:

- an aiohttp middleware notes when each request reached the app (a stream upgrade, or a POST
  to the outbound API) in a context variable, which the handler's task and its awaits share;
- `SlotLimiter.take` is wrapped: when it was called and when it returned, with the request's
  arrival, and whether it gave a slot. A signed Twilio upgrade takes its slot in the upgrade
  handler itself, so upgrade -> slot taken is all server-side: the signature check, the limit
  read (`may_upgrade`), and the store's check-and-take.

It also samples the event loop's lag (a 5 ms sleep's overshoot): a take whose store work is
done waits for the loop to run its continuation, so a busy loop shows in every take.

GET /bench/admission returns every take (and lag sample) since the last POST /bench/admission/reset.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from aiohttp import web

_arrived: contextvars.ContextVar[float | None] = contextvars.ContextVar("bench_arrived", default=None)
# (kind, request arrived, take called, take returned, got a slot)
_takes: list[tuple[str, float | None, float, float, bool]] = []
_lag_ms: list[float] = []
_installed = False
LAG_TICK_S = 0.005


async def _sample_lag() -> None:
    import asyncio

    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(LAG_TICK_S)
        _lag_ms.append((time.perf_counter() - t0 - LAG_TICK_S) * 1000)


@web.middleware
async def _note_arrival(request: web.Request, handler: Any) -> web.StreamResponse:
    token = _arrived.set(time.perf_counter())
    try:
        return await handler(request)
    finally:
        _arrived.reset(token)


def install(app: web.Application) -> None:
    """Time every slot taken in this process, and serve the timings on `app`."""
    global _installed
    if not _installed:
        _installed = True
        from voicecli.server.limits import SlotLimiter

        take = SlotLimiter.take

        async def timed_take(self: Any, provider: str, claim: str | None = None, reserve: str | None = None) -> Any:
            called = time.perf_counter()
            slot = await take(self, provider, claim=claim, reserve=reserve)
            kind = "dial" if reserve else "claim" if claim else "stream"
            _takes.append((kind, _arrived.get(), called, time.perf_counter(), slot is not None))
            return slot

        SlotLimiter.take = timed_take  # type: ignore[method-assign]
    # First: the arrival time is the app's first sight of the request, before bearer auth.
    app.middlewares.insert(0, _note_arrival)

    async def read(request: web.Request) -> web.Response:
        takes = [{"kind": k, "arrived": a, "called": c, "returned": r, "slot": s} for k, a, c, r, s in _takes]
        return web.json_response({"takes": takes, "lag_ms": _lag_ms})

    async def reset(request: web.Request) -> web.Response:
        _takes.clear()
        _lag_ms.clear()
        return web.json_response({"ok": True})

    async def lag_sampler(app: web.Application):
        import asyncio

        task = asyncio.create_task(_sample_lag())
        yield
        task.cancel()

    app.cleanup_ctx.append(lag_sampler)

    app.router.add_get("/bench/admission", read)
    app.router.add_post("/bench/admission/reset", reset)
