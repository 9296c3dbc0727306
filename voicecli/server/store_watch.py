"""Watching a store that refuses writes: say so once, try a write every second, say when it is back.

While the store cannot be written, /healthz answers 503 (a load balancer sends new calls
elsewhere), webhooks and the API answer 503 with Retry-After, and live calls go on: their
transcript lines, ends and slots are kept by the store and written, in order, when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from voicecli.store import CallStore

PROBE_S = 1.0


class StoreWatch:
    def __init__(self, store: CallStore) -> None:
        self.store = store
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        down = False
        while True:
            await asyncio.sleep(PROBE_S)
            reason = self.store.unwritable
            if reason is None and not down:
                continue
            if not down:
                logger.error(
                    f"the call store {self.store.location} cannot be written ({reason}): new calls get 503;"
                    " live calls go on, and what they write is kept until the store takes writes again"
                )
                down = True
            try:
                back = await self.store.probe()
            except Exception as exc:  # whatever the probe meets, the watch keeps watching
                logger.warning(f"store probe failed: {type(exc).__name__}: {exc}")
                back = False
            if back:
                logger.info(f"the call store {self.store.location} takes writes again: kept writes are written")
                down = False
