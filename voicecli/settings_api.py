"""GET/PUT /api/settings/telephony: read settings (secrets masked), change them live and persist."""

from __future__ import annotations

import asyncio

from aiohttp import web
from loguru import logger

from voicecli.config_file import update_config_file
from voicecli.errors import SettingsError
from voicecli.server_state import STATE


async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].settings.masked())


async def put_settings(request: web.Request) -> web.Response:
    """Partial update: only the fields sent change; validated, applied at once, then persisted."""
    state = request.app[STATE]
    try:
        changes = await request.json()
    except ValueError:
        return web.json_response({"error": "the body must be JSON"}, status=400)
    if not isinstance(changes, dict) or not changes:
        return web.json_response({"error": "send a JSON object of settings to change"}, status=422)
    # One change at a time: each merges onto the settings the previous one produced, and the
    # file is read and written whole inside the lock, so concurrent PUTs all survive.
    async with state.settings_lock:
        try:
            updated = state.settings.with_file_changes(changes)
            # Written first (atomically), so a setting in force is always one that survives a restart.
            await asyncio.to_thread(update_config_file, state.settings.config_path, changes)
        except SettingsError as exc:
            return web.json_response({"error": str(exc)}, status=422)
        state.apply_settings(updated)
    logger.info(f"settings changed through the API: {', '.join(sorted(changes))}")
    return web.json_response(updated.masked())


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/settings/telephony", get_settings)
    app.router.add_put("/api/settings/telephony", put_settings)
