"""GET/PUT /api/settings/telephony: read settings (secrets masked), change them in the store, live."""

from __future__ import annotations

from aiohttp import web
from loguru import logger

from voicecli.errors import SettingsError
from voicecli.providers.base import WebhookRejected, json_object
from voicecli.server.state import STATE


async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].settings.masked())


async def put_settings(request: web.Request) -> web.Response:
    """Partial update: only the fields sent change; validated, written to the store, applied at once.

    Every other server process (workers, instances) applies it from the store's `settings`
    event; file-only settings (database_url, workers, *_api_base) are refused with why.
    """
    state = request.app[STATE]
    try:
        changes = await json_object(request)
    except WebhookRejected as exc:
        return web.json_response({"error": exc.reason}, status=exc.status)
    if not changes:
        return web.json_response({"error": "send a JSON object of settings to change"}, status=422)
    # One change at a time in this process; the store makes each one atomic across processes.
    async with state.settings_lock:
        try:
            checked = state.settings.check_store_changes(changes)
            # The validated form goes to the store ("7" as 7); None removes a name.
            layer = await state.store.change_settings({name: checked.stored.get(name) for name in changes})
            updated = state.settings.with_store(layer)
        except SettingsError as exc:
            return web.json_response({"error": str(exc)}, status=422)
        state.apply_settings(updated)
    logger.info(f"settings changed through the API: {', '.join(sorted(changes))}")
    return web.json_response(updated.masked())


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/settings/telephony", get_settings)
    app.router.add_put("/api/settings/telephony", put_settings)
